"""Pieces shared by the attacks: losses, projections, per-example randomness.

Every attack works in pixel space: ``x: [B, H, W, C] float32 in [0, 1]``,
integer labels ``y: [B]``, and a pure ``logits_fn(x) -> [B, K]``.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from awt.attacks import _threefry

LogitsFn = Callable[[jax.Array], jax.Array]

NORMS = ("linf", "l2")


def check_norm(norm: str) -> None:
  """Raises a one-line ValueError for an unknown norm name."""
  if norm not in NORMS:
    raise ValueError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")


def per_example_keys(key: jax.Array, batch_size: int) -> jax.Array:
  """Returns ``[B, 2]`` raw keys: ``key`` itself if it is already a batch.

  Attacks draw their randomness per example so that a batch split over N
  devices computes what one device computes for the whole batch: the caller
  passes one key per example (e.g. ``fold_in(step_key, global_index)``).
  A single key is split into ``batch_size`` keys.
  """
  key = jnp.asarray(key)
  if key.ndim == 2:
    if key.shape[0] != batch_size:
      raise ValueError(
        f"per-example keys have batch {key.shape[0]}, inputs {batch_size}"
      )
    return key
  return jax.random.split(key, batch_size)


def flat_norm(v: jax.Array, norm: str) -> jax.Array:
  """Per-example norm of ``v: [B, ...]`` -> ``[B]``."""
  flat = v.reshape(v.shape[0], -1)
  if norm == "linf":
    return jnp.max(jnp.abs(flat), axis=1)
  return jnp.sqrt(jnp.sum(flat * flat, axis=1))


def _bcast(v: jax.Array, like: jax.Array) -> jax.Array:
  """Reshapes a per-example ``[B]`` vector to broadcast against ``like``."""
  return v.reshape((-1,) + (1,) * (like.ndim - 1))


def project(x_adv: jax.Array, x: jax.Array, eps, norm: str) -> jax.Array:
  """Projects onto the eps-ball around ``x`` intersected with ``[0, 1]``.

  For l_inf the intersection is a box and clipping is the exact projection.
  For l_2 the ball projection is followed by the box clip (the standard
  practice of Madry et al. 2018 and AutoAttack); clipping can only shrink the
  perturbation's norm, so the result stays inside both sets.
  """
  delta = x_adv - x
  if norm == "linf":
    delta = jnp.clip(delta, -eps, eps)
  else:
    n = flat_norm(delta, "l2")
    factor = jnp.minimum(1.0, eps / jnp.maximum(n, 1e-12))
    delta = delta * _bcast(factor, delta)
  return jnp.clip(x + delta, 0.0, 1.0)


def random_start(keys: jax.Array, x: jax.Array, eps, norm: str) -> jax.Array:
  """A uniform random point in the eps-ball around each ``x[i]`` (then clipped).

  l_inf: uniform in the box. l_2: uniform in the ball (direction from a
  Gaussian, radius ``eps * u^(1/d)``). ``keys: [B, 2]`` per-example keys.
  The draws equal ``jax.random``'s (``_threefry``: its loop unrolled).
  """

  def one(k, xi):
    if norm == "linf":
      return _threefry.uniform(k, xi.shape, -eps, eps)
    kd, kr = jax.random.split(k)
    d = _threefry.normal(kd, xi.shape)
    d = d / jnp.maximum(jnp.sqrt(jnp.sum(d * d)), 1e-12)
    r = eps * jax.random.uniform(kr) ** (1.0 / xi.size)
    return d * r

  delta = jax.vmap(one)(keys, x)
  return jnp.clip(x + delta, 0.0, 1.0)


def ce_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Per-example cross-entropy ``[B]``."""
  logp = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]


