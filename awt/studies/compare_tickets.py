r"""Every way to get a sparse network, trained adversarially side by side.

Shi et al. (AISTATS 2022), Sec. 5: tickets of each pruning method at each
sparsity, trained with PGD-AT from scratch exactly like the dense network,
compared on clean, PGD-40 and ensemble robust accuracy, the cost of finding
them, their adversarial-NTK distance to the dense net at initialization,
and the function-space distance of their training run to the dense run's.

Two phases, both resumable (a restarted study skips finished work):

1. **Tickets.** For every (sparsity, method, ablation, seed) cell,
   ``awt.tickets.find`` in ``WORKDIR/cells/<cell>/`` (a saved
   ticket is reused). The three-stage methods of a seed share one dense
   pretraining (``WORKDIR/pretrained/``) across methods and sparsities.
2. **Training.** For every sparsity, one ``train_members`` program trains
   the dense net of each seed and every ticket together (``member_map``
   says how), each ticket with the dense run of its seed as reference, so
   they see the same batches and attack randomness. A finished
   ``WORKDIR/train/<sparsity>/results.json`` is loaded instead of rerun.
   ``train_seed_offset`` (default 0) gives every member of seed ``s`` the
   data order and attack randomness of seed ``s + train_seed_offset``,
   its starting network still that of ``s``: the same tickets trained
   under other SGD noise, as in the instability analysis of Frankle et
   al. (ICML 2020, "Linear Mode Connectivity and the Lottery Ticket
   Hypothesis", Fig. 1): does an outcome belong to the network or to its
   training run?
   Copy an earlier workdir's ``cells/`` into a new workdir to retrain
   its tickets without searching again (a saved ticket's settings do not
   include the offset; the workdir's ``config.json`` records it when it
   is not 0). Rows keep ``seed`` and add ``train_seed``.

Statistics: every accuracy is reported as mean ± *sample* standard
deviation over seeds, and as the paired (same-seed) difference against the
dense net and against SNIP with a 95% Student-t interval
(``_sweep.paired_difference``), an ablated ticket also against the ticket
it was made from; the headline accuracy is the first attack
ensemble of ``eval.attacks`` (AutoAttack's rule: the strongest evaluation
is what a robustness claim rests on), PGD-40 beside it. Each arm's
``train_loss_drop_last_quarter`` says whether its training loss had
flattened, ``stalled`` which seeds never left the constant classifier
(a mean over seeds that mixes stalled and trained runs describes neither)
and ``epochs_at_chance`` how long each seed took to leave it.
With ``data.validation`` set, everything is measured on the
held-out training examples instead of the test set (for choosing a
learning rate, ``experiments/select_lr.py``).

Outputs: ``compare_tickets.json`` (per-seed rows, per-group statistics),
``compare_tickets.csv`` (per group), ``table.md`` and ``plots/``: accuracy
vs sparsity, per-epoch training loss of every arm and seed, clean accuracy
and function-space distance to the dense run, adversarial-NTK distance at
init, per-layer densities.

Config (``config.sweep``): ``methods``, ``sparsities``, ``seeds`` (ints),
``ablations`` (``"none"`` and any of ``awt.pruning.ablations.ABLATIONS``)
and ``ablated_methods`` (the ``methods`` entries, exactly as written there,
the ablations apply to: ``"awt"`` does not cover ``"awt:awt_epochs=5"``).
"""

import functools
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from awt import config as config_lib
from awt import curves, experiment, plots, pruning
from awt import data as data_lib
from awt import tickets as tickets_lib
from awt import workdir as workdir_lib
from awt.pruning import ablations as ablations_lib
from awt.studies import _sweep

DENSE = "dense"


def parse_method(spec: str) -> tuple[str, dict[str, str]]:
  """``"awt:awt_kernel=trace,awt_epochs=5"`` -> ``("awt", {options})``.

  A sweep entry is a registered method name, optionally followed by
  ``:`` and comma-separated ``pruning.<option>=<value>`` overrides, so one
  study can compare variants of a method side by side (each variant is
  its own arm, labelled by its entry).
  """
  name, _, rest = spec.partition(":")
  options = {}
  for item in filter(None, rest.split(",")):
    key, eq, value = item.partition("=")
    if not eq or not key:
      raise config_lib.ConfigError(
        f"sweep.methods entry {spec!r}: {item!r} is not <option>=<value>"
      )
    options[key.strip()] = value.strip()
  return name, options


