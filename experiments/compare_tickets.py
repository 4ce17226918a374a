r"""Compares every ticket method under PGD-AT (Shi et al., AISTATS 2022).

  python -m experiments.compare_tickets \
    --config=experiments/configs/compare_tickets.py \
    --workdir=/tmp/awt/compare_tickets

For each sparsity in ``config.sweep.sparsities``, method in
``config.sweep.methods``, ablation and seed, finds the ticket (saved in
WORKDIR/cells/<cell>/), then trains all tickets and the dense net of each
seed together in one vectorized program (WORKDIR/train/<sparsity>/), and
writes WORKDIR/compare_tickets.{json,csv}, table.md (mean ± sample std over
seeds, paired differences against dense and SNIP) and plots/. Started
again with the same workdir, it skips finished tickets and trainings and
resumes an interrupted one from its checkpoint.

The same tickets under other SGD noise (batches and attacks of seed + k,
networks of seed; ``awt.studies.compare_tickets``, "Training"):

  mkdir -p /tmp/awt/compare_tickets_k1000
  cp -r /tmp/awt/compare_tickets/cells /tmp/awt/compare_tickets_k1000/
  python -m experiments.compare_tickets \
    --config=experiments/configs/compare_tickets.py \
    --config.train_seed_offset=1000 --workdir=/tmp/awt/compare_tickets_k1000
"""

from absl import flags
from ml_collections import config_flags

from experiments import _main

config_flags.DEFINE_config_file(
  "config",
  None,
  "Path to a config with a `sweep` block, e.g. "
  "experiments/configs/compare_tickets.py.",
  lock_config=True,
)
flags.DEFINE_string("workdir", None, "Directory of the study.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from awt import config as config_lib  # noqa: PLC0415
  from awt.studies import compare_tickets  # noqa: PLC0415

  config = flags.FLAGS.config
  if "sweep" not in config:
    raise config_lib.ConfigError("config has no `sweep` block")
  compare_tickets.run(
    config,
    flags.FLAGS.workdir,
    **compare_tickets.grid(config.sweep),
    log=_main.log,
  )


if __name__ == "__main__":
  _main.run(main)