def margin_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Per-example CW margin ``max_{j != y} z_j - z_y`` ``[B]`` (> 0: wrong).

  References:
    Carlini & Wagner, *Towards Evaluating the Robustness of Neural
    Networks*, S&P 2017, Eq. (f_6) without the confidence clamp.
  """
  num_classes = logits.shape[-1]
  onehot = jax.nn.one_hot(y, num_classes, dtype=bool)
  z_y = jnp.sum(jnp.where(onehot, logits, 0.0), axis=1)
  z_other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=1)
  return z_other - z_y


LOSSES = ("ce", "dlr", "margin")


def dlr_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
  r"""Per-example Difference of Logits Ratio ``[B]`` (> 0: misclassified).

  .. math::
    \mathrm{DLR}(z, y) = -\frac{z_y - \max_{i \ne y} z_i}
      {z_{\pi_1} - z_{\pi_3}}

  with ``z_{pi_1} >= z_{pi_2} >= ...`` the sorted logits. Invariant to
  shifting and rescaling the logits, so it does not suffer from the
  saturated softmax that weakens cross-entropy. Needs ``K >= 3`` classes.

  Args:
    logits: ``[B, K]``.
    y: ``[B]`` int true labels.

  Returns:
    ``[B]`` float32.

  References:
    Croce & Hein, *Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks*, ICML 2020, Eq. (6).
  """
  top = jax.lax.top_k(logits, 3)[0]
  return margin_loss(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr_loss(
  logits: jax.Array, y: jax.Array, target: jax.Array
) -> jax.Array:
  r"""Per-example targeted DLR ``[B]`` (> 0: the target beats the true class).

  .. math::
    \mathrm{DLR}_t(z, y, t) = -\frac{z_y - z_t}
      {z_{\pi_1} - (z_{\pi_3} + z_{\pi_4}) / 2}

  Needs ``K >= 4`` classes.

  Args:
    logits: ``[B, K]``.
    y: ``[B]`` int true labels.
    target: ``[B]`` int target labels.

  Returns:
    ``[B]`` float32.

  References:
    Croce & Hein, ICML 2020, Eq. (7).
  """
  top = jax.lax.top_k(logits, 4)[0]
  z_y = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
  z_t = jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]
  scale = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12
  return (z_t - z_y) / scale


def linearized_boundaries(
  logits_fn: LogitsFn, x: jax.Array, y: jax.Array
) -> tuple[jax.Array, jax.Array]:
  r"""Every class's linearized decision boundary against ``y`` at ``x``.

  ``w_k = \nabla z_k(x) - \nabla z_y(x)`` and ``f_k = z_k(x) - z_y(x)``
  (DeepFool, Moosavi-Dezfooli et al. 2016, Alg. 2): the boundary with
  class ``k`` is ``f_k + w_k . r = 0``. One forward pass and ``K``
  vector-Jacobian products.

  Args:
    logits_fn: pure ``x [B, ...] -> logits [B, K]``, examples independent.
    x: ``[B, ...]`` float32.
    y: ``[B]`` int32 true labels.

  Returns:
    ``(w [B, K, D], f [B, K])`` with ``D = x[0].size``; row ``y`` is 0.
  """
  b = x.shape[0]
  z, vjp = jax.vjp(logits_fn, x)
  k = z.shape[-1]
  cot = jnp.broadcast_to(jnp.eye(k, dtype=z.dtype)[:, None], (k, b, k))
  grads = jnp.moveaxis(jax.vmap(vjp)(cot)[0].reshape(k, b, -1), 0, 1)
  w = grads - jnp.take_along_axis(grads, y[:, None, None], axis=1)
  f = z - jnp.take_along_axis(z, y[:, None], axis=1)
  return w, f


def check_loss(loss: str) -> None:
  """Raises a one-line ValueError for an unknown attack loss name."""
  if loss not in LOSSES:
    raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")


def check_target(targeted: bool, target) -> None:
  """Raises a ValueError unless ``target`` is given exactly when targeted."""
  if targeted and target is None:
    raise ValueError("targeted=True needs target: [B] int target classes")
  if not targeted and target is not None:
    raise ValueError("target given but targeted=False")


def objective(
  loss: str, logits: jax.Array, y: jax.Array, target=None
) -> jax.Array:
  """Per-example quantity an attack maximizes ``[B]``.

  Untargeted (``target is None``): the loss of the true label ``y``.
  Targeted: ``-ce(z, t)`` and ``-margin(z, t)`` (pull towards the target
  ``t``), and the targeted DLR of Croce & Hein 2020, Eq. (7), for ``"dlr"``.

  Args:
    loss: one of ``LOSSES``.
    logits: ``[B, K]``.
    y: ``[B]`` int true labels.
    target: ``[B]`` int target classes, or None for an untargeted attack.

  Returns:
    ``[B]`` float32.
  """
  if loss == "dlr":
    if target is None:
      return dlr_loss(logits, y)
    return targeted_dlr_loss(logits, y, target)
  fn = ce_loss if loss == "ce" else margin_loss
  if target is None:
    return fn(logits, y)
  return -fn(logits, target)


def is_success(logits: jax.Array, y: jax.Array, target=None) -> jax.Array:
  """``[B]`` bool: misclassified (untargeted) or classified as ``target``."""
  pred = jnp.argmax(logits, axis=-1)
  if target is None:
    return pred != y
  return pred == target


def loss_and_grad(
  logits_fn: LogitsFn, x: jax.Array, y: jax.Array, target, loss: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Objective ``[B]``, success ``[B]`` and input gradient ``[B, ...]``.

  One forward and one backward pass; the gradient of the summed objective is
  the per-example gradient because examples are independent.
  """

  def total(v):
    z = logits_fn(v)
    obj = objective(loss, z, y, target)
    return jnp.sum(obj), (obj, is_success(z, y, target))

  (_, (obj, success)), grad = jax.value_and_grad(total, has_aux=True)(x)
  return obj, success, grad


