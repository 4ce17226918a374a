r"""NTK spectra of pruning methods' tickets at init, against the dense net's.

  python -m experiments.ntk_spectra \
    --config=experiments/configs/digits_mlp.py \
    --methods=dense,awt,snip,random,magnitude --sparsities=0.9,0.95 \
    --workdir=/tmp/awt/ntk_spectra

For every method and sparsity, finds the ticket exactly as find_ticket does
(same seed and keys; ``--config.pruning.ablation`` applies), then compares
its empirical NTK on the first --num_points training points, clean and under
PGD against the dense net at init, with the dense net's: relative Frobenius
distance, kernel alignment, eigenvalues, condition number, effective rank
and top-k eigenvector overlap (``awt.studies.ntk_spectra``). Writes
WORKDIR/config.json, WORKDIR/ntk_spectra.json and
WORKDIR/plots/ntk_spectra.png.
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
flags.DEFINE_string("workdir", None, "Directory for the JSON and the plot.")
flags.DEFINE_list(
  "methods",
  ["dense", "awt", "snip", "random", "magnitude"],
  "Pruning methods (awt.pruning.names()); dense is always the reference.",
)
flags.DEFINE_list(
  "sparsities", ["0.9", "0.95"], "Target sparsities, each in [0, 1)."
)
flags.DEFINE_integer(
  "num_points", 64, "Probe size: the first N training examples."
)
flags.mark_flags_as_required(["config", "workdir"])


def _floats(name: str, values: list[str]) -> list[float]:
  out = []
  for v in values:
    try:
      out.append(float(v))
    except ValueError:
      raise ValueError(f"--{name}: {v!r} is not a number") from None
  return out


def main(argv):
  del argv
  # After TF/JAX device setup:
  from awt import workdir as workdir_lib  # noqa: PLC0415
  from awt.studies import ntk_spectra  # noqa: PLC0415

  config = flags.FLAGS.config
  sparsities = _floats("sparsities", flags.FLAGS.sparsities)
  workdir = workdir_lib.prepare(flags.FLAGS.workdir)
  report = ntk_spectra.spectra(
    config,
    flags.FLAGS.methods,
    sparsities,
    num_points=flags.FLAGS.num_points,
    log=_main.log,
  )
  workdir_lib.write_json(f"{workdir}/config.json", config.to_dict())
  workdir_lib.write_json(f"{workdir}/ntk_spectra.json", report)
  ntk_spectra.plot_spectra(report, f"{workdir}/plots/ntk_spectra.png")
  _main.log(f"wrote {workdir}/ntk_spectra.json and plots/ntk_spectra.png")


if __name__ == "__main__":
  _main.run(main)
