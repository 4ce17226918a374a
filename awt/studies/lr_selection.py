"""Learning-rate selection for a ticket study, on a validation split.

Shi et al.'s comparison trains every arm (dense and each ticket) with one
schedule; a learning rate that suits the dense net may not train a sparse
ticket at all. ``run`` runs ``compare_tickets`` once per candidate rate
with ``data.validation`` training examples held out as the evaluation
split (the test set is never loaded into any of these runs), then picks the
rate that maximizes the validation accuracy under the headline attack
averaged over the arms (each arm's mean over seeds), among the rates at
which no arm's training diverged (a non-finite loss). The worst arm and
each arm's own best rate are reported beside it: an arm that fails at
every rate (random tickets at high sparsity) shows up there instead of
deciding the rate for every other arm. Each rate's study lives in
``WORKDIR/lr_<rate>/`` and resumes like any study.
"""

import os
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from awt import config as config_lib
from awt import workdir as workdir_lib
from awt.studies import _sweep, compare_tickets


def _with(config, rate: float, validation: int):
  return config_lib.replaced(
    config,
    {
      "optimizer.learning_rate": float(rate),
      "data.validation": int(validation),
    },
  )


def choose(results: dict[float, dict]) -> dict:
  """The best rate by the mean over arms, from each rate's study output.

  Args:
    results: rate -> ``compare_tickets`` output (``summary``, ``headline``).

  Returns:
    ``{"rate", "arms": {arm: {rate: mean accuracy}}, "mean": {rate: mean
    over arms}, "worst": {rate: worst arm's mean}, "best_per_arm": {arm:
    rate}, "metric"}``; an arm missing at a rate counts as 0.
  """
  arms: dict[str, dict[float, float]] = {}
  metric = None
  for rate, out in sorted(results.items()):
    metric = f"robust/{out['headline']}" if out["headline"] else None
    metric = metric or "clean_accuracy"
    for e in out["summary"]:
      arm = compare_tickets.arm_name(e)
      if metric in e and e[metric]["mean"] is not None:
        arms.setdefault(arm, {})[rate] = e[metric]["mean"]
  rates = sorted(results)
  mean = {
    r: float(np.mean([v.get(r, 0.0) for v in arms.values()])) for r in rates
  }
  worst = {r: min(v.get(r, 0.0) for v in arms.values()) for r in rates}
  return {
    "rate": max(rates, key=lambda r: mean[r]),
    "arms": arms,
    "mean": mean,
    "worst": worst,
    "best_per_arm": {a: max(v, key=v.get) for a, v in arms.items()},
    "metric": metric,
  }


def markdown(choice: dict) -> str:
  """The validation accuracies (%) per arm and rate, and the choice."""
  rates = sorted(choice["worst"])
  head = ["arm"] + [f"lr {r:g}" for r in rates] + ["best lr"]
  lines = [
    f"Validation {choice['metric']} (%), mean over seeds; chosen rate: "
    f"**{choice['rate']:g}** (the largest mean over arms).",
    "",
  ]
  for rate, why in sorted(choice.get("diverged", {}).items()):
    lines.insert(1, f"lr {rate:g}: not a candidate, training diverged ({why}).")
  rows = [
    [arm]
    + [f"{100 * by_rate[r]:.1f}" if r in by_rate else "–" for r in rates]
    + [f"{choice['best_per_arm'][arm]:g}"]
    for arm, by_rate in sorted(choice["arms"].items())
  ]
  rows += [
    [f"**{label}**", *(f"{100 * choice[key][r]:.1f}" for r in rates), ""]
    for label, key in (("mean over arms", "mean"), ("worst arm", "worst"))
  ]
  return "\n".join(lines + _sweep.table_lines(head, rows)) + "\n"


def run(
  config,
  workdir: str,
  *,
  rates: Sequence[float],
  validation: int,
  log: Callable[[str], None] = logging.info,
) -> dict:
  """Runs the study at every rate on the validation split; see module doc.

  Raises:
    ConfigError: for no rates, a non-positive rate, no validation split
      (0 would select on the test set), a config without a ``sweep`` block
      or a bad grid.
  """
  if not rates or any(r <= 0 for r in rates):
    raise config_lib.ConfigError(
      f"learning rates {tuple(rates)} must be a non-empty list of numbers > 0"
    )
  if validation < 1:
    raise config_lib.ConfigError(
      f"validation={validation} must be >= 1 held-out training examples "
      "(0 would select the rate on the test set)"
    )
  if "sweep" not in config:
    raise config_lib.ConfigError(
      "the config has no `sweep` block; select_lr runs a study config, e.g. "
      "experiments/configs/compare_tickets.py"
    )
  workdir = workdir_lib.prepare(workdir)
  results, diverged = {}, {}
  for rate in rates:
    log(f"learning rate {rate:g}: the study on {validation} held-out examples")
    try:
      results[float(rate)] = compare_tickets.run(
        _with(config, rate, validation),
        os.path.join(workdir, f"lr_{rate:g}"),
        **compare_tickets.grid(config.sweep),
        log=log,
      )
    except FloatingPointError as e:  # NonFiniteError: an arm diverged.
      log(f"learning rate {rate:g} is out: {e}")
      diverged[float(rate)] = str(e)
  if not results:
    raise FloatingPointError(f"every learning rate diverged: {diverged}")
  choice = choose(results)
  choice["diverged"] = diverged
  workdir_lib.write_json(os.path.join(workdir, "select_lr.json"), choice)
  table = markdown(choice)
  workdir_lib.write_text(os.path.join(workdir, "select_lr.md"), table)
  log("learning-rate selection:\n" + table)
  return choice