def _cell_config(config, *, seed, method, sparsity, ablation):
  name, options = parse_method(method)
  c = config_lib.replaced(
    config,
    {
      "seed": int(seed),
      "pruning.method": name,
      "pruning.sparsity": float(sparsity),
      "pruning.ablation": ablation,
    },
  )
  for key, value in options.items():
    if key not in c.pruning:
      raise config_lib.ConfigError(
        f"sweep.methods entry {method!r}: unknown option pruning.{key}"
      )
    # The declared type: an option whose default is None (e.g. imp_epochs,
    # "the config's num_epochs") still takes an int.
    declared = {o.name: o for o in pruning.options()}
    kind = (
      declared[key].check.field_type
      if key in declared
      else type(c.pruning[key] if c.pruning[key] is not None else "")
    )
    try:
      c.pruning[key] = (
        (value.lower() == "true") if kind is bool else kind(value)
      )
    except ValueError:
      raise config_lib.ConfigError(
        f"sweep.methods entry {method!r}: pruning.{key}={value!r} is not "
        f"a {kind.__name__}"
      ) from None
  return c


def _label(method: str, ablation: str) -> str:
  return method if ablation == "none" else f"{method}/{ablation}"


def _dirname(method: str, ablation: str) -> str:
  """A directory-safe form of an arm's label."""
  label = _label(method, ablation)
  return label.translate(
    str.maketrans({"/": "-", ":": "_", "=": "-", ",": "_", ";": "_"})
  )


def arm_name(entry: dict) -> str:
  """``"<method>[/<ablation>] @ <sparsity>"`` of a summary entry (dense:
  ``"dense"``)."""
  label = _label(entry["method"], entry["ablation"])
  if entry["method"] == DENSE:
    return label
  return f"{label} @ {entry['target_sparsity']:g}"


def _sparsity_name(s: float) -> str:
  return f"{round(100 * s, 4):g}"


def _at_start(history: list[dict], key: str):
  """``key`` at epoch 0, before the first training step (None if absent)."""
  vals = [r[key] for r in history if r["epoch"] == 0 and key in r]
  return vals[0] if vals else None


def grid(sweep) -> dict:
  """``run``'s grid keywords from a config's ``sweep`` block (module doc).

  ``ablated_methods`` defaults to every entry of ``methods``.
  """
  return {
    "methods": tuple(sweep.methods),
    "sparsities": tuple(sweep.sparsities),
    "seeds": tuple(sweep.seeds),
    "ablations": tuple(sweep.ablations),
    "ablated_methods": tuple(sweep.get("ablated_methods", sweep.methods)),
  }


def run(
  config,
  workdir: str,
  *,
  methods: Sequence[str],
  sparsities: Sequence[float],
  seeds: Sequence[int],
  ablations: Sequence[str] = ("none",),
  ablated_methods: Sequence[str] | None = None,
  log: Callable[[str], None] = logging.info,
) -> dict:
  """Runs (or resumes) the study; see the module docstring.

  Args:
    config: a run config (docs/design.md schema) with ``eval.attacks``
      naming the accuracies to report (e.g. ``("pgd40",
      "pgd40+apgd-ce+apgd-t")``; the first ensemble is the headline).
    workdir: the study's directory.
    methods: pruning method names; ``"dense"`` is always trained.
    sparsities: target sparsities in (0, 1).
    seeds: seeds; each seed's tickets start from that seed's init.
    ablations: ``"none"`` and/or ablation names (``awt.pruning.ablations``).
    ablated_methods: the ``methods`` entries (matched exactly) whose
      tickets get the ablations other than ``"none"`` (default: every
      method).
    log: progress lines.

  Returns:
    ``{"rows": [...per member...], "summary": [...per (method, ablation,
    sparsity): mean, sample std and per-seed values, paired differences
    against dense and SNIP...]}``, also written to ``compare_tickets.json``.
  """
  start = time.perf_counter()
  methods = [m for m in methods if m != DENSE]
  validate(config, methods, sparsities, seeds, ablations, ablated_methods)
  workdir = workdir_lib.prepare(workdir)
  # Cells are named by their grid point, so a workdir may grow its grid
  # (``sweep``) but never change what a cell computes.
  _sweep.check_config(workdir, recorded_config(config))
  # "none" first: the other ablations start from its ticket.
  ablations = ["none"] + [a for a in ablations if a != "none"]
  ablated = set(methods if ablated_methods is None else ablated_methods)
  arms = [
    (m, a) for m in methods for a in ablations if a == "none" or m in ablated
  ]
  tickets = _find_tickets(config, workdir, arms, sparsities, seeds, log)
  rows = []
  for s in sparsities:
    rows += _train_sparsity(config, workdir, s, arms, seeds, tickets, log)
  out = summarize(rows, list(config.eval.attacks))
  out["eval_eps"] = config.eval.eps
  out["eval_split"] = config_lib.load_data(config).held_out
  out["wall_time_s"] = time.perf_counter() - start
  write_outputs(out, workdir)
  log(
    f"compare_tickets done in {out['wall_time_s']:.0f}s; table:\n"
    + markdown_table(out)
  )
  return out


