"""Training: ``train_and_evaluate`` (one run) and ``train_members`` (several).

A single run is a vectorized run of one member: one code path trains both,
as named steps (``_prepare``, ``_initial_state``, ``_Checkpoints``,
``_fit``, ``_evaluate_members``, ``_write_results``). A run starts from a
ticket ``awt.tickets.find`` made (or the dense network at init); this module
does not prune. It validates the config before any compute, data-parallelizes
over all local devices with ``jax.pmap``, resumes from the newest complete
checkpoint in ``workdir``, logs progress with rate and ETA, stops at the
first non-finite loss without saving over the last good checkpoint, and
writes the workdir layout of docs/design.md.
"""

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import jax_utils

from awt import attacks, checkpoints, curves, evaluation, masks, training
from awt import config as config_lib
from awt import data as data_lib
from awt import workdir as workdir_lib

AXIS = "batch"


class NonFiniteError(FloatingPointError):
  """Loss or parameters became NaN/Inf; the run stops without saving."""


def _chunks(split, batch_size, *, seed, epoch, start_step, chunk, n_dev):
  """Groups of up to ``chunk`` batches of one epoch, stacked and sharded.

  Yields ``{"image": [n_dev, S, B/n_dev, H, W, C], "label": ..., "index":
  ...}``: S consecutive steps for one pmapped ``lax.scan``. ``index`` is each
  example's position in the global batch (for per-example randomness).
  """
  index = np.arange(batch_size, dtype=np.int32)
  group = []
  it = data_lib.batches(
    split, batch_size, seed=seed, epoch=epoch, start_step=start_step
  )
  for batch in it:
    batch["index"] = index
    group.append(batch)
    if len(group) == chunk:
      yield _stack_and_shard(group, n_dev)
      group = []
  if group:
    yield _stack_and_shard(group, n_dev)


