"""Pruning methods by name: each finds a ticket (mask + starting weights).

A method is ``fn(ctx: PruningContext, key) -> Ticket``, registered with the
options it reads from ``config.pruning`` (``register(name, fn,
options=...)``; each :class:`Option` declares its name, default, check and
doc once). Pruning at initialization (``awt.pruning.scores``): ``dense``,
``random``, ``erk``, ``magnitude``, ``snip``, ``grasp``, ``synflow``.
Three-stage pipelines (``awt.pruning.pipelines``): ``one_shot``, ``imp``,
``hydra``, ``dns``. The NTK-matching searches (``awt.pruning.awt``):
``awt``, ``ntt``. Pruning a given (trained) network per layer
(``awt.pruning.layer_magnitude``): ``layer_magnitude``. Each module lists
its methods in a ``METHODS`` table of
``name -> (fn, options)``; this package registers them. Every method also
reads the shared options ``sparsity``, ``scope``, ``layer_densities``
(``awt.pruning.allocation``), ``keep_first``, ``keep_last`` and
``ablation``. :func:`option` reads a value,
:func:`defaults` is the ``config.pruning`` block of every config file.

Examples:
  >>> from awt import pruning
  >>> "snip" in pruning.names()
  True
  >>> [o.name for o in pruning.options("synflow")][-1]
  'synflow_iterations'
"""

import dataclasses
from collections.abc import Callable

import jax

from awt import config as config_lib
from awt import masks
from awt.pruning import (
  ablations,
  allocation,
  layer_magnitude,
  pipelines,
  scores,
)
from awt.pruning import awt as _awt
from awt.pruning._options import (
  KEEP_FIRST,
  KEEP_LAST,
  METHODS,
  SCOPE,
  SPARSITY,
  Flag,
  Integer,
  Number,
  OneOf,
  Option,
  check,
  defaults,
  describe,
  option,
  options,
  register,
  share,
  unregister,
)
from awt.pruning._ticket import PruningContext, SearchCheckpoints, Ticket
from awt.pruning.scores import (
  erk_counts,
  erk_densities,
  grasp_scores,
  hessian_vector_product,
  iterative_synflow,
  snip_scores,
  synflow_scores,
)


def names() -> tuple[str, ...]:
  """The registered pruning method names, sorted."""
  return tuple(sorted(METHODS))


def get(method: str) -> Callable[[PruningContext, jax.Array], Ticket]:
  """The method registered under ``method``.

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  if method not in METHODS:
    raise ValueError(
      f"unknown pruning method {method!r}; known: {', '.join(names())}"
    )
  return METHODS[method]


def validate(config, *, methods: tuple[str, ...] | None = None) -> None:
  """``awt.config.validate`` plus every ``pruning.<option>`` checked against
  its declaration (:func:`check`: the value, and no undeclared key).

  Args:
    config: a run config.
    methods: the ``pruning.method`` names the caller supports (default:
      every registered method).

  Raises:
    ConfigError: one line naming the first bad key and its value.
  """
  config_lib.validate(
    config, pruning_methods=names() if methods is None else tuple(methods)
  )
  check(config)


def find(method: str, ctx: PruningContext, key: jax.Array) -> Ticket:
  """Finds the ticket of ``method`` for the network and data in ``ctx``.

  Args:
    method: a registry name (see :func:`names`).
    ctx: the network at initialization, training data and run config.
    key: PRNG key of the method's randomness (data order, random masks,
      attack starts).

  Returns:
    The :class:`Ticket`. With ``pruning.layer_densities`` naming a method
    (``"snip"``), ``method`` prunes inside the allocation that method's own
    global ranking finds with the same ``key``; ``info["allocation_from"]``
    records it (``method``, ``passes``, ``layer_densities``) and
    ``info["passes"]`` includes its passes.

  Raises:
    ValueError: for an unknown method, listing the known ones.
    ConfigError: the named method's allocation empties a layer.
  """
  fn = get(method)
  source = allocation.source(ctx)
  if source is None:
    return fn(ctx, key)
  why = getattr(fn, "fixed_allocation", None)
  if why is not None:  # before the named method's (maybe long) run
    allocation.refuse(ctx, method, why)
  paths = scores.prunable(ctx)
  checkpoint_dir = ctx.checkpoint_dir and f"{ctx.checkpoint_dir}/allocation"
  own = get(source)(
    dataclasses.replace(
      allocation.with_options(ctx, scope="global", layer_densities=""),
      checkpoint_dir=checkpoint_dir,
    ),
    key,
  )
  densities = masks.layer_densities(own.mask, paths)
  empty = [name for name, d in densities.items() if d == 0.0]
  if empty:
    raise config_lib.ConfigError(
      f"pruning.layer_densities={source!r}: {source}'s allocation empties "
      f"{', '.join(empty)}, which a relative allocation cannot give"
    )
  ticket = fn(
    allocation.with_options(ctx, layer_densities=allocation.spec_of(densities)),
    key,
  )
  info = dict(ticket.info)
  info["allocation_from"] = {
    "method": source,
    "passes": int(own.info.get("passes", 0)),
    "layer_densities": densities,
  }
  info["passes"] = (
    int(info.get("passes", 0)) + info["allocation_from"]["passes"]
  )
  return ticket.replace(info=info)


def _register_modules() -> None:
  """The shared options, then every module's ``METHODS`` table."""
  share(
    SPARSITY,
    SCOPE,
    allocation.LAYER_DENSITIES,
    KEEP_FIRST,
    KEEP_LAST,
    ablations.ABLATION,
  )
  for table in (
    scores.METHODS,
    pipelines.METHODS,
    _awt.METHODS,
    layer_magnitude.METHODS,
  ):
    for name, (fn, declared) in table.items():
      register(name, fn, options=declared)


_register_modules()

__all__ = [
  "validate",
  "METHODS",
  "Flag",
  "Integer",
  "Number",
  "OneOf",
  "Option",
  "PruningContext",
  "SearchCheckpoints",
  "Ticket",
  "check",
  "defaults",
  "describe",
  "erk_counts",
  "erk_densities",
  "find",
  "get",
  "grasp_scores",
  "hessian_vector_product",
  "iterative_synflow",
  "names",
  "option",
  "options",
  "register",
  "share",
  "snip_scores",
  "synflow_scores",
  "unregister",
]
