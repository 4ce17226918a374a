r"""Sanity checks of a ticket: is it more than its per-layer densities?

Frankle et al. (ICLR 2021, Sec. 5) showed that SNIP, GraSP and SynFlow
tickets keep their accuracy when the mask is shuffled within each layer or
the weights are re-initialized: those methods only choose layer densities.
Each ablation here turns any method's :class:`~awt.pruning.Ticket` into a
modified one that is trained and evaluated exactly like the original:

* ``none``: the ticket unchanged.
* ``shuffle``: one uniformly random permutation per prunable layer, applied
  to the flattened mask *and* the flattened starting weights of that layer
  (and to the scores, if any): per-layer density and the multiset of kept
  values stay, which connections exist becomes random.
* ``shuffle_inputs``: a finer shuffle (not in Frankle et al.): each unit
  (output feature or channel) gets its own permutation of its incoming
  entries, mask and weights together: every unit keeps its fan-in and its
  incoming values, which inputs it reads becomes random. Set against
  ``shuffle``, it separates a ticket's per-unit degrees from its wiring.
* ``shuffle_values``: the converse (not in Frankle et al.): the mask stays,
  the starting weights of each prunable layer's kept entries are permuted
  among those entries: the wiring stays, which value sits where becomes
  random.
* ``reinit``: the same mask, fresh initial weights (and BatchNorm
  statistics) from the model's initializer with another key, times the
  mask.
* ``init_weights``: the same mask on the network's original
  initialization, ``θ0 ⊙ m`` with its BatchNorm statistics: for a ticket
  that starts from searched or trained weights (``awt``, ``ntt``, the
  three-stage methods), it separates the mask from the weights; for one
  that starts from the initialization it changes nothing.
* ``invert``: keep the *lowest* scores instead of the highest, with the
  same kept counts and scope (global: the ticket's total; layerwise: each
  layer's), starting from the initialization times the new mask. Needs the
  method's scores; the new ticket's scores are ``-scores``, so that its
  mask again keeps the highest.
* ``random_same_density``: a uniformly random mask with exactly the
  ticket's per-layer kept counts, starting from the initialization.

Prunable layers are ``awt.masks.prunable_paths`` of the initialization with
``config.pruning.keep_first`` / ``keep_last``; every other leaf (biases,
BatchNorm, the kept-dense layers) is left as the ticket has it (``shuffle``,
``shuffle_inputs``, ``shuffle_values``) or as the initialization has it
(``reinit``, ``init_weights``, ``invert``, ``random_same_density``, which
start from an initialization).

References:
  Frankle, Dziugaite, Roy & Carbin, "Pruning Neural Networks at
  Initialization: Why Are We Missing the Mark?", ICLR 2021, Sec. 5
  (random shuffling, reinitialization, inversion).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from awt import masks, training
from awt.pruning import scores as scores_lib
from awt.pruning._options import OneOf, Option, option
from awt.pruning._ticket import PruningContext, Ticket

PyTree = Any
Path = tuple[str, ...]

ABLATIONS = (
  "none",
  "shuffle",
  "shuffle_inputs",
  "shuffle_values",
  "reinit",
  "init_weights",
  "invert",
  "random_same_density",
)
# Shared by every method (``awt.pruning`` declares it with them).
ABLATION = Option(
  "ablation",
  "none",
  OneOf(ABLATIONS),
  "sanity check applied to the found ticket (Frankle et al. ICLR 2021)",
)


def _kept_counts(mask: PyTree, paths: tuple[Path, ...]) -> np.ndarray:
  """``[L]`` int32: nonzero entries of each prunable layer of ``mask``."""
  return np.array(
    [np.count_nonzero(np.asarray(scores_lib._get(mask, p))) for p in paths],
    np.int32,
  )


def _map_layers(fn, tree: PyTree, paths: tuple[Path, ...]) -> PyTree:
  """``tree`` with ``fn(i, leaf)`` at ``paths[i]``, other leaves unchanged."""
  layers = {p: fn(i, scores_lib._get(tree, p)) for i, p in enumerate(paths)}
  return scores_lib._with_layers(tree, layers, lambda leaf: leaf)


def _permute_layers(
  tree: PyTree, paths: tuple[Path, ...], keys: jax.Array
) -> PyTree:
  """Each leaf at ``paths[i]``, flattened, permuted by ``keys[i]``."""

  def one(i, leaf):
    flat = jnp.ravel(leaf)
    order = jax.random.permutation(keys[i], flat.size)
    return flat[order].reshape(jnp.shape(leaf))

  return _map_layers(one, tree, paths)


def _layer_keys(ctx, key) -> tuple[tuple[Path, ...], jax.Array]:
  """The prunable layers' paths and one key per layer (at least one)."""
  paths = scores_lib.prunable(ctx)
  return paths, jax.random.split(key, max(len(paths), 1))


