"""The one way to get a ticket: ``find(config) -> Ticket``.

Every entry point that needs a sparse network at its starting point —
``experiments/find_ticket.py`` and ``experiments/train.py``, the
ticket-comparison and sparsity-robustness studies, the NTK spectra, the
ticket-cost benchmark — calls :func:`find`, so a ticket of a given config
and seed is the same ticket everywhere. The steps:

1. ``load``: the config validated, its data loaded and model built, once
   (callers that find many tickets on the same data pass the
   :class:`Setup` along);
2. the network of ``config.seed`` at initialization
   (``awt.experiment.initialize``: the keys every entry point shares), or a
   given ``start`` (a trained network, for pruning after training);
3. the ticket ``config.pruning.method`` finds (``awt.pruning``), then
   ``config.pruning.ablation`` (``awt.pruning.ablations``);
4. its description: sparsity, per-layer densities, cost, and the
   adversarial-NTK distance to the dense network at init;
5. saved to ``<workdir>/ticket`` (and ``ticket.json``) so a restarted run
   reuses it.
"""

import dataclasses
import shutil
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import numpy as np
from absl import logging

from awt import checkpoints, experiment, masks, plots, pruning
from awt import config as config_lib
from awt import data as data_lib
from awt import workdir as workdir_lib
from awt.masks import Ticket
from awt.pruning import ablations
from awt.pruning import awt as pruning_awt

__all__ = [
  "Setup",
  "Ticket",
  "dense",
  "find",
  "find_and_train",
  "load",
  "restore",
  "train",
]

