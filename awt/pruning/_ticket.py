"""The result of every pruning method and the context every method reads.

A pruning method is a function ``fn(ctx: PruningContext, key) -> Ticket``:
it reads the network at initialization (and, for scores that need data, the
training split and the run's config) and returns the mask it chose together
with the weights the ticket starts training from.
"""

import dataclasses
from typing import Any

import flax.linen as nn
from flax import struct

from awt import data as data_lib

PyTree = Any


@struct.dataclass
class Ticket:
  """A sparse sub-network chosen by a pruning method.

  Attributes:
    mask: {0, 1} float mask with the structure of ``params`` (see
      ``awt.masks``): prunable kernels hold the choice, other leaves ones.
    params: the weights the ticket starts training from, ``params * mask``
      (pruned entries exactly zero).
    batch_stats: BatchNorm statistics to start from (``{}`` if none).
    scores: per-weight scores with the structure of ``params`` where the
      method has them, else None. Higher means more important: the mask
      keeps the highest scores (``awt.masks.topk``), so ranking ``-scores``
      gives the complement ("inverted") ticket.
    info: static metadata, at least ``method`` (registry name), ``passes``
      (forward+backward passes spent finding the ticket, an int) and
      ``wall_time_s`` (seconds, device work included).
  """

  mask: PyTree
  params: PyTree
  batch_stats: PyTree
  scores: PyTree | None
  info: dict = struct.field(pytree_node=False)


@dataclasses.dataclass(frozen=True)
class PruningContext:
  """Everything a pruning method may read.

  Attributes:
    model: the flax module (from ``awt.models.get``).
    params: its parameters at initialization.
    batch_stats: its BatchNorm statistics at initialization (``{}`` if none).
    split: the training data (``awt.data.Split``).
    config: the run's ``ml_collections.ConfigDict`` (or a mapping of the
      same shape): ``pruning.{method, sparsity, scope, keep_first,
      keep_last, ...}``, ``adversarial.{norm, eps, step_size, steps}``,
      ``batch_size``, ``seed``, ``optimizer``.
    image_shape: ``(H, W, C)`` of one input image.
  """

  model: nn.Module
  params: PyTree
  batch_stats: PyTree
  split: data_lib.Split
  config: Any
  image_shape: tuple[int, ...]
