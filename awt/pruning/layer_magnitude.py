r"""``layer_magnitude``: prune a (trained) network by magnitude, per layer.

Han et al. (2015) prune a trained network by keeping the largest ``|w|`` of
every layer; Guo, Zhang & Zhang (NeurIPS 2018, Sec. 4) prune trained MNIST
networks this way before retraining. Two details decide whether a very
sparse net still classifies:

- **Per-layer rates** (:func:`layer_plan`): every layer keeps ``1 - s`` of
  its weights, except that the output layer of a multi-layer net keeps at
  least ``pruning.output_density``: at 99% a 10-class head at 1% would keep
  10 of its 1,000 weights.
- **Connected classes** (:func:`connect_classes`, ``pruning.connect_classes``):
  a mask in which some class logit no longer depends on the input (a dead
  class, :func:`class_reachability`) keeps, for every class, the path of
  largest weights from the input to it, displacing each layer's smallest
  kept weights so the layer's count does not change.

The method reads ``ctx.params`` as the network to prune: through
``awt.tickets.find(..., start=trained)`` that is a trained network (the
Guo et al. sweep, ``awt.studies.sparsity_robustness``); at initialization
it is layerwise magnitude pruning at init.

References:
  Han, Pool, Tran & Dally, *Learning both Weights and Connections for
  Efficient Neural Networks*, NeurIPS 2015, Sec. 3.
  Guo, Zhang & Zhang, *Sparse DNNs with Improved Adversarial Robustness*,
  NeurIPS 2018, Sec. 4.
"""

import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from awt import masks
from awt.pruning import allocation
from awt.pruning._options import Flag, Number, Option, option
from awt.pruning._ticket import PruningContext, Ticket

PyTree = Any
Path = tuple[str, ...]

OPTIONS = (
  Option(
    "output_density",
    0.0,
    Number(lo=0.0, hi=1.0),
    "layer_magnitude: least density of the output layer of a multi-layer net",
  ),
  Option(
    "connect_classes",
    True,
    Flag(),
    "layer_magnitude: keep a path to every class when one would be dead",
  ),
)


def magnitude_mask(
  params: PyTree, sparsity: float, *, scope: str, paths=None
) -> PyTree:
  """Mask keeping the largest-magnitude weights (Han et al. 2015).

  Args:
    params: trained parameters.
    sparsity: fraction of the prunable weights to remove, in [0, 1).
    scope: ``"global"`` (one ranking) or ``"layerwise"``.
    paths: prunable paths (default: every kernel).

  Returns:
    ``masks.topk(|params|, 1 - sparsity)``: exactly ``round((1 - s) n)``
    weights kept over all layers or in each.

  Examples:
    >>> w = {"fc": {"kernel": jnp.array([[0.1, -3.0], [2.0, 0.5]])}}
    >>> magnitude_mask(w, 0.5, scope="global")["fc"]["kernel"].tolist()
    [[0.0, 1.0], [1.0, 0.0]]

  References:
    Han, Pool, Tran & Dally, NeurIPS 2015, Sec. 3.
  """
  scores = jax.tree.map(jnp.abs, params)
  return masks.topk(scores, 1.0 - sparsity, scope=scope, paths=paths)


def layer_plan(
  paths: Sequence[Path], sparsity: float, output_density: float
) -> dict[Path, float]:
  """The density of every prunable layer at a nominal sparsity.

  Args:
    paths: the prunable kernels in layer order (the last is the output
      layer).
    sparsity: ``s`` in [0, 1).
    output_density: the least density of the output layer of a net with
      more than one prunable layer.

  Returns:
    ``{path: density}``: ``1 - s`` for every layer, except the output layer
    of a multi-layer net, ``max(1 - s, output_density)``.

  Examples:
    >>> layer_plan([("fc1",), ("head",)], 0.99, 0.1)
    {('fc1',): 0.01, ('head',): 0.1}
    >>> layer_plan([("head",)], 0.99, 0.1)
    {('head',): 0.01}
  """
  density = round(1.0 - float(sparsity), 12)
  plan = dict.fromkeys(map(tuple, paths), density)
  if len(plan) > 1:
    plan[tuple(paths[-1])] = max(density, float(output_density))
  return plan