def _find_tickets(config, workdir, arms, sparsities, seeds, log):
  """Phase 1: every (sparsity, method, ablation, seed) ticket, resumable."""
  cells = [
    (s, m, a, seed) for s in sparsities for m, a in arms for seed in seeds
  ]
  tickets = {}
  setup = tickets_lib.load(config)  # the cells share data and model
  t0 = time.perf_counter()
  for i, (s, m, a, seed) in enumerate(cells):
    name = f"{_dirname(m, a)}_s{_sparsity_name(s)}_seed{seed}"
    c = _cell_config(config, seed=seed, method=m, sparsity=s, ablation=a)
    tickets[(s, m, a, seed)] = tickets_lib.find(
      c,
      workdir=os.path.join(workdir, "cells", name),
      setup=setup,
      base=tickets.get((s, m, "none", seed)),
      pretrain_dir=os.path.join(workdir, "pretrained"),
      log=_sweep.every(log, 60, f"{name}: "),  # a long search shows it moves
    )
    done = i + 1
    eta = (time.perf_counter() - t0) / done * (len(cells) - done)
    info = tickets[(s, m, a, seed)].info
    log(
      f"ticket {done}/{len(cells)} {name}: ntk distance "
      f"{info['ntk_distance_at_init']:.3f}, found in "
      f"{info['find_cost']['wall_time_s']:.1f}s; ETA {eta:.0f}s"
    )
  return tickets


def _train_sparsity(config, workdir, s, arms, seeds, tickets, log):
  """Phase 2 at sparsity ``s``: dense + every ticket in one program."""
  described = {}  # member name -> (method, ablation, ticket info or None)
  members = []
  offset = train_seed_offset(config)
  for seed in seeds:
    name = f"{DENSE}_seed{seed}"
    dense_config = _cell_config(
      config, seed=seed, method=DENSE, sparsity=0.0, ablation="none"
    )
    members.append(
      experiment.Member(
        name, int(seed) + offset, tickets_lib.dense(dense_config)
      )
    )
    described[name] = (DENSE, "none", None)
  for m, a in arms:
    for seed in seeds:
      name = f"{_dirname(m, a)}_seed{seed}"
      ticket = tickets[(s, m, a, seed)]
      members.append(
        experiment.Member(
          name, int(seed) + offset, ticket, reference=f"{DENSE}_seed{seed}"
        )
      )
      described[name] = (m, a, ticket.info)
  train_dir = os.path.join(workdir, "train", _sparsity_name(s))
  results = _load_finished(train_dir, list(described))
  if results is None:
    log(f"training {len(members)} members at sparsity {s}")
    out = experiment.train_members(config, train_dir, members, log=log)
    results = {r.name: r.results for r in out}
  else:
    log(f"sparsity {s}: training finished earlier, loaded {train_dir}")
  chance = curves.objective_chance(
    config.adversarial.method, data_lib.info(config.data.name).num_classes
  )
  rows = []
  for mem in members:
    method, ablation, info = described[mem.name]
    row = _row(
      results[mem.name], method, ablation, s, mem.seed - offset, info, chance
    )
    rows.append({**row, "train_seed": mem.seed})
  return rows


def recorded_config(config) -> dict:
  """What ``config.json`` holds: the config without ``sweep`` (a workdir
  may grow its grid), and without ``train_seed_offset`` when it is 0, so
  workdirs from before the offset existed still match."""
  out = {k: v for k, v in config.to_dict().items() if k != "sweep"}
  if not out.get("train_seed_offset", 0):
    out.pop("train_seed_offset", None)
  return out


def train_seed_offset(config) -> int:
  """``config.train_seed_offset`` (0 where the config has none): what the
  training seed adds to each seed (module docstring, "Training")."""
  return int(config.get("train_seed_offset", 0))


def validate(
  config, methods, sparsities, seeds, ablations, ablated_methods=None
) -> None:
  """Checks the grid before any compute; one-line ``ConfigError``.

  ``ablated_methods`` is matched against ``methods`` entry by entry
  (``"awt"`` does not cover ``"awt:awt_kernel=trace"``); ablations other
  than ``"none"`` that would apply to no method are refused rather than
  dropped.
  """
  for m in methods:
    if parse_method(m)[0] not in pruning.names():
      raise config_lib.ConfigError(
        f"unknown sweep.methods entry {m!r}; known: "
        f"{', '.join(pruning.names())}"
      )
  for a in ablations:
    if a not in ablations_lib.ABLATIONS:
      raise config_lib.ConfigError(
        f"unknown sweep.ablations entry {a!r}; known: "
        f"{', '.join(ablations_lib.ABLATIONS)}"
      )
  extra = [a for a in ablations if a != "none"]
  if (
    extra
    and ablated_methods is not None
    and not set(methods) & set(ablated_methods)
  ):
    raise config_lib.ConfigError(
      f"sweep.ablations {tuple(extra)} would apply to no method: "
      f"sweep.ablated_methods {tuple(ablated_methods)} names none of "
      f"sweep.methods {tuple(methods)} (entries must match exactly); "
      "set sweep.ablated_methods or sweep.ablations=('none',)"
    )
  check = functools.partial(_sweep.check_numbers, error=config_lib.ConfigError)
  check(sparsities, "sweep.sparsities", lo=0.0, hi=1.0, lo_open=True)
  check(seeds, "sweep.seeds", integer=True)
  offset = config.get("train_seed_offset", 0)
  if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
    raise config_lib.ConfigError(
      f"train_seed_offset={offset!r} must be an integer >= 0"
    )
  seen = {}
  for m in methods or [DENSE]:
    cell = _cell_config(
      config,
      seed=seeds[0],
      method=m,
      sparsity=sparsities[0],
      ablation=ablations[0],
    )
    pruning.validate(cell)
    # An override equal to the config's own value (awt_global_score=raw on
    # the mnist5k MLP) would train one ticket twice under two names.
    settings = repr(sorted(cell.pruning.to_dict().items()))
    if settings in seen:
      raise config_lib.ConfigError(
        f"sweep.methods entries {seen[settings]!r} and {m!r} are the same "
        "ticket (equal pruning settings under this config)"
      )
    seen[settings] = m