def _permute_together(permute, ticket: Ticket, ctx, key) -> Ticket:
  """``ticket`` with ``permute(tree, paths, keys)`` applied alike to its
  mask, starting weights and scores (one key per prunable layer), so that
  ``params = params * mask`` still holds."""
  paths, keys = _layer_keys(ctx, key)
  return ticket.replace(
    mask=permute(ticket.mask, paths, keys),
    params=permute(ticket.params, paths, keys),
    scores=(
      None if ticket.scores is None else permute(ticket.scores, paths, keys)
    ),
  )


def shuffle(ticket: Ticket, ctx: PruningContext, key: jax.Array) -> Ticket:
  """Permutes the mask and the weights of each prunable layer together.

  Layer ``l`` (``n_l`` entries) gets one uniformly random permutation
  ``π_l``: ``mask'.ravel() = mask.ravel()[π_l]``, the same for the starting
  weights (and the scores), so the layer's density and the multiset of its
  kept values are unchanged and ``params' = params' * mask'`` still holds.

  Args:
    ticket: the ticket to ablate.
    ctx: the context it was found in (its config names the prunable layers).
    key: PRNG key of the permutations.

  Returns:
    The shuffled ticket (``batch_stats`` and ``info`` unchanged).
  """
  return _permute_together(_permute_layers, ticket, ctx, key)


def _permute_inputs(
  tree: PyTree, paths: tuple[Path, ...], keys: jax.Array
) -> PyTree:
  """Each leaf at ``paths[i]`` (``[..., units]``) seen as ``[fan_in, units]``,
  every column permuted by its own key drawn from ``keys[i]``."""

  def one(i, leaf):
    cols = jnp.reshape(leaf, (-1, jnp.shape(leaf)[-1]))
    fan_in, units = cols.shape
    unit_keys = jax.random.split(keys[i], units)
    order = jax.vmap(jax.random.permutation, in_axes=(0, None))(
      unit_keys, fan_in
    )  # [units, fan_in]
    return jnp.take_along_axis(cols, order.T, axis=0).reshape(jnp.shape(leaf))

  return _map_layers(one, tree, paths)


def shuffle_inputs(
  ticket: Ticket, ctx: PruningContext, key: jax.Array
) -> Ticket:
  """Permutes, unit by unit, which inputs each unit of a layer reads.

  A Dense kernel ``[in, out]`` (a conv kernel ``[kh, kw, c_in, c_out]``,
  seen as ``[kh * kw * c_in, c_out]``) gets one uniformly random
  permutation ``π_{l,j}`` per output unit ``j``, applied to column ``j`` of
  the mask, the starting weights (and the scores):
  ``mask'[:, j] = mask[π_{l,j}, j]``. Each unit's fan-in and the multiset
  of its incoming kept values are unchanged (so are the layer's density
  and ``params' = params' * mask'``); each input's fan-out is not.

  Args:
    ticket: the ticket to ablate.
    ctx: the context it was found in (its config names the prunable layers).
    key: PRNG key of the permutations.

  Returns:
    The shuffled ticket (``batch_stats`` and ``info`` unchanged).
  """
  return _permute_together(_permute_inputs, ticket, ctx, key)


def _permute_kept(
  params: PyTree, mask: PyTree, paths: tuple[Path, ...], keys: jax.Array
) -> PyTree:
  """Each leaf at ``paths[i]`` with its kept entries' values permuted among
  the kept entries (uniformly, by ``keys[i]``); pruned entries stay 0."""

  def one(i, leaf):
    flat = jnp.ravel(leaf)
    kept = jnp.ravel(scores_lib._get(mask, paths[i])) != 0
    n = flat.size
    # Kept positions first (in random order / in index order), then the
    # pruned ones, whose values are 0 either way.
    src = jnp.argsort(jnp.where(kept, jax.random.uniform(keys[i], (n,)), 2.0))
    dst = jnp.argsort(jnp.where(kept, 0, 1), stable=True)
    out = jnp.zeros_like(flat).at[dst].set(flat[src])
    return jnp.where(kept, out, 0).reshape(jnp.shape(leaf))

  return _map_layers(one, params, paths)


