r"""Cost of finding a sparse ticket: wall time, passes and FLOPs.

  python -m benchmarks.ticket_cost [--config=digits_mlp] \
    [--methods=awt,hydra,imp] [--sparsity=0.95[,0.9]] \
    [--num_epochs=CONFIG] [--awt_steps=CONFIG] [--imp_rounds=5] \
    [--repeats=1] [--flops]

Finds the ticket of each method on ``experiments/configs/<config>.py``
(``digits_mlp``: LeNet-300-100 on the bundled 8x8 digits; ``mnist5k_mlp``:
LeNet-300-100 on 4,000 28x28 MNIST digits; ``mnist5k_lenet5``: LeNet-5 on
them) by ``awt.tickets.find`` (the dense net at ``config.seed``'s
initialization, the training split, the config) with no workdir and no
NTK-distance probe, so each method costs what it costs inside
``experiments.find_ticket``, minus the probe and the saving.
The three-stage methods use the config's objective (PGD-10 adversarial
training, ``pgd_at``): ``imp`` is adversarial IMP (``imp_rounds`` rounds of
``num_epochs`` epochs each, rewinding to init), ``hydra`` pretrains
``num_epochs`` epochs and then learns scores for ``num_epochs`` epochs;
``awt`` and ``ntt`` run ``awt_steps`` search steps. ``--num_epochs`` and
``--awt_steps`` default to the config's values (the search's
``awt_epochs``, 20 epochs of steps of 64 points, unless ``awt_steps`` > 0);
the shorter budgets are for measuring how cost grows with them (every
epoch, round and search step is the same compiled program, so cost is
linear in them; ``benchmarks/README.md``, "Cost of finding a
ticket").

Wall time is what a user waits for, compilation included (the first call
of each compiled program is part of the search; ``jax.clear_caches()``
runs before every search, so each one compiles afresh), measured around
``tickets.find`` (data loading excluded; the initialization included) until
the ticket's arrays are ready; ``passes`` is ``Ticket.info["passes"]``
(forward+backward passes over a batch; a PGD-k training step costs
k + 1). ``--repeats=R`` finds every ticket R times, the methods' order
reversed every other repeat, so that a change of the machine's load hits
the methods alike.

``--flops`` counts FLOPs instead of timing: ``jax.jit`` is replaced by the
counter of ``benchmarks/_flops.py`` before ``awt`` is imported, and each
jitted call with concrete arguments adds the FLOPs of its jaxpr, loop
bodies times their trip counts (XLA's cost analysis counts a loop body
once). The counter's tracing slows the run, so a ``--flops`` record has no
wall time.

Prints one JSON line per search, then per repeat and sparsity one line
with the ratios of awt to imp (the target: awt's cost at most a fifth of
adversarial IMP's at the same sparsity).
"""

import json
import time

from absl import flags

from benchmarks import _common, _flops

CONFIGS = ("digits_mlp", "mnist5k_mlp", "mnist5k_lenet5")
METHODS = ("awt", "hydra", "imp")
TARGET_RATIO = 0.2  # awt's cost <= 1/5 of adversarial IMP's.

flags.DEFINE_enum("config", "digits_mlp", CONFIGS, "experiments/configs/.")
flags.DEFINE_list("methods", list(METHODS), "Pruning methods to measure.")
flags.DEFINE_list(
  "sparsity", ["0.95"], "Fractions of prunable weights removed."
)
flags.DEFINE_integer(
  "num_epochs", None, "Epochs per training phase (default: the config's)."
)
flags.DEFINE_integer(
  "awt_steps", None, "AWT/NTT search steps (default: the config's)."
)
flags.DEFINE_integer("imp_rounds", None, "IMP rounds (default: 5).")
flags.DEFINE_integer("repeats", 1, "Searches per method, order alternating.")
flags.DEFINE_bool("flops", False, "Count FLOPs (no wall time).")


def _log(line: str) -> None:
  from experiments import _main  # noqa: PLC0415 (after _flops.install)

  _main.log(line)


def make_config(
  sparsity: float,
  num_epochs: int | None = None,
  awt_steps: int | None = None,
  imp_rounds: int | None = None,
  name: str = "digits_mlp",
):
  """``name``'s config at ``sparsity``, with optional shorter budgets.

  Raises:
    ConfigError: a value ``awt.config.validate`` rejects.
  """
  import importlib  # noqa: PLC0415

  from awt import config as config_lib  # noqa: PLC0415
  from awt import pruning  # noqa: PLC0415

  config = importlib.import_module(f"experiments.configs.{name}").get_config()
  config.pruning.sparsity = sparsity
  if num_epochs is not None:
    config.num_epochs = num_epochs
  if awt_steps is not None:
    config.pruning.awt_steps = awt_steps
  if imp_rounds is not None:
    config.pruning.imp_rounds = imp_rounds
  config_lib.validate(config, pruning_methods=pruning.names())
  return config


