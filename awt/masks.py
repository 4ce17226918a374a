"""Mask pytrees: which weights of a network exist.

A mask has the tree structure of ``params``. Prunable leaves (the ``kernel``
of every ``nn.Dense`` and ``nn.Conv``) hold float {0, 1} arrays of the
kernel's shape; every other leaf (biases, BatchNorm scales) holds ones, so
``apply(params, mask)`` is a plain elementwise product over the whole tree.

Layers are ordered as the network creates them (the insertion order of the
params dicts), not alphabetically, so "first" and "last" layer mean what they
say even for names like ``Dense_10``.
"""

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

PyTree = Any
SCOPES = ("global", "layerwise")


@struct.dataclass
class Ticket:
  """A masked network at the point it starts training from.

  The one shape a ticket has everywhere: what a pruning method returns
  (``awt.pruning``), what ``awt.tickets.find`` returns and saves, and what
  ``awt.experiment.Member.initial`` trains.

  Attributes:
    mask: {0, 1} float mask with the structure of ``params``: prunable
      kernels hold the choice, other leaves ones.
    params: the starting weights, ``params * mask`` (pruned entries exactly
      zero).
    batch_stats: BatchNorm statistics to start from (``{}`` if none).
    scores: per-weight scores with the structure of ``params`` where the
      method has them, else None. Higher means more important: the mask
      keeps the highest scores (:func:`topk`), so ranking ``-scores`` gives
      the complement ("inverted") ticket.
    info: static metadata. From a pruning method at least ``method``,
      ``passes`` (forward+backward passes spent, an int) and ``wall_time_s``;
      ``awt.tickets.find`` adds ``ablation``, ``sparsity``,
      ``layer_densities``, ``find_cost`` and the NTK distances at init.
  """

  mask: PyTree
  params: PyTree
  batch_stats: PyTree
  scores: PyTree | None = None
  info: dict = struct.field(pytree_node=False, default_factory=dict)

  def arrays(self) -> dict:
    """``{"params", "batch_stats", "mask"}``: what a checkpoint holds."""
    return {
      "params": self.params,
      "batch_stats": self.batch_stats,
      "mask": self.mask,
    }


def _walk(tree: PyTree, prefix: tuple[str, ...] = ()) -> Iterator:
  """Yields ``(path, leaf)`` in insertion order of nested mappings."""
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      yield from _walk(v, prefix + (str(k),))
  else:
    yield prefix, tree


def layer_name(path: tuple[str, ...]) -> str:
  """``('Dense_0', 'kernel') -> 'Dense_0/kernel'``."""
  return "/".join(path)


def prunable_paths(
  params: PyTree, *, keep_first: bool = False, keep_last: bool = False
) -> tuple[tuple[str, ...], ...]:
  """Paths of the prunable kernels, in layer order.

  Args:
    params: a flax params tree.
    keep_first: leave the first Dense/Conv layer dense (not prunable), as
      many pruning papers do for the input layer.
    keep_last: leave the last layer (the classifier) dense.

  Returns:
    Tuple of paths such as ``('Dense_0', 'kernel')``.
  """
  paths = [p for p, _ in _walk(params) if p and p[-1] == "kernel"]
  if keep_first:
    paths = paths[1:]
  if keep_last:
    paths = paths[:-1]
  return tuple(paths)


def _map_with_path(fn, *trees: PyTree, prefix: tuple[str, ...] = ()) -> PyTree:
  """Maps ``fn(path, *leaves)`` over nested mappings, keeping their order."""
  first = trees[0]
  if isinstance(first, Mapping):
    return {
      k: _map_with_path(fn, *(t[k] for t in trees), prefix=prefix + (str(k),))
      for k in first
    }
  return fn(prefix, *trees)


def check_compatible(params: PyTree, mask: PyTree) -> None:
  """Raises ValueError naming the first leaf where mask and params differ."""
  p_leaves = dict(_walk(params))
  m_leaves = dict(_walk(mask))
  if p_leaves.keys() != m_leaves.keys():
    missing = sorted(map(layer_name, p_leaves.keys() - m_leaves.keys()))
    extra = sorted(map(layer_name, m_leaves.keys() - p_leaves.keys()))
    raise ValueError(
      "mask does not match the model's parameters: "
      f"missing {missing or 'none'}, unexpected {extra or 'none'}"
    )
  for path, p in p_leaves.items():
    if np.shape(p) != np.shape(m_leaves[path]):
      raise ValueError(
        f"mask shape {np.shape(m_leaves[path])} does not match parameter "
        f"{layer_name(path)} of shape {np.shape(p)}"
      )


def ones(params: PyTree) -> PyTree:
  """The dense mask: ones of each leaf's shape and dtype."""
  return jax.tree.map(jnp.ones_like, params)


def apply(params: PyTree, mask: PyTree) -> PyTree:
  """``params ⊙ mask`` (checks the structure first)."""
  check_compatible(params, mask)
  return jax.tree.map(lambda p, m: p * m.astype(p.dtype), params, mask)


def _get(tree: PyTree, path: tuple[str, ...]):
  for k in path:
    tree = tree[k]
  return tree


def layer_densities(mask: PyTree, paths=None) -> dict[str, float]:
  """Fraction of kept weights in each prunable layer: ``{name: density}``."""
  paths = prunable_paths(mask) if paths is None else paths
  return {
    layer_name(p): float(np.mean(np.asarray(_get(mask, p)) != 0)) for p in paths
  }


