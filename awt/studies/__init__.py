"""Studies: sweeps over models, pruning methods, sparsities and seeds.

``compare_tickets`` is Shi et al. (AISTATS 2022)'s comparison of every
ticket under adversarial training, ``lr_selection`` its learning-rate
choice on a validation split, ``sparsity_robustness`` the
sparsity-vs-robustness sweep of Guo et al. (NeurIPS 2018). ``_sweep``
holds the helpers every study shares: resumable cells in
``WORKDIR/cells/<name>/``, mean ± sample std over seeds, paired
differences with t-intervals, CSV/JSON tables.

Examples:
  >>> from awt.studies import aggregate
  >>> aggregate([{"k": 1, "seed": 0, "v": 2.0}], ["k"])[0]["v"]["mean"]
  2.0
"""

from awt.studies._sweep import (
  Cell,
  aggregate,
  cell_dir,
  check_config,
  metric_names,
  paired_difference,
  read_csv,
  run_cells,
  write_csv,
  write_table_json,
)
from awt.workdir import fmt_duration

__all__ = [
  "Cell",
  "aggregate",
  "cell_dir",
  "check_config",
  "fmt_duration",
  "metric_names",
  "paired_difference",
  "read_csv",
  "run_cells",
  "write_csv",
  "write_table_json",
]
