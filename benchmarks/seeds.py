r"""Vectorized seeds vs sequential runs: wall time of S PGD-AT trainings.

Trains the digits MLP config S times: once as S separate
``train_and_evaluate`` runs, once as one ``train_members`` program
(``jax.vmap`` over the stacked states), and prints one JSON line with both
wall times (compilation included, as a user experiences it) and the ratio.

  python -m benchmarks.seeds --seeds=5 --epochs=20
"""

import json
import tempfile
import time

import jax
from absl import flags

from awt import experiment
from experiments import _main
from experiments.configs import digits_mlp

flags.DEFINE_integer("seeds", 5, "Number of seeds S.")
flags.DEFINE_integer("epochs", 20, "Training epochs per run.")
flags.DEFINE_string("variant", None, "digits_mlp config variant.")


def main(argv):
  del argv
  f = flags.FLAGS
  config = digits_mlp.get_config(f.variant)
  config.num_epochs = f.epochs
  config.eval.attacks = ()
  quiet = lambda _: None  # noqa: E731
  seeds = list(range(f.seeds))
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    for s in seeds:
      c = config.copy_and_resolve_references()
      c.seed = s
      experiment.train_and_evaluate(c, f"{tmp}/seq{s}", log=quiet)
    sequential = time.perf_counter() - t0
    t0 = time.perf_counter()
    experiment.train_members(
      config,
      f"{tmp}/vmap",
      [experiment.Member(f"s{s}", s) for s in seeds],
      log=quiet,
    )
    vectorized = time.perf_counter() - t0
  print(
    json.dumps(
      {
        "benchmark": "seeds",
        "seeds": f.seeds,
        "epochs": f.epochs,
        "objective": config.adversarial.method,
        "devices": jax.local_device_count(),
        "sequential_s": round(sequential, 2),
        "vectorized_s": round(vectorized, 2),
        "speedup": round(sequential / vectorized, 3),
      }
    )
  )


if __name__ == "__main__":
  _main.run(main)
