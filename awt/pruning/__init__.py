"""Pruning methods by name: each finds a ticket (mask + starting weights).

A method is ``fn(ctx: PruningContext, key) -> Ticket``. Pruning at
initialization (``awt.pruning.scores``): ``dense``, ``random``, ``erk``,
``magnitude``, ``snip``, ``grasp``, ``synflow``. Three-stage pipelines
(``awt.pruning.pipelines``): ``one_shot``, ``imp``, ``hydra``, ``dns``.
Each module holds its own ``METHODS`` table; this package merges them.

Examples:
  >>> from awt import pruning
  >>> "snip" in pruning.names()
  True
"""

from collections.abc import Callable

import jax

from awt.pruning import scores
from awt.pruning._ticket import PruningContext, Ticket
from awt.pruning.scores import (
  erk_counts,
  erk_densities,
  grasp_scores,
  hessian_vector_product,
  iterative_synflow,
  snip_scores,
  synflow_scores,
)

METHODS: dict[str, Callable[[PruningContext, jax.Array], Ticket]] = dict(
  scores.METHODS
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


def find(method: str, ctx: PruningContext, key: jax.Array) -> Ticket:
  """Finds the ticket of ``method`` for the network and data in ``ctx``.

  Args:
    method: a registry name (see :func:`names`).
    ctx: the network at initialization, training data and run config.
    key: PRNG key of the method's randomness (data order, random masks,
      attack starts).

  Returns:
    The :class:`Ticket`.

  Raises:
    ValueError: for an unknown method, listing the known ones.
  """
  return get(method)(ctx, key)


__all__ = [
  "METHODS",
  "PruningContext",
  "Ticket",
  "erk_counts",
  "erk_densities",
  "find",
  "get",
  "grasp_scores",
  "hessian_vector_product",
  "iterative_synflow",
  "names",
  "snip_scores",
  "synflow_scores",
]

# The three-stage pipelines register their methods with this package.
from awt.pruning import pipelines as _pipelines  # noqa: E402

METHODS.update(_pipelines.METHODS)

# The NTK-based searches: awt (adversarial) and ntt (clean points).
from awt.pruning import awt as _awt  # noqa: E402

METHODS.update(_awt.METHODS)
