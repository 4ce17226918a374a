r"""Trains (and adversarially trains) one model and evaluates its robustness.

  python -m experiments.train \
    --config=experiments/configs/digits_mlp.py --workdir=/tmp/awt/digits_mlp

Override any config field with ``--config.FIELD=VALUE`` (e.g.
``--config.adversarial.method=none``). Writes config.json, metrics.jsonl,
tb/, checkpoints/, results.json and plots/ to --workdir; started again with
the same --workdir it resumes from the last complete checkpoint.
"""

from absl import flags
from ml_collections import config_flags

from experiments import _main

config_flags.DEFINE_config_file(
  "config",
  None,
  "Path to a config file under experiments/configs/.",
  lock_config=True,
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from awt import tickets  # noqa: PLC0415 (after TF/JAX device setup)

  tickets.train(flags.FLAGS.config, flags.FLAGS.workdir, log=_main.log)


if __name__ == "__main__":
  _main.run(main)
