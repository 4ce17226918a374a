"""Orbax checkpoints of a run: everything needed to resume or to evaluate.

Layout under ``<workdir>/checkpoints/<step>/``: an orbax ``state`` item (the
``TrainState`` pytree: step, params, batch_stats, mask, opt_state, key) and a
JSON ``meta`` item (the run's config and the data position). Orbax writes a
step into a temporary directory and renames it when complete, so a
checkpoint is either whole or absent; a run killed mid-save leaves the last
complete one intact. Nothing is pickled.
"""

import contextlib
import json
import os
import sys
import tempfile
import time
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from awt import config as config_lib
from awt import data as data_lib
from awt import masks

PyTree = Any
CHECKPOINT_DIR = "checkpoints"


class CheckpointError(ValueError):
  """A checkpoint directory that cannot be read as an awt run."""


def manager(
  workdir: str, *, max_to_keep: int = 2, subdir: str = CHECKPOINT_DIR
) -> ocp.CheckpointManager:
  """A CheckpointManager for ``<workdir>/<subdir>`` (created if absent)."""
  return ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, subdir)),
    options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    item_names=("state", "meta"),
  )


def save(mngr: ocp.CheckpointManager, step: int, state: PyTree, meta: dict):
  """Saves ``state`` and the JSON-able ``meta`` at ``step`` (async)."""
  mngr.save(
    int(step),
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
    ),
  )


def latest_step(workdir: str) -> int | None:
  """The newest complete checkpoint step in ``workdir``, or None."""
  path = os.path.join(workdir, CHECKPOINT_DIR)
  if not os.path.isdir(path):
    return None
  with manager(workdir) as mngr:
    return mngr.latest_step()


def restore_state(
  mngr: ocp.CheckpointManager, template: PyTree, step: int | None = None
) -> tuple[PyTree, dict]:
  """Restores ``(state, meta)`` shaped like ``template`` (a fresh state).

  Raises:
    CheckpointError: if the checkpoint is unreadable or its arrays do not
      have the template's structure and shapes (a foreign checkpoint).
  """
  step = mngr.latest_step() if step is None else step
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  try:
    with _stderr_kept_on_success():
      restored = mngr.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract),
          meta=ocp.args.JsonRestore(),
        ),
      )
  except Exception as e:  # orbax raises many types; report one line.
    raise CheckpointError(
      f"cannot restore checkpoint step {step} from {mngr.directory}: "
      f"{type(e).__name__}: {_first_words(e)}"
    ) from e
  _check_like(restored["state"], template, mngr.directory)
  return restored["state"], restored["meta"]


_SETTLE_S = 1.0


