r"""Prints a markdown table of the results.json of several workdirs.

  python -m experiments.summarize /tmp/awt/table/*

One row per workdir: method, sparsity, clean and robust accuracies, the
adversarial-NTK distance at init and the cost of finding the ticket.
"""

import json
import os
import sys

from absl import app


def _row(workdir: str) -> str | None:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    r = json.load(f)
  robust = " / ".join(f"{v:.2%}" for v in r["robust_accuracy"].values())
  cost = r.get("find_cost", {})
  ntk = r.get("ntk_distance_at_init")
  return (
    f"| {r.get('method', os.path.basename(workdir))} | {r['sparsity']:.2%} "
    f"| {r['clean_accuracy']:.2%} | {robust} "
    f"| {'—' if ntk is None else f'{ntk:.3f}'} "
    f"| {cost.get('wall_time_s', 0):.1f} s, {cost.get('passes', 0)} passes |"
  )


def main(argv):
  rows = [r for r in map(_row, argv[1:]) if r]
  if not rows:
    print("error: no results.json in the given workdirs", file=sys.stderr)
    return 1
  first = json.load(open(os.path.join(argv[1], "results.json")))
  attacks = " / ".join(first["robust_accuracy"])
  print(
    f"| method | sparsity | clean | {attacks} | adv-NTK distance at init "
    "| cost to find |"
  )
  print("|---|---|---|---|---|---|")
  print("\n".join(rows))
  return 0


if __name__ == "__main__":
  app.run(main)
