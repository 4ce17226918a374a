"""Square Attack (Andriushchenko et al. 2020): score-based black-box search."""

import jax
import jax.numpy as jnp
import numpy as np

from awt.attacks import _common

# Iterations (in units of 1/10,000 of the query budget) after which the
# fraction p of changed pixels halves; the schedule of the reference code.
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)

# Sign vectors drawn per l_inf square, of which the first that changes the
# image is used.
_MAX_DRAWS = 16


def _p_selection(p_init: float, it: int, n_iters: int) -> float:
  """Fraction of pixels changed at iteration ``it`` of ``n_iters``.

  Piecewise constant: ``p_init`` halves after each of ``_P_HALVINGS``, the
  iteration counts of a 10,000-query budget rescaled to ``n_iters``.
  """
  it = int(it / n_iters * 10000)
  return p_init / 2 ** sum(it > t for t in _P_HALVINGS)


def _side_linf(p: float, h: int, w: int) -> int:
  """Square side for l_inf: ``round(sqrt(p h w))`` in ``[1, min(h, w) - 1]``."""
  s = int(round(float(np.sqrt(p * h * w))))
  return min(max(s, 1), min(h, w) - 1)


def _side_l2(p: float, h: int, w: int) -> int:
  """Square side for l_2: ``round(sqrt(p h w))``, at least 3, made odd.

  Capped at ``min(h, w) - 1`` so a square fits (binds only on images much
  smaller than the paper's).
  """
  s = max(int(round(float(np.sqrt(p * h * w)))), 3)
  s += 1 - s % 2
  return min(s, min(h, w) - 1)


def _pseudo_gaussian_rect(rows: int, cols: int) -> np.ndarray:
  """Unit-norm sum of nested rectangles weighted ``1 / (k + 1)^2``.

  The centred "pseudo-Gaussian" bump of the reference code (Sec. 3.2).
  """
  delta = np.zeros([rows, cols])
  rc, cc = rows // 2 + 1, cols // 2 + 1
  r0, c0 = rc - 1, cc - 1
  for k in range(max(rc, cc)):
    delta[
      max(r0, 0) : min(r0 + 2 * k + 1, rows),
      max(c0, 0) : min(c0 + 2 * k + 1, cols),
    ] += 1.0 / (k + 1) ** 2
    r0, c0 = r0 - 1, c0 - 1
  return delta / np.sqrt(np.sum(delta**2))