def _load_finished(train_dir: str, names: list[str]) -> dict | None:
  """``{name: results}`` of a finished ``train_members`` program that
  trained every member of ``names``, else None (``_sweep.load_results``)."""
  finished = _sweep.load_results(train_dir)
  if finished is None:
    return None
  results = {r["name"]: r for r in finished.get("members", [])}
  return results if set(names) <= set(results) else None


def _row(r, method, ablation, sparsity, seed, find, chance=None) -> dict:
  """A trained member's row; ``chance``: ``chance_loss`` of its data (None:
  no ``stalled`` field)."""
  history = r["history"]
  row = {
    "method": method,
    "ablation": ablation,
    "target_sparsity": float(sparsity) if method != DENSE else 0.0,
    # The program (one per sparsity) the row was trained in: its dense rows
    # are the matched control of its tickets.
    "trained_at": float(sparsity),
    "sparsity": r["sparsity"],
    "seed": seed,
    "clean_accuracy": r["clean_accuracy"],
    # Where training starts: a search can leave its ticket worse than
    # chance (the AWT search's output term on PGD points does).
    "clean_accuracy_at_start": _at_start(history, "clean_accuracy"),
    **{f"robust/{k}": v for k, v in r["robust_accuracy"].items()},
    "find_wall_time_s": find["find_cost"]["wall_time_s"] if find else 0.0,
    "find_passes": find["find_cost"]["passes"] if find else 0,
    "ntk_distance_at_init": find["ntk_distance_at_init"] if find else 0.0,
    "ntk_distance_at_init_all_weights": (
      find.get("ntk_distance_at_init_all_weights") if find else 0.0
    ),
    "function_distance_adv_early": _mean_over_epochs(
      history, "function_distance_adv", 0.0, EARLY
    ),
    "function_distance_adv_final": curves.final(
      history, "function_distance_adv"
    ),
    "function_distance_adv_mean": _mean_over_epochs(
      history, "function_distance_adv", 0.0, 1.0
    ),
    "function_distance_clean_final": curves.final(
      history, "function_distance_clean"
    ),
    "train_loss_final": curves.final(history, "train_loss"),
    "train_loss_drop_last_quarter": curves.loss_drop(history, 0.75),
    "stalled": curves.stalled(history, chance),
    "epochs_at_chance": curves.epochs_at_chance(history, chance),
    "layer_densities": r["layer_densities"],
    "history": history,
  }
  return row


EARLY = 0.25  # "early in training": the first quarter of the epochs.
GROUP = ("method", "ablation", "target_sparsity")
REFERENCES = (DENSE, "snip")  # paired differences against these methods
# An ablated ticket is also paired with the ticket it was made from (the
# same method, ablation "none"): ``vs_unablated``.
UNABLATED = "unablated"
# Prefix of the summary's per-layer kept fractions: "kept/<layer path>".
KEPT = "kept/"


def _mean_over_epochs(history, key, lo, hi):
  """Mean of ``key`` over epochs in ``(lo E, hi E]`` (E the last epoch)."""
  last = max((r["epoch"] for r in history), default=0)
  vals = [
    r[key]
    for r in history
    if r.get(key) is not None and lo * last < r["epoch"] <= max(1, hi * last)
  ]
  return float(np.mean(vals)) if vals else None


def headline(attacks: Sequence[str]) -> str | None:
  """The headline attack: the first ensemble (``a+b``), else the last."""
  ensembles = [a for a in attacks if "+" in a or a == "autoattack"]
  return (ensembles or list(attacks) or [None])[0 if ensembles else -1]


def _flat_row(row: dict) -> dict:
  """A row's scalar fields; its layer densities as ``kept/<layer>`` fields."""
  flat = {
    k: v for k, v in row.items() if k not in ("layer_densities", "trained_at")
  }
  for layer, d in (row.get("layer_densities") or {}).items():
    flat[KEPT + layer] = d
  return flat