@contextlib.contextmanager
def _stderr_kept_on_success():
  """Holds back what C++ threads write to fd 2 during a restore.

  A failed restore of a corrupted checkpoint makes tensorstore's callbacks
  print Python tracebacks ("Event loop is closed") from their threads; the
  CheckpointError raised instead says what went wrong in one line. On
  success the held-back output is written out unchanged.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    ok = False
    try:
      yield
      ok = True
    finally:
      if not ok:
        # Let the failed reads' callbacks finish printing into ``held``.
        time.sleep(_SETTLE_S)
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      if ok:
        held.seek(0)
        sys.stderr.write(held.read().decode(errors="replace"))


def _first_words(e: Exception, limit: int = 160) -> str:
  """The start of an error message, one line (orbax appends long specs)."""
  text = str(e).splitlines()[0] if str(e) else ""
  text = text.split(" [tensorstore_spec")[0]
  return text if len(text) <= limit else text[: limit - 3] + "..."


def _mismatch(restored: PyTree, template: PyTree):
  """None where ``restored`` has ``template``'s structure and shapes, else
  ``"structure"`` or the first ``(restored shape, template shape)``."""
  if jax.tree.structure(restored) != jax.tree.structure(template):
    return "structure"
  for x, y in zip(
    jax.tree.leaves(restored), jax.tree.leaves(template), strict=True
  ):
    if x.shape != y.shape:
      return x.shape, y.shape
  return None


def _check_like(restored: PyTree, template: PyTree, where) -> None:
  diff = _mismatch(restored, template)
  if diff == "structure":
    raise CheckpointError(
      f"checkpoint in {where} does not match this run's model/optimizer"
    )
  if diff:
    raise CheckpointError(
      f"checkpoint in {where} has an array of shape {diff[0]} where this "
      f"run's model has {diff[1]}"
    )


def _check_model(model, info, params, stacked: bool, where) -> None:
  """Refuses parameters that the config's model would not take (a
  checkpoint whose recorded config names another model)."""
  x = jax.ShapeDtypeStruct((1, *info.image_shape), jax.numpy.float32)
  abstract = jax.eval_shape(
    lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x
  )["params"]
  if stacked:  # a train_members checkpoint: one leading member axis
    params = jax.tree.map(lambda v: v[0], params)
  if _mismatch(params, abstract):
    raise CheckpointError(
      f"checkpoint in {where} holds parameters that its recorded config's "
      f"model ({model.__class__.__name__}) does not take"
    )


TICKET_DIR = "ticket"


def save_ticket(workdir: str, tree: PyTree, info: dict) -> None:
  """Saves a ticket ``{"params", "batch_stats", "mask"}`` to ``ticket/``.

  Written once, before the ticket is trained, so a restarted find_ticket run
  skips the (possibly expensive) search.
  """
  with manager(workdir, max_to_keep=1, subdir=TICKET_DIR) as mngr:
    save(mngr, 0, tree, info)
    mngr.wait_until_finished()


def restore_ticket(workdir: str, template: PyTree) -> tuple[PyTree, dict]:
  """``(tree, info)`` of a saved ticket, or None if there is none yet."""
  if not os.path.isdir(os.path.join(workdir, TICKET_DIR)):
    return None
  with manager(workdir, subdir=TICKET_DIR) as mngr:
    if mngr.latest_step() is None:
      return None
    return restore_state(mngr, template)


def restore(workdir: str, step: int | None = None) -> dict:
  """Loads a finished or running workdir back into Python.

  Args:
    workdir: a directory written by an awt binary.
    step: checkpoint step (default: the latest).

  Returns:
    ``{"config": ConfigDict, "model": nn.Module, "variables": {"params",
    ["batch_stats"]}, "mask": mask pytree, "step": int, "meta": dict}``;
    ``model.apply(variables, x)`` gives the run's logits. For a
    ``train_members`` workdir, ``meta["members"]`` lists the member names
    and every leaf has a leading member axis (``variables`` of member ``i``:
    ``jax.tree.map(lambda v: v[i], variables)``).

  Raises:
    CheckpointError: no checkpoint, or one that cannot be read.
  """
  path = os.path.join(workdir, CHECKPOINT_DIR)
  if not os.path.isdir(path):
    raise CheckpointError(f"no checkpoints in {workdir!r}")
  with manager(workdir) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no complete checkpoint in {path!r}")
    try:
      restored = mngr.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()
        ),
      )
    except Exception as e:  # orbax raises many types; report one line.
      raise CheckpointError(
        f"cannot read checkpoint step {step} in {path!r}: {type(e).__name__}"
      ) from e
  meta = restored["meta"]
  if not isinstance(meta, dict) or "config" not in meta:
    raise CheckpointError(f"checkpoint in {path!r} is not an awt checkpoint")
  config = ml_collections.ConfigDict(json.loads(meta["config"]))
  state = restored["state"]
  info = data_lib.info(config.data.name)
  model = config_lib.build_model(config, info)
  variables = {"params": state["params"]}
  if state.get("batch_stats"):
    variables["batch_stats"] = state["batch_stats"]
  mask = state["mask"]
  masks.check_compatible(state["params"], mask)
  _check_model(model, info, state["params"], "members" in meta, path)
  return {
    "config": config,
    "model": model,
    "variables": variables,
    "mask": mask,
    "step": int(step),
    "meta": meta,
  }
