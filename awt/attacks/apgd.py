"""Auto-PGD: step-size-free PGD with momentum (Croce & Hein, ICML 2020)."""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from awt.attacks import _common, _threefry


def checkpoints(steps: int) -> np.ndarray:
  r"""Iterations ``w_j`` (1-based, increasing) of the step-size checks.

  .. math::
    p_0 = 0,\; p_1 = 0.22,\; p_{j+1} = p_j + \max(p_j - p_{j-1} - 0.03,
    0.06),\qquad w_j = \lceil p_j N \rceil

  Args:
    steps: ``N``, the number of iterations.

  Returns:
    ``[J]`` int64 distinct ``w_j`` in ``[1, steps]`` for ``j >= 1``.

  References:
    Croce & Hein, ICML 2020, Sec. 3.2 ("checkpoints").
  """
  p = [0.0, 0.22]
  while p[-1] <= 1.0:
    p.append(round(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06), 10))
  w = {math.ceil(round(pj * steps, 6)) for pj in p[1:] if pj <= 1.0}
  return np.array(sorted(wj for wj in w if 1 <= wj <= steps), np.int64)


class _State(NamedTuple):
  """APGD loop state; every field has a leading batch axis ``B``."""

  x: jax.Array  # current point x^(k)
  x_prev: jax.Array  # x^(k-1), for the momentum term
  grad: jax.Array  # gradient at x
  loss: jax.Array  # objective at x
  eta: jax.Array  # per-example step size
  x_max: jax.Array  # highest-objective point so far
  grad_max: jax.Array
  loss_max: jax.Array
  increases: jax.Array  # steps that increased the objective since last check
  loss_max_last: jax.Array  # loss_max at the last checkpoint
  reduced_last: jax.Array  # whether eta was halved at the last checkpoint
  best: _common.Best  # the returned point (first success, else max loss)


def _start(keys: jax.Array, x: jax.Array, eps: float, norm: str) -> jax.Array:
  """AutoAttack's random start: ``x + eps * t / ||t||``, clipped to [0, 1].

  ``t`` is uniform in ``[-1, 1]^d`` (l_inf) or standard normal (l_2), so the
  start lies on the eps-sphere before clipping.
  """

  def one(k, xi):
    if norm == "linf":
      t = _threefry.uniform(k, (xi.size,), -1.0, 1.0)
    else:
      t = _threefry.normal(k, (xi.size,))
    return t.reshape(xi.shape)

  t = jax.vmap(one)(keys, x)
  t_norm = jnp.maximum(_common.flat_norm(t, norm), 1e-12)
  return jnp.clip(x + eps * t / _common._bcast(t_norm, t), 0.0, 1.0)