def summarize(rows: list[dict], attacks: Sequence[str]) -> dict:
  """Mean, sample std and per-seed values per (method, ablation, sparsity),
  and the paired per-seed differences against dense and SNIP.

  Every accuracy gets ``vs_<reference>``: ``_sweep.paired_difference`` of
  the group's per-seed values minus the reference's at the same seed (SNIP
  at the same sparsity; the dense nets trained in the same program as the
  group, where rows say so with ``trained_at``), a 95% t-interval. An
  ablated ticket also gets ``vs_unablated``: against the ticket it was
  made from (same method and sparsity, ablation ``"none"``), the statistic
  of a sanity check (Frankle et al., ICLR 2021, Sec. 5: does the ablation
  change how the ticket trains?).

  Returns:
    ``{"rows", "summary", "attacks", "headline"}``.
  """
  flat = [_flat_row(r) for r in rows]
  # Every program trains the same dense nets: the table shows the first
  # program's; each ticket is paired with the dense nets of its own program
  # (the same schedule on the same device).
  programs = [r.get("trained_at") for r in rows if r["method"] == DENSE]
  first = programs[0] if programs else None
  summary = _sweep.aggregate(
    [
      f
      for f, r in zip(flat, rows, strict=True)
      if r["method"] != DENSE or r.get("trained_at") == first
    ],
    GROUP,
  )
  dense_of = {
    p: _sweep.aggregate(
      [
        f
        for f, r in zip(flat, rows, strict=True)
        if r["method"] == DENSE and r.get("trained_at") == p
      ],
      GROUP,
    )[0]
    for p in set(programs)
  }
  metrics = ["clean_accuracy"] + [f"robust/{a}" for a in attacks]
  by_key = {tuple(g[k] for k in GROUP): g for g in summary}
  for g in summary:
    for ref in REFERENCES:
      if g["method"] == ref and g["ablation"] == "none":
        continue
      if ref == DENSE:
        other = dense_of.get(
          g["target_sparsity"], by_key.get((DENSE, "none", 0.0))
        )
      else:
        other = by_key.get((ref, "none", g["target_sparsity"]))
      if other is not None:
        g[f"vs_{ref}"] = _paired_metrics(g, other, metrics)
    if g["ablation"] != "none":
      base = by_key.get((g["method"], "none", g["target_sparsity"]))
      if base is not None:
        g[f"vs_{UNABLATED}"] = _paired_metrics(g, base, metrics)
  return {
    "rows": rows,
    "summary": summary,
    "attacks": list(attacks),
    "headline": headline(attacks),
    "correlations": kernel_correlations(rows, headline(attacks)),
  }


def _paired_metrics(g: dict, other: dict, metrics: Sequence[str]) -> dict:
  """``{metric: _sweep.paired_by_seed}`` of group ``g`` minus ``other`` over
  their shared seeds, for the metrics both have."""
  diffs = {}
  for m in metrics:
    if m not in g or m not in other:
      continue
    mine = dict(zip(g["seeds"], g[m]["values"], strict=True))
    theirs = dict(zip(other["seeds"], other[m]["values"], strict=True))
    if mine.keys() & theirs.keys():
      diffs[m] = _sweep.paired_by_seed(mine, theirs)
  return diffs


# Up to this many tickets the p-value is exact (all n! pairings, 40,320 at
# 8); above, the t approximation, which is poor for few tickets (it gives
# p ~ 1e-24 for a perfect rank order of 5, whose exact p is 2/5! = 0.017).
EXACT_MAX_N = 8


def _pearson(x, y, axis=-1):
  """Pearson's r along ``axis`` (of ranks: Spearman's rho), vectorized."""
  x = x - x.mean(axis, keepdims=True)
  y = y - y.mean(axis, keepdims=True)
  return (x * y).sum(axis) / np.sqrt((x * x).sum(axis) * (y * y).sum(axis))


def spearman(a, b) -> tuple[float, float]:
  """Spearman's rank correlation and its two-sided p-value.

  Ties get average ranks. For ``n <= EXACT_MAX_N`` the p-value is the exact
  permutation one: the fraction of all ``n!`` pairings of the ranks whose
  ``|rho|`` reaches the observed one (``scipy.stats.permutation_test``);
  above, scipy's t approximation (``scipy.stats.spearmanr``).

  Args:
    a, b: sequences of ``n >= 3`` numbers, neither constant.

  Returns:
    ``(rho, p)`` as floats.
  """
  from scipy import stats  # noqa: PLC0415 (slow to import)

  if len(a) > EXACT_MAX_N:
    rho, p = stats.spearmanr(a, b)
    return float(rho), float(p)
  ra, rb = stats.rankdata(a), stats.rankdata(b)
  # One sample permuted: n! pairings (both would list (n!)^2: 25M at n=7).
  res = stats.permutation_test(
    (rb,),
    lambda y, axis=-1: _pearson(ra, y, axis),
    permutation_type="pairings",
    vectorized=True,
    n_resamples=np.inf,
  )
  return float(res.statistic), float(res.pvalue)