def _stack_and_shard(group, n_dev):
  out = {}
  for k in group[0]:
    v = np.stack([b[k] for b in group])  # [S, B, ...]
    v = v.reshape(v.shape[0], n_dev, v.shape[1] // n_dev, *v.shape[2:])
    out[k] = np.swapaxes(v, 0, 1)  # [n_dev, S, B / n_dev, ...]
  return out


def _all_finite(tree) -> bool:
  return all(bool(np.all(np.isfinite(x))) for x in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class Member:
  """One run inside a vectorized ``train_members`` program.

  Attributes:
    name: unique name; the member's results go to ``members/<name>/``.
    seed: as ``config.seed`` for a single run: initialization (when
      ``initial`` is None), data order and attack randomness.
    initial: the ticket to start from (``awt.tickets.find``), or None for
      the dense network at ``seed``'s initialization.
    reference: the name of another member; the function-space distance to
      it is measured every epoch (see ``function_distance``).
  """

  name: str
  seed: int
  initial: masks.Ticket | None = None
  reference: str | None = None


class MemberResult(NamedTuple):
  """A trained member: its ``results`` dict and final host arrays."""

  name: str
  results: dict
  params: Any
  batch_stats: Any
  mask: Any


FUNCTION_PROBE = 256  # test points on which members' functions are compared
EVALUATION_FILE = "evaluation.json"  # a member's robust evaluation, kept


class RunKeys(NamedTuple):
  """The four keys a run derives from its seed: ``split(PRNGKey(seed), 4)``."""

  init: jax.Array  # the network's initialization
  mask: jax.Array  # the ticket search (and find_ticket's probe attack)
  train: jax.Array  # training's attacks
  eval: jax.Array  # evaluation's attacks


def run_keys(seed: int) -> RunKeys:
  """The keys of a run with ``seed``; every entry point uses these."""
  return RunKeys(*jax.random.split(jax.random.PRNGKey(seed), 4))


def initialize(model, seed: int, image_shape) -> tuple[Any, Any, RunKeys]:
  """``(params, batch_stats, keys)``: the network of ``seed`` at init.

  The initialization every entry point shares (training, find_ticket, the
  NTK report, the benchmarks), so a ticket found in one is the ticket of
  the same seed in another.
  """
  keys = run_keys(seed)
  params, batch_stats = training.init_variables(model, keys.init, image_shape)
  return params, batch_stats, keys


def function_distance(logits_a: jax.Array, logits_b: jax.Array) -> jax.Array:
  """Mean Euclidean distance between two networks' logits on a probe set.

  .. math:: \\frac{1}{n} \\sum_i \\|f_a(x_i) - f_b(x_i)\\|_2

  The function-space distance of Shi et al. (AISTATS 2022, Sec. 5), used to
  check that a ticket trained from scratch follows the dense run.

  Args:
    logits_a, logits_b: ``[n, C]`` logits on the same points.

  Returns:
    A float32 scalar.
  """
  return jnp.mean(jnp.linalg.norm(logits_a - logits_b, axis=-1))


def _stack(trees):
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def _unstack(tree, i):
  """Member ``i`` of a stacked host tree (arrays, never numpy scalars)."""
  return jax.tree.map(lambda x: np.asarray(x[i]), tree)


def train_and_evaluate(
  config,
  workdir: str,
  *,
  initial: masks.Ticket | None = None,
  log: Callable[[str], None] = logging.info,
) -> dict:
  """Trains the configured model, evaluates it, and writes ``workdir``.

  Args:
    config: an ``ml_collections.ConfigDict`` following docs/design.md's schema.
    workdir: output directory; an existing checkpoint there is resumed,
      and an evaluation kept there (``evaluation.json``) of the same
      weights under the same ``eval`` config is read instead of redone.
    initial: the ticket to start from (``awt.tickets.find``); None: the
      dense network at ``config.seed``'s initialization (then
      ``config.pruning.method`` must be ``"dense"``: ``awt.tickets.train``
      finds the mask of any other method first).
    log: receives progress lines.

  Returns:
    The ``results.json`` dict: ``clean_accuracy``, ``robust_accuracy``
    (attack name -> accuracy), ``sparsity``, ``wall_time_s``, ``history``
    (per-epoch train loss and clean test accuracy), ``epochs_at_chance``
    and ``stalled`` (``awt.curves``), ...

  Raises:
    ConfigError, WorkdirError, DatasetNotPreparedError, CheckpointError,
    NonFiniteError: each with a one-line message.
  """
  member = Member("run", int(config.seed), initial)
  return _train(config, workdir, [member], single=True, log=log)[0].results


def train_members(
  config,
  workdir: str,
  members: Sequence[Member],
  *,
  log: Callable[[str], None] = logging.info,
) -> list[MemberResult]:
  """Trains several runs of one config in one compiled program.

  The members' train states are stacked on a leading axis and every step is
  ``jax.vmap``-ed over it inside the pmapped ``lax.scan``, so S seeds (or a
  dense run and its tickets) cost one compilation and run as batched
  kernels. Member ``m`` computes what ``train_and_evaluate`` computes for
  ``config`` with ``seed=m.seed`` and ``initial=m.initial`` (equal to float
  rounding: batched and single kernels may sum in different orders); its
  data order and attack starts come from its own seed, so a ticket and the
  dense run with the same seed see the same batches and attack randomness.

  Every epoch, each member with a ``reference`` is compared with it on a
  fixed probe of the first ``FUNCTION_PROBE`` test points (clean) and on PGD
  points of the training attack against the reference at that epoch
  (``function_distance``); the epoch-0 value is taken at initialization.

  Writes ``config.json``, ``metrics.jsonl`` (per member under
  ``members/<name>/``), ``checkpoints/`` (the stacked state; a restarted run
  resumes from it), ``members/<name>/evaluation.json`` (each member's
  robust evaluation, written as soon as it is done; a restarted run reads
  it instead of evaluating the same weights again), ``members/<name>/
  results.json``, ``results.json`` (``{"members": [...]}``) and
  ``plots/members.png``.

  Args:
    config: the shared config (its ``seed`` is ignored: members have theirs).
    workdir: output directory.
    members: the runs; names unique, references naming other members.
    log: receives progress lines.

  Returns:
    One ``MemberResult`` per member, in order, with ``results`` as in
    ``train_and_evaluate`` plus ``name``, ``seed`` and ``history``.
  """
  names = [m.name for m in members]
  if not members or len(set(names)) != len(names):
    raise config_lib.ConfigError(f"member names must be unique: {names}")
  for m in members:
    if m.reference is not None and m.reference not in names:
      raise config_lib.ConfigError(
        f"member {m.name!r} references unknown member {m.reference!r}"
      )
  return _train(config, workdir, list(members), single=False, log=log)


def _train(config, workdir, members, *, single, log) -> list[MemberResult]:
  """Every run is a vectorized run of its members (one for a single run)."""
  start = time.perf_counter()
  run = _prepare(config, workdir, members, single)
  state, eval_keys = _initial_state(run)
  ckpt = _Checkpoints(run, state, log)
  writer = workdir_lib.MetricsWriter(run.workdir, resume_step=ckpt.resume_step)
  try:
    state = _fit(run, ckpt.restored(state), ckpt, writer, log)
    final = ckpt.save(state)
  finally:
    ckpt.close()
    writer.close()
  histories = _read_histories(writer.path, run)
  results = _evaluate_members(
    run, final, eval_keys, histories, time.perf_counter() - start, start, log
  )
  _write_results(run, results)
  return results


@dataclasses.dataclass(frozen=True)
class _Run:
  """What a training run resolved its config to, before any step."""

  config: Any
  workdir: str
  members: list[Member]
  single: bool  # one run: results at the top of ``workdir``, no member names
  dataset: data_lib.Dataset
  model: Any  # with the pmap axis (BatchNorm statistics synced over it)
  eval_model: Any
  tx: Any
  steps_per_epoch: int
  devices: list

  @property
  def total_steps(self) -> int:
    return self.steps_per_epoch * self.config.num_epochs

  @property
  def chance(self) -> float | None:
    """ln K under a cross-entropy objective, None under TRADES
    (``curves.objective_chance``)."""
    return curves.objective_chance(
      self.config.adversarial.method, self.dataset.info.num_classes
    )

  @property
  def shared_data(self) -> bool:
    """All members see the same batches (one data stream, not vmapped)."""
    return len({m.seed for m in self.members}) == 1

  @property
  def eval_batch(self) -> int:
    return min(self.config.eval.batch_size, self.dataset.test.num_examples)

  def eval_apply(self, variables, x):
    """Logits in eval mode (BatchNorm: running statistics)."""
    return self.eval_model.apply(variables, x, train=False)

  def prefix(self, i: int) -> str:
    """Metric-key prefix of member ``i``: ``""`` or ``"members/<name>/"``."""
    return "" if self.single else f"members/{self.members[i].name}/"


def _prepare(config, workdir, members, single) -> _Run:
  """Validates the config, loads the data, builds model and optimizer."""
  method = config.pruning.method
  if method != "dense" and any(m.initial is None for m in members):
    raise config_lib.ConfigError(
      f"pruning.method={method!r}, but a member has no ticket: training "
      "starts from the ticket it is given (awt.tickets.find; "
      "awt.tickets.train for a mask at init) or from the dense net"
    )
  # A ticket's method was checked by whoever found it (awt.tickets).
  config_lib.validate(config, pruning_methods=(method,))
  workdir = workdir_lib.prepare(workdir)
  devices = jax.local_devices()
  if config.batch_size % len(devices):
    raise config_lib.ConfigError(
      f"batch_size={config.batch_size} is not divisible by the "
      f"{len(devices)} local devices"
    )
  dataset = config_lib.load_data(config)
  _check_resumed_config(workdir, config)
  workdir_lib.write_json(f"{workdir}/config.json", config.to_dict())
  steps_per_epoch = data_lib.steps_per_epoch(
    dataset.train.num_examples, config.batch_size
  )
  return _Run(
    config=config,
    workdir=workdir,
    members=members,
    single=single,
    dataset=dataset,
    model=config_lib.build_model(config, dataset.info, axis_name=AXIS),
    eval_model=config_lib.build_model(config, dataset.info),
    tx=training.make_optimizer(
      config.optimizer, steps_per_epoch * config.num_epochs
    ),
    steps_per_epoch=steps_per_epoch,
    devices=devices,
  )


# What a resumed run may change: how long it trains (the schedule is
# rebuilt for the new length), how it is evaluated, logged and
# checkpointed, where its data are read from, how members are stepped.
RESUMABLE_KEYS = (
  "num_epochs",
  "eval",
  "log_every_steps",
  "checkpoint_every_epochs",
  "checkpoint_every_steps",
  "member_map",
  "data.data_dir",
)


def _check_resumed_config(workdir: str, config) -> None:
  """Refuses to resume a workdir's checkpoints under another training config.

  ``config.json`` records the config the checkpoints were trained with; a
  rerun that changes anything but ``RESUMABLE_KEYS`` would continue them
  as another run (or, with other shapes, fail to restore) and overwrite
  that record.

  Raises:
    ConfigError: one line naming the first differing key.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path) or checkpoints.latest_step(workdir) is None:
    return  # nothing to continue (or killed before its first checkpoint)
  try:
    with open(path) as f:
      there = json.load(f)
  except (OSError, ValueError):
    return  # unreadable record: the checkpoint's own check still applies
  here = workdir_lib.normalized(config.to_dict())
  for key in RESUMABLE_KEYS:
    *parents, leaf = key.split(".")
    for tree in (there, here):
      for p in parents:
        tree = tree.get(p, {}) if isinstance(tree, dict) else {}
      if isinstance(tree, dict):
        tree.pop(leaf, None)
  workdir_lib.check_same(
    workdir,
    "checkpoints trained with another config",
    there,
    here,
    config_lib.ConfigError,
  )


def _initial_state(run: _Run):
  """The members' stacked train states ``[M, ...]`` and evaluation keys."""
  states, eval_keys = [], []
  image_shape = run.dataset.info.image_shape
  for m in run.members:
    params, batch_stats, keys = initialize(run.model, m.seed, image_shape)
    mask = masks.ones(params)
    if m.initial is not None:
      masks.check_compatible(params, m.initial.params)
      masks.check_compatible(params, m.initial.mask)
      params, mask = m.initial.params, m.initial.mask
      batch_stats = m.initial.batch_stats
    states.append(
      training.create_train_state(params, batch_stats, mask, run.tx, keys.train)
    )
    eval_keys.append(keys.eval)
  return _stack(jax.device_get(states)), eval_keys


class _Checkpoints:
  """The run's checkpoints: resume from the newest, save without clobbering.

  A single run stores its state without the member axis (the layout of
  every single-run checkpoint), a vectorized run the stacked state.
  """

  def __init__(self, run: _Run, state, log):
    self.run = run
    self.mngr = checkpoints.manager(run.workdir)
    self.resume_step = self.mngr.latest_step()
    self.last_saved = self.resume_step
    self.log = log
    self.meta = {
      "config": run.config.to_json(),
      "dataset": run.dataset.info.name,
    }
    if not run.single:
      self.meta["members"] = [m.name for m in run.members]

  def restored(self, state):
    """``state``, or the newest checkpoint's state in its place."""
    if self.resume_step is None:
      return state
    on_disk = _unstack(state, 0) if self.run.single else state
    on_disk, _ = checkpoints.restore_state(self.mngr, on_disk, self.resume_step)
    self.log(
      f"resuming from checkpoint at step {self.resume_step} in "
      f"{self.run.workdir}"
    )
    return _stack([on_disk]) if self.run.single else on_disk

  def save(self, rstate):
    """Saves the replicated state (once per step); returns it on the host.

    Raises:
      NonFiniteError: the parameters are not finite (nothing is written).
    """
    host = jax.device_get(jax.tree.map(lambda x: x[0], rstate))
    step = int(np.asarray(host.step).reshape(-1)[0])
    if self.last_saved == step:
      return host
    if not _all_finite(host.params):
      raise NonFiniteError(
        f"parameters are not finite at step {step}; last good checkpoint kept"
      )
    checkpoints.save(
      self.mngr, step, _unstack(host, 0) if self.run.single else host, self.meta
    )
    self.last_saved = step
    return host

  def close(self):
    self.mngr.wait_until_finished()
    self.mngr.close()


def member_map(how: str, params) -> str:
  """``"vmap"`` or ``"loop"``: how ``train_members`` steps its members.

  ``"vmap"`` batches every member's step into one (``jax.vmap``); ``"loop"``
  runs them one after another inside the same compiled step (``lax.map``, a
  scan over the member axis), so each convolution stays an unbatched one.
  ``"auto"`` is ``"loop"`` exactly when the backend is the CPU and the net
  has a convolution (a 4-D kernel): vmapped, XLA:CPU runs LeNet-5's
  convolutions as batched ones, and 8 LeNet-5 members trained 1.64x slower
  than one after another (mnist5k, 2 cores, ``benchmarks.seeds``,
  benchmarks/README.md), while 8 MLP members ran about as fast either way
  and accelerators want the batched kernels.

  Args:
    how: one of ``config.MEMBER_MAPS``.
    params: one member's parameters, or the members' stacked ``[M, ...]``.

  Returns:
    ``"vmap"`` or ``"loop"``.
  """
  if how != "auto":
    return how
  if jax.default_backend() != "cpu":
    return "vmap"
  has_conv = any(leaf.ndim >= 4 for leaf in jax.tree.leaves(params))
  return "loop" if has_conv else "vmap"


def _over_members(step_fn, how: str, shared_data: bool):
  """``step_fn(state, batch)`` over the members' leading axis, ``how`` the
  ``member_map``; with ``shared_data`` one batch goes to every member."""
  if how == "vmap":
    return jax.vmap(step_fn, in_axes=(0, None if shared_data else 0))
  if shared_data:
    return lambda states, batch: jax.lax.map(
      lambda state: step_fn(state, batch), states
    )
  return lambda states, batches: jax.lax.map(
    lambda pair: step_fn(*pair), (states, batches)
  )


def _compiled_steps(run: _Run, how: str):
  """``(replicated state, [n_dev, S, (M,) B/n_dev, ...] chunk) -> (state,
  metrics)``: S steps of every member in one pmapped ``lax.scan``, the
  members mapped as ``how`` (``member_map``) says."""
  step_fn = training.make_train_step(
    run.model,
    run.tx,
    run.config.adversarial,
    axis_name=AXIS,
    steps_per_epoch=run.steps_per_epoch,
  )
  step_fn = _over_members(step_fn, how, run.shared_data)
  return jax.pmap(
    training.scan_steps_fn(step_fn), axis_name=AXIS, donate_argnums=(0,)
  )


def _epoch_chunks(run: _Run, step: int, chunk: int):
  """The rest of the epoch ``step`` is in, in chunks of ``chunk`` steps."""
  epoch, offset = divmod(step, run.steps_per_epoch)
  seeds = (
    [run.members[0].seed] if run.shared_data else [m.seed for m in run.members]
  )
  streams = [
    _chunks(
      run.dataset.train,
      run.config.batch_size,
      seed=s,
      epoch=epoch,
      start_step=offset,
      chunk=chunk,
      n_dev=len(run.devices),
    )
    for s in seeds
  ]
  return data_lib.prefetch(
    streams[0] if len(streams) == 1 else _zip_members(streams)
  )


def _fit(run: _Run, state, ckpt: _Checkpoints, writer, log):
  """Trains until ``total_steps``: chunks of steps, an evaluation per epoch,
  checkpoints; returns the replicated state."""
  config = run.config
  how = member_map(config.get("member_map", "auto"), state.params)
  p_run = _compiled_steps(run, how)
  rstate = jax_utils.replicate(state, run.devices)
  step = int(np.asarray(state.step).reshape(-1)[0])
  chunk = max(
    1, min(int(config.get("log_every_steps", 50)), run.steps_per_epoch)
  )
  ckpt_every = int(config.get("checkpoint_every_steps", 0))
  ckpt_every_epochs = int(config.get("checkpoint_every_epochs", 1))
  progress = _Progress(run, step, how, log)
  epochs = _EpochEval(run)
  records = workdir_lib.read_jsonl(writer.path)
  histories = _histories(records, run)
  if step == 0 and not histories[0]:
    writer.write(0, epochs.record(state, 0, None))
  watch = _ChanceWatch(run, histories, log)
  epoch_losses = _epoch_losses_so_far(records, run, step)
  while step < run.total_steps:
    for stacked in _epoch_chunks(run, step, chunk):
      rstate, metrics = p_run(rstate, stacked)
      prev, step = step, step + stacked["label"].shape[1]
      epoch_losses.append(_check_finite(run, metrics, prev))
      writer.write(step, progress.update(step, metrics))
      if ckpt_every and step // ckpt_every > prev // ckpt_every:
        ckpt.save(rstate)
    host = jax.device_get(jax.tree.map(lambda x: x[0], rstate))
    epoch_loss = np.mean(np.concatenate(epoch_losses), axis=0)
    epoch_losses = []
    epoch = step // run.steps_per_epoch
    writer.write(step, epochs.record(host, epoch, epoch_loss))
    watch.update(epoch, epoch_loss)
    if ckpt_every_epochs and epoch % ckpt_every_epochs == 0:
      ckpt.save(rstate)
  return rstate


def _epoch_losses_so_far(
  records: list[dict], run: _Run, step: int
) -> list[np.ndarray]:
  """The training losses ``[S, M]`` of the epoch ``step`` is in, up to
  ``step``, rebuilt from the chunk records of ``metrics.jsonl``.

  A run resumed in the middle of an epoch would otherwise average that
  epoch's loss over the steps since the restart only, and the epoch loss
  feeds the stall watch, ``curves`` and the results. Each chunk record
  holds its steps' mean loss per member (``train/<prefix>loss``), so each
  is repeated over its steps: the same mean, up to rounding. Empty at an
  epoch boundary, or where the records do not cover the epoch up to
  ``step`` (then the mean is over the steps since the restart).
  """
  start = step - step % run.steps_per_epoch
  keys = [f"train/{run.prefix(i)}loss" for i in range(len(run.members))]
  losses, last = [], start
  for record in records:
    if start < record["step"] <= step and all(k in record for k in keys):
      n = record["step"] - last
      losses.append(np.tile([[record[k] for k in keys]], (n, 1)))
      last = record["step"]
  return losses if last == step else []


def _check_finite(run: _Run, metrics, step: int) -> np.ndarray:
  """The chunk's losses ``[S, M]``; raises at the first non-finite one."""
  losses = np.asarray(metrics["loss"][0])
  bad = np.argwhere(~np.isfinite(losses))
  if bad.size:
    t, i = bad[0]
    who = "" if run.single else f" (member {run.members[i].name})"
    raise NonFiniteError(
      f"loss is {losses[t, i]} at step {step + t + 1}{who}; stopping, last "
      "good checkpoint kept"
    )
  return losses


class _Progress:
  """Training metrics of each chunk, and a log line with rate and ETA."""

  def __init__(self, run: _Run, step: int, how: str, log):
    self.run, self.log = run, log
    self.t_last, self.step_last = time.perf_counter(), step
    info, config = run.dataset.info, run.config
    mapped = "vectorized" if how == "vmap" else "one after another"
    what = "one run" if run.single else f"{len(run.members)} members ({mapped})"
    log(
      f"training {config.model.name} on {info.name}: {run.total_steps} steps "
      f"({config.num_epochs} epochs x {run.steps_per_epoch}), batch "
      f"{config.batch_size} over {len(run.devices)} device(s), "
      f"objective {config.adversarial.method}, {what}"
    )

  def update(self, step: int, metrics) -> dict:
    """The record of the chunk that ended at ``step`` (and a log line)."""
    run, batch = self.run, self.run.config.batch_size
    now = time.perf_counter()
    rate = (step - self.step_last) * batch / (now - self.t_last)
    m = {f"train/{k}": float(np.mean(v[0])) for k, v in metrics.items()}
    if not run.single:
      for k, v in metrics.items():
        per = np.mean(np.asarray(v[0]), axis=0)
        for i in range(len(run.members)):
          m[f"train/{run.prefix(i)}{k}"] = float(per[i])
    m["train/images_per_s"] = rate * len(run.members)
    eta = (run.total_steps - step) * batch / max(rate, 1e-9)
    self.log(
      f"step {step}/{run.total_steps} epoch "
      f"{(step - 1) // run.steps_per_epoch + 1} "
      f"loss {m['train/loss']:.4f} acc {m['train/accuracy']:.3f} "
      f"{rate * len(run.members):.0f} img/s ETA {workdir_lib.fmt_duration(eta)}"
    )
    self.t_last, self.step_last = now, step
    return m


class _ChanceWatch:
  """Names, every epoch, the members still at the constant classifier's loss.

  Once the attack budget is full (after ``adversarial.eps_warmup_epochs``,
  else after the first epoch), a member whose epoch training loss has
  never fallen below ``curves.ESCAPE_FRACTION * ln K`` gets a log line: its
  output does not depend on its input yet, and if that lasts it is a
  stall (``curves.stalled``). A study's mean would otherwise hide it
  until its table is written. Off under TRADES, whose loss is not the
  cross-entropy alone (``curves.objective_chance``).
  """

  def __init__(self, run: _Run, histories: list[list[dict]], log):
    self.run, self.log = run, log
    self.histories = [list(h) for h in histories]  # epoch 0 has no train_loss
    ramp = training.eps_warmup_steps(
      run.config.adversarial, run.steps_per_epoch
    )
    self.full_budget = max(1, -(-ramp // run.steps_per_epoch))

  def update(self, epoch: int, epoch_loss) -> None:
    """Adds ``epoch``'s losses ``[M]`` and logs the members still at chance."""
    run, chance = self.run, self.run.chance
    for i, loss in enumerate(epoch_loss):
      self.histories[i].append({"epoch": epoch, "train_loss": float(loss)})
    if epoch < self.full_budget or chance is None:
      return
    stuck = [
      m.name
      for m, h in zip(run.members, self.histories, strict=True)
      if curves.still_at_chance(h, chance)
    ]
    if not stuck:
      return
    who = (
      "the training loss is"
      if run.single
      else f"{len(stuck)} of {len(run.members)} members' training losses are"
    )
    since = (
      f", full attack budget since epoch {self.full_budget}"
      if self.full_budget > 1
      else ""
    )
    names = "" if run.single else ": " + ", ".join(stuck)
    self.log(
      f"epoch {epoch}: {who} still at the constant classifier's "
      f"(every epoch >= {curves.ESCAPE_FRACTION:g} ln "
      f"{run.dataset.info.num_classes} = "
      f"{curves.ESCAPE_FRACTION * chance:.3f}{since}){names}"
    )


class _EpochEval:
  """Clean test accuracy and function distances of every member per epoch."""

  def __init__(self, run: _Run):
    self.run = run
    self.apply = run.eval_apply
    self.batch = run.eval_batch
    self.evaluator = evaluation.make_evaluator(self.apply)
    self.probe = _FunctionProbe(
      run.config, self.apply, run.dataset.test, run.members
    )

  def record(self, host, epoch: int, epoch_loss) -> dict:
    """The ``eval/...`` (and ``train/...epoch_loss``) record of ``epoch``."""
    run = self.run
    states = [_unstack(host, i) for i in range(len(run.members))]
    outputs = self.probe.outputs(states)
    record = {}
    for i, s in enumerate(states):
      row = {
        "clean_accuracy": evaluation.evaluate(
          self.apply,
          training.model_variables(s.params, s.batch_stats),
          run.dataset.test,
          batch_size=self.batch,
          evaluator=self.evaluator,
        )["clean_accuracy"],
        **outputs[i],
      }
      record.update({f"eval/{run.prefix(i)}{k}": v for k, v in row.items()})
      if epoch_loss is not None:
        record[f"train/{run.prefix(i)}epoch_loss"] = float(epoch_loss[i])
    return record


def _evaluate_members(run, final, eval_keys, histories, train_time, start, log):
  """Every member's robust evaluation (``config.eval``) and results dict."""
  config = run.config
  out, compiled = [], {}  # one compilation per attack, shared by members
  for i, m in enumerate(run.members):
    s = _unstack(final, i)
    log(
      f"evaluating {'the model' if run.single else m.name}: "
      f"{', '.join(config.eval.attacks) or 'clean'} on the "
      f"{run.dataset.held_out} split"
    )
    path = _evaluation_path(run, m)
    identity = _evaluation_identity(run, s, eval_keys[i])
    ev = _stored_evaluation(path, identity)
    if ev is None:
      ev = evaluation.evaluate_cascade(
        run.eval_apply,
        training.model_variables(s.params, s.batch_stats),
        run.dataset.test,
        attack_names=tuple(config.eval.attacks),
        eps=config.eval.eps,
        norm=config.eval.norm,
        batch_size=run.eval_batch,
        key=eval_keys[i],
        log=log,
        cache=compiled,
      )
      os.makedirs(os.path.dirname(path), exist_ok=True)
      workdir_lib.write_json(path, {"identity": identity, **ev})
    else:
      log(f"the same weights were evaluated before: {path}")
    results = {
      "clean_accuracy": ev["clean_accuracy"],
      "robust_accuracy": ev["robust_accuracy"],
      "eval_eps": config.eval.eps,
      "eval_norm": config.eval.norm,
      "eval_split": run.dataset.held_out,
      "sparsity": masks.sparsity(s.mask),
      "layer_densities": masks.layer_densities(s.mask),
      "steps": int(s.step),
      "train_time_s": train_time,
      "wall_time_s": time.perf_counter() - start,
      "num_devices": len(run.devices),
      "epochs_at_chance": curves.epochs_at_chance(histories[i], run.chance),
      "stalled": curves.stalled(histories[i], run.chance),
      "history": histories[i],
    }
    if not run.single:
      results.update(name=m.name, seed=m.seed, reference=m.reference)
    robust = ", ".join(
      f"{k} {v:.4f}" for k, v in results["robust_accuracy"].items()
    )
    log(
      f"{'' if run.single else m.name + ': '}done in "
      f"{results['wall_time_s']:.1f}s: clean {results['clean_accuracy']:.4f}"
      + (f", robust at eps {config.eval.eps}: {robust}" if robust else "")
      + (
        "; stalled: its training loss ended within "
        f"{curves.STALL_MARGIN:.0%} of ln {run.dataset.info.num_classes}, "
        "the constant classifier's"
        if results["stalled"]
        else ""
      )
    )
    out.append(MemberResult(m.name, results, s.params, s.batch_stats, s.mask))
  return out


def _evaluation_path(run: _Run, member: Member) -> str:
  """Where a member's evaluation is kept as soon as it is done."""
  if run.single:
    return f"{run.workdir}/{EVALUATION_FILE}"
  return f"{run.workdir}/members/{member.name}/{EVALUATION_FILE}"


def _evaluation_identity(run: _Run, state, key) -> dict:
  """What a kept evaluation must match to stand for a fresh one.

  The SHA-256 of the evaluated variables' bytes (parameters, BatchNorm
  statistics, mask), the ``eval`` and ``data`` configs, the held-out split
  and the attacks' key: equal identities give equal evaluations, so a run
  killed during its evaluation resumes without redoing the members it had
  finished, while retrained weights or a changed attack are evaluated anew.
  Returned as its JSON round trip (tuples as lists), as read back from disk.
  """
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves((state.params, state.batch_stats, state.mask)):
    a = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{a.dtype}{a.shape}".encode())
    digest.update(a.tobytes())
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  identity = {
    "variables_sha256": digest.hexdigest(),
    "eval": run.config.eval.to_dict(),
    "data": run.config.data.to_dict(),
    "split": run.dataset.held_out,
    "key": np.asarray(key).tolist(),
  }
  return json.loads(json.dumps(identity))


def _stored_evaluation(path: str, identity: dict) -> dict | None:
  """The evaluation kept at ``path`` if its identity is ``identity``."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      kept = json.load(f)
  except (OSError, ValueError):
    return None  # unreadable: evaluate again, and overwrite it
  if not isinstance(kept, dict) or kept.pop("identity", None) != identity:
    return None
  return kept


def _write_results(run: _Run, results: list[MemberResult]) -> None:
  """``results.json`` and the training plot(s) of the workdir layout."""
  config, workdir = run.config, run.workdir
  title = (
    f"{config.model.name} / {run.dataset.info.name} / "
    f"{config.adversarial.method}"
  )
  if run.single:
    workdir_lib.write_json(f"{workdir}/results.json", results[0].results)
    workdir_lib.plot_training(
      workdir_lib.read_jsonl(f"{workdir}/metrics.jsonl"),
      f"{workdir}/plots/training.png",
      title=title,
    )
    return
  for r in results:
    os.makedirs(f"{workdir}/members/{r.name}", exist_ok=True)
    workdir_lib.write_json(
      f"{workdir}/members/{r.name}/results.json", r.results
    )
  workdir_lib.write_json(
    f"{workdir}/results.json", {"members": [r.results for r in results]}
  )
  workdir_lib.plot_members(
    {r.name: r.results["history"] for r in results},
    f"{workdir}/plots/members.png",
    title=title,
  )


def _zip_members(streams):
  """Stacks per-member chunks on a member axis: ``[n_dev, S, M, B/n, ...]``."""
  for group in zip(*streams, strict=True):
    yield {k: np.stack([g[k] for g in group], axis=2) for k in group[0]}


def _read_histories(path, run: _Run) -> list[list[dict]]:
  """Per-member epoch rows in ``metrics.jsonl`` (``_histories``)."""
  return _histories(workdir_lib.read_jsonl(path), run)


def _histories(records: list[dict], run: _Run) -> list[list[dict]]:
  """Per-member epoch rows of ``records``: ``epoch``, the ``eval/`` values
  of that epoch and ``train_loss`` (none at epoch 0)."""
  histories = [[] for _ in run.members]
  for record in records:
    for i in range(len(run.members)):
      prefix = run.prefix(i)
      row = {
        k[len(f"eval/{prefix}") :]: v
        for k, v in record.items()
        if k.startswith(f"eval/{prefix}") and "/" not in k[len(prefix) + 5 :]
      }
      loss = record.get(f"train/{prefix}epoch_loss")
      if row or loss is not None:
        row = {"epoch": record["step"] // run.steps_per_epoch, **row}
        if loss is not None:
          row["train_loss"] = loss
        histories[i].append(row)
  return histories


class _FunctionProbe:
  """Logits of members on fixed clean and adversarial probe points."""

  def __init__(self, config, eval_apply, split, members):
    self.members = members
    self.index = {m.name: i for i, m in enumerate(members)}
    n = min(FUNCTION_PROBE, split.num_examples)
    self.x = jnp.asarray(split.images[:n], jnp.float32) / 255.0
    self.y = jnp.asarray(split.labels[:n])
    attack = probe_attack(config)
    key = jax.random.PRNGKey(0)
    self.keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))

    def logits(variables, x):
      return eval_apply(variables, x)

    def adv_points(variables):
      return attacks.pgd(
        lambda x: logits(variables, x),
        self.x,
        self.y,
        self.keys,
        eps=attack["eps"],
        step_size=attack["step_size"],
        steps=attack["steps"],
        norm=attack["norm"],
        random_start=True,
        select="last",
      )

    self._logits = jax.jit(logits)
    self._adv = jax.jit(adv_points)

  def outputs(self, states) -> list[dict]:
    """``function_distance_{clean,adv}`` of each member to its reference."""
    rows = [{} for _ in states]
    refs = {m.reference for m in self.members if m.reference is not None}
    for ref in sorted(refs):
      r = states[self.index[ref]]
      r_vars = training.model_variables(r.params, r.batch_stats)
      x_adv = self._adv(r_vars)
      r_clean = self._logits(r_vars, self.x)
      r_adv = self._logits(r_vars, x_adv)
      for i, m in enumerate(self.members):
        if m.reference != ref:
          continue
        v = training.model_variables(states[i].params, states[i].batch_stats)
        rows[i] = {
          "function_distance_clean": float(
            function_distance(self._logits(v, self.x), r_clean)
          ),
          "function_distance_adv": float(
            function_distance(self._logits(v, x_adv), r_adv)
          ),
        }
    return rows


def probe_attack(config) -> dict:
  """The attack of the NTK probe: the training attack, or PGD-10 at eval eps."""
  adv = config.adversarial
  if adv.method in ("pgd_at", "trades"):
    return {
      "eps": adv.eps,
      "step_size": adv.step_size,
      "steps": adv.steps,
      "norm": adv.norm,
    }
  eps = config.eval.eps
  return {
    "eps": eps,
    "step_size": eps / 4,
    "steps": 10,
    "norm": config.eval.norm,
  }