def apgd(
  logits_fn: _common.LogitsFn,
  x: jax.Array,
  y: jax.Array,
  key: jax.Array,
  *,
  eps: float,
  steps: int = 100,
  norm: str = "linf",
  loss: str = "ce",
  targeted: bool = False,
  target: jax.Array | None = None,
  restarts: int = 1,
  rho: float = 0.75,
  alpha: float = 0.75,
) -> jax.Array:
  r"""Auto-PGD: momentum PGD that halves its step size when progress stalls.

  .. math::
    z^{(k+1)} &= \Pi\big(x^{(k)} + \eta^{(k)} s(\nabla f(x^{(k)}))\big) \\
    x^{(k+1)} &= \Pi\big(x^{(k)} + \alpha (z^{(k+1)} - x^{(k)})
      + (1 - \alpha)(x^{(k)} - x^{(k-1)})\big)

  with ``s`` the sign (l_inf) or the l_2-normalized gradient (l_2, as in the
  AutoAttack code), ``Pi`` the projection onto the eps-ball and [0, 1],
  ``eta^(0) = 2 eps`` and ``alpha = 1`` for the first step. At each
  checkpoint ``w_j`` (see ``checkpoints``) the step size of an example is
  halved, and its iterate restarts from its highest-objective point, when

  1. fewer than ``rho * (w_j - w_{j-1})`` of the steps since the last
     checkpoint increased the objective (a step increases it when
     ``f(x^(k+1)) > f(x^(k))``, ``x^(k)`` being the point it started from),
     or
  2. its step size was not halved at the last checkpoint and its best
     objective did not improve since then (from the second checkpoint on,
     as in the AutoAttack code).

  Checkpoints and the strict ``<`` in condition 1 follow the paper; the
  AutoAttack code uses an integer version of the same schedule and ``<=``.

  Per example the returned point is the first iterate that fools the model
  (misclassified, or classified as ``target``), else the highest-objective
  iterate, over all restarts. Restart ``r`` draws its start from
  ``_common.restart_keys(keys, r)``. One compiled ``lax.fori_loop``.

  Args:
    logits_fn: pure ``x [B, H, W, C] -> logits [B, K]``; examples must be
      independent (no batch statistics).
    x: ``[B, H, W, C]`` float32 in [0, 1].
    y: ``[B]`` int32 true labels (also for targeted attacks).
    key: one PRNG key, or per-example keys ``[B, 2]``.
    eps: perturbation budget in pixel units.
    steps: ``N_iter``, iterations per restart.
    norm: ``"linf"`` or ``"l2"``.
    loss: ``"ce"`` or ``"dlr"`` (Eq. 6; the targeted DLR of Eq. 7 when
      ``targeted``, needs ``K >= 4``); ``"margin"`` is accepted too.
    targeted: whether to move towards ``target`` instead of away from ``y``.
    target: ``[B]`` int32 target classes; required iff ``targeted``.
    restarts: independent random starts.
    rho: ``rho``, fraction of increasing steps below which ``eta`` halves.
    alpha: momentum ``alpha`` (weight of the new step).

  Returns:
    ``x_adv: [B, H, W, C]`` float32 in [0, 1], ``||x_adv - x|| <= eps``.

  Raises:
    ValueError: unknown norm or loss, ``target`` inconsistent with
      ``targeted``, or ``steps``/``restarts`` < 1.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> w = jnp.ones((4, 2)).at[:, 1].set(-1.0)
    >>> f = lambda v: v.reshape(v.shape[0], -1) @ w
    >>> x = jnp.full((1, 2, 2, 1), 0.5)
    >>> x_adv = apgd(f, x, jnp.array([0]), jax.random.PRNGKey(0), eps=0.1,
    ...              steps=10)
    >>> x_adv.ravel()
    Array([0.4, 0.4, 0.4, 0.4], dtype=float32)

  References:
    Croce & Hein, *Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks*, ICML 2020, Algorithm 1,
    Eqs. (6)-(7); the l_2 version follows their AutoAttack code.
  """
  _common.check_norm(norm)
  _common.check_loss(loss)
  _common.check_target(targeted, target)
  if steps < 1 or restarts < 1:
    raise ValueError(
      f"steps and restarts must be >= 1, got {steps}, {restarts}"
    )
  keys = _common.per_example_keys(key, x.shape[0])
  w = checkpoints(steps)
  is_check = np.zeros(steps, bool)
  is_check[w - 1] = True
  interval = np.zeros(steps, np.float32)
  interval[w - 1] = np.diff(w, prepend=0)
  is_check, interval = jnp.asarray(is_check), jnp.asarray(interval)
  bcast = _common._bcast

  def step(i, s: _State) -> _State:
    a = jnp.where(i == 0, 1.0, alpha)
    z = s.x + bcast(s.eta, x) * _common.ascent_direction(s.grad, norm)
    z = _common.project(z, x, eps, norm)
    x_new = s.x + a * (z - s.x) + (1.0 - a) * (s.x - s.x_prev)
    x_new = _common.project(x_new, x, eps, norm)
    obj, success, grad = _common.loss_and_grad(
      logits_fn, x_new, y, target, loss
    )
    best = _common.update_best(s.best, x_new, obj, success)
    increases = s.increases + (obj > s.loss)
    up = obj > s.loss_max
    x_max = jnp.where(bcast(up, x), x_new, s.x_max)
    grad_max = jnp.where(bcast(up, x), grad, s.grad_max)
    loss_max = jnp.where(up, obj, s.loss_max)

    check = is_check[i]
    stalled = increases < rho * interval[i]
    flat = ~s.reduced_last & (s.loss_max_last >= loss_max)
    halve = check & (stalled | flat)
    back = bcast(halve, x)
    return _State(
      x=jnp.where(back, x_max, x_new),
      x_prev=s.x,
      grad=jnp.where(back, grad_max, grad),
      loss=jnp.where(halve, loss_max, obj),
      eta=jnp.where(halve, 0.5 * s.eta, s.eta),
      x_max=x_max,
      grad_max=grad_max,
      loss_max=loss_max,
      increases=jnp.where(check, 0, increases),
      loss_max_last=jnp.where(check, loss_max, s.loss_max_last),
      reduced_last=jnp.where(check, halve, s.reduced_last),
      best=best,
    )

  def restart(r, best):
    x_0 = _start(_common.restart_keys(keys, r), x, eps, norm)
    obj, success, grad = _common.loss_and_grad(logits_fn, x_0, y, target, loss)
    b = x.shape[0]
    s = _State(
      x=x_0,
      x_prev=x_0,
      grad=grad,
      loss=obj,
      eta=jnp.full((b,), 2.0 * eps, x.dtype),
      x_max=x_0,
      grad_max=grad,
      loss_max=obj,
      increases=jnp.zeros((b,), jnp.int32),
      loss_max_last=obj,
      reduced_last=jnp.ones((b,), bool),
      best=_common.update_best(best, x_0, obj, success),
    )
    return jax.lax.fori_loop(0, steps, step, s).best

  best = jax.lax.fori_loop(0, restarts, restart, _common.init_best(x))
  return best.x


