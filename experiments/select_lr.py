r"""Chooses the learning rate of a ticket study on a validation split.

  python -m experiments.select_lr \
    --config=experiments/configs/compare_tickets.py \
    --rates=0.02,0.05,0.1 --validation=287 --workdir=/tmp/awt/select_lr

Runs the ``compare_tickets`` study of ``--config`` once per learning rate
in ``--rates`` (``WORKDIR/lr_<rate>/``, each resumable) with
``data.validation`` examples held out of the training set as the
evaluation split, so the test set is never looked at. Every arm (the dense
net and each method's tickets) goes through the same schedule. The chosen
rate maximizes the validation accuracy under the headline attack averaged
over the arms, among the rates at which no arm diverged; the worst arm and
each arm's own best rate are reported beside it. Writes ``WORKDIR/select_lr.md``
and ``select_lr.json``.
"""

from absl import flags
from ml_collections import config_flags

from experiments import _main

config_flags.DEFINE_config_file(
  "config",
  None,
  "A study config with a `sweep` block, e.g. "
  "experiments/configs/compare_tickets.py.",
  lock_config=True,
)
flags.DEFINE_string("workdir", None, "Directory of the selection.")
flags.DEFINE_list("rates", None, "Learning rates to compare.")
flags.DEFINE_integer(
  "validation", None, "Training examples held out as the validation split."
)
flags.mark_flags_as_required(["config", "workdir", "rates", "validation"])


def main(argv):
  del argv
  from awt.studies import lr_selection  # noqa: PLC0415

  f = flags.FLAGS
  try:
    rates = [float(r) for r in f.rates]
  except ValueError:
    raise ValueError(f"--rates={','.join(f.rates)} must be numbers") from None
  lr_selection.run(
    f.config, f.workdir, rates=rates, validation=f.validation, log=_main.log
  )


if __name__ == "__main__":
  _main.run(main)
