"""The result of every pruning method and the context every method reads.

A pruning method is a function ``fn(ctx: PruningContext, key) -> Ticket``:
it reads the network at initialization (and, for scores that need data, the
training split and the run's config) and returns the mask it chose together
with the weights the ticket starts training from.
"""

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from awt import checkpoints, workdir
from awt import data as data_lib
from awt.masks import Ticket  # noqa: F401 (the pruning methods' result)

PyTree = Any


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
    checkpoint_dir: where a long search (``awt``, ``ntt``, ``imp``) saves
      its progress with orbax and resumes from it when started again; None
      (library callers, tests): no checkpoints.
    log: receives progress lines of long searches; None: ``absl.logging``.
    pretrain_dir: a directory shared by several searches (a study) where
      the three-stage methods keep the dense networks they pretrain, each
      under a fingerprint of everything that determines it (network at
      init, data, objective, optimizer, epochs, key): HYDRA, one-shot and
      IMP (round 1, rewinding to init) of one seed then train the dense
      net once for every sparsity. None: no sharing.
  """

  model: nn.Module
  params: PyTree
  batch_stats: PyTree
  split: data_lib.Split
  config: Any
  image_shape: tuple[int, ...]
  checkpoint_dir: str | None = None
  log: Callable[[str], None] | None = None
  pretrain_dir: str | None = None


class SearchCheckpoints:
  """Orbax checkpoints of a long search's progress in ``ctx.checkpoint_dir``.

  A search (the AWT/NTT loop, IMP's rounds) saves ``(state, meta)`` at a
  step: ``state`` a pytree of arrays, ``meta`` JSON (the step's history and
  counters). Orbax writes a step into a temporary directory and renames it
  when complete, so a search killed at any moment resumes from its last
  complete step. ``settings`` fingerprint the search (method, options, key,
  data size): a checkpoint written with other settings is refused with one
  line instead of being resumed into a different search. With no directory
  nothing is saved and nothing is restored. Use as a context manager: the
  last (asynchronous) save is finished on exit.

  Args:
    directory: ``ctx.checkpoint_dir`` (None: no checkpoints).
    settings: JSON-able dict of everything that must match to resume.
  """

  def __init__(self, directory: str | None, settings: dict):
    self.directory = directory
    self.settings = json.loads(json.dumps(settings))
    self._mngr = (
      None
      if directory is None
      else checkpoints.manager(directory, max_to_keep=2, subdir=".")
    )

  def __enter__(self) -> "SearchCheckpoints":
    return self

  def __exit__(self, *exc) -> None:
    if self._mngr is not None:
      self._mngr.wait_until_finished()
      self._mngr.close()

  def restore(self, template: PyTree) -> tuple[int, PyTree, dict] | None:
    """``(step, state, meta)`` of the newest complete checkpoint, or None.

    Raises:
      CheckpointError: unreadable, written with other settings, or arrays
        unlike ``template`` (another model).
    """
    if self._mngr is None or self._mngr.latest_step() is None:
      return None
    step = self._mngr.latest_step()
    try:
      meta = self._mngr.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
      )["meta"]
    except Exception as e:  # orbax raises many types; report one line.
      raise checkpoints.CheckpointError(
        f"cannot read search checkpoint step {step} in {self.directory}: "
        f"{type(e).__name__}"
      ) from e
    if not isinstance(meta, dict) or not isinstance(meta.get("settings"), dict):
      raise checkpoints.CheckpointError(
        f"{self.directory} holds no awt search checkpoint"
      )
    diff = workdir.first_difference(meta["settings"], self.settings)
    if diff:
      name, there, here = diff
      raise checkpoints.CheckpointError(
        f"search checkpoint in {self.directory} was written by another "
        f"search ({name}: {_short(there)} there, {_short(here)} here); "
        "remove it to start over"
      )
    diff = workdir.first_difference(meta.get("shapes"), _shapes(template))
    if diff:
      name, there, here = diff
      raise checkpoints.CheckpointError(
        f"search checkpoint in {self.directory} holds another model: "
        f"{name} has shape {_shape(there)} there, {_shape(here)} here"
      )
    state, meta = checkpoints.restore_state(self._mngr, template, step)
    return step, state, meta

  def save(self, step: int, state: PyTree, meta: dict) -> None:
    """Saves ``state`` and ``meta`` (plus settings and shapes) at ``step``."""
    if self._mngr is not None:
      meta = {**meta, "settings": self.settings, "shapes": _shapes(state)}
      checkpoints.save(self._mngr, step, state, meta)


def _shapes(tree: PyTree) -> dict[str, list[int]]:
  """``{"theta/fc1/kernel": [64, 300], ...}`` of a state's arrays."""
  return {
    jax.tree_util.keystr(path, simple=True, separator="/"): list(np.shape(x))
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _shape(value) -> str:
  return "none" if value is None else str(tuple(value))


def key_words(key: jax.Array) -> list[int]:
  """The raw words of a PRNG key, JSON-able (for ``SearchCheckpoints``)."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.asarray(key).ravel().tolist()


def _short(value, limit: int = 60) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[: limit - 3] + "..."