def ascent_direction(grad: jax.Array, norm: str) -> jax.Array:
  """Steepest-ascent unit step: ``sign(g)`` (l_inf) or ``g / ||g||_2`` (l_2)."""
  if norm == "linf":
    return jnp.sign(grad)
  n = flat_norm(grad, "l2")
  return grad / _bcast(jnp.maximum(n, 1e-12), grad)


def restart_keys(keys: jax.Array, restart) -> jax.Array:
  """Per-example keys ``[B, 2]`` of restart ``restart`` (an int, may be traced).

  Restart 0 uses ``keys`` themselves, restart ``r >= 1`` uses
  ``fold_in(keys[i], r)``, so a one-restart attack given ``restart_keys(k, r)``
  reproduces restart ``r`` of a multi-restart attack given ``k``.
  """
  folded = jax.vmap(jax.random.fold_in, (0, None))(keys, restart)
  return jnp.where(restart == 0, keys, folded)


class Best(NamedTuple):
  """Per-example strongest point seen so far (the attack's return value)."""

  x: jax.Array  # [B, H, W, C]
  loss: jax.Array  # [B]
  success: jax.Array  # [B] bool


def init_best(x: jax.Array) -> Best:
  """An empty tracker: any evaluated point replaces ``x``."""
  b = x.shape[0]
  return Best(x, jnp.full((b,), -jnp.inf, x.dtype), jnp.zeros((b,), bool))


def update_best(
  best: Best, x: jax.Array, loss: jax.Array, success: jax.Array
) -> Best:
  """Keeps per example the first successful point, else the highest loss.

  Applied to every iterate of every restart in order, this returns the first
  point that fools the model (misclassified, or classified as the target),
  and for an example never fooled its highest-loss point — the rule of
  strong evaluations (AutoAttack's APGD/PGD), not just the last iterate.
  """
  take = ~best.success & (success | (loss > best.loss))
  return Best(
    jnp.where(_bcast(take, x), x, best.x),
    jnp.where(take, loss, best.loss),
    best.success | success,
  )
