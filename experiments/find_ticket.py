r"""Finds a sparse ticket by any pruning method, then trains and evaluates it.

  python -m experiments.find_ticket \
    --config=experiments/configs/digits_mlp.py \
    --config.pruning.method=snip --config.pruning.sparsity=0.9 \
    --workdir=/tmp/awt/snip90

The methods (``--config.pruning.method``) and every option they read
(``--config.pruning.<option>``), with defaults and allowed values, are
listed by ``--help`` under ``--config``, from the registry
(``awt.pruning.describe()``): whatever is registered, nothing by hand.
The ticket (mask + starting weights) is saved to WORKDIR/ticket and described
in WORKDIR/ticket.json, then trained with the config's objective (default PGD
adversarial training) exactly like the dense network; results.json adds the
method, the cost of finding the ticket and its adversarial-NTK distance to
the dense net at init. By default the dense net with the same seed is trained
alongside in the same vectorized program (same batches and attack
randomness), and results.json's ``history`` holds the ticket's per-epoch
function-space distance to it (--nodense_reference skips this).
--config.pruning.ablation=shuffle|reinit|init_weights|invert|random_same_density
applies a sanity check of Frankle et al. (ICLR 2021) to the ticket.
--notrain stops after the ticket.
"""

from absl import flags
from ml_collections import config_flags

from awt import pruning
from experiments import _main

config_flags.DEFINE_config_file(
  "config",
  None,
  "Path to a config file under experiments/configs/.\n" + pruning.describe(),
  lock_config=True,
)
flags.DEFINE_string("workdir", None, "Directory for the ticket and results.")
flags.DEFINE_bool(
  "train", True, "Train and evaluate the ticket after finding it."
)
flags.DEFINE_bool(
  "dense_reference",
  True,
  "Train the dense net with the same seed alongside (one vectorized "
  "program) and record the ticket's function-space distance to it.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from awt import tickets  # noqa: PLC0415 (after TF/JAX device setup)

  tickets.find_and_train(
    flags.FLAGS.config,
    flags.FLAGS.workdir,
    train=flags.FLAGS.train,
    dense_reference=flags.FLAGS.dense_reference,
    log=_main.log,
  )


if __name__ == "__main__":
  _main.run(main)
