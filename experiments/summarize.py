r"""Prints markdown tables of finished workdirs.

  python -m experiments.summarize /tmp/awt/table/*
  python -m experiments.summarize /tmp/awt/decisive_mnist5k

A ticket or training workdir (``results.json``) is one row of a table, a
workdir of several members (a study's ``train/<pct>``) one row per
member: method or member, sparsity, clean and robust accuracies, the
adversarial-NTK distance at init, the cost of finding the ticket and the
epochs training spent at the constant classifier's loss (``awt.curves``;
"(stalled)" when the last epoch still ended there). A
study workdir (``compare_tickets.json``, ``sparsity_robustness.json``)
gets its study's table again, recomputed from the per-seed rows it saved
with the current statistics (``awt.studies._sweep``: mean ± sample std
over seeds, paired t-intervals) and, for rows saved before they had one,
each run's ``stalled`` flag and ``epochs_at_chance`` from its loss
history, so a results table can
be regenerated without rerunning the study.

  python -m experiments.summarize --pool /tmp/awt/s95 /tmp/awt/s95_seeds5to9

``--pool`` makes one table of several ``compare_tickets`` workdirs that
ran the same protocol on different seeds (more seeds added later, or
seeds run on two machines): the same recorded ``config.json`` (the study
config without its sweep), the same attacks and evaluation split, and no
(arm, seed) in two of them; anything else ends in one line naming the
difference. Paired differences pair each seed with the dense net of its
own program, as in one workdir.
"""

import json
import os
import sys

from absl import flags

from experiments import _main

flags.DEFINE_bool(
  "pool",
  False,
  "One table over the seeds of several compare_tickets workdirs of one "
  "protocol (same config.json, no arm's seed twice).",
)

# What a row reads from a run's results.
_KEYS = ("sparsity", "clean_accuracy", "robust_accuracy")


