"""``train_and_evaluate(config, workdir)``: one training run, start to finish.

The binary ``experiments/train.py``, the notebooks and the tests call this
same function. It validates the config before any compute, data-parallelizes
over all local devices with ``jax.pmap``, resumes from the newest complete
checkpoint in ``workdir``, logs progress with rate and ETA, stops at the
first non-finite loss without saving over the last good checkpoint, and
writes the workdir layout of DESIGN.md.
"""

import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging
from flax import jax_utils

from awt import checkpoints, evaluation, masks, pruning, training
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


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _all_finite(tree) -> bool:
  return all(bool(np.all(np.isfinite(x))) for x in jax.tree.leaves(tree))


def train_and_evaluate(
  config,
  workdir: str,
  *,
  initial: dict | None = None,
  log: Callable[[str], None] = logging.info,
) -> dict:
  """Trains the configured model, evaluates it, and writes ``workdir``.

  Args:
    config: an ``ml_collections.ConfigDict`` following DESIGN.md's schema.
    workdir: output directory; an existing checkpoint there is resumed.
    initial: optional ``{"params", "batch_stats", "mask"}`` to start from (a
      ticket); by default the model is initialized from ``config.seed`` and
      masked by ``config.pruning`` (dense, random or magnitude at init).
    log: receives progress lines.

  Returns:
    The ``results.json`` dict: ``clean_accuracy``, ``robust_accuracy``
    (attack name -> accuracy), ``sparsity``, ``wall_time_s``, ...

  Raises:
    ConfigError, WorkdirError, DatasetNotPreparedError, CheckpointError,
    NonFiniteError: each with a one-line message.
  """
  start = time.perf_counter()
  if initial is None:
    config_lib.validate(config)
  else:
    config_lib.validate(config, pruning_methods=pruning.names())
  workdir = workdir_lib.prepare(workdir)
  devices = jax.local_devices()
  n_dev = len(devices)
  if config.batch_size % n_dev:
    raise config_lib.ConfigError(
      f"batch_size={config.batch_size} is not divisible by the {n_dev} "
      "local devices"
    )
  dataset = data_lib.load(config.data.name, data_dir=config.data.data_dir)
  info = dataset.info
  workdir_lib.write_json(f"{workdir}/config.json", config.to_dict())

  model = config_lib.build_model(config, info, axis_name=AXIS)
  eval_model = config_lib.build_model(config, info)
  init_key, mask_key, train_key, eval_key = jax.random.split(
    jax.random.PRNGKey(config.seed), 4
  )
  params, batch_stats = training.init_variables(
    model, init_key, info.image_shape
  )
  if initial is None:
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
    mask = pruning.find(config.pruning.method, ctx, mask_key).mask
  else:
    masks.check_compatible(params, initial["params"])
    masks.check_compatible(params, initial["mask"])
    params, mask = initial["params"], initial["mask"]
    batch_stats = initial.get("batch_stats", batch_stats)
  steps_per_epoch = data_lib.steps_per_epoch(
    dataset.train.num_examples, config.batch_size
  )
  total_steps = steps_per_epoch * config.num_epochs
  tx = training.make_optimizer(config.optimizer, total_steps)
  state = training.create_train_state(params, batch_stats, mask, tx, train_key)

  mngr = checkpoints.manager(workdir)
  resume_step = mngr.latest_step()
  if resume_step is not None:
    state, _ = checkpoints.restore_state(mngr, state, resume_step)
    log(f"resuming from checkpoint at step {resume_step} in {workdir}")
  writer = workdir_lib.MetricsWriter(workdir, resume_step=resume_step)
  meta = {"config": config.to_json(), "dataset": info.name}

  p_run = jax.pmap(
    training.scan_steps_fn(
      training.make_train_step(model, tx, config.adversarial, axis_name=AXIS)
    ),
    axis_name=AXIS,
    donate_argnums=(0,),
  )
  rstate = jax_utils.replicate(state, devices)
  step = int(state.step)
  chunk = max(1, min(int(config.get("log_every_steps", 50)), steps_per_epoch))
  ckpt_every = int(config.get("checkpoint_every_steps", 0))
  ckpt_every_epochs = int(config.get("checkpoint_every_epochs", 1))
  t_last, step_last = time.perf_counter(), step
  log(
    f"training {config.model.name} on {info.name}: {total_steps} steps "
    f"({config.num_epochs} epochs x {steps_per_epoch}), batch "
    f"{config.batch_size} over {n_dev} device(s), "
    f"objective {config.adversarial.method}"
  )

  def eval_apply(variables, x):
    return eval_model.apply(variables, x, train=False)

  def eval_variables(s):
    return training.model_variables(s.params, s.batch_stats)

  eval_batch = min(config.eval.batch_size, dataset.test.num_examples)
  clean_evaluator = evaluation.make_evaluator(eval_apply)

  last_saved = [resume_step]

  def save(s):
    host = jax.device_get(jax.tree.map(lambda x: x[0], s))
    if last_saved[0] == int(host.step):
      return host
    if not _all_finite(host.params):
      raise NonFiniteError(
        f"parameters are not finite at step {int(host.step)}; "
        "last good checkpoint kept"
      )
    checkpoints.save(mngr, int(host.step), host, meta)
    last_saved[0] = int(host.step)
    return host

  try:
    while step < total_steps:
      epoch, offset = divmod(step, steps_per_epoch)
      chunks = data_lib.prefetch(
        _chunks(
          dataset.train,
          config.batch_size,
          seed=config.seed,
          epoch=epoch,
          start_step=offset,
          chunk=chunk,
          n_dev=n_dev,
        )
      )
      for stacked in chunks:
        n = stacked["label"].shape[1]
        rstate, metrics = p_run(rstate, stacked)
        losses = np.asarray(metrics["loss"][0])
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
          raise NonFiniteError(
            f"loss is {losses[bad[0]]} at step {step + bad[0] + 1}; "
            "stopping, last good checkpoint kept"
          )
        prev, step = step, step + n
        now = time.perf_counter()
        rate = (step - step_last) * config.batch_size / (now - t_last)
        m = {f"train/{k}": float(np.mean(v[0])) for k, v in metrics.items()}
        m["train/images_per_s"] = rate
        writer.write(step, m)
        eta = (total_steps - step) * config.batch_size / max(rate, 1e-9)
        log(
          f"step {step}/{total_steps} epoch {epoch + 1} "
          f"loss {m['train/loss']:.4f} acc {m['train/accuracy']:.3f} "
          f"{rate:.0f} img/s ETA {_fmt_time(eta)}"
        )
        t_last, step_last = now, step
        if ckpt_every and step // ckpt_every > prev // ckpt_every:
          save(rstate)
      host = jax.device_get(jax.tree.map(lambda x: x[0], rstate))
      clean = evaluation.evaluate(
        eval_apply,
        eval_variables(host),
        dataset.test,
        batch_size=eval_batch,
        evaluator=clean_evaluator,
      )["clean_accuracy"]
      writer.write(step, {"eval/clean_accuracy": clean})
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

  log(f"evaluating {', '.join(config.eval.attacks) or 'clean'} on the test set")
  ev = evaluation.evaluate(
    eval_apply,
    eval_variables(final),
    dataset.test,
    attack_names=tuple(config.eval.attacks),
    eps=config.eval.eps,
    norm=config.eval.norm,
    batch_size=eval_batch,
    key=eval_key,
    log=log,
  )
  results = {
    "clean_accuracy": ev["clean_accuracy"],
    "robust_accuracy": ev["robust_accuracy"],
    "eval_eps": config.eval.eps,
    "eval_norm": config.eval.norm,
    "sparsity": masks.sparsity(final.mask),
    "layer_densities": masks.layer_densities(final.mask),
    "steps": int(final.step),
    "train_time_s": train_time,
    "wall_time_s": time.perf_counter() - start,
    "num_devices": n_dev,
  }
  workdir_lib.write_json(f"{workdir}/results.json", results)
  workdir_lib.plot_training(
    workdir_lib.read_jsonl(f"{workdir}/metrics.jsonl"),
    f"{workdir}/plots/training.png",
    title=f"{config.model.name} / {info.name} / {config.adversarial.method}",
  )
  robust = ", ".join(
    f"{k} {v:.4f}" for k, v in results["robust_accuracy"].items()
  )
  log(
    f"done in {results['wall_time_s']:.1f}s: "
    f"clean {results['clean_accuracy']:.4f}"
    + (f", robust at eps {config.eval.eps}: {robust}" if robust else "")
  )
  return results


