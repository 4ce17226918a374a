r"""S PGD-AT trainings: separate runs against one program, vmapped or looped.

Trains a config's network S times, as each of ``--programs``: ``separate``
(S ``train_and_evaluate`` runs one after another), ``vmap`` and ``loop``
(one ``train_members`` program with ``member_map`` set so: the members'
steps batched by ``jax.vmap``, or run one after another by ``lax.map``
inside the same compiled step). The programs alternate for ``--rounds``
rounds, so machine drift hits each alike. Prints one JSON line with every
wall time (compilation included, as a user experiences it; no robust
evaluation) and each program's median time over the fastest median.

  python -m benchmarks.seeds --seeds=5 --epochs=20
  python -m benchmarks.seeds --config=mnist5k_lenet5 --seeds=8 --epochs=3 \
    --programs=vmap --programs=loop --rounds=2
"""

import json
import tempfile
import time

import jax
import numpy as np
from absl import flags

from awt import experiment
from experiments import _main
from experiments.configs import digits_mlp, mnist5k_lenet5, mnist5k_mlp

CONFIGS = {
  "digits_mlp": digits_mlp,
  "mnist5k_mlp": mnist5k_mlp,
  "mnist5k_lenet5": mnist5k_lenet5,
}
PROGRAMS = ("separate", "vmap", "loop")

flags.DEFINE_enum("config", "digits_mlp", list(CONFIGS), "Config file.")
flags.DEFINE_string("variant", None, "Config variant.")
flags.DEFINE_integer("seeds", 5, "Number of seeds S.", lower_bound=1)
flags.DEFINE_integer("epochs", 20, "Training epochs per run.", lower_bound=1)
flags.DEFINE_multi_enum(
  "programs", list(PROGRAMS), PROGRAMS, "Programs to time, in this order."
)
flags.DEFINE_integer(
  "rounds", 1, "Alternations of the programs.", lower_bound=1
)


def _train(program: str, config, seeds, workdir: str) -> float:
  """Wall seconds of ``program`` training ``seeds`` in ``workdir``."""
  quiet = lambda _: None  # noqa: E731
  t0 = time.perf_counter()
  if program == "separate":
    for s in seeds:
      c = config.copy_and_resolve_references()
      c.seed = s
      experiment.train_and_evaluate(c, f"{workdir}/run{s}", log=quiet)
  else:
    c = config.copy_and_resolve_references()
    c.member_map = program
    members = [experiment.Member(f"s{s}", s) for s in seeds]
    experiment.train_members(c, workdir, members, log=quiet)
  return time.perf_counter() - t0


def main(argv):
  del argv
  f = flags.FLAGS
  config = CONFIGS[f.config].get_config(f.variant)
  config.num_epochs = f.epochs
  config.eval.attacks = ()
  seeds = list(range(f.seeds))
  times = {p: [] for p in f.programs}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(f.rounds):
      for p in f.programs:
        times[p].append(round(_train(p, config, seeds, f"{tmp}/{p}{r}"), 2))
  medians = {p: float(np.median(t)) for p, t in times.items()}
  fastest = min(medians.values())
  print(
    json.dumps(
      {
        "benchmark": "seeds",
        "config": f.config,
        "model": config.model.name,
        "seeds": f.seeds,
        "epochs": f.epochs,
        "objective": config.adversarial.method,
        "devices": jax.local_device_count(),
        "backend": jax.default_backend(),
        "wall_s": times,
        "over_fastest": {p: round(m / fastest, 3) for p, m in medians.items()},
      }
    )
  )


if __name__ == "__main__":
  _main.run(main)