def _meta_pseudo_gaussian(s: int) -> np.ndarray:
  """``[s, s]`` unit-norm update: a bump on top, a negated bump below."""
  delta = np.zeros([s, s])
  delta[: s // 2] = _pseudo_gaussian_rect(s // 2, s)
  delta[s // 2 :] = -_pseudo_gaussian_rect(s - s // 2, s)
  return delta / np.sqrt(np.sum(delta**2))


def _window(top, left, s, h: int, w: int) -> jax.Array:
  """``[h, w]`` bool: inside the square ``[top, top+s) x [left, left+s)``."""
  rows = jnp.arange(h) - top
  cols = jnp.arange(w) - left
  in_rows = (rows >= 0) & (rows < s)
  in_cols = (cols >= 0) & (cols < s)
  return in_rows[:, None] & in_cols[None, :]


def _place(table, top, left, s, transpose, h: int, w: int) -> jax.Array:
  """Writes the ``s x s`` pattern ``table[:s, :s]`` at ``(top, left)``.

  Args:
    table: ``[S, S]`` with the pattern in its top-left ``s x s`` corner.
    top, left, s: int scalars (may be traced), ``top + s <= h``.
    transpose: bool scalar; place the transposed pattern.
    h, w: image size.

  Returns:
    ``[h, w]`` float32, zero outside the square.
  """
  size = table.shape[0]
  rows = jnp.clip(jnp.arange(h) - top, 0, size - 1)
  cols = jnp.clip(jnp.arange(w) - left, 0, size - 1)
  table = jnp.where(transpose, table.T, table)
  return jnp.where(
    _window(top, left, s, h, w), table[rows[:, None], cols[None, :]], 0.0
  )


def _init_linf(key, x_e, eps):
  """Vertical stripes: one ``±eps`` per column and channel (Sec. 3.1)."""
  _, w, c = x_e.shape
  signs = _sign(jax.random.uniform(key, (1, w, c)), x_e.dtype)
  return jnp.broadcast_to(eps * signs, x_e.shape)


def _init_l2_tiles(h: int, w: int):
  """Static tiling of the l_2 initialization (Alg. 3's init, reference code).

  A grid of ``s x s`` tiles, ``s = min(h, w) // 5``, starting at offset
  ``(dim - 5 s) // 2``; tiles that would cross the border are dropped.

  Returns:
    ``(tile_id [h, w] int32 (-1 outside every tile), pattern [h, w],
    pattern_t [h, w], n_tiles)``: each tile filled with the meta
    pseudo-Gaussian bump, resp. its transpose.
  """
  s = max(min(h, w) // 5, 1)
  bump = _meta_pseudo_gaussian(s)
  tile_id = -np.ones([h, w], np.int32)
  pattern = np.zeros([h, w], np.float32)
  pattern_t = np.zeros([h, w], np.float32)
  n = 0
  for top in range(max((h - 5 * s) // 2, 0), h - s + 1, s):
    for left in range(max((w - 5 * s) // 2, 0), w - s + 1, s):
      tile_id[top : top + s, left : left + s] = n
      pattern[top : top + s, left : left + s] = bump
      pattern_t[top : top + s, left : left + s] = bump.T
      n += 1
  return tile_id, pattern, pattern_t, n


def _init_l2(key, x_e, eps, tiles):
  """Random-sign, randomly transposed bumps on a grid, l_2 norm ``eps``."""
  tile_id, pattern, pattern_t, n = tiles
  c = x_e.shape[-1]
  u = jax.random.uniform(key, (n, 1 + c))
  transpose = u[:, 0] < 0.5
  signs = _sign(u[:, 1:], x_e.dtype)
  inside = jnp.asarray(tile_id >= 0)
  ids = jnp.asarray(np.maximum(tile_id, 0))
  bump = jnp.where(transpose[ids], pattern_t, pattern)
  delta = jnp.where(inside[..., None], bump[..., None] * signs[ids], 0.0)
  return delta * eps / jnp.sqrt(jnp.sum(delta * delta))


def _corner(u, s, size: int):
  """Uniform integer in ``{0, ..., size - s}`` from ``u`` uniform in [0, 1)."""
  return jnp.minimum(jnp.floor(u * (size - s + 1)).astype(jnp.int32), size - s)


def _sign(u, dtype):
  """``±1`` with equal probability from ``u`` uniform in [0, 1)."""
  return jnp.where(u < 0.5, 1.0, -1.0).astype(dtype)


def _propose_linf(key, x_e, best_e, s, eps):
  """One l_inf candidate: a square of side ``s`` set to ``±eps`` per channel.

  Setting the square to ``x ± eps`` equals Alg. 2's ``±2 eps`` update of the
  current point followed by the projection. The signs are redrawn while the
  square would leave ``best_e`` unchanged (the reference code's ``while``
  loop): of
  ``_MAX_DRAWS`` sign vectors drawn at once, the first that changes the
  image is used (all ``_MAX_DRAWS`` fail with probability at most
  ``2^-_MAX_DRAWS``; the query is then spent on an unchanged image).
  """
  h, w, c = x_e.shape
  u = jax.random.uniform(key, (2 + _MAX_DRAWS * c,))
  inside = _window(_corner(u[0], s, h), _corner(u[1], s, w), s, h, w)
  inside = inside[None, :, :, None]
  signs = _sign(u[2:], x_e.dtype).reshape(_MAX_DRAWS, 1, 1, c)
  cands = jnp.where(
    inside, jnp.clip(x_e[None] + eps * signs, 0.0, 1.0), best_e[None]
  )
  changed = jnp.any(jnp.abs(cands - best_e[None]) >= 1e-7, axis=(1, 2, 3))
  return cands[jnp.argmax(changed)] - x_e


def _propose_l2(key, x_e, best_e, s, table, eps):
  """One l_2 candidate (Alg. 3): move mass from window 2 into window 1.

  Window 1 gets the old perturbation (normalized per channel) plus a
  random-sign meta pseudo-Gaussian bump, rescaled per channel to the norm
  the two windows held plus the unused budget; window 2 is zeroed; the
  whole perturbation is rescaled to norm ``eps``.
  """
  h, w, c = x_e.shape
  u = jax.random.uniform(key, (5 + c,))
  top1, top2 = _corner(u[0], s, h), _corner(u[1], s, h)
  left1, left2 = _corner(u[2], s, w), _corner(u[3], s, w)
  win1 = _window(top1, left1, s, h, w)[..., None]
  win2 = _window(top2, left2, s, h, w)[..., None]
  delta = best_e - x_e

  def channel_norm(v):
    return jnp.sqrt(jnp.sum(v * v, axis=(0, 1), keepdims=True))

  norm_win1 = channel_norm(jnp.where(win1, delta, 0.0))
  norm_image = jnp.sqrt(jnp.sum(delta * delta))
  norm_wins = channel_norm(jnp.where(win1 | win2, delta, 0.0))
  bump = _place(table, top1, left1, s, u[4] < 0.5, h, w)
  signs = _sign(u[5:], x_e.dtype).reshape(1, 1, c)
  new = bump[..., None] * signs + jnp.where(
    win1, delta / (1e-10 + norm_win1), 0.0
  )
  budget = jnp.sqrt(jnp.maximum(eps**2 - norm_image**2, 0.0) / c + norm_wins**2)
  new = new / jnp.maximum(channel_norm(new), 1e-12) * budget
  delta = jnp.where(win1, new, jnp.where(win2, 0.0, delta))
  return delta * eps / jnp.maximum(jnp.sqrt(jnp.sum(delta * delta)), 1e-12)


def square(
  logits_fn: _common.LogitsFn,
  x: jax.Array,
  y: jax.Array,
  key: jax.Array,
  *,
  eps: float,
  norm: str = "linf",
  queries: int = 1000,
  p_init: float | None = None,
  loss: str = "margin",
  targeted: bool = False,
  target: jax.Array | None = None,
) -> jax.Array:
  r"""Square Attack: random search over localized square updates.

  A score-based black-box attack: it only evaluates ``logits_fn`` (no
  gradients), so gradient masking does not stop it. Starting from vertical
  ``±eps`` stripes (l_inf) or a grid of ``eps``-norm bumps (l_2), each
  iteration proposes, per example, a random square of side ``s`` (the same
  for the whole batch at a given iteration) and keeps it only if it improves
  the loss:

  .. math::
    x^{t+1} = \begin{cases} \tilde x & L(\tilde x) > L(x^t) \\
      x^t & \text{otherwise} \end{cases}, \qquad
    s = \mathrm{round}\big(\sqrt{p_t\, H W}\big)

  with ``p_t`` the fraction of pixels changed, halved at iterations 10, 50,
  200, 500, 1000, 2000, 4000, 6000 and 8000 of a 10,000-query budget,
  rescaled to ``queries`` (the reference code's schedule). l_inf squares are
  ``±eps`` per channel (Alg. 1); l_2 squares move the perturbation mass of a
  second random window into the first plus a centred pseudo-Gaussian bump,
  keeping the total norm at ``eps`` (Alg. 3). An example stops once it is
  fooled and keeps its fooling point (``queries`` bounds the evaluations of
  Alg. 1: the start plus ``queries - 1`` iterations; the loop exits early
  when every example is fooled).

  Differences to the reference code, for per-example randomness (a batch
  split over devices computes the same as one device): squares, l_2 window
  transposes and l_2 init tile transposes are drawn per example. Square
  corners are uniform over all positions that fit, ``{0, ..., H - s}`` as in
  Alg. 2 (the reference code omits the last one). The clean point is
  evaluated too (as the reference code does to select the correctly
  classified points): examples already fooled at ``x`` return ``x``, and an
  example the search did not fool returns ``x`` if its best loss is not
  above the clean loss (the start is accepted unconditionally, as in the
  paper), so the returned loss is never below the clean loss.

  Runs in one compiled ``lax.while_loop``; jittable with ``eps``, ``norm``,
  ``queries``, ``p_init``, ``loss`` and ``targeted`` as Python values, e.g.
  ``jax.jit(functools.partial(square, f, eps=0.3, queries=1000))``.

  Args:
    logits_fn: pure ``x [B, H, W, C] -> logits [B, K]``; only evaluated.
    x: ``[B, H, W, C]`` float32 in [0, 1].
    y: ``[B]`` int32 true labels (also for targeted attacks).
    key: one PRNG key, or per-example keys ``[B, 2]``.
    eps: perturbation budget in pixel units.
    norm: ``"linf"`` or ``"l2"``.
    queries: evaluations of ``logits_fn`` per example in Alg. 1 (>= 1).
    p_init: initial fraction of pixels changed; None picks the paper's 0.8
      (l_inf, MNIST/CIFAR) or 0.1 (l_2).
    loss: objective maximized: ``"margin"`` (the paper's untargeted choice),
      ``"ce"`` (the paper's targeted choice) or ``"dlr"``.
    targeted: move towards ``target`` instead of away from ``y``.
    target: ``[B]`` int32 target classes; required iff ``targeted``.

  Returns:
    ``x_adv: [B, H, W, C]`` float32 in [0, 1], ``||x_adv - x|| <= eps``.

  Raises:
    ValueError: unknown norm or loss, ``target`` inconsistent with
      ``targeted``, or ``queries < 1``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> f = lambda v: jnp.stack(  # class 0 iff the pixels sum above 2
    ...     [jnp.sum(v, axis=(1, 2, 3)), jnp.full(v.shape[:1], 2.0)], axis=1)
    >>> x = jnp.full((1, 2, 2, 1), 0.55)
    >>> x_adv = square(f, x, jnp.array([0]), jax.random.PRNGKey(0), eps=0.1,
    ...                queries=50)
    >>> int(jnp.argmax(f(x_adv), axis=1)[0])
    1
    >>> bool(jnp.allclose(x_adv, 0.45))  # the only fooling vertex of the ball
    True

  References:
    Andriushchenko, Croce, Flammarion & Hein, *Square Attack: a
    query-efficient black-box adversarial attack via random search*, ECCV
    2020, Alg. 1 (random search), Alg. 2 (l_inf sampling), Alg. 3 (l_2
    sampling), Sec. 3; reference code github.com/max-andr/square-attack.
  """
  _common.check_norm(norm)
  _common.check_loss(loss)
  _common.check_target(targeted, target)
  if queries < 1:
    raise ValueError(f"queries must be >= 1, got {queries}")
  if p_init is None:
    p_init = 0.8 if norm == "linf" else 0.1
  b, h, w, _ = x.shape
  keys = _common.per_example_keys(key, b)
  init_keys, loop_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
  n_iters = queries - 1
  side = _side_linf if norm == "linf" else _side_l2
  sides = [side(_p_selection(p_init, i, queries), h, w) for i in range(n_iters)]

  def evaluate(v):
    z = logits_fn(v)
    return _common.objective(loss, z, y, target), _common.is_success(
      z, y, target
    )

  clean_obj, clean_fooled = evaluate(x)
  if norm == "linf":
    delta = jax.vmap(lambda k, xe: _init_linf(k, xe, eps))(init_keys, x)
  else:
    tiles = _init_l2_tiles(h, w)
    delta = jax.vmap(lambda k, xe: _init_l2(k, xe, eps, tiles))(init_keys, x)
    uniq = sorted(set(sides)) or [1]
    size = max(uniq)
    table = np.zeros([len(uniq), size, size], np.float32)
    for j, s in enumerate(uniq):
      table[j, :s, :s] = _meta_pseudo_gaussian(s)
    table_idx = jnp.asarray([uniq.index(s) for s in sides], jnp.int32)
    table = jnp.asarray(table)
  best = _common.project(x + delta, x, eps, norm)
  best_obj, fooled = evaluate(best)
  fooled = fooled | clean_fooled
  sides = jnp.asarray(sides, jnp.int32)

  def propose(i, best):
    it_keys = jax.vmap(jax.random.fold_in, (0, None))(loop_keys, i)
    if norm == "linf":
      fn = lambda k, xe, be: _propose_linf(k, xe, be, sides[i], eps)
    else:
      tab = table[table_idx[i]]
      fn = lambda k, xe, be: _propose_l2(k, xe, be, sides[i], tab, eps)
    return jax.vmap(fn)(it_keys, x, best)

  def body(carry):
    i, best, best_obj, fooled = carry
    cand = _common.project(x + propose(i, best), x, eps, norm)
    obj, success = evaluate(cand)
    take = ~fooled & (obj > best_obj)
    best = jnp.where(take[:, None, None, None], cand, best)
    return (
      i + 1,
      best,
      jnp.where(take, obj, best_obj),
      fooled | (take & success),
    )

  if n_iters > 0:
    _, best, best_obj, fooled = jax.lax.while_loop(
      lambda carry: (carry[0] < n_iters) & ~jnp.all(carry[3]),
      body,
      (jnp.int32(0), best, best_obj, fooled),
    )
  keep = ~clean_fooled & (fooled | (best_obj > clean_obj))
  return jnp.where(keep[:, None, None, None], best, x)