NTK_PROBE = 64  # training points on which tickets' NTKs are compared


def _probe_attack(config) -> dict:
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


def find_ticket_and_train(
  config,
  workdir: str,
  *,
  train: bool = True,
  log: Callable[[str], None] = logging.info,
) -> dict:
  """Finds the ticket ``config.pruning.method`` names, then trains it.

  The ticket search starts from the same initialization (``config.seed``)
  that ``train_and_evaluate`` uses for the dense run, so a ticket and its
  dense counterpart differ only in the mask (and, for three-stage methods,
  the starting weights). The ticket (mask + starting weights) is saved to
  ``<workdir>/ticket`` and described in ``ticket.json`` before training;
  a restarted run reuses it. Training is ``train_and_evaluate`` with the
  ticket as its starting point, so every method gets the same objective,
  schedule and evaluation.

  Returns:
    ``results.json``'s dict with ``method``, ``find_cost`` (``wall_time_s``,
    ``passes``) and ``ntk_distance_at_init`` (relative Frobenius distance
    of the ticket's adversarial NTK to the dense net's, on 64 training
    points attacked with PGD against the dense net) added; without
    training, the ticket info with the same keys.
  """
  config_lib.validate(config, pruning_methods=pruning.names())
  workdir = workdir_lib.prepare(workdir)
  dataset = data_lib.load(config.data.name, data_dir=config.data.data_dir)
  info = dataset.info
  model = config_lib.build_model(config, info)
  init_key, mask_key, _, _ = jax.random.split(
    jax.random.PRNGKey(config.seed), 4
  )
  params, batch_stats = training.init_variables(
    model, init_key, info.image_shape
  )
  template = {"params": params, "batch_stats": batch_stats, "mask": params}
  saved = checkpoints.restore_ticket(workdir, template)
  method = config.pruning.method
  if saved is not None:
    tree, ticket_info = saved
    log(f"reusing the {method} ticket saved in {workdir}/ticket")
  else:
    log(
      f"finding a {method} ticket at sparsity {config.pruning.sparsity} "
      f"({config.pruning.scope})"
    )
    ctx = pruning.PruningContext(
      model=model,
      params=params,
      batch_stats=batch_stats,
      split=dataset.train,
      config=config,
      image_shape=info.image_shape,
    )
    t0 = time.perf_counter()
    ticket = pruning.find(method, ctx, mask_key)
    tree = {
      "params": ticket.params,
      "batch_stats": ticket.batch_stats,
      "mask": ticket.mask,
    }
    tree = jax.device_get(tree)
    ticket_info = dict(ticket.info)
    ticket_info["wall_time_s"] = time.perf_counter() - t0
    ticket_info["sparsity"] = masks.sparsity(tree["mask"])
    ticket_info["layer_densities"] = masks.layer_densities(tree["mask"])
    checkpoints.save_ticket(workdir, tree, ticket_info)
    workdir_lib.write_json(f"{workdir}/ticket.json", ticket_info)
    log(
      f"{method} ticket: sparsity {ticket_info['sparsity']:.4f}, "
      f"{ticket_info['passes']} passes, {ticket_info['wall_time_s']:.1f}s"
    )
  find_cost = {
    "wall_time_s": float(ticket_info["wall_time_s"]),
    "passes": int(ticket_info["passes"]),
  }
  probe = dataset.train.images[:NTK_PROBE].astype(np.float32) / 255.0
  ntk_distance = pruning_awt.adversarial_ntk_distance(
    model,
    batch_stats,
    params,
    tree["params"],
    probe,
    dataset.train.labels[:NTK_PROBE],
    jax.random.fold_in(mask_key, 1),
    _probe_attack(config),
  )
  log(f"adversarial-NTK distance to the dense net at init: {ntk_distance:.4f}")
  if not train:
    return {
      **ticket_info,
      "method": method,
      "find_cost": find_cost,
      "ntk_distance_at_init": ntk_distance,
    }
  results = train_and_evaluate(config, workdir, initial=tree, log=log)
  results.update(
    method=method, find_cost=find_cost, ntk_distance_at_init=ntk_distance
  )
  workdir_lib.write_json(f"{workdir}/results.json", results)
  return results