NTK_PROBE = 64  # training points on which tickets' NTKs are compared


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a config resolves to before any ticket: data and model.

  Attributes:
    dataset: ``config.data`` loaded (``awt.data.Dataset``).
    model: ``config.model`` built for the dataset, in eval form (no pmap
      axis): the network pruning methods read.
  """

  dataset: data_lib.Dataset
  model: nn.Module

  @property
  def info(self) -> data_lib.DatasetInfo:
    return self.dataset.info


def load(config) -> Setup:
  """Loads ``config.data`` and builds ``config.model`` (once per study)."""
  dataset = config_lib.load_data(config)
  return Setup(dataset, config_lib.build_model(config, dataset.info))


def dense(config, info: data_lib.DatasetInfo | None = None) -> Ticket:
  """The dense network at ``config.seed``'s initialization (all-ones mask).

  ``info``: the dataset's description (default: looked up by name, without
  loading the data).
  """
  info = info or data_lib.info(config.data.name)
  model = config_lib.build_model(config, info)
  params, batch_stats, _ = experiment.initialize(
    model, config.seed, info.image_shape
  )
  return Ticket(
    mask=masks.ones(params),
    params=params,
    batch_stats=batch_stats,
    info={"method": "dense", "ablation": "none", "passes": 0},
  )


def _check_sparsity_applies(config) -> None:
  """A run's ``pruning.sparsity`` must prune something: with the default
  ``pruning.method="dense"`` a sparsity would be ignored and the run would
  train the dense net under a sparse-looking config.

  Raises:
    ConfigError: naming the sparsity and the method.
  """
  sparsity = float(config.pruning.get("sparsity", 0.0) or 0.0)
  if config.pruning.method == "dense" and sparsity:
    raise config_lib.ConfigError(
      f"pruning.sparsity={sparsity:g} has no effect with "
      "pruning.method='dense'; choose a method too, e.g. "
      "--config.pruning.method=snip"
    )


def find(
  config,
  *,
  workdir: str | None = None,
  setup: Setup | None = None,
  start: Ticket | None = None,
  base: Ticket | None = None,
  pretrain_dir: str | None = None,
  measure_ntk: bool = True,
  log: Callable[[str], None] = logging.info,
) -> Ticket:
  """Finds (or reloads) the ticket ``config.pruning`` names.

  The search reads the network ``train_and_evaluate`` starts the dense run
  of ``config.seed`` from, so a ticket and its dense counterpart differ only
  in the mask (and, for three-stage methods and the NTK searches, the
  starting weights). ``pruning.ablation`` then applies one of
  ``awt.pruning.ablations``.

  Args:
    config: a run config (docs/design.md's schema); ``pruning.method`` may
      be any registered method.
    workdir: where the ticket is saved (``ticket/``, ``ticket.json``,
      ``plots/layer_densities.png``) and, when present, reused from; a long
      search keeps its progress in ``<workdir>/search`` until it ends. None:
      nothing is read or written.
    setup: the config's data and model, when the caller has them already.
    start: the network the method reads instead of the initialization (a
      trained network, for methods that prune after training, e.g. DNS).
    base: the same method's unablated ticket (same config otherwise), from
      which ``shuffle``, ``reinit``, ``init_weights`` and
      ``random_same_density`` are derived without searching again (their
      ``find_cost`` is the base's); ``invert`` needs the method's scores,
      so it always searches.
    pretrain_dir: shared directory of dense pretrainings
      (``PruningContext.pretrain_dir``).
    measure_ntk: measure ``ntk_distance_at_init`` (the relative Frobenius
      distance of the ticket's adversarial NTK — the sparse network's, over
      its kept weights — to the dense net's, on ``NTK_PROBE`` training
      points attacked with PGD against the dense net) and
      ``ntk_distance_at_init_all_weights`` (the kernel over all weights).
    log: receives progress lines.

  Returns:
    The :class:`Ticket` (host arrays). ``info`` holds ``method``,
    ``ablation``, ``passes``, ``wall_time_s``, ``sparsity``,
    ``layer_densities``, ``find_cost`` (``wall_time_s``, ``passes``) and,
    with ``measure_ntk``, the NTK distances.

  Raises:
    ConfigError, DatasetNotPreparedError, CheckpointError: one line each.
  """
  pruning.validate(config)  # the ablation's name included
  _check_sparsity_applies(config)
  ablation = pruning.option(config, "ablation")
  s = setup or load(config)
  params, batch_stats, keys = experiment.initialize(
    s.model, config.seed, s.info.image_shape
  )
  init = Ticket(mask=masks.ones(params), params=params, batch_stats=batch_stats)
  reads = start or init
  label = _label(config.pruning.method, ablation)
  found_with = _found_with(config)
  ticket = _reload(workdir, reads, label, found_with, log)
  if ticket is None:
    log(
      f"finding a {label} ticket at sparsity {config.pruning.sparsity} "
      f"({config.pruning.scope})"
    )
    ctx = pruning.PruningContext(
      model=s.model,
      params=reads.params,
      batch_stats=reads.batch_stats,
      split=s.dataset.train,
      config=config,
      image_shape=s.info.image_shape,
      checkpoint_dir=None if workdir is None else f"{workdir}/search",
      log=log,
      pretrain_dir=pretrain_dir,
    )
    ticket = _search(config, ctx, keys.mask, ablation, base)
    ticket = ticket.replace(info={**ticket.info, "found_with": found_with})
    if measure_ntk:
      ticket = _with_ntk_distances(config, s, init, ticket, keys.mask)
    if workdir is not None:
      _save(workdir, ticket, label)
    source = ticket.info.get("allocation_from", {}).get("method")
    log(
      f"{label} ticket: sparsity {ticket.info['sparsity']:.4f}, "
      f"{ticket.info['passes']} passes, {ticket.info['wall_time_s']:.1f}s"
      + (f", inside {source}'s layer densities" if source else "")
    )
  info = dict(ticket.info)
  info["find_cost"] = {
    "wall_time_s": float(info["wall_time_s"]),
    "passes": int(info["passes"]),
  }
  if "ntk_distance_at_init" in info:
    log(
      "adversarial-NTK distance to the dense net at init: "
      f"{info['ntk_distance_at_init']:.4f}"
    )
  return ticket.replace(info=info)


def _label(method: str, ablation: str) -> str:
  return method if ablation == "none" else f"{method}/{ablation}"


# Options that say how a search runs, not which ticket it finds.
_HOW_OPTIONS = ("awt_checkpoint_every",)


def _found_with(config) -> dict:
  """What makes a ticket: the method and every option it reads (at their
  checked values), the seed and the data it searched on. Saved with the
  ticket as ``info["found_with"]``; a saved ticket is reused only for the
  same."""
  method = config.pruning.method
  options = {
    o.name: pruning.option(config, o.name)
    for o in pruning.options(method)
    if o.name not in _HOW_OPTIONS
  }
  return workdir_lib.normalized(
    {
      "method": method,
      "options": options,
      "seed": config.seed,
      "data": config.data.name,
      "validation": config.data.get("validation", 0),
    }
  )


def _reload(workdir, like: Ticket, label: str, wanted: dict, log):
  """The ticket saved in ``workdir``, or None (none saved, or no workdir).

  Raises:
    ConfigError: the saved ticket was found with other settings than
      ``wanted`` (:func:`_found_with`); one line naming the first.
  """
  if workdir is None:
    return None
  workdir = workdir_lib.prepare(workdir)
  saved = _restore(workdir, like)
  if saved is None:
    return None
  info = saved.info
  kept = info.get("found_with")
  if kept is None:  # saved before found_with: compare what it recorded
    kept = {"method": info.get("method"), "ablation": info.get("ablation")}
    wanted = {
      "method": wanted["method"],
      "ablation": wanted["options"]["ablation"],
    }
  workdir_lib.check_same(
    workdir,
    "a ticket found with other settings",
    kept,
    wanted,
    config_lib.ConfigError,
  )
  log(f"reusing the {label} ticket saved in {workdir}/ticket")
  return saved


def _restore(workdir: str, like: Ticket) -> Ticket | None:
  """The ticket saved in ``workdir``, shaped like ``like`` (arrays or
  ``jax.ShapeDtypeStruct``s); None if none."""
  template = {"params": like.params, "batch_stats": like.batch_stats}
  template["mask"] = like.params
  saved = checkpoints.restore_ticket(workdir, template)
  if saved is None:
    return None
  tree, info = saved
  return Ticket(**jax.device_get(tree), info=info)


def restore(workdir: str, config) -> Ticket:
  """The ticket :func:`find` saved in ``workdir``, as it was before training.

  Args:
    workdir: where it was saved: a ``find_ticket`` workdir or a study's
      cell (``<study workdir>/cells/<label>``).
    config: a config of the same model and data (a study's
      ``config.json`` will do): it shapes the template the arrays are
      restored into; its seed and pruning settings do not matter.

  Returns:
    The saved :class:`Ticket`: ``params`` already masked, ``info`` as in
    ``ticket.json`` (method, sparsity, layer densities, NTK distances, ...).

  Raises:
    CheckpointError: no ticket saved in ``workdir``, or one of another
      model's shapes; one line.
  """
  like = jax.eval_shape(lambda: dense(config))  # shapes only, no init
  saved = _restore(workdir, like)
  if saved is None:
    raise checkpoints.CheckpointError(f"no ticket saved in {workdir!r}")
  return saved


def _search(config, ctx, mask_key, ablation: str, base) -> Ticket:
  """The method's ticket (or ``base``'s), ablated and described."""
  t0 = time.perf_counter()
  if base is not None and ablation not in ("none", "invert"):
    ticket = base.replace(
      scores=None,
      info={k: v for k, v in base.info.items() if k != "find_cost"},
    )
    t0 -= float(base.info["wall_time_s"])
  else:
    ticket = pruning.find(config.pruning.method, ctx, mask_key)
  ticket = ablations.apply(
    ablation, ticket, ctx, jax.random.fold_in(mask_key, 2)
  )
  ticket = jax.device_get(ticket)
  info = dict(ticket.info)
  info["method"] = config.pruning.method
  info["ablation"] = ablation
  # A resumed search reports the time of all its attempts.
  info["wall_time_s"] = max(
    time.perf_counter() - t0, float(ticket.info.get("wall_time_s", 0.0))
  )
  info["sparsity"] = masks.sparsity(ticket.mask)
  info["layer_densities"] = masks.layer_densities(ticket.mask)
  return ticket.replace(scores=None, info=info)


def _with_ntk_distances(config, s: Setup, init: Ticket, ticket, mask_key):
  """``ticket`` with ``ntk_distance_at_init[_all_weights]`` in its info."""
  train = s.dataset.train
  masked, all_weights = pruning_awt.adversarial_ntk_distances(
    s.model,
    init.batch_stats,
    init.params,
    ticket.params,
    ticket.mask,
    train.images[:NTK_PROBE].astype(np.float32) / 255.0,
    train.labels[:NTK_PROBE],
    jax.random.fold_in(mask_key, 1),
    experiment.probe_attack(config),
  )
  info = dict(ticket.info)
  info["ntk_distance_at_init"] = masked
  info["ntk_distance_at_init_all_weights"] = all_weights
  return ticket.replace(info=info)


def _save(workdir: str, ticket: Ticket, label: str) -> None:
  """``ticket/``, ``ticket.json`` and the layer-density plot; the search's
  progress checkpoints are removed once the ticket is saved."""
  checkpoints.save_ticket(workdir, ticket.arrays(), ticket.info)
  shutil.rmtree(f"{workdir}/search", ignore_errors=True)
  workdir_lib.write_json(f"{workdir}/ticket.json", ticket.info)
  plots.plot_layer_densities(
    {label: ticket.info["layer_densities"]},
    f"{workdir}/plots/layer_densities.png",
    title=f"{label} ticket, sparsity {ticket.info['sparsity']:.3f}",
  )


_TICKET_KEYS = ("method", "ablation", "find_cost", "ntk_distance_at_init")


def find_and_train(
  config,
  workdir: str,
  *,
  train: bool = True,
  dense_reference: bool = True,
  log: Callable[[str], None] = logging.info,
) -> dict:
  """Finds the ticket ``config.pruning`` names, then trains it.

  Training is ``awt.experiment.train_and_evaluate``'s with the ticket as
  starting point, so every method gets the same objective, schedule and
  evaluation. With ``dense_reference`` (and a method other than dense), the
  dense network with the same seed is trained alongside in the same
  vectorized program (``train_members``: same batches, same attack
  randomness), and the ticket's function-space distance to it is recorded
  every epoch — the dynamics check of Shi et al. (AISTATS 2022, Sec. 5).
  The checkpoints then hold both members.

  Returns:
    ``results.json``'s dict: the ticket's training results plus ``method``,
    ``ablation``, ``find_cost`` (``wall_time_s``, ``passes``),
    ``ntk_distance_at_init``, and with a reference run ``history`` rows with
    ``function_distance_{clean,adv}`` and ``dense_reference`` (the dense
    run's accuracies and history). Without training, the ticket's info.
  """
  ticket = find(config, workdir=workdir, log=log)
  if not train:
    return ticket.info
  if not dense_reference or config.pruning.method == "dense":
    results = experiment.train_and_evaluate(
      config, workdir, initial=ticket, log=log
    )
  else:
    seed = int(config.seed)
    trained, reference = experiment.train_members(
      config,
      workdir,
      [
        experiment.Member("ticket", seed, ticket, reference="dense"),
        experiment.Member("dense", seed, dense(config)),
      ],
      log=log,
    )
    results = dict(trained.results)
    results["dense_reference"] = {
      k: reference.results[k]
      for k in ("clean_accuracy", "robust_accuracy", "history")
    }
  results.update({k: ticket.info[k] for k in _TICKET_KEYS})
  workdir_lib.write_json(f"{workdir}/results.json", results)
  return results


def train(
  config, workdir: str, *, log: Callable[[str], None] = logging.info
) -> dict:
  """``experiments/train.py``'s run: the config's mask at init, trained.

  ``pruning.method`` is one of the masks made at initialization
  (``awt.config.PRUNING_METHODS``: dense, random, magnitude, ...); the
  ticket is found in memory (no NTK probe, nothing saved beside the run's
  checkpoints) and trained by ``awt.experiment.train_and_evaluate``.
  """
  pruning.validate(config, methods=config_lib.PRUNING_METHODS)
  _check_sparsity_applies(config)
  ticket = None
  if config.pruning.method != "dense":
    ticket = find(config, measure_ntk=False, log=log)
  return experiment.train_and_evaluate(config, workdir, initial=ticket, log=log)
