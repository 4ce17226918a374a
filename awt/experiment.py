"""``train_and_evaluate(config, workdir)``: one training run, start to finish.

The binary ``experiments/train.py``, the notebooks and the tests call this
same function. It validates the config before any compute, data-parallelizes
over all local devices with ``jax.pmap``, resumes from the newest complete
checkpoint in ``workdir``, logs progress with rate and ETA, stops at the
first non-finite loss without saving over the last good checkpoint, and
writes the workdir layout of docs/design.md.
"""

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import jax_utils

from awt import attacks, checkpoints, evaluation, masks, pruning, training
from awt import config as config_lib
from awt import data as data_lib
from awt import workdir as workdir_lib
from awt.pruning import awt as pruning_awt

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
    initial: ``{"params", "batch_stats", "mask"}`` to start from (a ticket),
      or None to initialize from ``seed`` and mask by ``config.pruning``.
    reference: the name of another member; the function-space distance to
      it is measured every epoch (see ``function_distance``).
  """

  name: str
  seed: int
  initial: dict | None = None
  reference: str | None = None


class MemberResult(NamedTuple):
  """A trained member: its ``results`` dict and final host arrays."""

  name: str
  results: dict
  params: Any
  batch_stats: Any
  mask: Any


FUNCTION_PROBE = 256  # test points on which members' functions are compared


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


def check_ablation(config) -> str:
  """``config.pruning.ablation`` (default ``"none"``), checked before any
  compute; raises ``ConfigError`` naming an unknown one."""
  from awt.pruning import ablations  # noqa: PLC0415

  ablation = config.pruning.get("ablation", "none")
  if ablation not in ablations.ABLATIONS:
    raise config_lib.ConfigError(
      f"unknown pruning.ablation {ablation!r}; known: "
      f"{', '.join(ablations.ABLATIONS)}"
    )
  return ablation


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
  return jax.tree.map(lambda x: x[i], tree)


def train_and_evaluate(
  config,
  workdir: str,
  *,
  initial: dict | None = None,
  log: Callable[[str], None] = logging.info,
) -> dict:
  """Trains the configured model, evaluates it, and writes ``workdir``.

  Args:
    config: an ``ml_collections.ConfigDict`` following docs/design.md's schema.
    workdir: output directory; an existing checkpoint there is resumed.
    initial: optional ``{"params", "batch_stats", "mask"}`` to start from (a
      ticket); by default the model is initialized from ``config.seed`` and
      masked by ``config.pruning`` (dense, random or magnitude at init).
    log: receives progress lines.

  Returns:
    The ``results.json`` dict: ``clean_accuracy``, ``robust_accuracy``
    (attack name -> accuracy), ``sparsity``, ``wall_time_s``, ``history``
    (per-epoch train loss and clean test accuracy), ...

  Raises:
    ConfigError, WorkdirError, DatasetNotPreparedError, CheckpointError,
    NonFiniteError: each with a one-line message.
  """
  member = Member("run", int(config.seed), initial)
  return _train(config, workdir, [member], vectorized=False, log=log)[0].results


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
  resumes from it), ``members/<name>/results.json``, ``results.json``
  (``{"members": [...]}``) and ``plots/members.png``.

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
  return _train(config, workdir, list(members), vectorized=True, log=log)


def _train(config, workdir, members, *, vectorized, log):
  """``train_and_evaluate`` (one member, no vmap) and ``train_members``."""
  start = time.perf_counter()
  with_ticket = any(m.initial is not None for m in members)
  if with_ticket:
    config_lib.validate(config, pruning_methods=pruning.names())
  else:
    config_lib.validate(config)
  workdir = workdir_lib.prepare(workdir)
  devices = jax.local_devices()
  n_dev = len(devices)
  if config.batch_size % n_dev:
    raise config_lib.ConfigError(
      f"batch_size={config.batch_size} is not divisible by the {n_dev} "
      "local devices"
    )
  dataset = config_lib.load_data(config)
  info = dataset.info
  workdir_lib.write_json(f"{workdir}/config.json", config.to_dict())

  model = config_lib.build_model(config, info, axis_name=AXIS)
  eval_model = config_lib.build_model(config, info)
  steps_per_epoch = data_lib.steps_per_epoch(
    dataset.train.num_examples, config.batch_size
  )
  total_steps = steps_per_epoch * config.num_epochs
  tx = training.make_optimizer(config.optimizer, total_steps)
  states, eval_keys = [], []
  for m in members:
    params, batch_stats, keys = initialize(model, m.seed, info.image_shape)
    if m.initial is None:
      # train.py masks at initialization only (dense, random, magnitude);
      # find_ticket passes every other method's ticket as ``initial``.
      ctx = pruning.PruningContext(
        model=eval_model,
        params=params,
        batch_stats=batch_stats,
        split=dataset.train,
        config=config,
        image_shape=info.image_shape,
      )
      mask = pruning.find(config.pruning.method, ctx, keys.mask).mask
    else:
      masks.check_compatible(params, m.initial["params"])
      masks.check_compatible(params, m.initial["mask"])
      params, mask = m.initial["params"], m.initial["mask"]
      batch_stats = m.initial.get("batch_stats", batch_stats)
    states.append(
      training.create_train_state(params, batch_stats, mask, tx, keys.train)
    )
    eval_keys.append(keys.eval)
  state = _stack(jax.device_get(states)) if vectorized else states[0]

  mngr = checkpoints.manager(workdir)
  resume_step = mngr.latest_step()
  if resume_step is not None:
    state, _ = checkpoints.restore_state(mngr, state, resume_step)
    log(f"resuming from checkpoint at step {resume_step} in {workdir}")
  writer = workdir_lib.MetricsWriter(workdir, resume_step=resume_step)
  meta = {"config": config.to_json(), "dataset": info.name}
  if vectorized:
    meta["members"] = [m.name for m in members]

  step_fn = training.make_train_step(
    model,
    tx,
    config.adversarial,
    axis_name=AXIS,
    steps_per_epoch=steps_per_epoch,
  )
  if vectorized:
    shared_data = len({m.seed for m in members}) == 1
    step_fn = jax.vmap(step_fn, in_axes=(0, None if shared_data else 0))
  p_run = jax.pmap(
    training.scan_steps_fn(step_fn), axis_name=AXIS, donate_argnums=(0,)
  )
  rstate = jax_utils.replicate(state, devices)
  step = int(np.asarray(state.step).reshape(-1)[0])
  chunk = max(1, min(int(config.get("log_every_steps", 50)), steps_per_epoch))
  ckpt_every = int(config.get("checkpoint_every_steps", 0))
  ckpt_every_epochs = int(config.get("checkpoint_every_epochs", 1))
  t_last, step_last = time.perf_counter(), step
  what = f"{len(members)} members (vectorized)" if vectorized else "one run"
  log(
    f"training {config.model.name} on {info.name}: {total_steps} steps "
    f"({config.num_epochs} epochs x {steps_per_epoch}), batch "
    f"{config.batch_size} over {n_dev} device(s), "
    f"objective {config.adversarial.method}, {what}"
  )

  def eval_apply(variables, x):
    return eval_model.apply(variables, x, train=False)

  eval_batch = min(config.eval.batch_size, dataset.test.num_examples)
  clean_evaluator = evaluation.make_evaluator(eval_apply)
  probe = _FunctionProbe(config, eval_apply, dataset.test, members)

  def member_state(host, i):
    return _unstack(host, i) if vectorized else host

  last_saved = [resume_step]

  def save(s):
    host = jax.device_get(jax.tree.map(lambda x: x[0], s))
    host_step = int(np.asarray(host.step).reshape(-1)[0])
    if last_saved[0] == host_step:
      return host
    if not _all_finite(host.params):
      raise NonFiniteError(
        f"parameters are not finite at step {host_step}; "
        "last good checkpoint kept"
      )
    checkpoints.save(mngr, host_step, host, meta)
    last_saved[0] = host_step
    return host

  def epoch_end(host, epoch):
    """Clean test accuracy (and function distances) of every member."""
    record, per_member = {}, []
    outputs = probe.outputs(
      [member_state(host, i) for i in range(len(members))]
    )
    for i, m in enumerate(members):
      s = member_state(host, i)
      row = {"epoch": epoch}
      row["clean_accuracy"] = evaluation.evaluate(
        eval_apply,
        training.model_variables(s.params, s.batch_stats),
        dataset.test,
        batch_size=eval_batch,
        evaluator=clean_evaluator,
      )["clean_accuracy"]
      row.update(outputs[i])
      per_member.append(row)
      prefix = f"members/{m.name}/" if vectorized else ""
      for k, v in row.items():
        if k != "epoch":
          record[f"eval/{prefix}{k}"] = v
    return record, per_member

  histories = _read_histories(writer.path, members, vectorized, steps_per_epoch)
  try:
    if step == 0 and not histories[0]:
      record, rows = epoch_end(jax.device_get(state), 0)
      for h, r in zip(histories, rows, strict=True):
        h.append(r)
      if record:
        writer.write(0, record)
    epoch_losses = []
    while step < total_steps:
      epoch, offset = divmod(step, steps_per_epoch)
      streams = [
        _chunks(
          dataset.train,
          config.batch_size,
          seed=s,
          epoch=epoch,
          start_step=offset,
          chunk=chunk,
          n_dev=n_dev,
        )
        for s in (
          [members[0].seed]
          if not vectorized or shared_data
          else [m.seed for m in members]
        )
      ]
      chunks = data_lib.prefetch(
        streams[0] if len(streams) == 1 else _zip_members(streams)
      )
      for stacked in chunks:
        n = stacked["label"].shape[1]
        rstate, metrics = p_run(rstate, stacked)
        losses = np.asarray(metrics["loss"][0])  # [S] or [S, M]
        bad = np.argwhere(~np.isfinite(losses.reshape(n, -1)))
        if bad.size:
          t, i = bad[0]
          who = f" (member {members[i].name})" if vectorized else ""
          raise NonFiniteError(
            f"loss is {losses.reshape(n, -1)[t, i]} at step "
            f"{step + t + 1}{who}; stopping, last good checkpoint kept"
          )
        prev, step = step, step + n
        epoch_losses.append(losses.reshape(n, -1))
        now = time.perf_counter()
        rate = (step - step_last) * config.batch_size / (now - t_last)
        m = {f"train/{k}": float(np.mean(v[0])) for k, v in metrics.items()}
        if vectorized:
          for k, v in metrics.items():
            per = np.mean(np.asarray(v[0]), axis=0)
            for i, mem in enumerate(members):
              m[f"train/members/{mem.name}/{k}"] = float(per[i])
        m["train/images_per_s"] = rate * len(members)
        writer.write(step, m)
        eta = (total_steps - step) * config.batch_size / max(rate, 1e-9)
        log(
          f"step {step}/{total_steps} epoch {epoch + 1} "
          f"loss {m['train/loss']:.4f} acc {m['train/accuracy']:.3f} "
          f"{rate * len(members):.0f} img/s ETA {workdir_lib.fmt_duration(eta)}"
        )
        t_last, step_last = now, step
        if ckpt_every and step // ckpt_every > prev // ckpt_every:
          save(rstate)
      host = jax.device_get(jax.tree.map(lambda x: x[0], rstate))
      record, rows = epoch_end(host, step // steps_per_epoch)
      # Mean over the steps of this epoch run since the last (re)start.
      epoch_loss = np.mean(np.concatenate(epoch_losses), axis=0)
      epoch_losses = []
      for i, (h, r) in enumerate(zip(histories, rows, strict=True)):
        r["train_loss"] = float(epoch_loss[i])
        prefix = f"members/{members[i].name}/" if vectorized else ""
        record[f"train/{prefix}epoch_loss"] = r["train_loss"]
        h.append(r)
      writer.write(step, record)
      if (
        ckpt_every_epochs and (step // steps_per_epoch) % ckpt_every_epochs == 0
      ):
        save(rstate)
    final = save(rstate)
  finally:
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  train_time = time.perf_counter() - start

  results_list = []
  # Ensembles run in AutoAttack's cascade; one compilation per attack.
  compiled = {}
  for i, m in enumerate(members):
    s = member_state(final, i)
    log(
      f"evaluating {m.name if vectorized else 'the model'}: "
      f"{', '.join(config.eval.attacks) or 'clean'} on the "
      f"{dataset.held_out} split"
    )
    ev = evaluation.evaluate_cascade(
      eval_apply,
      training.model_variables(s.params, s.batch_stats),
      dataset.test,
      attack_names=tuple(config.eval.attacks),
      eps=config.eval.eps,
      norm=config.eval.norm,
      batch_size=eval_batch,
      key=eval_keys[i],
      log=log,
      cache=compiled,
    )
    results = {
      "clean_accuracy": ev["clean_accuracy"],
      "robust_accuracy": ev["robust_accuracy"],
      "eval_eps": config.eval.eps,
      "eval_norm": config.eval.norm,
      "eval_split": dataset.held_out,
      "sparsity": masks.sparsity(s.mask),
      "layer_densities": masks.layer_densities(s.mask),
      "steps": int(s.step),
      "train_time_s": train_time,
      "wall_time_s": time.perf_counter() - start,
      "num_devices": n_dev,
      "history": histories[i],
    }
    if vectorized:
      results.update(name=m.name, seed=m.seed, reference=m.reference)
      os.makedirs(f"{workdir}/members/{m.name}", exist_ok=True)
      workdir_lib.write_json(
        f"{workdir}/members/{m.name}/results.json", results
      )
    robust = ", ".join(
      f"{k} {v:.4f}" for k, v in results["robust_accuracy"].items()
    )
    log(
      f"{m.name + ': ' if vectorized else ''}done in "
      f"{results['wall_time_s']:.1f}s: clean {results['clean_accuracy']:.4f}"
      + (f", robust at eps {config.eval.eps}: {robust}" if robust else "")
    )
    results_list.append(
      MemberResult(m.name, results, s.params, s.batch_stats, s.mask)
    )
  title = f"{config.model.name} / {info.name} / {config.adversarial.method}"
  if vectorized:
    workdir_lib.write_json(
      f"{workdir}/results.json",
      {"members": [r.results for r in results_list]},
    )
    workdir_lib.plot_members(
      {r.name: r.results["history"] for r in results_list},
      f"{workdir}/plots/members.png",
      title=title,
    )
  else:
    workdir_lib.write_json(f"{workdir}/results.json", results_list[0].results)
    workdir_lib.plot_training(
      workdir_lib.read_jsonl(f"{workdir}/metrics.jsonl"),
      f"{workdir}/plots/training.png",
      title=title,
    )
  return results_list


def _zip_members(streams):
  """Stacks per-member chunks on a member axis: ``[n_dev, S, M, B/n, ...]``."""
  for group in zip(*streams, strict=True):
    yield {k: np.stack([g[k] for g in group], axis=2) for k in group[0]}


def _read_histories(path, members, vectorized, steps_per_epoch):
  """Per-member epoch rows already in ``metrics.jsonl`` (for a resume)."""
  histories = [[] for _ in members]
  for record in workdir_lib.read_jsonl(path):
    for i, m in enumerate(members):
      prefix = f"members/{m.name}/" if vectorized else ""
      row = {
        k[len(f"eval/{prefix}") :]: v
        for k, v in record.items()
        if k.startswith(f"eval/{prefix}") and "/" not in k[len(prefix) + 5 :]
      }
      loss = record.get(f"train/{prefix}epoch_loss")
      if row or loss is not None:
        row = {"epoch": record["step"] // steps_per_epoch, **row}
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


NTK_PROBE = 64  # training points on which tickets' NTKs are compared


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


def find_ticket(
  config,
  workdir: str,
  *,
  base: tuple[dict, dict] | None = None,
  pretrain_dir: str | None = None,
  log: Callable[[str], None] = logging.info,
) -> tuple[dict, dict]:
  """Finds (or reloads) the ticket ``config.pruning`` names, at init.

  The search starts from the initialization ``train_and_evaluate`` uses for
  the dense run with the same ``config.seed``, so a ticket and its dense
  counterpart differ only in the mask (and, for three-stage methods and the
  NTK searches, the starting weights). ``pruning.ablation`` (default
  ``"none"``) then applies one of ``awt.pruning.ablations`` to it. The
  ticket is saved to ``<workdir>/ticket`` and described in
  ``ticket.json``; a restarted run reuses it.

  ``base``: the ``(tree, info)`` of the same method's unablated ticket
  (same config otherwise), from which ``shuffle``, ``reinit`` and
  ``random_same_density`` are derived without searching again (their
  ``find_cost`` is the base's); ``invert`` needs the method's scores, so it
  always searches. ``pretrain_dir``: shared directory of dense
  pretrainings (``PruningContext.pretrain_dir``).

  Returns:
    ``(tree, info)``: ``tree`` is ``{"params", "batch_stats", "mask"}`` at
    init (the ticket's starting point); ``info`` holds ``method``,
    ``ablation``, ``passes``, ``wall_time_s``, ``sparsity``,
    ``layer_densities``, ``find_cost`` and ``ntk_distance_at_init``
    (relative Frobenius distance of the ticket's adversarial NTK — the
    sparse network's, over its kept weights — to the dense net's on 64
    training points attacked with PGD against the dense net; the kernel
    over all weights at the ticket's weights is
    ``ntk_distance_at_init_all_weights``).
  """
  config_lib.validate(config, pruning_methods=pruning.names())
  ablation = check_ablation(config)
  from awt.pruning import ablations  # noqa: PLC0415

  workdir = workdir_lib.prepare(workdir)
  dataset = config_lib.load_data(config)
  info = dataset.info
  model = config_lib.build_model(config, info)
  params, batch_stats, keys = initialize(model, config.seed, info.image_shape)
  mask_key = keys.mask
  template = {"params": params, "batch_stats": batch_stats, "mask": params}
  saved = checkpoints.restore_ticket(workdir, template)
  method = config.pruning.method
  label = method if ablation == "none" else f"{method}/{ablation}"
  if saved is not None:
    tree, ticket_info = saved
    log(f"reusing the {label} ticket saved in {workdir}/ticket")
  else:
    log(
      f"finding a {label} ticket at sparsity {config.pruning.sparsity} "
      f"({config.pruning.scope})"
    )
    ctx = pruning.PruningContext(
      model=model,
      params=params,
      batch_stats=batch_stats,
      split=dataset.train,
      config=config,
      image_shape=info.image_shape,
      checkpoint_dir=f"{workdir}/search",
      log=log,
      pretrain_dir=pretrain_dir,
    )
    t0 = time.perf_counter()
    if base is not None and ablation not in ("none", "invert"):
      tree0, info0 = base
      ticket = pruning.Ticket(
        mask=tree0["mask"],
        params=tree0["params"],
        batch_stats=tree0["batch_stats"],
        scores=None,
        info={k: v for k, v in info0.items() if k != "find_cost"},
      )
      t0 -= float(info0["wall_time_s"])
    else:
      ticket = pruning.find(method, ctx, mask_key)
    ticket = ablations.apply(
      ablation, ticket, ctx, jax.random.fold_in(mask_key, 2)
    )
    tree = {
      "params": ticket.params,
      "batch_stats": ticket.batch_stats,
      "mask": ticket.mask,
    }
    tree = jax.device_get(tree)
    ticket_info = dict(ticket.info)
    ticket_info["method"] = method
    ticket_info["ablation"] = ablation
    # A resumed search reports the time of all its attempts.
    ticket_info["wall_time_s"] = max(
      time.perf_counter() - t0, float(ticket.info.get("wall_time_s", 0.0))
    )
    ticket_info["sparsity"] = masks.sparsity(tree["mask"])
    ticket_info["layer_densities"] = masks.layer_densities(tree["mask"])
    (
      ticket_info["ntk_distance_at_init"],
      ticket_info["ntk_distance_at_init_all_weights"],
    ) = pruning_awt.adversarial_ntk_distances(
      model,
      batch_stats,
      params,
      tree["params"],
      tree["mask"],
      dataset.train.images[:NTK_PROBE].astype(np.float32) / 255.0,
      dataset.train.labels[:NTK_PROBE],
      jax.random.fold_in(mask_key, 1),
      probe_attack(config),
    )
    checkpoints.save_ticket(workdir, tree, ticket_info)
    shutil.rmtree(f"{workdir}/search", ignore_errors=True)
    workdir_lib.write_json(f"{workdir}/ticket.json", ticket_info)
    from awt import plots  # noqa: PLC0415

    plots.plot_layer_densities(
      {label: ticket_info["layer_densities"]},
      f"{workdir}/plots/layer_densities.png",
      title=f"{label} ticket, sparsity {ticket_info['sparsity']:.3f}",
    )
    log(
      f"{label} ticket: sparsity {ticket_info['sparsity']:.4f}, "
      f"{ticket_info['passes']} passes, {ticket_info['wall_time_s']:.1f}s"
    )
  ticket_info["find_cost"] = {
    "wall_time_s": float(ticket_info["wall_time_s"]),
    "passes": int(ticket_info["passes"]),
  }
  log(
    "adversarial-NTK distance to the dense net at init: "
    f"{ticket_info['ntk_distance_at_init']:.4f}"
  )
  return tree, ticket_info


def dense_initial(config, info=None) -> dict:
  """The dense network at ``config.seed``'s init as a ``Member.initial``."""
  info = info or data_lib.info(config.data.name)
  model = config_lib.build_model(config, info)
  params, batch_stats, _ = initialize(model, config.seed, info.image_shape)
  return {
    "params": params,
    "batch_stats": batch_stats,
    "mask": masks.ones(params),
  }


_TICKET_KEYS = (
  "method",
  "ablation",
  "find_cost",
  "ntk_distance_at_init",
)


def find_ticket_and_train(
  config,
  workdir: str,
  *,
  train: bool = True,
  dense_reference: bool = True,
  log: Callable[[str], None] = logging.info,
) -> dict:
  """Finds the ticket ``config.pruning`` names, then trains it.

  Training is ``train_and_evaluate``'s with the ticket as starting point,
  so every method gets the same objective, schedule and evaluation. With
  ``dense_reference`` (and a method other than dense), the dense network
  with the same seed is trained alongside in the same vectorized program
  (``train_members``: same batches, same attack randomness), and the
  ticket's function-space distance to it is recorded every epoch — the
  dynamics check of Shi et al. (AISTATS 2022, Sec. 5). The checkpoints then
  hold both members (``meta["members"] = [method, "dense"]``).

  Returns:
    ``results.json``'s dict: the ticket's ``train_and_evaluate`` results
    plus ``method``, ``ablation``, ``find_cost`` (``wall_time_s``,
    ``passes``), ``ntk_distance_at_init``, and with a reference run
    ``history`` rows with ``function_distance_{clean,adv}`` and
    ``dense_reference`` (the dense run's accuracies and history). Without
    training, the ticket info.
  """
  tree, ticket_info = find_ticket(config, workdir, log=log)
  if not train:
    return ticket_info
  extra = {k: ticket_info[k] for k in _TICKET_KEYS}
  if not dense_reference or config.pruning.method == "dense":
    results = train_and_evaluate(config, workdir, initial=tree, log=log)
  else:
    seed = int(config.seed)
    ticket, dense = train_members(
      config,
      workdir,
      [
        Member("ticket", seed, tree, reference="dense"),
        Member("dense", seed, dense_initial(config)),
      ],
      log=log,
    )
    results = dict(ticket.results)
    results["dense_reference"] = {
      k: dense.results[k]
      for k in ("clean_accuracy", "robust_accuracy", "history")
    }
  results.update(extra)
  workdir_lib.write_json(f"{workdir}/results.json", results)
  return results