def _unit_view(kernel, units_in: int | None) -> jax.Array:
  """A kernel as ``[T, U_in, U_out]``: T taps or positions per unit pair.

  Dense ``[F, O]`` after a layer of ``units_in`` output units: ``F =
  units_in`` gives ``[1, F, O]``; ``F = P * units_in`` (a flattened NHWC
  feature map, channel fastest) gives ``[P, units_in, O]``. Conv ``[kh, kw,
  I, O]`` gives ``[kh * kw, I, O]``. The first layer's inputs are its own
  units (``units_in=None``).
  """
  kernel = jnp.asarray(kernel)
  if kernel.ndim == 4:
    return kernel.reshape(-1, kernel.shape[2], kernel.shape[3])
  if kernel.ndim != 2:
    raise ValueError(
      f"kernel of shape {kernel.shape} is neither Dense nor Conv"
    )
  fan_in = kernel.shape[0]
  if units_in is None or fan_in == units_in:
    return kernel[None]
  if fan_in % units_in:
    raise ValueError(
      f"kernel of shape {kernel.shape} does not follow a layer of "
      f"{units_in} units"
    )
  return kernel.reshape(fan_in // units_in, units_in, kernel.shape[1])


def _views(kernels: Sequence) -> list[jax.Array]:
  """``_unit_view`` of each kernel of a chain, input layer first."""
  out, units = [], None
  for k in kernels:
    v = _unit_view(k, units)
    out.append(v)
    units = v.shape[2]
  return out


@jax.jit
def _reached(kernels: tuple) -> jax.Array:
  """``[K]`` bool: output units joined to the input by nonzero kernels."""
  views = _views(kernels)
  reached = jnp.ones(views[0].shape[1], bool)
  for v in views:
    links = jnp.any(v != 0, axis=0).astype(jnp.float32)  # [U_in, U_out]
    reached = (reached.astype(jnp.float32) @ links) > 0
  return reached


def class_reachability(mask: PyTree, paths: Sequence[Path]) -> np.ndarray:
  """Which class logits depend on the input through kept weights.

  Unit-level connectivity along the layers: a unit is reached when some
  kept weight joins it to a reached unit of the layer before (for a conv
  layer or a Dense layer on a flattened feature map, a channel is one unit;
  the boolean product ignores where in the image a kept tap sits). Biases
  do not count: a class reached by none is a dead class.

  Args:
    mask: a mask pytree.
    paths: the kernels in layer order, the input layer first and the
      output layer last (``masks.prunable_paths(mask)``).

  Returns:
    ``[K]`` bool numpy, ``K`` the output layer's units.

  Examples:
    >>> m = {"a": {"kernel": jnp.array([[1.0, 0.0], [0.0, 0.0]])},
    ...      "b": {"kernel": jnp.array([[0.0, 1.0], [1.0, 0.0]])}}
    >>> class_reachability(m, [("a", "kernel"), ("b", "kernel")]).tolist()
    [False, True]
  """
  return np.asarray(_reached(tuple(masks._get(mask, p) for p in paths)))


def empty_layers(mask: PyTree, paths: Sequence[Path]) -> list[str]:
  """Names of the layers in ``paths`` that keep no weight."""
  return [
    masks.layer_name(p)
    for p in paths
    if not np.any(np.asarray(masks._get(mask, p)) != 0)
  ]


def _scores(weights: tuple, kept: tuple) -> list[jax.Array]:
  """``|w| + B * kept`` per layer, ``B = 1 + max |w|``: kept ranks first."""
  layers = [jnp.abs(w) for w in weights]
  bonus = 1.0 + jnp.max(jnp.stack([jnp.max(w) for w in layers]))
  return [w + bonus * (m != 0) for w, m in zip(layers, kept, strict=True)]


@jax.jit
def _class_paths(weights: tuple, kept: tuple) -> tuple:
  scores = _views(_scores(weights, kept))
  k = scores[-1].shape[2]
  units = jnp.arange(k)
  forced = []
  for w, v in reversed(list(zip(weights, scores, strict=True))):
    taps, fan_in, _ = v.shape
    best = jnp.argmax(v[:, :, units].reshape(taps * fan_in, k), axis=0)
    tap, unit = jnp.divmod(best, fan_in)
    on = jnp.zeros(v.shape, bool).at[tap, unit, units].set(True)
    forced.append(on.reshape(w.shape))
    units = unit
  return tuple(reversed(forced))


def class_paths(params: PyTree, mask: PyTree, paths: Sequence[Path]) -> dict:
  """Per class, the path of largest weights from the input to its logit.

  Walking back from each class ``j`` of the output layer: the incoming
  weight of the current unit with the largest score ``|w| + B * m`` (``B =
  1 + max |w|``: kept weights first, then by magnitude) picks the unit of
  the layer before, down to an input unit (conv and flattened layers by the
  tap or position of that score).

  Args:
    params: the weights.
    mask: the current mask.
    paths: the kernels in layer order, output layer last.

  Returns:
    ``{path: [same shape as the kernel] bool}``: the weights on the ``K``
    paths (at most ``K`` per layer).
  """
  paths = [tuple(p) for p in paths]
  forced = _class_paths(
    tuple(jnp.asarray(masks._get(params, p)) for p in paths),
    tuple(jnp.asarray(masks._get(mask, p)) for p in paths),
  )
  return dict(zip(paths, forced, strict=True))


@functools.partial(jax.jit, static_argnames="keep")
def keep_top(score: jax.Array, keep: int) -> jax.Array:
  """``masks.topk`` of one layer: exactly ``keep`` highest, ties by position."""
  flat = {"k": score}
  density = keep / score.size
  return masks.topk(flat, density, scope="layerwise", paths=[("k",)])["k"]


def connect_classes(
  params: PyTree, mask: PyTree, paths: Sequence[Path]
) -> PyTree:
  """The mask, changed so that every class logit depends on the input.

  If ``class_reachability`` finds a dead class, every class's
  ``class_paths`` path is kept; in each layer the path weights displace the
  smallest kept weights, so the layer keeps as many weights as before (or
  as many as its path weights, if it kept fewer). The other weights stay
  ranked as before: kept first, each group by ``|w|``. A mask without a
  dead class is returned unchanged.

  Args:
    params: the weights the mask was computed from.
    mask: a mask pytree.
    paths: the kernels in layer order, output layer last.

  Returns:
    The new mask.
  """
  paths = [tuple(p) for p in paths]
  if not paths or class_reachability(mask, paths).all():
    return mask
  forced = class_paths(params, mask, paths)
  weights = tuple(jnp.asarray(masks._get(params, p)) for p in paths)
  kept = tuple(jnp.asarray(masks._get(mask, p)) for p in paths)
  scores = _scores(weights, kept)
  new = {}
  for p, score, m in zip(paths, scores, kept, strict=True):
    top = 2.0 * jnp.max(score) * forced[p]
    keep = max(int(jnp.sum(m != 0)), int(jnp.sum(forced[p])))
    new[p] = keep_top(score + top, keep)

  def leaf(path, m):
    return new[path].astype(m.dtype) if path in new else m

  return masks._map_with_path(leaf, mask)


def prune_mask(
  params: PyTree,
  sparsity: float,
  *,
  output_density: float,
  paths: Sequence[Path] | None = None,
  connect: bool = True,
) -> PyTree:
  """Per-layer magnitude mask, then connected classes.

  Args:
    params: the weights to prune (trained, in the Guo et al. sweep).
    sparsity: the nominal sparsity ``s`` (``layer_plan``).
    output_density: the least density of the last of ``paths``.
    paths: the kernels to prune, in layer order (default: every kernel).
    connect: run :func:`connect_classes` (over every kernel of the net).

  Returns:
    ``connect_classes`` of the per-layer top-``|w|`` mask of
    ``layer_plan(paths, s, output_density)``: ``masks.num_to_keep(n, d)``
    weights of each layer, the largest ``|w|``.
  """
  paths = masks.prunable_paths(params) if paths is None else paths
  plan = layer_plan(paths, sparsity, output_density)
  mask = masks.ones(params)
  for p, density in plan.items():
    if density < 1.0:
      w = jnp.abs(jnp.asarray(masks._get(params, p)))
      kept = keep_top(w, masks.num_to_keep(w.size, density))
      mask = replace_layer(mask, p, kept)
  if not connect:
    return mask
  return connect_classes(params, mask, masks.prunable_paths(params))


def replace_layer(tree: PyTree, path: Path, value) -> PyTree:
  """``tree`` with the leaf at ``path`` replaced by ``value``."""
  return masks._map_with_path(
    lambda p, leaf: value if p == tuple(path) else leaf, tree
  )


def mask_report(mask: PyTree) -> dict:
  """Per-layer densities, dead classes and empty layers of a mask (a row)."""
  paths = masks.prunable_paths(mask)
  out = {
    f"density/{name}": d for name, d in masks.layer_densities(mask).items()
  }
  out["dead_classes"] = int(np.sum(~class_reachability(mask, paths)))
  out["empty_layers"] = len(empty_layers(mask, paths))
  return out


@allocation.fixed("Guo et al. prune every layer alike")
def layer_magnitude(ctx: PruningContext, key: jax.Array) -> Ticket:
  """:func:`prune_mask` of ``ctx.params`` at ``pruning.sparsity``.

  Reads ``pruning.output_density`` and ``pruning.connect_classes``; the
  prunable layers honour ``keep_first``/``keep_last``. No data, no passes.
  """
  del key
  start = time.perf_counter()
  paths = masks.prunable_paths(
    ctx.params,
    keep_first=option(ctx, "keep_first"),
    keep_last=option(ctx, "keep_last"),
  )
  mask = prune_mask(
    ctx.params,
    option(ctx, "sparsity"),
    output_density=option(ctx, "output_density"),
    paths=paths,
    connect=option(ctx, "connect_classes"),
  )
  params = masks.apply(ctx.params, mask)
  jax.block_until_ready((mask, params))
  return Ticket(
    mask=mask,
    params=params,
    batch_stats=ctx.batch_stats,
    scores=jax.tree.map(jnp.abs, ctx.params),
    info={
      "method": "layer_magnitude",
      "passes": 0,
      "wall_time_s": time.perf_counter() - start,
    },
  )


METHODS = {"layer_magnitude": (layer_magnitude, OPTIONS)}
