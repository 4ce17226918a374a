"""Projected gradient descent (Madry et al. 2018; BIM without random start)."""

import jax

from awt.attacks import _common


def pgd(
  logits_fn: _common.LogitsFn,
  x: jax.Array,
  y: jax.Array,
  key: jax.Array,
  *,
  eps: float,
  step_size: float,
  steps: int,
  norm: str = "linf",
  restarts: int = 1,
  loss: str = "ce",
  random_start: bool = True,
  targeted: bool = False,
  target: jax.Array | None = None,
  select: str = "best",
) -> jax.Array:
  r"""Projected steepest ascent on the loss inside the eps-ball and [0, 1].

  .. math::
    x^{t+1} = \Pi_{B_\epsilon(x) \cap [0,1]^d}\big(x^t + \alpha\,
      \mathrm{sign}(\nabla_x L(x^t))\big) \quad (\ell_\infty), \qquad
    x^{t+1} = \Pi\big(x^t + \alpha\, \nabla_x L / \|\nabla_x L\|_2\big)
      \quad (\ell_2)

  ``L`` is the loss of the true label (untargeted) or minus the loss of the
  target class (targeted). ``x^0`` is uniform in the eps-ball
  (``random_start=True``, Madry et al.) or ``x`` itself (BIM, Kurakin et al.).

  The returned point is not the last iterate: over every iterate of every
  restart it is, per example, the first point that fools the model
  (misclassified, or classified as ``target``), else the point of highest
  loss — as strong evaluations do (AutoAttack's PGD, the robustness library).
  Restart ``r`` draws its random start from ``_common.restart_keys(keys, r)``.
  ``select="last"`` returns the last iterate instead, as Madry et al.'s
  adversarial training does (it keeps ascending the loss of points that
  already fool the model, and skips the tracking); training uses it.

  All iterations (and restarts) run in one compiled ``lax.fori_loop``; the
  attack is jittable with ``eps``, ``step_size``, ``steps``, ``restarts`` as
  Python numbers, e.g. ``jax.jit(functools.partial(pgd, f, eps=0.3, ...))``.

  Args:
    logits_fn: pure ``x [B, H, W, C] -> logits [B, K]``; examples must be
      independent (no batch statistics).
    x: ``[B, H, W, C]`` float32 in [0, 1].
    y: ``[B]`` int32 true labels (also for targeted attacks).
    key: one PRNG key, or per-example keys ``[B, 2]`` (then a batch split
      over devices computes the same as the whole batch on one device).
    eps: perturbation budget in pixel units.
    step_size: ``alpha``, per-step size in the same norm.
    steps: gradient steps per restart.
    norm: ``"linf"`` or ``"l2"``.
    restarts: independent random starts; needs ``random_start=True`` if > 1.
    loss: ``"ce"``, ``"margin"`` (Carlini-Wagner margin) or ``"dlr"``.
    random_start: start uniformly in the eps-ball (PGD) or at ``x`` (BIM).
    targeted: whether to move towards ``target`` instead of away from ``y``.
    target: ``[B]`` int32 target classes; required iff ``targeted``.
    select: ``"best"`` (evaluation, default) or ``"last"`` (training; one
      restart).

  Returns:
    ``x_adv: [B, H, W, C]`` float32 in [0, 1], ``||x_adv - x|| <= eps``.

  Raises:
    ValueError: unknown norm or loss, ``target`` inconsistent with
      ``targeted``, ``restarts < 1``, or ``restarts > 1`` without a random
      start (the restarts would all be identical).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> w = jnp.ones((4, 2)).at[:, 1].set(-1.0)
    >>> f = lambda v: v.reshape(v.shape[0], -1) @ w
    >>> x = jnp.full((1, 2, 2, 1), 0.5)
    >>> x_adv = pgd(f, x, jnp.array([0]), jax.random.PRNGKey(0), eps=0.1,
    ...             step_size=0.05, steps=5, random_start=False)
    >>> x_adv.ravel()
    Array([0.4, 0.4, 0.4, 0.4], dtype=float32)

  References:
    Madry, Makelov, Schmidt, Tsipras & Vladu, *Towards Deep Learning Models
    Resistant to Adversarial Attacks*, ICLR 2018, Eq. (2.1) and Sec. 2.1.
    Kurakin, Goodfellow & Bengio, *Adversarial Examples in the Physical
    World*, ICLR workshop 2017, Sec. 2.2 (BIM).
  """
  _common.check_norm(norm)
  _common.check_loss(loss)
  _common.check_target(targeted, target)
  if restarts < 1:
    raise ValueError(f"restarts must be >= 1, got {restarts}")
  if restarts > 1 and not random_start:
    raise ValueError("restarts > 1 needs random_start=True")
  if select not in ("best", "last"):
    raise ValueError(f"unknown select {select!r}; known: best, last")
  if select == "last" and restarts > 1:
    raise ValueError("select='last' takes one restart")
  keys = _common.per_example_keys(key, x.shape[0])

  def start(r):
    if random_start:
      return _common.random_start(_common.restart_keys(keys, r), x, eps, norm)
    return x

  if select == "last":

    def ascend(_, x_t):
      _, _, grad = _common.loss_and_grad(logits_fn, x_t, y, target, loss)
      x_t = x_t + step_size * _common.ascent_direction(grad, norm)
      return _common.project(x_t, x, eps, norm)

    return jax.lax.fori_loop(0, steps, ascend, start(0))

  def step(_, carry):
    x_t, best = carry
    obj, success, grad = _common.loss_and_grad(logits_fn, x_t, y, target, loss)
    best = _common.update_best(best, x_t, obj, success)
    x_t = x_t + step_size * _common.ascent_direction(grad, norm)
    return _common.project(x_t, x, eps, norm), best

  def restart(r, best):
    x_t, best = jax.lax.fori_loop(0, steps, step, (start(r), best))
    z = logits_fn(x_t)
    return _common.update_best(
      best,
      x_t,
      _common.objective(loss, z, y, target),
      _common.is_success(z, y, target),
    )

  best = jax.lax.fori_loop(0, restarts, restart, _common.init_best(x))
  return best.x