def kernel_correlations(rows: list[dict], main: str | None) -> list[dict]:
  """Does the NTK distance at init predict how a ticket trains?

  Per sparsity, over every ticket row (all methods, ablations and seeds),
  Spearman's rank correlation of each NTK distance at init with the
  function-space distance to the dense run (early and final) and with the
  headline accuracy (``spearman``: exact p-values up to
  ``EXACT_MAX_N`` tickets). The NTK argument predicts a positive
  correlation with the function distances and a negative one with accuracy.

  Returns:
    ``[{"sparsity", "kernel", "target", "rho", "p", "n"}, ...]``.
  """
  targets = ["function_distance_adv_early", "function_distance_adv_final"]
  targets += [f"robust/{main}"] if main else []
  kernels = ("ntk_distance_at_init", "ntk_distance_at_init_all_weights")
  out = []
  for s in sorted({r["target_sparsity"] for r in rows if r["method"] != DENSE}):
    at_s = [
      r for r in rows if r["method"] != DENSE and r["target_sparsity"] == s
    ]
    for k in kernels:
      for t in targets:
        pairs = [
          (r[k], r[t])
          for r in at_s
          if r.get(k) is not None and r.get(t) is not None
        ]
        a, b = zip(*pairs, strict=True) if pairs else ((), ())
        if len(pairs) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
          continue  # too few tickets, or a constant: rho is undefined
        rho, p = spearman(a, b)
        out.append(
          {"sparsity": s, "kernel": k, "target": t, "rho": float(rho),
           "p": float(p), "n": len(pairs)}
        )  # fmt: skip
  return out


def write_outputs(out: dict, workdir: str) -> None:
  """``compare_tickets.json``, ``compare_tickets.csv``, ``table.md``, plots."""
  rest = {k: v for k, v in out.items() if k not in ("rows", "summary")}
  _sweep.write_table_json(
    os.path.join(workdir, "compare_tickets.json"),
    out["rows"],
    out["summary"],
    **rest,
  )
  _sweep.write_csv(
    os.path.join(workdir, "compare_tickets.csv"),
    out["summary"],
    GROUP,
    first=["clean_accuracy"] + [f"robust/{a}" for a in out["attacks"]],
  )
  workdir_lib.write_text(os.path.join(workdir, "table.md"), markdown_table(out))
  plot_all(out, os.path.join(workdir, "plots"))


def _fmt(entry, key, scale=100.0, digits=1):
  return _sweep.fmt_mean_std(
    entry.get(key), lambda v: f"{scale * v:.{digits}f}"
  )


def _fmt_diff(entry, ref, key):
  d = entry.get(f"vs_{ref}", {}).get(key)
  if d is None:
    return "–"
  return _sweep.fmt_interval(d, lambda v: f"{100 * v:+.1f}")


def _fmt_stalled(entry) -> str:
  """``"2 of 5 (seeds 0, 2)"``, ``"0 of 5"``; "–" for rows saved without
  the field."""
  flags = (entry.get("stalled") or {}).get("values")
  if not flags:
    return "–"
  which = [
    str(seed)
    for seed, f in zip(entry["seeds"], flags, strict=True)
    if f is not None and f > 0
  ]
  counted = sum(f is not None for f in flags)
  seeds = f" (seed{'s' * (len(which) > 1)} {', '.join(which)})" if which else ""
  return f"{len(which)} of {counted}{seeds}"


def _fmt_per_seed(entry, key) -> str:
  """Each seed's value, in seed order (``"2, 3, 30"``); "–" for rows saved
  without the field. For bimodal counts a mean ± std would hide."""
  values = (entry.get(key) or {}).get("values")
  if not values or all(v is None for v in values):
    return "–"
  return ", ".join("–" if v is None else f"{v:g}" for v in values)


