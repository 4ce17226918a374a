r"""Sparsity vs adversarial robustness sweep (Guo et al., NeurIPS 2018).

  python -m experiments.sparsity_robustness \
    --config=experiments/configs/sparsity_robustness.py \
    --workdir=/tmp/awt/sparsity_robustness

  python -m experiments.sparsity_robustness \
    --config=experiments/configs/sparsity_robustness.py:mnist5k \
    --workdir=/tmp/awt/sparsity_robustness_mnist5k

For each model of ``sweep.models`` (default: LeNet-300-100 and the linear
classifier) trains the dense net, prunes it by magnitude + retraining and by
dynamic network surgery at every sparsity of ``sweep.sparsities`` (0: the
matched control, trained as long with nothing pruned) for every seed of
``sweep.seeds`` (each group of seeds and sparsities one vectorized program),
and measures clean, FGSM, BIM and PGD accuracy at ``sweep.linf_eps`` and
DeepFool / C&W-l2 rho_2 on a fixed set of points. Writes
WORKDIR/sparsity_robustness.csv and .json (mean ± sample std over seeds;
per-seed values, paired differences against the matched control, the trend
tests and the C&W convergence check in the JSON),
sparsity_robustness_paired.csv, table.md and
WORKDIR/plots/sparsity_robustness{,_paired}.png, and prints table.md.
Each step runs in WORKDIR/cells/<model>-<step>/; started again with the
same --workdir, the sweep skips finished cells and resumes the running one
from its checkpoints.
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
flags.DEFINE_string("workdir", None, "Directory for the sweep's outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from awt.studies import sparsity_robustness  # noqa: PLC0415 (after setup)

  config = flags.FLAGS.config
  out = sparsity_robustness.run_sweep(
    config, flags.FLAGS.workdir, log=_main.log
  )
  print(sparsity_robustness.format_report(out, config))


if __name__ == "__main__":
  _main.run(main)