def _results(workdir: str) -> list[tuple[str, dict]]:
  """``[(name, results)]`` of a workdir: one run, or each member of a
  several-member one (a study's ``train/<pct>``: ``{"members": [...]}``)."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return []
  r = _load(path)
  if "members" in r:
    if not r["members"]:
      raise ValueError(f"{path} lists no members; nothing to summarize")
    runs = [(m.get("name"), m) for m in r["members"]]
  else:
    runs = [(r.get("method", os.path.basename(workdir)), r)]
  for name, run in runs:
    missing = [k for k in _KEYS if k not in run]
    if missing:
      raise ValueError(
        f"{path}: {name} has no {missing[0]!r}; not the "
        "results of an awt training run"
      )
  return runs


def _row(name: str, r: dict) -> str:
  robust = " / ".join(f"{v:.2%}" for v in r["robust_accuracy"].values())
  cost = r.get("find_cost", {})
  ntk = r.get("ntk_distance_at_init")
  return (
    f"| {name} | {r['sparsity']:.2%} "
    f"| {r['clean_accuracy']:.2%} | {robust} "
    f"| {'—' if ntk is None else f'{ntk:.3f}'} "
    f"| {cost.get('wall_time_s', 0):.1f} s, {cost.get('passes', 0)} passes "
    f"| {_at_chance(r)} |"
  )


def _at_chance(r: dict) -> str:
  """Epochs the run trained at ln K, and whether it ended there
  (``awt.curves``; "—" for results written before they were recorded)."""
  n = r.get("epochs_at_chance")
  if n is None:
    return "—"
  return f"{n:.0f}" + (" (stalled)" if r.get("stalled") else "")


def _load(path: str) -> dict:
  with open(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise ValueError(f"{path} is not valid JSON ({e})") from None


def _compare_rows(workdir: str) -> tuple[dict, list[dict], dict | None]:
  """``(saved, rows, config)`` of a ``compare_tickets`` workdir: its
  ``compare_tickets.json``, its per-seed rows and its recorded
  ``config.json`` (None if it has none); rows saved before ``stalled``
  and ``epochs_at_chance`` existed get them from their loss history when
  the config names the dataset."""
  saved = _load(os.path.join(workdir, "compare_tickets.json"))
  rows = saved["rows"]
  path = os.path.join(workdir, "config.json")
  config = _load(path) if os.path.exists(path) else None
  if config is not None:  # rows saved before these fields existed
    from awt import curves, data  # noqa: PLC0415

    classes = data.info(config["data"]["name"]).num_classes
    objective = config.get("adversarial", {}).get("method", "none")
    chance = curves.objective_chance(objective, classes)
    backfill = {
      "stalled": curves.stalled,
      "epochs_at_chance": curves.epochs_at_chance,
    }
    rows = [
      dict(
        r,
        **{
          k: f(r["history"], chance) for k, f in backfill.items() if k not in r
        },
      )
      for r in rows
    ]
  return saved, rows, config


def _table(saved: dict, rows: list[dict]) -> str:
  from awt.studies import compare_tickets  # noqa: PLC0415

  out = compare_tickets.summarize(rows, saved["attacks"])
  out["eval_split"] = saved.get("eval_split", "test")
  return compare_tickets.markdown_table(out)


def compare_tickets_table(workdir: str) -> str:
  """``table.md`` of a ``compare_tickets`` workdir, from its saved rows."""
  saved, rows, _ = _compare_rows(workdir)
  return _table(saved, rows)


def _arm_seed(row: dict) -> tuple:
  """What names one trained run of a study: its arm and seed."""
  return tuple(
    row.get(k)
    for k in ("method", "ablation", "target_sparsity", "trained_at", "seed")
  )


def pooled_compare_tickets_table(workdirs: list[str]) -> str:
  """One ``table.md`` over the rows of several ``compare_tickets``
  workdirs of one protocol (``--pool``).

  Raises:
    ValueError: one line: fewer than two workdirs, one that is not a
      ``compare_tickets`` workdir or has no ``config.json``, a config,
      attack list or evaluation split that differs from the first
      workdir's (naming the first differing key), or an arm's seed in two
      workdirs.
  """
  from awt import workdir as workdir_lib  # noqa: PLC0415

  if len(workdirs) < 2:
    raise ValueError("--pool wants two or more compare_tickets workdirs")
  first, pooled, seen = None, [], {}
  for w in workdirs:
    if not os.path.exists(os.path.join(w, "compare_tickets.json")):
      raise ValueError(f"--pool: {w} has no compare_tickets.json")
    saved, rows, config = _compare_rows(w)
    if config is None:
      raise ValueError(f"--pool: {w} has no config.json")
    recorded = dict(
      config=config,
      attacks=saved["attacks"],
      eval_split=saved.get("eval_split", "test"),
    )
    if first is None:
      first, first_saved, first_recorded = w, saved, recorded
    diff = workdir_lib.first_difference(first_recorded, recorded)
    if diff:
      key, was, now = diff
      raise ValueError(
        f"--pool: {w} ran another protocol than {first} ({key}: {was!r} "
        f"there, {now!r} here)"
      )
    for r in rows:
      other = seen.setdefault(_arm_seed(r), w)
      if other != w:
        raise ValueError(
          f"--pool: seed {r['seed']} of {r['method']} (ablation "
          f"{r.get('ablation')}) is in both {other} and {w}"
        )
    pooled += rows
  return _table(first_saved, pooled)


def sparsity_robustness_table(workdir: str) -> str:
  """``table.md`` of a ``sparsity_robustness`` workdir, from its saved rows
  and the config it recorded (``config.json``)."""
  import ml_collections  # noqa: PLC0415

  from awt.studies import _sweep  # noqa: PLC0415 (slow import)
  from awt.studies import sparsity_robustness as sr  # noqa: PLC0415

  saved = _load(os.path.join(workdir, "sparsity_robustness.json"))
  config = ml_collections.ConfigDict(
    _load(os.path.join(workdir, "config.json"))
  )
  paired = sr.paired_differences(saved["rows"], sr.metrics(config.sweep))
  out = {
    "rows": saved["rows"],
    "summary": _sweep.aggregate(saved["rows"], sr.KEYS),
    "paired": paired,
    "trend_tests": sr.trend_tests(paired, config.sweep),
    "cw_check": saved.get("cw_check", {}),
  }
  return sr.format_report(out, config) + "\n"


STUDIES = {
  "compare_tickets.json": compare_tickets_table,
  "sparsity_robustness.json": sparsity_robustness_table,
}


def main(argv):
  for workdir in argv[1:]:
    if not os.path.isdir(workdir):
      what = "is a file" if os.path.exists(workdir) else "does not exist"
      raise ValueError(f"{workdir!r} {what}; give workdirs (directories)")
  if flags.FLAGS["pool"].value:
    workdirs = argv[1:]
    print(f"pooled {', '.join(workdirs)}:\n")
    print(pooled_compare_tickets_table(workdirs))
    return 0
  studies, workdirs = [], []
  for workdir in argv[1:]:
    found = [f for f in STUDIES if os.path.exists(os.path.join(workdir, f))]
    if found:
      studies.append((workdir, STUDIES[found[0]]))
    else:
      workdirs.append(workdir)
  for workdir, table in studies:
    print(f"{workdir}:\n\n{table(workdir)}")
  runs = []
  for w in workdirs:
    found = _results(w)
    if not found:
      _main.log(f"skipped {w}: no results.json (not finished?)")
    runs += found
  if not runs:
    if studies:
      return 0
    print("error: no results.json in the given workdirs", file=sys.stderr)
    return 1
  rows = [_row(name, r) for name, r in runs]
  first = runs[0][1]
  attacks = " / ".join(first["robust_accuracy"])
  print(
    f"| method | sparsity | clean | {attacks} | adv-NTK distance at init "
    "| cost to find | epochs at chance |"
  )
  print("|---|---|---|---|---|---|---|")
  print("\n".join(rows))
  return 0


if __name__ == "__main__":
  _main.run(main)