def markdown_table(out: dict) -> str:
  """The summary as a Markdown table; its header says what ± means.

  Accuracies in %, ``_sweep.statistic_note``: mean ± sample standard
  deviation (ddof 1) over the seeds; Δ columns:
  mean paired (same-seed) difference of the headline accuracy against
  dense and SNIP (and, when the study has ablations, against the ticket an
  ablation was made from), with its 95% t-interval in brackets;
  ``stalled``: how many seeds stalled at the constant classifier, and
  which; ``epochs at chance``: how many epochs each seed spent there
  (``epochs_at_chance``).
  """
  attacks, main = out["attacks"], out["headline"]
  ablated = any(e["ablation"] != "none" for e in out["summary"])
  order = [main] + [a for a in attacks if a != main] if main else []
  head = (
    ["method", "sparsity", "clean %", "clean % at start"]
    + [f"{a} %" for a in order]
    + [f"Δ {main} vs dense", f"Δ {main} vs SNIP"] * bool(main)
    + [f"Δ {main} vs unablated"] * bool(main and ablated)
    + [
      "NTK dist. at init (J diag(m) Jᵀ / all weights)",
      "fn. dist. early",
      "fn. dist. final",
      "final loss",
      "loss drop, last ¼",
      "stalled",
      "epochs at chance, per seed",
      "find s",
      "seeds",
    ]
  )
  lines = [
    f"Accuracies in % on the {out.get('eval_split', 'test')} split, "
    f"{_sweep.statistic_note(out['summary'])}; Δ: mean same-seed "
    "difference [95% t-interval], in points.",
    "",
  ]
  rows = []
  for e in sorted(
    out["summary"], key=lambda e: (e["target_sparsity"], e["method"] != DENSE)
  ):
    key = f"robust/{main}"
    cells = [
      _label(e["method"], e["ablation"]),
      f"{e['target_sparsity']:g}",
      _fmt(e, "clean_accuracy"),
      _fmt(e, "clean_accuracy_at_start"),
      *(_fmt(e, f"robust/{a}") for a in order),
      *([_fmt_diff(e, DENSE, key), _fmt_diff(e, "snip", key)] * bool(main)),
      *([_fmt_diff(e, UNABLATED, key)] * bool(main and ablated)),
      _fmt(e, "ntk_distance_at_init", 1.0, 2)
      + " / "
      + _fmt(e, "ntk_distance_at_init_all_weights", 1.0, 2),
      _fmt(e, "function_distance_adv_early", 1.0, 2),
      _fmt(e, "function_distance_adv_final", 1.0, 2),
      _fmt(e, "train_loss_final", 1.0, 3),
      _fmt(e, "train_loss_drop_last_quarter", 100.0, 1) + " %",
      _fmt_stalled(e),
      _fmt_per_seed(e, "epochs_at_chance"),
      _fmt(e, "find_wall_time_s", 1.0, 1),
      str(len(e["seeds"])),
    ]
    rows.append(cells)
  lines += _sweep.table_lines(head, rows)
  lines += _kept_lines(out["summary"])
  corr = out.get("correlations") or []
  if corr:
    lines += [
      "",
      "Spearman rank correlation over every ticket and seed (p-value): NTK "
      "distance at init against how the ticket trained.",
      "",
    ]
    rows = [
      [
        f"{c['sparsity']:g}",
        "all weights" if c["kernel"].endswith("weights") else "J diag(m) Jᵀ",
        c["target"],
        f"{c['rho']:+.2f}",
        f"{c['p']:.2g}",
        str(c["n"]),
      ]
      for c in corr
    ]
    head = ["sparsity", "kernel", "vs", "rho", "p", "tickets"]
    lines += _sweep.table_lines(head, rows)
  return "\n".join(lines) + "\n"


def _kept_lines(summary: list[dict]) -> list[str]:
  """The tickets' kept fraction per prunable layer, a second table.

  Which layers a method keeps dense decides much of a sparse net's accuracy
  (Frankle et al., ICLR 2021, Sec. 5), so every study table shows it.
  Summaries written before the ``kept/`` fields existed give no table.
  """
  tickets = [e for e in summary if e["method"] != DENSE]
  layers = list(
    dict.fromkeys(k for e in tickets for k in e if k.startswith(KEPT))
  )
  if not layers:
    return []
  head = ["method", "sparsity", *(k[len(KEPT) :] for k in layers)]
  rows = [
    [_label(e["method"], e["ablation"]), f"{e['target_sparsity']:g}"]
    + [_fmt(e, k) for k in layers]
    for e in sorted(tickets, key=lambda e: e["target_sparsity"])
  ]
  return [
    "",
    "Kept fraction of each prunable layer in %, mean ± sample std over seeds.",
    "",
    *_sweep.table_lines(head, rows),
  ]


def plot_all(out: dict, plot_dir: str) -> None:
  """Robust accuracy vs sparsity, curves vs dense, distances, densities."""
  os.makedirs(plot_dir, exist_ok=True)
  _plot_accuracy(out, plot_dir)
  sparsities = sorted(
    {r["target_sparsity"] for r in out["rows"] if r["method"] != DENSE}
  )
  for s in sparsities:
    _plot_dynamics(out["rows"], s, plot_dir)
  _plot_ntk_distance(out["summary"], sparsities, plot_dir)


def _labels(entries) -> list[str]:
  return sorted({_label(e["method"], e["ablation"]) for e in entries})


