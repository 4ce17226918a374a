r"""Cost of finding a sparse ticket: wall time and forward/backward passes.

  python -m benchmarks.ticket_cost [--methods=awt,hydra,imp] \
    [--sparsity=0.95] [--num_epochs=CONFIG] [--awt_steps=CONFIG] \
    [--imp_rounds=5]

Finds the ticket of each method on ``experiments/configs/digits_mlp.py``
(LeNet-300-100 on the bundled digits) by ``awt.tickets.find`` (the dense net
at ``config.seed``'s initialization, the training split, the config) with
no workdir and no NTK-distance probe, so each method costs what it costs
inside ``experiments.find_ticket``, minus the probe and the saving.
The three-stage methods use the config's objective (PGD-10 adversarial
training, ``pgd_at``): ``imp`` is adversarial IMP (``imp_rounds`` rounds of
``num_epochs`` epochs each, rewinding to init), ``hydra`` pretrains
``num_epochs`` epochs and then learns scores for ``num_epochs`` epochs;
``awt`` runs ``awt_steps`` search steps. ``--num_epochs`` and
``--awt_steps`` default to the config's values (60 epochs; the search's
``awt_epochs``, 20 epochs of steps of 64 points, unless ``awt_steps`` > 0).

Wall time is what a user waits for, compilation included (the first call
of each compiled program is part of the search), measured around
``tickets.find`` (data loading excluded; the initialization included) until
the ticket's arrays are ready; ``passes`` is
``Ticket.info["passes"]`` (forward+backward passes over a batch; a PGD-k
training step costs k + 1). Prints one JSON line per method, then one line
with the ratios of awt to imp (the target: awt's wall time at most a fifth
of adversarial IMP's at the same sparsity).
"""

import json
import time

import jax
from absl import flags

from awt import masks, pruning, tickets
from benchmarks import _common
from experiments import _main
from experiments.configs import digits_mlp

METHODS = ("awt", "hydra", "imp")
TARGET_RATIO = 0.2  # awt wall time <= 1/5 of adversarial IMP's.

flags.DEFINE_list("methods", list(METHODS), "Pruning methods to time.")
flags.DEFINE_float("sparsity", 0.95, "Fraction of prunable weights removed.")
flags.DEFINE_integer(
  "num_epochs", None, "Epochs per training phase (default: the config's)."
)
flags.DEFINE_integer(
  "awt_steps", None, "AWT search steps (default: the config's)."
)
flags.DEFINE_integer("imp_rounds", None, "IMP rounds (default: 5).")


def make_config(
  sparsity: float,
  num_epochs: int | None = None,
  awt_steps: int | None = None,
  imp_rounds: int | None = None,
):
  """digits_mlp's config at ``sparsity``, with optional shorter budgets.

  Raises:
    ConfigError: a value ``awt.config.validate`` rejects.
  """
  config = digits_mlp.get_config()
  config.pruning.sparsity = sparsity
  if num_epochs is not None:
    config.num_epochs = num_epochs
  if awt_steps is not None:
    config.pruning.awt_steps = awt_steps
  if imp_rounds is not None:
    config.pruning.imp_rounds = imp_rounds
  pruning.validate(config)
  return config


def find_cost(config, method: str) -> dict:
  """Finds ``method``'s ticket for ``config``; its cost record.

  Args:
    config: a validated run config (``pruning.method`` is ignored).
    method: a pruning registry name.

  Returns:
    ``{"method", "wall_time_s", "passes", "sparsity", ...}``.
  """
  setup = tickets.load(config)
  config = config.copy_and_resolve_references()
  config.pruning.method = method
  load_before = _common.load_average()
  start = time.perf_counter()
  ticket = tickets.find(config, setup=setup, measure_ntk=False, log=_main.log)
  jax.block_until_ready((ticket.mask, ticket.params))
  wall = time.perf_counter() - start
  return {
    "benchmark": "ticket_cost",
    "method": method,
    "config": "digits_mlp",
    "objective": config.adversarial.method,
    "target_sparsity": config.pruning.sparsity,
    "sparsity": round(masks.sparsity(ticket.mask), 6),
    "wall_time_s": round(wall, 3),
    "passes": int(ticket.info["passes"]),
    "num_epochs": config.num_epochs,
    "awt_steps": ticket.info.get("steps", config.pruning.awt_steps),
    "imp_rounds": int(config.pruning.get("imp_rounds", 5)),
    "load_before": load_before,
    "load_after": _common.load_average(),
    "jax": jax.__version__,
    **_common.machine(),
  }


def main(argv):
  del argv
  f = flags.FLAGS
  for m in f.methods:
    pruning.get(m)
  for name in ("num_epochs", "awt_steps", "imp_rounds"):
    value = getattr(f, name)
    if value is not None and value < 1:
      raise ValueError(f"--{name} must be >= 1, got {value}")
  config = make_config(f.sparsity, f.num_epochs, f.awt_steps, f.imp_rounds)
  records = {}
  for m in f.methods:
    _main.log(f"finding the {m} ticket at sparsity {f.sparsity}")
    records[m] = find_cost(config, m)
    print(json.dumps(records[m]), flush=True)
  if "awt" in records and "imp" in records:
    awt, imp = records["awt"], records["imp"]
    ratio = awt["wall_time_s"] / imp["wall_time_s"]
    summary = {
      "benchmark": "ticket_cost_ratio",
      "awt_over_imp_wall_time": round(ratio, 4),
      "awt_over_imp_passes": round(awt["passes"] / max(imp["passes"], 1), 4),
      "target": TARGET_RATIO,
      "target_met": ratio <= TARGET_RATIO,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  _main.run(main)
