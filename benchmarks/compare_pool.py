r"""Pool the pairs of several ``benchmarks.compare`` runs on one machine.

  python -m benchmarks.compare_pool RECORDS.jsonl [MORE.jsonl ...]

One run of ``benchmarks.compare`` gives a task's ratio (awt's images/s
over the fastest PyTorch peer's) as the median of a few alternated pairs,
and on the 2-core machines that median moves by up to 0.4 from run to run
(benchmarks/README.md). Whether a task holds a line such as issue 17's
1.5× is then a question about all the pairs measured on that CPU, not
about one run. This prints, per task, one row over every
``"peer": "fastest"`` record in the files:

* ``runs`` and ``pairs``: how many records and pairs were pooled;
* ``median [95% CI]``: the median over all pairs and a distribution-free
  confidence interval for it (:func:`median_interval`);
* ``runs' medians``: the range of the runs' own medians, which shows the
  run-to-run drift that the interval, treating pairs as independent,
  does not;
* ``≥ 1.0`` and ``≥ 1.5``: the pairs at or above issue 17's two lines.

``benchmarks.compare_table`` gives one run's table instead (a later record
of a task replaces an earlier one there). Records of different CPUs are not
pooled: the command fails naming them, so give one machine's files at a
time.
"""

import math
import statistics

from benchmarks import _common
from experiments import _main

LINES = (1.0, 1.5)


def median_interval(n: int, level: float = 0.95) -> tuple[int, int] | None:
  """Ranks ``(lo, hi)`` (1-based, of the sorted sample) bounding the median.

  The order-statistic interval (Conover, *Practical Nonparametric
  Statistics*, 3rd ed., 1999, §3.2): for ``n`` independent draws of a
  continuous distribution, the number below the median is Binomial(n, ½),
  so ``[x_(k), x_(n+1-k)]`` holds the median with probability
  ``1 - 2 P(B <= k-1)``; ``k`` is the largest rank keeping that
  ``>= level``.

  Args:
    n: sample size, >= 1.
    level: the coverage asked for, in (0, 1).

  Returns:
    ``(k, n + 1 - k)``, or None when even ``[x_(1), x_(n)]`` covers less
    than ``level`` (n < 6 at 95%).
  """
  if n < 1 or not 0 < level < 1:
    raise ValueError(f"need n >= 1 and 0 < level < 1, got {n}, {level}")
  below = lambda k: sum(math.comb(n, i) for i in range(k)) / 2**n  # P(B < k)
  k = 0
  while k + 1 <= (n + 1) // 2 and 1 - 2 * below(k + 1) >= level:
    k += 1
  return (k, n + 1 - k) if k else None


def _cpu(record: dict) -> str:
  cpu = record.get("cpu", "unknown CPU")
  return f"{cpu} ({record['cpu_id']})" if "cpu_id" in record else cpu


def pool(records: list[dict]) -> tuple[str, list[list[str]]]:
  """``(CPU, rows)``: the records' CPU, and one row a task in first-seen
  order, ``[task, runs, pairs, median [95% CI], runs' medians, pairs >= 1.0,
  pairs >= 1.5]`` as strings.

  Raises:
    ValueError: no ``fastest`` record with pairs, or records of more than
      one CPU.
  """
  runs = {}
  for r in records:
    if r.get("benchmark") == "compare" and r.get("peer") == "fastest":
      if "ratios" in r:
        runs.setdefault(f"{r['task']}:{r['model']}", []).append(r)
  if not runs:
    raise ValueError("no benchmarks.compare record with pairs to pool")
  cpus = sorted({_cpu(r) for task in runs.values() for r in task})
  if len(cpus) > 1:
    raise ValueError(
      f"records of {len(cpus)} CPUs ({'; '.join(cpus)}): pool one at a time"
    )
  rows = []
  for task, recs in runs.items():
    ratios = sorted(x for r in recs for x in r["ratios"])
    n = len(ratios)
    median = f"**{statistics.median(ratios):.2f}**"
    ranks = median_interval(n)
    if ranks:
      median += f" [{ratios[ranks[0] - 1]:.2f}, {ratios[ranks[1] - 1]:.2f}]"
    medians = [r["ratio_median"] for r in recs]
    at = [f"{sum(x >= line for x in ratios)} of {n}" for line in LINES]
    lo, hi = f"{min(medians):.2f}", f"{max(medians):.2f}"
    spread = lo if lo == hi else f"{lo}–{hi}"
    rows.append([task, str(len(recs)), str(n), median, spread, *at])
  return cpus[0], rows


def markdown(table: list[list[str]]) -> str:
  """The rows as a markdown table."""
  head = ["task", "runs", "pairs", "median [95% CI]", "runs' medians"]
  head += [f"≥ {line}" for line in LINES]
  return _common.markdown_table(head, table)


def main(argv):
  if len(argv) < 2:
    raise ValueError("give the JSON-lines files of benchmarks.compare")
  cpu, rows = pool(_common.read_records(argv[1:]))
  print(f"{cpu}\n\n{markdown(rows)}", flush=True)


if __name__ == "__main__":
  _main.run(main)