def _plot_accuracy(out: dict, plot_dir: str) -> None:
  """Clean and robust accuracy vs sparsity (dense: band of ± 1 sample std)."""
  plt = plots.pyplot()
  summary, attacks = out["summary"], out["attacks"]
  keys = ["clean_accuracy"] + [f"robust/{a}" for a in attacks]
  fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6))
  for ax, key in zip(axes, keys, strict=True):
    for label in _labels(summary):
      es = sorted(
        (
          e
          for e in summary
          if _label(e["method"], e["ablation"]) == label and key in e
        ),
        key=lambda e: e["target_sparsity"],
      )
      if not es:
        continue
      if label == DENSE:
        m, sd = es[0][key]["mean"], es[0][key]["std"]
        ax.axhspan(100 * (m - sd), 100 * (m + sd), color="k", alpha=0.15)
        ax.axhline(100 * m, color="k", lw=1.5, label="dense")
        continue
      ax.errorbar(
        [100 * e["target_sparsity"] for e in es],
        [100 * e[key]["mean"] for e in es],
        yerr=[100 * e[key]["std"] for e in es],
        marker="o",
        capsize=3,
        label=plots.wrap(label),
      )
    ax.set_xlabel("sparsity %")
    ax.set_title(
      key.replace("robust/", "robust ") + " (%), ± sample std", fontsize=9
    )
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  plots.save(fig, os.path.join(plot_dir, "accuracy_vs_sparsity.png"))


_CURVES = (
  ("train_loss", "training loss (PGD points), per seed"),
  ("clean_accuracy", "clean accuracy (held-out split)"),
  ("function_distance_adv", "function-space distance to dense (adv. probe)"),
)


def _plot_dynamics(rows: list[dict], s: float, plot_dir: str) -> None:
  """Per-epoch curves of every arm at sparsity ``s`` next to dense's.

  The loss panel draws every seed (thin lines), so a reader sees whether
  each arm's training loss has flattened; the others the mean over seeds.
  """
  plt = plots.pyplot()
  at_s = [r for r in rows if r["target_sparsity"] == s or r["method"] == DENSE]
  labels = _labels(at_s)
  colors = {lb: f"C{i % 10}" for i, lb in enumerate(lb for lb in labels)}
  colors[DENSE] = "k"
  fig, axes = plt.subplots(1, len(_CURVES), figsize=(4.4 * len(_CURVES), 3.8))
  for label in labels:
    rs = [r for r in at_s if _label(r["method"], r["ablation"]) == label]
    for ax, (key, _) in zip(axes, _CURVES, strict=True):
      curves = [
        [(h["epoch"], h[key]) for h in r["history"] if h.get(key) is not None]
        for r in rs
      ]
      curves = [c for c in curves if c]
      if not curves:
        continue
      n = min(len(c) for c in curves)
      xs = [p[0] for p in curves[0][:n]]
      ys = np.array([[p[1] for p in c[:n]] for c in curves])
      lw = 2.0 if label == DENSE else 1.2
      if key == "train_loss":
        for i, y in enumerate(ys):
          ax.plot(
            xs, y, color=colors[label], lw=lw * 0.6, alpha=0.7,
            label=plots.wrap(label) if i == 0 else None,
          )  # fmt: skip
      else:
        ax.plot(
          xs, ys.mean(0), color=colors[label], lw=lw, label=plots.wrap(label)
        )
  for ax, (key, title) in zip(axes, _CURVES, strict=True):
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if key == "train_loss":
      ax.set_yscale("log")
  axes[0].legend(fontsize=7)
  fig.suptitle(f"sparsity {s:g}")
  plots.save(fig, os.path.join(plot_dir, f"dynamics_s{_sparsity_name(s)}.png"))

  densities = {}
  for r in at_s:
    if r["method"] != DENSE:
      densities.setdefault(
        _label(r["method"], r["ablation"]), r["layer_densities"]
      )
  plots.plot_layer_densities(
    densities,
    os.path.join(plot_dir, f"layer_densities_s{_sparsity_name(s)}.png"),
    title=f"kept fraction per layer, sparsity {s:g} (seed {at_s[0]['seed']})",
  )


def _plot_ntk_distance(summary, sparsities, plot_dir: str) -> None:
  """Bars of the adversarial-NTK distance to dense at init, per sparsity
  (error bars: sample std over seeds)."""
  fig, ax = plots.pyplot().subplots(figsize=(7, 3.6))
  width = 0.8 / max(1, len(sparsities))
  ticket_labels = [lb for lb in _labels(summary) if lb != DENSE]
  for j, s in enumerate(sparsities):
    es = {
      _label(e["method"], e["ablation"]): e
      for e in summary
      if e["target_sparsity"] == s and e["method"] != DENSE
    }
    xs = np.arange(len(ticket_labels)) + j * width
    ax.bar(
      xs,
      [es[lb]["ntk_distance_at_init"]["mean"] for lb in ticket_labels],
      width,
      yerr=[es[lb]["ntk_distance_at_init"]["std"] for lb in ticket_labels],
      label=f"sparsity {s:g}",
      capsize=2,
    )
  ax.set_xticks(
    np.arange(len(ticket_labels)) + width * (len(sparsities) - 1) / 2
  )
  ax.set_xticklabels(
    [plots.wrap(lb) for lb in ticket_labels],
    rotation=30,
    ha="right",
    fontsize=8,
  )
  ax.set_ylabel("relative adv.-NTK distance to dense")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3, axis="y")
  plots.save(fig, os.path.join(plot_dir, "ntk_distance_at_init.png"))
