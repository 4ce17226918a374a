"""Fast Gradient Sign Method: one steepest-ascent step of size eps."""

import jax

from awt.attacks import _common


def fgsm(
  logits_fn: _common.LogitsFn,
  x: jax.Array,
  y: jax.Array,
  key: jax.Array | None = None,
  *,
  eps: float,
  norm: str = "linf",
  loss: str = "ce",
  targeted: bool = False,
  target: jax.Array | None = None,
) -> jax.Array:
  r"""One step of size eps along the loss gradient's steepest-ascent direction.

  .. math::
    x' = \Pi_{[0,1]}\big(x + \epsilon \, \mathrm{sign}(\nabla_x L)\big)
    \quad (\ell_\infty), \qquad
    x' = \Pi_{[0,1]}\big(x + \epsilon \, \nabla_x L / \|\nabla_x L\|_2\big)
    \quad (\ell_2)

  with ``L`` the loss of the true label ``y`` (untargeted) or minus the loss
  of ``target`` (targeted: the step moves towards the target class).

  Args:
    logits_fn: pure ``x [B, H, W, C] -> logits [B, K]``.
    x: ``[B, H, W, C]`` float32 in [0, 1].
    y: ``[B]`` int32 true labels (also for targeted attacks).
    key: unused (FGSM is deterministic); accepted so every attack has the
      signature ``attack(logits_fn, x, y, key, **kwargs)``.
    eps: perturbation budget in pixel units.
    norm: ``"linf"`` or ``"l2"``.
    loss: ``"ce"``, ``"margin"`` (Carlini-Wagner margin) or ``"dlr"``.
    targeted: whether to move towards ``target`` instead of away from ``y``.
    target: ``[B]`` int32 target classes; required iff ``targeted``.

  Returns:
    ``x_adv: [B, H, W, C]`` float32 in [0, 1], ``||x_adv - x|| <= eps``.

  Raises:
    ValueError: unknown norm or loss, or ``target`` inconsistent with
      ``targeted``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> w = jnp.ones((4, 2)).at[:, 1].set(-1.0)
    >>> f = lambda v: v.reshape(v.shape[0], -1) @ w
    >>> x = jnp.full((1, 2, 2, 1), 0.5)
    >>> fgsm(f, x, jnp.array([0]), eps=0.1).ravel()
    Array([0.4, 0.4, 0.4, 0.4], dtype=float32)

  References:
    Goodfellow, Shlens & Szegedy, *Explaining and Harnessing Adversarial
    Examples*, ICLR 2015, Eq. (3).
  """
  del key
  _common.check_norm(norm)
  _common.check_loss(loss)
  _common.check_target(targeted, target)
  _, _, grad = _common.loss_and_grad(logits_fn, x, y, target, loss)
  x_adv = x + eps * _common.ascent_direction(grad, norm)
  return _common.project(x_adv, x, eps, norm)