def shuffle_values(
  ticket: Ticket, ctx: PruningContext, key: jax.Array
) -> Ticket:
  """Keeps the mask; permutes each prunable layer's kept starting weights.

  Layer ``l`` with ``k_l`` kept entries gets one uniformly random
  permutation of their values over the same ``k_l`` positions: the mask,
  the layer's multiset of kept values and ``params' = params' * mask``
  stay, the pairing of values with connections does not. Against
  ``shuffle`` (positions and values moved together) it tells whether a
  ticket's wiring or its values-at-positions carry it.

  Args:
    ticket: the ticket to ablate.
    ctx: the context it was found in (its config names the prunable layers).
    key: PRNG key of the permutations.

  Returns:
    The ticket with permuted values (mask, scores, ``batch_stats`` and
    ``info`` unchanged).
  """
  paths, keys = _layer_keys(ctx, key)
  return ticket.replace(
    params=_permute_kept(ticket.params, ticket.mask, paths, keys)
  )


def reinit(ticket: Ticket, ctx: PruningContext, key: jax.Array) -> Ticket:
  """Keeps the mask; draws fresh initial weights (and BatchNorm statistics).

  The new weights come from ``awt.training.init_variables(ctx.model, key,
  ctx.image_shape)`` (the model's own initializers), times the mask.

  Args:
    ticket: the ticket to ablate.
    ctx: the context it was found in (model and input shape).
    key: PRNG key of the new initialization; it must differ from the one
      that drew ``ctx.params``.

  Returns:
    The re-initialized ticket (mask and scores unchanged).
  """
  params, batch_stats = training.init_variables(
    ctx.model, key, tuple(ctx.image_shape)
  )
  return ticket.replace(
    params=masks.apply(params, ticket.mask), batch_stats=batch_stats
  )


def init_weights(ticket: Ticket, ctx: PruningContext, key: jax.Array):
  """Keeps the mask; starts from the network's original initialization.

  ``params' = ctx.params ⊙ mask`` with ``ctx.batch_stats``: the weights
  the search or pretraining started from, not the ones it ended at. For an
  ``awt`` / ``ntt`` ticket this is the search run with
  ``pruning.awt_start="init"``, derived without searching again; unlike
  ``reinit``, no weights are redrawn.

  Args:
    ticket: the ticket to ablate.
    ctx: the context it was found in (its ``params`` are the
      initialization).
    key: unused (nothing is random).

  Returns:
    The ticket on the initialization (mask and scores unchanged).
  """
  del key
  return ticket.replace(
    params=masks.apply(ctx.params, ticket.mask),
    batch_stats=ctx.batch_stats,
    info={**ticket.info, "start": "init"},
  )


def _ticket_scope(ticket: Ticket, ctx: PruningContext) -> str:
  """The ranking scope: the ticket's own (``info["scope"]``), else config's."""
  return str(ticket.info.get("scope", option(ctx, "scope")))


def invert(ticket: Ticket, ctx: PruningContext, key: jax.Array) -> Ticket:
  """Keeps the lowest scores instead of the highest, at the same counts.

  The mask is ``topk(-scores)`` with the ticket's kept count: over all
  prunable layers together for a global ranking, per layer for a layerwise
  one (the scope of ``ticket.info["scope"]``, else ``config.pruning.scope``);
  ties go to the earlier position, as in ``awt.masks.topk``. The ticket
  starts from the initialization ``ctx.params`` times the new mask.

  Args:
    ticket: the ticket to ablate; needs ``scores``.
    ctx: the context it was found in.
    key: unused (the inversion is deterministic).

  Returns:
    The inverted ticket, with scores ``-scores`` (its mask keeps the highest
    of them, like every ticket's).

  Raises:
    ValueError: if the ticket has no scores.
  """
  del key
  if ticket.scores is None:
    raise ValueError(
      f"method {ticket.info.get('method', '?')!r} has no scores to invert; "
      "use an ablation that needs no scores (shuffle, reinit, "
      "random_same_density)"
    )
  paths = scores_lib.prunable(ctx)
  scope = _ticket_scope(ticket, ctx)
  counts = _kept_counts(ticket.mask, paths)
  if scope == "global":
    counts = np.asarray(counts.sum(), np.int32)
  negated = jax.tree.map(jnp.negative, ticket.scores)
  mask = scores_lib._select(negated, paths, counts, scope)
  return ticket.replace(
    mask=mask,
    params=masks.apply(ctx.params, mask),
    batch_stats=ctx.batch_stats,
    scores=negated,
  )