def counts(mask: PyTree, paths=None) -> tuple[int, int]:
  """``(kept, total)`` over the prunable layers."""
  paths = prunable_paths(mask) if paths is None else paths
  kept = sum(int(np.count_nonzero(np.asarray(_get(mask, p)))) for p in paths)
  total = sum(int(np.size(_get(mask, p))) for p in paths)
  return kept, total


def sparsity(mask: PyTree, paths=None) -> float:
  """Fraction of prunable weights that are zero (0 for a dense mask)."""
  kept, total = counts(mask, paths)
  return 1.0 - kept / total


def num_to_keep(size: int, density: float) -> int:
  """Weights kept out of ``size`` at ``density``, rounded to nearest."""
  return int(np.round(density * size))


def _keep_top(flat_scores: jax.Array, k: int) -> jax.Array:
  """{0,1} vector keeping exactly the ``k`` highest scores (ties: first)."""
  order = jnp.argsort(-flat_scores, stable=True)
  keep = jnp.zeros(flat_scores.shape, jnp.float32)
  return keep.at[order[:k]].set(1.0)


def per_layer_density(
  density: float | tuple[float, ...], scope: str, num_layers: int
) -> tuple[float, ...]:
  """``topk``'s density, checked, as one fraction per layer.

  A float is repeated; a tuple (one per layer, ``scope="layerwise"`` only)
  is a given allocation (``awt.pruning.allocation``).

  Raises:
    ValueError: a tuple with a global scope or of the wrong length, or a
      fraction outside its range.
  """
  if isinstance(density, tuple):
    if scope != "layerwise" or len(density) != num_layers:
      raise ValueError(
        f"per-layer densities need scope='layerwise' and one per prunable "
        f"layer ({num_layers}); got {len(density)} with scope={scope!r}"
      )
    if not all(0.0 <= d <= 1.0 for d in density):
      raise ValueError(f"per-layer densities must be in [0, 1], got {density}")
    return density
  if not 0.0 < density <= 1.0:
    raise ValueError(f"density must be in (0, 1], got {density}")
  return (density,) * num_layers


def topk(
  scores: PyTree,
  density: float | tuple[float, ...],
  *,
  scope: str = "global",
  paths=None,
) -> PyTree:
  """Mask keeping the highest-scoring fraction ``density`` of prunable weights.

  The count is exact: ``round(density * n)`` weights are kept over all
  prunable layers together (``scope="global"``) or in each layer
  (``scope="layerwise"``); ties are broken by position, never by keeping
  extra weights. Non-prunable leaves get ones.

  Args:
    scores: pytree with the structure of ``params`` (only the prunable
      leaves are read); higher means more important.
    density: fraction of prunable weights to keep, in (0, 1]; or, with
      ``scope="layerwise"``, one fraction per path in [0, 1] (a given
      allocation, ``awt.pruning.allocation``).
    scope: ``"global"`` (one ranking over all layers) or ``"layerwise"``.
    paths: prunable paths (default: every ``kernel``).

  Returns:
    A mask pytree of float32 {0, 1} arrays.

  Examples:
    >>> import jax.numpy as jnp
    >>> s = {"Dense_0": {"kernel": jnp.array([[3.0, 1.0], [2.0, 0.0]]),
    ...                  "bias": jnp.zeros(2)}}
    >>> topk(s, 0.5)["Dense_0"]["kernel"].tolist()
    [[1.0, 0.0], [1.0, 0.0]]
  """
  if scope not in SCOPES:
    raise ValueError(
      f"unknown pruning scope {scope!r}; known: global, layerwise"
    )
  paths = prunable_paths(scores) if paths is None else tuple(paths)
  per_layer = per_layer_density(density, scope, len(paths))
  layers = {p: jnp.asarray(_get(scores, p), jnp.float32) for p in paths}
  kept = {}
  if scope == "global":
    flat = jnp.concatenate([s.ravel() for s in layers.values()])
    keep = _keep_top(flat, num_to_keep(flat.size, density))
    offset = 0
    for p, s in layers.items():
      kept[p] = keep[offset : offset + s.size].reshape(s.shape)
      offset += s.size
  else:
    for (p, s), d in zip(layers.items(), per_layer, strict=True):
      kept[p] = _keep_top(s.ravel(), num_to_keep(s.size, d)).reshape(s.shape)

  def leaf(path, s):
    if path in kept:
      return kept[path].astype(jnp.asarray(s).dtype)
    return jnp.ones_like(s)

  return _map_with_path(leaf, scores)


def random(
  key: jax.Array,
  params: PyTree,
  density: float,
  *,
  scope="layerwise",
  paths=None,
) -> PyTree:
  """A uniformly random mask at exactly ``density`` (global or per layer)."""
  paths = prunable_paths(params) if paths is None else tuple(paths)
  keys = jax.random.split(key, max(len(paths), 1))
  by_path = dict(zip(paths, keys, strict=False))

  def score(path, p):
    if path in by_path:
      return jax.random.uniform(by_path[path], np.shape(p))
    return jnp.zeros(np.shape(p))

  return topk(_map_with_path(score, params), density, scope=scope, paths=paths)
