"""Pruning at initialization: per-weight scores and the tickets they choose.

Every method here is ``fn(ctx: PruningContext, key) -> Ticket`` and reads
these keys of ``config.pruning`` (declared once, with their checks, in
``awt.pruning._options`` and ``SCORE_OPTIONS`` / ``GRASP_OPTIONS`` /
``SYNFLOW_OPTIONS`` below; read with ``awt.pruning.option``):

* ``sparsity``: fraction of the prunable weights removed; the ticket keeps
  exactly ``round((1 - sparsity) * n)`` of them (``awt.masks.topk``).
* ``scope``: ``"global"`` (one ranking over all prunable layers) or
  ``"layerwise"`` (the same density in every layer).
* ``keep_first`` / ``keep_last``: leave the first / last Dense-Conv layer
  dense; the density is over the remaining prunable layers.
* ``score_loss`` (data-dependent scores): ``"natural"`` (the training
  batches) or ``"adversarial"`` (PGD points of ``config.adversarial``'s
  ``norm, eps, step_size, steps`` against the dense network at
  initialization, as the adversarial training step computes them).
* ``score_batches`` (default 1): number of training batches of
  ``config.batch_size`` (or ``pruning.score_batch_size``) the scores are
  summed over; their order is drawn from the method's key.

Scores follow one sign convention: higher means more important, the mask
keeps the highest (for GraSP this is minus the paper's score, see
:func:`grasp_scores`). ``Ticket.info["passes"]`` counts forward+backward
passes over a batch (a gradient evaluation; a Hessian-vector product counts
as one more): SNIP one per batch, GraSP two per batch, SynFlow one per
iteration, an adversarial ``score_loss`` adds PGD's ``steps`` per batch
(its final forward-only check is not counted); magnitude, random and ERK
spend none.
"""

import functools
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from awt import attacks, masks, training
from awt import data as data_lib
from awt.pruning import allocation
from awt.pruning._options import Integer, Number, OneOf, Option, option
from awt.pruning._ticket import PruningContext, Ticket

PyTree = Any
Path = tuple[str, ...]
LossFn = Callable[[PyTree, jax.Array, jax.Array], jax.Array]

SCORE_LOSSES = ("adversarial", "natural")
# Wang et al. (2020), experiments and reference code: logits / T, T = 200.
GRASP_TEMPERATURE = 200.0
# Tanaka et al. (2020), experiments: 100 pruning iterations.
SYNFLOW_ITERATIONS = 100

# The options of the data-dependent scores (snip, grasp; awt's snip init).
SCORE_OPTIONS = (
  Option(
    "score_loss",
    "natural",
    OneOf(SCORE_LOSSES),
    "score on the training batches, or on PGD points of config.adversarial",
  ),
  Option(
    "score_batches",
    1,
    Integer(lo=1),
    "training batches the scores are summed over",
  ),
  Option(
    "score_batch_size",
    None,
    Integer(lo=1, optional=True),
    "examples per score batch (None: config.batch_size)",
  ),
)
GRASP_OPTIONS = SCORE_OPTIONS + (
  Option(
    "grasp_temperature",
    GRASP_TEMPERATURE,
    Number(lo=0.0, lo_open=True),
    "GraSP's logits / T (Wang et al. 2020: T = 200)",
  ),
)
SYNFLOW_OPTIONS = (
  Option(
    "synflow_iterations",
    SYNFLOW_ITERATIONS,
    Integer(lo=1),
    "SynFlow's pruning iterations (Tanaka et al. 2020: 100)",
  ),
)


# ---------------------------------------------------------------------------
# Reading the config.


def prunable(ctx: PruningContext) -> tuple[Path, ...]:
  """The prunable kernel paths, honouring ``keep_first`` / ``keep_last``."""
  return masks.prunable_paths(
    ctx.params,
    keep_first=option(ctx, "keep_first"),
    keep_last=option(ctx, "keep_last"),
  )


