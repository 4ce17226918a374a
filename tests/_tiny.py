"""The tiny networks, data and pruning contexts the pruning tests share.

A pruning test builds a :class:`awt.pruning.PruningContext` from four
parts: an MLP on 8x8 digits, its variables at a seed (computed once per
model and seed), a few training images (real digits, or uniform noise
where the data's content does not matter) and a config (usually the
``digits_mlp`` smoke config with a few pruning options).
"""

import functools

import jax
import numpy as np

from awt import data, pruning, training
from experiments.configs import digits_mlp

IMAGE_SHAPE = (8, 8, 1)


@functools.cache
def init(model, seed: int = 0):
  """``(params, batch_stats)`` of ``model`` (hashable) at ``seed``."""
  return training.init_variables(model, jax.random.PRNGKey(seed), IMAGE_SHAPE)


@functools.cache
def digits(n: int) -> data.Split:
  """The first ``n`` training digits."""
  train = data.load("digits").train
  return data.Split(train.images[:n], train.labels[:n])


def noise(n: int, seed: int = 0) -> data.Split:
  """``n`` uniform uint8 images with uniform labels."""
  rng = np.random.default_rng(seed)
  return data.Split(
    rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8),
    rng.integers(0, 10, (n,), dtype=np.int32),
  )


def smoke_config(**pruning_options):
  """``digits_mlp``'s smoke config with ``pruning.<option>`` values set."""
  config = digits_mlp.get_config("smoke")
  for name, value in pruning_options.items():
    config.pruning[name] = value
  return config


def context(model, split, config, *, seed: int = 0, params=None, **fields):
  """The :class:`PruningContext` of ``model`` at ``seed`` (or ``params``).

  ``fields``: the context's optional fields (``checkpoint_dir``, ``log``).
  """
  init_params, batch_stats = init(model, seed)
  return pruning.PruningContext(
    model=model,
    params=init_params if params is None else params,
    batch_stats=batch_stats,
    split=split,
    config=config,
    image_shape=IMAGE_SHAPE,
    **fields,
  )