# Targets of APGD-T: the top-9 classes of AutoAttack, at most K - 1.
APGD_T_TARGETS = 9


def apgd_t(
  logits_fn: _common.LogitsFn,
  x: jax.Array,
  y: jax.Array,
  key: jax.Array,
  *,
  eps: float,
  norm: str = "linf",
  steps: int = 100,
  num_targets: int = APGD_T_TARGETS,
) -> jax.Array:
  r"""APGD-T: targeted-DLR APGD against each of the most likely other classes.

  Run ``j`` (``j = 0 .. T-1``, ``T = min(num_targets, K - 1)``) attacks the
  target ``t_j``, the class with the ``(j+1)``-th largest clean logit among
  the classes ``!= y``, maximizing the targeted DLR loss

  .. math::
    \mathrm{DLR}_t(z, y, t_j) = -\frac{z_y - z_{t_j}}
      {z_{\pi_1} - (z_{\pi_3} + z_{\pi_4}) / 2}

  from its own random start (keys ``fold_in(keys[i], j + 1)``). Per example
  the result is the point of the first run that makes the model misclassify
  it; an example is robust only if every run fails. Runs are one
  ``lax.fori_loop``; every run attacks the whole batch (fixed shapes).

  Args:
    logits_fn: pure ``x [B, H, W, C] -> logits [B, K]``, ``K >= 4``.
    x: ``[B, H, W, C]`` float32 in [0, 1].
    y: ``[B]`` int32 true labels.
    key: one PRNG key or per-example keys ``[B, 2]``.
    eps: perturbation budget in pixel units.
    norm: ``"linf"`` or ``"l2"``.
    steps: APGD iterations per target.
    num_targets: at most this many targets (AutoAttack: 9).

  Returns:
    ``x_adv: [B, H, W, C]`` float32 in [0, 1], ``||x_adv - x|| <= eps``;
    ``x`` itself for examples no run fools.

  Raises:
    ValueError: for ``K < 4`` classes (the targeted DLR loss needs four).

  References:
    Croce & Hein, *Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks*, ICML 2020, Eq. (7) and
    Sec. 5 ("APGD-T ... top-9 classes"); AutoAttack code
    (``APGDTargetedAttack``, ``n_target_classes=9``).
  """
  keys = _common.per_example_keys(key, x.shape[0])
  z = logits_fn(x)
  k = z.shape[-1]
  if k < 4:
    raise ValueError(f"apgd-t needs >= 4 classes (targeted DLR), got {k}")
  n = min(num_targets, k - 1)
  others = jnp.where(jax.nn.one_hot(y, k, dtype=bool), -jnp.inf, z)
  targets = jax.lax.top_k(others, n)[1]  # [B, n]

  def run(j, carry):
    x_best, fooled = carry
    target = jax.lax.dynamic_index_in_dim(targets, j, axis=1, keepdims=False)
    x_j = apgd(
      logits_fn,
      x,
      y,
      _common.restart_keys(keys, j + 1),
      eps=eps,
      norm=norm,
      steps=steps,
      loss="dlr",
      targeted=True,
      target=target,
    )
    fooled_j = jnp.argmax(logits_fn(x_j), axis=-1) != y
    take = ~fooled & fooled_j
    return jnp.where(_common._bcast(take, x), x_j, x_best), fooled | fooled_j

  clean_fooled = jnp.argmax(z, axis=-1) != y
  return jax.lax.fori_loop(0, n, run, (x, clean_fooled))[0]
