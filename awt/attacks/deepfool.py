"""DeepFool (Moosavi-Dezfooli et al. 2016): minimal steps to the boundary."""

import jax
import jax.numpy as jnp

from awt.attacks import _common

# Added to each step's length (reference code: "for numerical stability"), so
# iterates cross the boundary even where the box clips part of every step.
_STABILITY = 1e-4


def deepfool(
  logits_fn: _common.LogitsFn,
  x: jax.Array,
  y: jax.Array,
  key: jax.Array | None = None,
  *,
  norm: str = "l2",
  overshoot: float = 0.02,
  max_iter: int = 50,
  num_classes: int | None = None,
) -> jax.Array:
  r"""DeepFool: step to the nearest boundary of the linearized classifier.

  At the iterate ``x_i``, with ``w'_k = \nabla f_k(x_i) - \nabla f_y(x_i)``
  and ``f'_k = f_k(x_i) - f_y(x_i)`` for the candidate classes ``k != y``,
  the nearest linearized boundary ``l`` and the step are

  .. math::
    \hat l = \arg\min_{k \ne y} d_k, \quad
    d_k = \frac{|f'_k|}{\|w'_k\|_q}, \qquad
    r_i = (d_{\hat l} + 10^{-4})\, u(w'_{\hat l})

  l_2 (Alg. 2, Eq. 8): ``q = 2``, ``u(w) = w / ||w||_2``;
  l_inf (Sec. 3.3, Eqs. 10-11 with p = inf): ``q = 1``, ``u(w) = sign(w)``.
  The ``1e-4`` is the reference code's stability term: without it an
  iterate whose steps are partly clipped by the box only approaches the
  boundary geometrically and can stall on it. The steps accumulate,
  ``r = sum_i r_i``, and the next iterate is

  .. math::
    x_{i+1} = \mathrm{clip}_{[0,1]}\big(x + (1 + \eta)\, r\big)

  with overshoot ``eta`` (reference code; the clip makes every iterate, and
  so the result, a valid image). Each example stops as soon as its label is
  no longer ``y`` (or after ``max_iter`` steps); the returned point is its
  last iterate. All ``K`` logit gradients come from one forward and ``K``
  vector-Jacobian products per iteration; the iterations run in one
  ``lax.while_loop``.

  ``y`` is the true label, which plays the role of the original prediction:
  examples already misclassified return ``x`` unchanged. A minimal-
  perturbation attack: there is no ``eps``; evaluation reports the norms of
  ``x_adv - x``.

  Args:
    logits_fn: pure ``x [B, H, W, C] -> logits [B, K]``, differentiable;
      examples must be independent.
    x: ``[B, H, W, C]`` float32 in [0, 1].
    y: ``[B]`` int32 true labels.
    key: unused (DeepFool is deterministic); accepted for the common attack
      signature.
    norm: ``"l2"`` or ``"linf"``.
    overshoot: ``eta``, relative overshoot of the accumulated step.
    max_iter: maximum number of linearization steps.
    num_classes: consider only the ``num_classes`` classes of largest clean
      logit (the reference code's speed-up, default 10 there); None: all.

  Returns:
    ``x_adv: [B, H, W, C]`` float32 in [0, 1].

  Raises:
    ValueError: unknown norm.

  Examples:
    >>> import jax.numpy as jnp
    >>> w = jnp.array([[1.0], [-1.0], [2.0], [0.0]])
    >>> f = lambda v: jnp.concatenate(  # g(x) = w.x - 1.5 = -0.5 at x
    ...     [jnp.zeros((v.shape[0], 1)), v.reshape(v.shape[0], -1) @ w - 1.5],
    ...     axis=1)
    >>> x = jnp.full((1, 2, 2, 1), 0.5)
    >>> r = (deepfool(f, x, jnp.array([0])) - x).ravel() / 1.02
    >>> [round(float(v), 4) for v in r]  # (|g|/||w|| + 1e-4) w/||w||
    [0.0834, -0.0834, 0.1667, 0.0]

  References:
    Moosavi-Dezfooli, Fawzi & Frossard, *DeepFool: a simple and accurate
    method to fool deep neural networks*, CVPR 2016, Alg. 2 and Eq. (8)
    (multiclass l_2), Sec. 3.3 Eqs. (10)-(11) (l_p, here p = inf);
    reference code github.com/LTS4/DeepFool.
  """
  del key
  _common.check_norm(norm)
  b = x.shape[0]
  z0 = logits_fn(x)
  k = z0.shape[-1]
  is_y = jax.nn.one_hot(y, k, dtype=bool)
  candidate = ~is_y
  if num_classes is not None and num_classes < k:
    rank = jnp.argsort(jnp.argsort(-z0, axis=1), axis=1)
    candidate = candidate & (rank < num_classes)

  def step(x_i):
    """The DeepFool step ``r_i`` ``[B, D]`` at ``x_i``."""
    w, f = _common.linearized_boundaries(logits_fn, x_i, y)  # [B, K, D]
    if norm == "l2":
      w_norm = jnp.sqrt(jnp.sum(w * w, axis=-1))
    else:
      w_norm = jnp.sum(jnp.abs(w), axis=-1)
    w_norm = jnp.maximum(w_norm, 1e-12)
    dist = jnp.where(candidate, jnp.abs(f) / w_norm, jnp.inf)
    nearest = jnp.argmin(dist, axis=1)[:, None]
    w_l = jnp.take_along_axis(w, nearest[:, :, None], axis=1)[:, 0]
    dist_l = jnp.take_along_axis(dist, nearest, axis=1) + _STABILITY
    if norm == "l2":
      w_norm_l = jnp.take_along_axis(w_norm, nearest, axis=1)
      return dist_l * w_l / w_norm_l
    return dist_l * jnp.sign(w_l)

  def body(carry):
    i, r, x_i, active = carry
    r = r + jnp.where(active[:, None], step(x_i), 0.0)
    x_i = jnp.clip(x + (1.0 + overshoot) * r.reshape(x.shape), 0.0, 1.0)
    active = active & (jnp.argmax(logits_fn(x_i), axis=-1) == y)
    return i + 1, r, x_i, active

  active = jnp.argmax(z0, axis=-1) == y
  _, _, x_adv, _ = jax.lax.while_loop(
    lambda carry: (carry[0] < max_iter) & jnp.any(carry[3]),
    body,
    (jnp.int32(0), jnp.zeros((b, x[0].size), x.dtype), x, active),
  )
  return x_adv