def _raw_key(key: jax.Array) -> jax.Array:
  """``uint32[2]`` key data of a typed or raw PRNG key."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key)
  return jnp.asarray(key)


# ---------------------------------------------------------------------------
# Trees of layers.


def _key_path(path) -> Path:
  return tuple(str(getattr(k, "key", k)) for k in path)


def _get(tree: PyTree, path: Path):
  for k in path:
    tree = tree[k]
  return tree


def _with_layers(tree: PyTree, layers: Mapping[Path, jax.Array], fill):
  """``tree`` with the leaves at ``layers``' paths replaced, others ``fill``.

  ``fill(leaf)`` gives the value of every leaf not in ``layers``.
  """
  return jax.tree_util.tree_map_with_path(
    lambda kp, leaf: layers.get(_key_path(kp), fill(leaf)), tree
  )


def _keep_top(flat: jax.Array, k) -> jax.Array:
  """{0, 1} float32 vector keeping the ``k`` highest entries of ``flat``.

  Ties go to the earlier position, as in ``awt.masks.topk``; ``k`` may be
  traced (inside a compiled loop), unlike ``masks.topk``'s static count.
  """
  order = jnp.argsort(-flat, stable=True)
  rank = (
    jnp.zeros(flat.shape, jnp.int32)
    .at[order]
    .set(jnp.arange(flat.size, dtype=jnp.int32))
  )
  return (rank < k).astype(jnp.float32)


def _mask_from_counts(
  scores: PyTree, paths: tuple[Path, ...], counts, scope: str
) -> PyTree:
  """Mask keeping the top ``counts`` scores: one count (global) or per layer.

  Args:
    scores: pytree with the structure of ``params``.
    paths: prunable paths, in layer order.
    counts: int scalar (``scope="global"``) or ``[len(paths)]`` ints
      (``"layerwise"``); may be traced.
    scope: ``"global"`` or ``"layerwise"``.

  Returns:
    A float32 {0, 1} mask; leaves outside ``paths`` hold ones.
  """
  layers = [jnp.asarray(_get(scores, p), jnp.float32) for p in paths]
  kept = {}
  if scope == "global":
    keep = _keep_top(jnp.concatenate([s.ravel() for s in layers]), counts)
    offset = 0
    for p, s in zip(paths, layers, strict=True):
      kept[p] = keep[offset : offset + s.size].reshape(s.shape)
      offset += s.size
  else:
    for i, (p, s) in enumerate(zip(paths, layers, strict=True)):
      kept[p] = _keep_top(s.ravel(), counts[i]).reshape(s.shape)
  return _with_layers(scores, kept, lambda leaf: jnp.ones(jnp.shape(leaf)))


def _uniform_scores(
  key: jax.Array, params: PyTree, paths: tuple[Path, ...]
) -> PyTree:
  """Independent U(0, 1) scores on ``paths``, zeros elsewhere."""
  keys = jax.random.split(key, max(len(paths), 1))
  layers = {
    p: jax.random.uniform(k, jnp.shape(_get(params, p)))
    for p, k in zip(paths, keys, strict=False)
  }
  return _with_layers(params, layers, lambda leaf: jnp.zeros(jnp.shape(leaf)))


def keep_counts(
  sizes: tuple[int, ...], density: allocation.Target, scope: str
) -> np.ndarray:
  """Weights to keep: ``round(d N)`` overall (global) or per layer.

  Args:
    sizes: sizes of the prunable layers.
    density: fraction kept, or (layerwise) one per layer
      (:func:`awt.pruning.allocation.target`).
    scope: ``"global"`` or ``"layerwise"``.

  Returns:
    An int32 scalar (global) or ``[L]`` int32 (layerwise), the counts of
    ``awt.masks.topk``.
  """
  if scope == "global":
    return np.asarray(masks.num_to_keep(int(sum(sizes)), density), np.int32)
  per_layer = masks.per_layer_density(density, scope, len(sizes))
  return np.array(
    [masks.num_to_keep(n, d) for n, d in zip(sizes, per_layer, strict=True)],
    np.int32,
  )


def _sizes(params: PyTree, paths: tuple[Path, ...]) -> tuple[int, ...]:
  return tuple(int(np.size(_get(params, p))) for p in paths)


# Compiled once per (tree structure, paths, scope): the top-k selection and
# the random scores, so tickets of big networks skip per-layer dispatch.
_select = jax.jit(_mask_from_counts, static_argnums=(1, 3))
_uniform = jax.jit(_uniform_scores, static_argnums=2)


def _top(ctx: PruningContext, scores: PyTree, paths, scope: str) -> PyTree:
  """Mask keeping exactly the top ``round(d n)`` scores of ``paths``."""
  sizes = _sizes(ctx.params, paths)
  counts = keep_counts(sizes, allocation.target(ctx, paths, sizes), scope)
  return _select(scores, paths, counts, scope)


# ---------------------------------------------------------------------------
# Losses and data.


def train_logits(
  model: nn.Module, params: PyTree, batch_stats: PyTree, x: jax.Array
) -> jax.Array:
  """Logits in train mode, as the training step computes them.

  BatchNorm normalizes with the batch's statistics and the updated running
  statistics are discarded (the reference SNIP/GraSP code scores a network
  in ``train()`` mode).

  Args:
    model: a flax module of ``awt.models``.
    params: its parameters.
    batch_stats: its BatchNorm statistics (``{}`` if none).
    x: [B, H, W, C] float32 in [0, 1].

  Returns:
    [B, K] float32 logits.
  """
  variables = training.model_variables(params, batch_stats)
  if batch_stats:
    logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return logits
  return model.apply(variables, x, train=True)


def make_loss(
  model: nn.Module, batch_stats: PyTree, *, temperature: float = 1.0
) -> LossFn:
  """``loss(params, x, y)``: mean cross-entropy of ``logits / temperature``.

  Args:
    model: a flax module of ``awt.models``.
    batch_stats: its BatchNorm statistics (``{}`` if none).
    temperature: divides the logits (GraSP's T; 1 elsewhere).

  Returns:
    A pure function of ``params``, ``x: [B, H, W, C]``, ``y: [B]`` int32
    returning a float32 scalar.
  """

  def loss(params, x, y):
    logits = train_logits(model, params, batch_stats, x)
    return training.cross_entropy(logits / temperature, y)

  return loss


def score_batches(ctx: PruningContext, key: jax.Array) -> dict:
  """The ``pruning.score_batches`` training batches, stacked.

  Batches come from ``awt.data.batches`` with a seed drawn from ``key``;
  more batches than one epoch holds continue with the next epochs.

  Args:
    ctx: the pruning context.
    key: PRNG key choosing the data order.

  Returns:
    ``{"image": [S, B, H, W, C] float32 in [0, 1], "label": [S, B] int32}``.
  """
  num = option(ctx, "score_batches")
  size = option(ctx, "score_batch_size")
  size = int(ctx.config["batch_size"]) if size is None else size
  seed = int(jax.random.randint(key, (), 0, np.iinfo(np.int32).max))
  taken, epoch = [], 0
  while len(taken) < num:
    for batch in data_lib.batches(ctx.split, size, seed=seed, epoch=epoch):
      taken.append(batch)
      if len(taken) == num:
        break
    epoch += 1
  return {
    k: jnp.asarray(np.stack([b[k] for b in taken])) for k in ("image", "label")
  }


def adversarial_points(
  model: nn.Module,
  params: PyTree,
  batch_stats: PyTree,
  batches: dict,
  key: jax.Array,
  adversarial: Mapping,
) -> jax.Array:
  """PGD points for every stacked batch, against ``params``, in one scan.

  Args:
    model: a flax module of ``awt.models``.
    params: the parameters attacked (the dense network at initialization).
    batch_stats: its BatchNorm statistics.
    batches: ``{"image": [S, B, H, W, C], "label": [S, B]}``.
    key: PRNG key; example ``i`` of batch ``s`` starts from
      ``fold_in(fold_in(key, s), i)``.
    adversarial: ``norm``, ``eps``, ``step_size``, ``steps`` (as in
      ``config.adversarial``).

  Returns:
    ``[S, B, H, W, C]`` float32 in [0, 1], within ``eps`` of the images.

  References:
    Madry et al., *Towards Deep Learning Models Resistant to Adversarial
    Attacks*, ICLR 2018, Eq. (2.1).
  """
  return _pgd_points(
    model,
    float(adversarial["eps"]),
    float(adversarial["step_size"]),
    int(adversarial["steps"]),
    adversarial.get("norm", "linf"),
    params,
    batch_stats,
    batches["image"],
    batches["label"],
    _raw_key(key),
  )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _pgd_points(
  model, eps, step_size, steps, norm, params, batch_stats, images, labels, key
):
  """Compiled body of :func:`adversarial_points` (once per model/attack)."""

  def one(_, inputs):
    s, x, y = inputs
    batch_key = jax.random.fold_in(key, s)
    keys = jax.vmap(lambda i: jax.random.fold_in(batch_key, i))(
      jnp.arange(x.shape[0])
    )
    logits_fn = lambda v: train_logits(model, params, batch_stats, v)
    x_adv = attacks.pgd(
      logits_fn,
      x,
      y,
      keys,
      eps=eps,
      step_size=step_size,
      steps=steps,
      norm=norm,
      random_start=True,
      select="last",  # Madry's points, as in PGD-AT (not first success).
    )
    return None, x_adv

  indices = jnp.arange(images.shape[0])
  return jax.lax.scan(one, None, (indices, images, labels))[1]


def score_inputs(ctx: PruningContext, key: jax.Array) -> tuple[dict, int]:
  """The batches a data-dependent score is computed on, and their cost.

  Args:
    ctx: the pruning context (``pruning.score_loss``, ``score_batches``).
    key: PRNG key (data order and PGD random starts).

  Returns:
    ``(batches, passes)``: ``{"image": [S, B, H, W, C], "label": [S, B]}``
    (PGD points for ``score_loss="adversarial"``), and the forward+backward
    passes spent making them (``S * steps`` for PGD, else 0).
  """
  data_key, attack_key = jax.random.split(key)
  batches = score_batches(ctx, data_key)
  if option(ctx, "score_loss") == "natural":
    return batches, 0
  adv = ctx.config["adversarial"]
  images = adversarial_points(
    ctx.model, ctx.params, ctx.batch_stats, batches, attack_key, adv
  )
  passes = batches["image"].shape[0] * int(adv["steps"])
  return {"image": images, "label": batches["label"]}, passes


# ---------------------------------------------------------------------------
# Scores.


def summed_grad(
  loss_fn: LossFn, params: PyTree, images: jax.Array, labels: jax.Array
) -> PyTree:
  r"""``\sum_s \nabla_\theta L(\theta; x_s, y_s)`` over stacked batches.

  One ``lax.scan`` over the batches, one gradient evaluation each.

  Args:
    loss_fn: ``loss(params, x, y) -> scalar``.
    params: the parameters.
    images: ``[S, B, H, W, C]``.
    labels: ``[S, B]`` int32.

  Returns:
    A pytree with the structure of ``params``.
  """
  grad_fn = jax.grad(loss_fn)

  def body(acc, batch):
    g = grad_fn(params, *batch)
    return jax.tree.map(jnp.add, acc, g), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  return jax.lax.scan(body, zeros, (images, labels))[0]


def snip_scores(
  loss_fn: LossFn, params: PyTree, images: jax.Array, labels: jax.Array
) -> PyTree:
  r"""SNIP's connection sensitivity ``|g ⊙ θ|``.

  .. math::
    s_j = \Big|\theta_j\, \sum_s \frac{\partial L(\theta; x_s, y_s)}
      {\partial \theta_j}\Big|

  the magnitude of the derivative of the loss with respect to a
  multiplicative mask ``c`` at ``c = 1``. The paper divides by the sum over
  all weights, which does not change the ranking. Gradients of several
  batches are summed before the product (as the reference code accumulates
  ``.grad``).

  Args:
    loss_fn: ``loss(params, x, y) -> scalar``.
    params: the parameters at initialization.
    images: ``[S, B, H, W, C]`` float32 in [0, 1].
    labels: ``[S, B]`` int32.

  Returns:
    Non-negative scores with the structure of ``params``.

  References:
    Lee, Ajanthan & Torr, *SNIP: Single-shot Network Pruning based on
    Connection Sensitivity*, ICLR 2019, Eq. (6).
  """
  g = summed_grad(loss_fn, params, images, labels)
  return jax.tree.map(lambda p, gi: jnp.abs(p * gi), params, g)


def hessian_vector_product(
  loss_fn: Callable, params: PyTree, v: PyTree, *args
) -> PyTree:
  r"""``H v`` with ``H = \nabla^2_\theta loss``, forward-over-reverse.

  ``jax.jvp`` of ``jax.grad``: one gradient evaluation carrying a tangent,
  never forming ``H``.

  Args:
    loss_fn: ``loss(params, *args) -> scalar``.
    params: the point ``θ``.
    v: tangent with the structure of ``params``.
    *args: further arguments of ``loss_fn`` (held fixed).

  Returns:
    ``H v`` with the structure of ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> f = lambda w: jnp.sum(w**3)
    >>> hessian_vector_product(f, jnp.array([1.0, 2.0]), jnp.ones(2))
    Array([ 6., 12.], dtype=float32)
  """
  grad_fn = lambda p: jax.grad(loss_fn)(p, *args)
  return jax.jvp(grad_fn, (params,), (v,))[1]


def grasp_scores(
  loss_fn: LossFn,
  params: PyTree,
  images: jax.Array,
  labels: jax.Array,
  *,
  paths: tuple[Path, ...] | None = None,
) -> PyTree:
  r"""GraSP scores, sign flipped so that higher means keep: ``θ ⊙ H g``.

  The paper scores ``S(-θ) = -θ ⊙ H g`` (Eq. 8) and removes the weights
  with the *highest* ``S``, those whose removal reduces the gradient flow
  ``gᵀ g`` least. This function returns ``-S = θ ⊙ H g``, so keeping the
  highest values (``awt.masks.topk``) keeps the same weights.

  ``g = \sum_s \nabla L_s`` (held constant) is restricted to the Dense/Conv
  kernels ``paths``, as the reference code takes it over the weights of the
  linear and convolutional layers only; ``H g = \sum_s H_s g`` is summed
  over the same batches. ``loss_fn`` should carry the temperature (logits
  divided by T = 200 in the paper, for both passes).

  Args:
    loss_fn: ``loss(params, x, y) -> scalar``, temperature included.
    params: the parameters at initialization.
    images: ``[S, B, H, W, C]`` float32 in [0, 1].
    labels: ``[S, B]`` int32.
    paths: kernels ``g`` lives on (default: every ``kernel`` leaf).

  Returns:
    Scores with the structure of ``params``.

  References:
    Wang, Zhang & Grosse, *Picking Winning Tickets Before Training by
    Preserving Gradient Flow*, ICLR 2020, Eq. (8); T = 200 as in their
    experiments and code.
  """
  paths = masks.prunable_paths(params) if paths is None else tuple(paths)
  g = summed_grad(loss_fn, params, images, labels)
  g = _with_layers(
    g, {p: _get(g, p) for p in paths}, lambda leaf: jnp.zeros_like(leaf)
  )
  g = jax.lax.stop_gradient(g)

  def body(acc, batch):
    hg = hessian_vector_product(loss_fn, params, g, *batch)
    return jax.tree.map(jnp.add, acc, hg), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  hg = jax.lax.scan(body, zeros, (images, labels))[0]
  return jax.tree.map(lambda p, h: p * h, params, hg)


def synflow_input(model: nn.Module, image_shape: tuple[int, ...]) -> jax.Array:
  """``[1, *image_shape]`` pixels that the model's first layer sees as ones.

  SynFlow feeds an all-ones input to the network; in the reference code the
  normalization lives in the data pipeline, so the first layer sees ones.
  Our models normalize inside (``(x - mean) / std``), so we feed
  ``x = mean + std`` per channel, which that normalization maps to ones.

  Args:
    model: a module of ``awt.models`` (fields ``mean``, ``std``).
    image_shape: ``(H, W, C)``.

  Returns:
    [1, H, W, C] float32.
  """
  channels = image_shape[-1]
  mean = np.broadcast_to(np.asarray(getattr(model, "mean", (0.0,))), channels)
  std = np.broadcast_to(np.asarray(getattr(model, "std", (1.0,))), channels)
  return jnp.asarray(np.ones((1, *image_shape)) * (mean + std), jnp.float32)


def synflow_scores(
  model: nn.Module,
  params: PyTree,
  batch_stats: PyTree,
  x: jax.Array,
  mask: PyTree,
) -> PyTree:
  r"""Synaptic saliency ``|θ ⊙ ∂R/∂θ|`` of the linearized, masked network.

  .. math::
    R = \mathbb{1}^\top f(\mathbb{1}; |\theta| \odot m), \qquad
    s = \Big|\, \frac{\partial R}{\partial \theta} \odot \theta \Big|

  Parameters and BatchNorm statistics are replaced by their absolute values
  and BatchNorm runs in eval mode with the running statistics (as the
  reference code does), so for a ReLU network ``R`` is the sum over all
  input-output paths of the product of the kept weights. Pruned weights
  (``m = 0``) score 0.

  Args:
    model: a flax module of ``awt.models``.
    params: the parameters (signs are ignored).
    batch_stats: BatchNorm statistics at initialization (``{}`` if none).
    x: ``[1, H, W, C]`` input, see :func:`synflow_input`.
    mask: mask pytree applied to ``|params|``.

  Returns:
    Non-negative scores with the structure of ``params``.

  References:
    Tanaka, Kunin, Yamins & Ganguli, *Pruning Neural Networks Without Any
    Data by Iteratively Conserving Synaptic Flow*, NeurIPS 2020,
    Algorithm 1.
  """
  stats = jax.tree.map(jnp.abs, batch_stats)
  w = jax.tree.map(lambda p, m: jnp.abs(p) * m, params, mask)

  def flow(p):
    out = model.apply(training.model_variables(p, stats), x, train=False)
    return jnp.sum(out)

  g = jax.grad(flow)(w)
  return jax.tree.map(lambda wi, gi: jnp.abs(wi * gi), w, g)


def synflow_schedule(
  sizes: tuple[int, ...],
  density: allocation.Target,
  iterations: int,
  scope: str,
) -> np.ndarray:
  """Weights kept after each SynFlow iteration, exponential in density.

  Iteration ``k = 1..n`` keeps density ``d^(k/n)``: exactly
  ``round(d^(k/n) * N)`` weights overall (global) or per layer (each
  layer's own ``d_l^(k/n)`` under a given allocation).

  Args:
    sizes: sizes of the prunable layers.
    density: final density ``d``, or one per layer (layerwise).
    iterations: ``n``.
    scope: ``"global"`` or ``"layerwise"``.

  Returns:
    ``[n]`` ints (global) or ``[n, L]`` ints (layerwise).

  Examples:
    >>> synflow_schedule((100,), 0.01, 2, "global").tolist()
    [10, 1]
  """
  fractions = [
    allocation.power(density, k / iterations) for k in range(1, iterations + 1)
  ]
  return np.stack([keep_counts(sizes, f, scope) for f in fractions])


def iterative_synflow(
  model: nn.Module,
  params: PyTree,
  batch_stats: PyTree,
  image_shape: tuple[int, ...],
  density: allocation.Target,
  *,
  iterations: int = SYNFLOW_ITERATIONS,
  scope: str = "global",
  paths: tuple[Path, ...] | None = None,
) -> tuple[PyTree, PyTree]:
  """SynFlow's iterative pruning, all iterations in one ``lax.fori_loop``.

  Each iteration scores the currently masked network
  (:func:`synflow_scores`) and keeps the top ``round(d^(k/n) N)`` weights
  among those still kept (pruned weights never come back), so the final
  mask has exactly ``round(d N)`` weights.

  Args:
    model: a flax module of ``awt.models``.
    params: the parameters at initialization.
    batch_stats: BatchNorm statistics (``{}`` if none).
    image_shape: ``(H, W, C)``.
    density: final fraction of prunable weights kept, or (layerwise) one
      per path.
    iterations: ``n`` (100 in the paper).
    scope: ``"global"`` (the paper's) or ``"layerwise"``.
    paths: prunable paths (default: every ``kernel``).

  Returns:
    ``(mask, scores)``: the final mask and the scores that chose it (those
    of the last iteration).

  References:
    Tanaka et al., NeurIPS 2020, Algorithm 1.
  """
  paths = masks.prunable_paths(params) if paths is None else tuple(paths)
  schedule = synflow_schedule(_sizes(params, paths), density, iterations, scope)
  x = synflow_input(model, image_shape)
  return _synflow_loop(model, paths, scope, params, batch_stats, x, schedule)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _synflow_loop(model, paths, scope, params, batch_stats, x, schedule):
  """Compiled body of :func:`iterative_synflow`: ``len(schedule)`` rounds."""

  def body(k, carry):
    mask, _ = carry
    scores = synflow_scores(model, params, batch_stats, x, mask)
    # Weights pruned earlier rank below every kept one (scores are >= 0).
    ranked = jax.tree.map(lambda s, m: jnp.where(m > 0, s, -1.0), scores, mask)
    return _mask_from_counts(ranked, paths, schedule[k], scope), scores

  start = (masks.ones(params), jax.tree.map(jnp.zeros_like, params))
  return jax.lax.fori_loop(0, schedule.shape[0], body, start)


def erk_densities(
  shapes: Mapping[Path, tuple[int, ...]], density: float
) -> dict[Path, float]:
  r"""Erdős–Rényi-Kernel layer densities with overall density ``density``.

  .. math::
    d_l = \epsilon\, \frac{\sum_i s_{l,i}}{\prod_i s_{l,i}}
    \quad (\text{Dense } [n_{in}, n_{out}]:\ \epsilon\,
    \tfrac{n_{in} + n_{out}}{n_{in} n_{out}}; \text{ Conv }
    [k_h, k_w, n_{in}, n_{out}]:\ \epsilon\,
    \tfrac{k_h + k_w + n_{in} + n_{out}}{k_h k_w n_{in} n_{out}})

  with ``ε`` chosen so that ``Σ d_l n_l = d Σ n_l``. A layer whose density
  would exceed 1 is made dense and ``ε`` is solved again over the others,
  until none exceeds 1 (RigL's ``get_sparsities_erdos_renyi``).

  Args:
    shapes: kernel shape of each prunable layer.
    density: overall fraction kept, in (0, 1].

  Returns:
    ``{path: density}`` in (0, 1].

  Examples:
    >>> d = erk_densities({("a",): (4, 4), ("b",): (4, 12)}, 0.5)
    >>> {p[0]: round(v, 3) for p, v in d.items()}  # eps = 32 / (8 + 16)
    {'a': 0.667, 'b': 0.444}

  References:
    Evci, Gale, Menick, Castro & Elsen, *Rigging the Lottery: Making All
    Tickets Winners*, ICML 2020, Sec. 3 ("Sparsity distribution").
  """
  sizes = [math.prod(s) for s in shapes.values()]
  raw = [sum(s) / n for s, n in zip(shapes.values(), sizes, strict=True)]
  return dict(zip(shapes, allocation.scaled(sizes, raw, density), strict=True))


def erk_counts(
  shapes: Mapping[Path, tuple[int, ...]], density: float
) -> dict[Path, int]:
  """Weights kept per layer under ERK, summing to exactly ``round(d N)``.

  The ideal counts ``d_l n_l`` (:func:`erk_densities`) sum to ``d N``; they
  are rounded by largest remainders (floors, then one more for the layers
  with the largest fractional parts) so the total is exact.

  Args:
    shapes: kernel shape of each prunable layer.
    density: overall fraction kept.

  Returns:
    ``{path: count}`` with ``0 <= count <= n_l``.
  """
  sizes = [math.prod(s) for s in shapes.values()]
  ideal = list(erk_densities(shapes, density).values())
  counts = allocation.whole_counts(sizes, ideal, density)
  return dict(zip(shapes, counts, strict=True))


# ---------------------------------------------------------------------------
# Tickets.


def _ticket(
  ctx: PruningContext,
  method: str,
  mask: PyTree,
  scores: PyTree | None,
  passes: int,
  start: float,
  **info,
) -> Ticket:
  """Packs a Ticket; waits for the device so ``wall_time_s`` is honest."""
  params = masks.apply(ctx.params, mask)
  jax.block_until_ready((mask, params, scores))
  info = {
    "method": method,
    "passes": int(passes),
    "wall_time_s": time.perf_counter() - start,
    "sparsity": option(ctx, "sparsity"),
    **info,
  }
  return Ticket(
    mask=mask,
    params=params,
    batch_stats=ctx.batch_stats,
    scores=scores,
    info=info,
  )


@functools.partial(jax.jit, static_argnums=0)
def _snip_jit(model, params, batch_stats, images, labels):
  """:func:`snip_scores` of the model's loss, compiled once per model."""
  return snip_scores(make_loss(model, batch_stats), params, images, labels)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _grasp_jit(model, temperature, params, batch_stats, images, labels):
  """:func:`grasp_scores` of the model's loss at ``temperature``, compiled."""
  loss_fn = make_loss(model, batch_stats, temperature=temperature)
  return grasp_scores(loss_fn, params, images, labels)


def dense(ctx: PruningContext, key: jax.Array) -> Ticket:
  """The unpruned network: an all-ones mask (the baseline)."""
  del key
  start = time.perf_counter()
  return _ticket(ctx, "dense", masks.ones(ctx.params), None, 0, start)


def random(ctx: PruningContext, key: jax.Array) -> Ticket:
  """Uniformly random mask at the exact density, global or per layer.

  Scores are i.i.d. U(0, 1) draws; the mask keeps the highest.

  References:
    Frankle, Dziugaite, Roy & Carbin, *Pruning Neural Networks at
    Initialization: Why Are We Missing the Mark?*, ICLR 2021 (baseline).
  """
  start = time.perf_counter()
  paths, scope = prunable(ctx), option(ctx, "scope")
  scores = _uniform(key, ctx.params, paths)
  mask = _top(ctx, scores, paths, scope)
  return _ticket(ctx, "random", mask, scores, 0, start, scope=scope)


@allocation.fixed("ERK is an allocation; 'random' takes one")
def erk(ctx: PruningContext, key: jax.Array) -> Ticket:
  """Random mask with Erdős–Rényi-Kernel layer densities (RigL).

  Layer ``l`` keeps exactly ``erk_counts(...)[l]`` uniformly random weights;
  the overall count is exact. ERK fixes its own layer allocation, so
  ``pruning.scope`` is ignored and ``pruning.layer_densities`` refused.

  References:
    Evci et al., *Rigging the Lottery*, ICML 2020, Sec. 3.
  """
  start = time.perf_counter()
  paths = prunable(ctx)
  shapes = {p: tuple(np.shape(_get(ctx.params, p))) for p in paths}
  counts = erk_counts(shapes, 1.0 - option(ctx, "sparsity"))
  scores = _uniform(key, ctx.params, paths)
  mask = _select(
    scores, paths, np.array([counts[p] for p in paths]), "layerwise"
  )
  densities = {
    masks.layer_name(p): counts[p] / math.prod(shapes[p]) for p in paths
  }
  return _ticket(ctx, "erk", mask, scores, 0, start, layer_densities=densities)


def magnitude(ctx: PruningContext, key: jax.Array) -> Ticket:
  """Keep the largest ``|θ|`` at initialization.

  References:
    Frankle, Dziugaite, Roy & Carbin, ICLR 2021 (magnitude at
    initialization); Han, Pool, Tran & Dally, *Learning both Weights and
    Connections for Efficient Neural Networks*, NeurIPS 2015.
  """
  del key
  start = time.perf_counter()
  paths, scope = prunable(ctx), option(ctx, "scope")
  scores = jax.tree.map(jnp.abs, ctx.params)
  mask = _top(ctx, scores, paths, scope)
  return _ticket(ctx, "magnitude", mask, scores, 0, start, scope=scope)


def snip(ctx: PruningContext, key: jax.Array) -> Ticket:
  """SNIP: keep the highest connection sensitivity ``|θ ⊙ ∂L/∂θ|``.

  Passes: ``score_batches`` (plus PGD's ``steps`` per batch for an
  adversarial ``score_loss``).

  References:
    Lee, Ajanthan & Torr, ICLR 2019, Eq. (6).
  """
  start = time.perf_counter()
  paths, scope = prunable(ctx), option(ctx, "scope")
  batches, passes = score_inputs(ctx, key)
  scores = _snip_jit(
    ctx.model, ctx.params, ctx.batch_stats, batches["image"], batches["label"]
  )
  mask = _top(ctx, scores, paths, scope)
  passes += batches["image"].shape[0]
  return _ticket(
    ctx,
    "snip",
    mask,
    scores,
    passes,
    start,
    scope=scope,
    score_loss=option(ctx, "score_loss"),
  )


def grasp(ctx: PruningContext, key: jax.Array) -> Ticket:
  """GraSP: keep the weights whose removal reduces gradient flow most.

  Scores are ``θ ⊙ H g`` (minus the paper's ``S``, see
  :func:`grasp_scores`) with the temperature ``pruning.grasp_temperature``
  (default 200). Passes: 2 per batch (the gradient, then the
  Hessian-vector product), plus PGD's for an adversarial ``score_loss``.

  References:
    Wang, Zhang & Grosse, ICLR 2020, Eq. (8).
  """
  start = time.perf_counter()
  paths, scope = prunable(ctx), option(ctx, "scope")
  batches, passes = score_inputs(ctx, key)
  temperature = option(ctx, "grasp_temperature")
  scores = _grasp_jit(
    ctx.model,
    temperature,
    ctx.params,
    ctx.batch_stats,
    batches["image"],
    batches["label"],
  )
  mask = _top(ctx, scores, paths, scope)
  passes += 2 * batches["image"].shape[0]
  return _ticket(
    ctx,
    "grasp",
    mask,
    scores,
    passes,
    start,
    scope=scope,
    score_loss=option(ctx, "score_loss"),
    temperature=temperature,
  )


def synflow(ctx: PruningContext, key: jax.Array) -> Ticket:
  """SynFlow: data-free, iterative synaptic-flow pruning.

  ``pruning.synflow_iterations`` iterations (default 100) of
  :func:`iterative_synflow`, one forward+backward pass of a single input
  each. Global scope is the method's point (it avoids layer collapse);
  ``"layerwise"`` is honoured too.

  References:
    Tanaka, Kunin, Yamins & Ganguli, NeurIPS 2020, Algorithm 1.
  """
  del key
  start = time.perf_counter()
  paths, scope = prunable(ctx), option(ctx, "scope")
  iterations = option(ctx, "synflow_iterations")
  mask, scores = iterative_synflow(
    ctx.model,
    ctx.params,
    ctx.batch_stats,
    tuple(ctx.image_shape),
    allocation.target(ctx, paths, _sizes(ctx.params, paths)),
    iterations=iterations,
    scope=scope,
    paths=paths,
  )
  return _ticket(
    ctx,
    "synflow",
    mask,
    scores,
    iterations,
    start,
    scope=scope,
    iterations=iterations,
  )


# name -> (method, the options it reads besides the shared ones); the
# package registers them (``awt.pruning.register``).
METHODS: dict[
  str, tuple[Callable[[PruningContext, jax.Array], Ticket], tuple]
] = {
  "dense": (dense, ()),
  "erk": (erk, ()),
  "grasp": (grasp, GRASP_OPTIONS),
  "magnitude": (magnitude, ()),
  "random": (random, ()),
  "snip": (snip, SCORE_OPTIONS),
  "synflow": (synflow, SYNFLOW_OPTIONS),
}