def find_cost(config, method: str, name: str = "digits_mlp", setup=None):
  """Finds ``method``'s ticket for ``config``; its cost record.

  With the FLOP counter installed (``_flops.install``) and enabled, the
  record has the search's FLOPs and no wall time.

  Args:
    config: a validated run config (``pruning.method`` is ignored).
    method: a pruning registry name.
    name: the config's name, for the record.
    setup: ``tickets.load(config)``, when the caller has it.

  Returns:
    ``{"method", "wall_time_s" | "flops", "passes", "sparsity", ...}``.
  """
  import jax  # noqa: PLC0415

  from awt import masks, tickets  # noqa: PLC0415

  setup = setup or tickets.load(config)
  config = config.copy_and_resolve_references()
  config.pruning.method = method
  counting = jax.jit is _flops.counting_jit and _flops.COUNTER.enabled
  jax.clear_caches()  # Every search compiles its programs afresh.
  _flops.COUNTER.reset()
  load_before = _common.load_average()
  start = time.perf_counter()
  ticket = tickets.find(config, setup=setup, measure_ntk=False, log=_log)
  jax.block_until_ready((ticket.mask, ticket.params))
  wall = time.perf_counter() - start
  record = {
    "benchmark": "ticket_cost",
    "method": method,
    "config": name,
    "objective": config.adversarial.method,
    "target_sparsity": config.pruning.sparsity,
    "sparsity": round(masks.sparsity(ticket.mask), 6),
  }
  if counting:
    record["flops"] = _flops.COUNTER.summary()
    record["flops_by_function"] = {
      k: {"calls": n, "flops": v.total}
      for k, (n, v) in _flops.COUNTER.by_function.items()
    }
  else:
    record["wall_time_s"] = round(wall, 3)
  return {
    **record,
    "passes": int(ticket.info["passes"]),
    "num_epochs": config.num_epochs,
    "awt_steps": ticket.info.get("steps", config.pruning.awt_steps),
    "imp_rounds": int(config.pruning.get("imp_rounds", 5)),
    "load_before": load_before,
    "load_after": _common.load_average(),
    "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "jax": jax.__version__,
    **_common.machine(),
  }


def ratio_record(awt: dict, imp: dict) -> dict:
  """awt's cost over imp's: wall time or FLOPs (whichever they have), passes."""
  if "flops" in awt:
    key, ratio = "flops", awt["flops"]["total"] / imp["flops"]["total"]
  else:
    key, ratio = "wall_time", awt["wall_time_s"] / imp["wall_time_s"]
  return {
    "benchmark": "ticket_cost_ratio",
    "config": awt["config"],
    "target_sparsity": awt["target_sparsity"],
    f"awt_over_imp_{key}": round(ratio, 4),
    "awt_over_imp_passes": round(awt["passes"] / max(imp["passes"], 1), 4),
    "target": TARGET_RATIO,
    "target_met": ratio <= TARGET_RATIO,
  }


def main(argv):
  del argv
  f = flags.FLAGS
  if f.flops:
    _flops.install()  # Before awt binds jax.jit.
  from awt import pruning, tickets  # noqa: PLC0415

  for m in f.methods:
    pruning.get(m)
  for name in ("num_epochs", "awt_steps", "imp_rounds", "repeats"):
    value = getattr(f, name)
    if value is not None and value < 1:
      raise ValueError(f"--{name} must be >= 1, got {value}")
  sparsities = [float(s) for s in f.sparsity]
  budgets = (f.num_epochs, f.awt_steps, f.imp_rounds, f.config)
  setup = tickets.load(make_config(sparsities[0], *budgets))
  for repeat in range(f.repeats):
    order = f.methods if repeat % 2 == 0 else f.methods[::-1]
    for sparsity in sparsities:
      config = make_config(sparsity, *budgets)
      records = {}
      for m in order:
        _log(f"finding the {m} ticket at sparsity {sparsity}")
        records[m] = find_cost(config, m, f.config, setup)
        print(json.dumps({**records[m], "repeat": repeat}), flush=True)
      if "awt" in records and "imp" in records:
        summary = ratio_record(records["awt"], records["imp"])
        print(json.dumps({**summary, "repeat": repeat}), flush=True)


if __name__ == "__main__":
  from experiments import _main

  _main.run(main)