def random_same_density(
  ticket: Ticket, ctx: PruningContext, key: jax.Array
) -> Ticket:
  """A uniformly random mask with exactly the ticket's per-layer counts.

  Layer ``l`` keeps ``k_l`` (the ticket's kept count there) entries chosen
  uniformly at random (the top ``k_l`` of i.i.d. U(0, 1) scores); the
  ticket starts from the initialization ``ctx.params`` times the new mask.

  Args:
    ticket: the ticket to ablate.
    ctx: the context it was found in.
    key: PRNG key of the random scores.

  Returns:
    The random ticket, its scores the U(0, 1) draws (zeros off the prunable
    layers).
  """
  paths = scores_lib.prunable(ctx)
  uniform = scores_lib._uniform(key, ctx.params, paths)
  counts = _kept_counts(ticket.mask, paths)
  mask = scores_lib._select(uniform, paths, counts, "layerwise")
  return ticket.replace(
    mask=mask,
    params=masks.apply(ctx.params, mask),
    batch_stats=ctx.batch_stats,
    scores=uniform,
  )


def _none(ticket: Ticket, ctx: PruningContext, key: jax.Array) -> Ticket:
  del ctx, key
  return ticket


_FUNCTIONS = {
  "none": _none,
  "shuffle": shuffle,
  "shuffle_inputs": shuffle_inputs,
  "shuffle_values": shuffle_values,
  "reinit": reinit,
  "init_weights": init_weights,
  "invert": invert,
  "random_same_density": random_same_density,
}


def apply(name: str, ticket: Ticket, ctx: PruningContext, key: jax.Array):
  """Applies the ablation ``name`` to ``ticket``.

  Args:
    name: one of :data:`ABLATIONS`.
    ticket: a ticket of any method, found in ``ctx``.
    ctx: the pruning context it was found in: the initialization the
      ablations restart from, the model, and ``config.pruning``'s
      ``scope``, ``keep_first`` and ``keep_last``.
    key: PRNG key of the ablation's randomness (permutations, new
      initialization, random mask).

  Returns:
    The ablated :class:`~awt.pruning.Ticket`; its ``info`` is the ticket's
    (``method``, ``passes``, ``wall_time_s``, ...) plus ``ablation``. Pruned
    entries of its weights are exactly zero.

  Raises:
    ValueError: an unknown name (listing the known ones), or ``invert`` of
      a ticket without scores.

  Examples:
    >>> import jax
    >>> from awt import masks, models, pruning, training
    >>> from awt.pruning import ablations
    >>> from experiments.configs import digits_mlp
    >>> config = digits_mlp.get_config("smoke")
    >>> config.pruning.sparsity = 0.9
    >>> model = models.get("mlp", 10, widths=(16,))
    >>> params, stats = training.init_variables(
    ...     model, jax.random.PRNGKey(0), (8, 8, 1))
    >>> ctx = pruning.PruningContext(model, params, stats, None, config,
    ...                              (8, 8, 1))
    >>> ticket = pruning.find("magnitude", ctx, jax.random.PRNGKey(1))
    >>> shuffled = ablations.apply("shuffle", ticket, ctx,
    ...                            jax.random.PRNGKey(2))
    >>> shuffled.info["ablation"], masks.layer_densities(shuffled.mask) == (
    ...     masks.layer_densities(ticket.mask))
    ('shuffle', True)
  """
  if name not in _FUNCTIONS:
    raise ValueError(
      f"unknown ablation {name!r}; known: {', '.join(ABLATIONS)}"
    )
  out = _FUNCTIONS[name](ticket, ctx, key)
  jax.block_until_ready((out.mask, out.params))
  return out.replace(info={**ticket.info, "ablation": name})


__all__ = [
  "ABLATIONS",
  "apply",
  "init_weights",
  "invert",
  "random_same_density",
  "reinit",
  "shuffle",
]
