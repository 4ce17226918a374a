r"""Prints markdown tables of finished workdirs.

  python -m experiments.summarize /tmp/awt/table/*
  python -m experiments.summarize /tmp/awt/decisive_mnist5k

A ticket or training workdir (``results.json``) is one row of a table, a
workdir of several members (a study's ``train/<pct>``) one row per
member: method or member, sparsity, clean and robust accuracies, the
adversarial-NTK distance at init and the cost of finding the ticket. A
study workdir (``compare_tickets.json``, ``sparsity_robustness.json``)
gets its study's table again, recomputed from the per-seed rows it saved
with the current statistics (``awt.studies._sweep``: mean ± sample std
over seeds, paired t-intervals) and, for rows saved before they had one,
each run's ``stalled`` flag and ``epochs_at_chance`` from its loss
history, so a results table can
be regenerated without rerunning the study.
"""

import json
import os
import sys

from experiments import _main

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
    f"| {cost.get('wall_time_s', 0):.1f} s, {cost.get('passes', 0)} passes |"
  )


def _load(path: str) -> dict:
  with open(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise ValueError(f"{path} is not valid JSON ({e})") from None


def compare_tickets_table(workdir: str) -> str:
  """``table.md`` of a ``compare_tickets`` workdir, from its saved rows."""
  from awt.studies import compare_tickets  # noqa: PLC0415 (slow import)

  saved = _load(os.path.join(workdir, "compare_tickets.json"))
  rows = saved["rows"]
  config = os.path.join(workdir, "config.json")
  if os.path.exists(config):  # rows saved before these fields existed
    from awt import data  # noqa: PLC0415

    classes = data.info(_load(config)["data"]["name"]).num_classes
    chance = compare_tickets.chance_loss(classes)
    backfill = {
      "stalled": compare_tickets.stalled,
      "epochs_at_chance": compare_tickets.epochs_at_chance,
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
  out = compare_tickets.summarize(rows, saved["attacks"])
  out["eval_split"] = saved.get("eval_split", "test")
  return compare_tickets.markdown_table(out)


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
  studies, workdirs = [], []
  for workdir in argv[1:]:
    if not os.path.isdir(workdir):
      what = "is a file" if os.path.exists(workdir) else "does not exist"
      raise ValueError(f"{workdir!r} {what}; give workdirs (directories)")
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
    "| cost to find |"
  )
  print("|---|---|---|---|---|---|")
  print("\n".join(rows))
  return 0


if __name__ == "__main__":
  _main.run(main)
