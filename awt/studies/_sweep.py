"""The study skeleton: resumable cells, seed statistics, atomic tables.

Every study in ``awt.studies`` is built from these pieces (docs/design.md,
"How to add", "A study"); nothing here knows about models or training.

- **Cells and resume.** A study is a sequence of *cells*, each a unit of
  work with a name and its own sub-workdir ``WORKDIR/cells/<name>/`` (one
  ``train_members`` program over several seeds, a ticket search, an
  evaluation). ``run_cells`` runs them in order and writes each cell's
  results to ``cells/<name>/results.json`` when it finishes (its done
  marker); a cell whose ``results.json`` exists is loaded instead of run
  (``load_results``), so a study killed at any point and started again with
  the same workdir continues where it stopped (a cell that was running
  resumes from the checkpoints in its own sub-workdir). ``check_config``
  refuses, in one line naming the first differing key, a workdir written by
  another config. One progress line per cell gives the rate and the ETA.
  ``check_numbers`` checks a grid axis (seeds, sparsities) before any work;
  ``every`` thins an inner job's progress lines to one a minute.
- **Statistics.** Results are rows (flat dicts, one per trained network: a
  seed of one configuration); ``aggregate`` groups them by their
  configuration keys into mean ± *sample* standard deviation (ddof 1) over
  seeds, keeping the per-seed values; ``STATISTIC``/``statistic_note`` say
  so in every table a study writes, ``fmt_mean_std`` formats a cell.
  ``paired_by_seed`` and ``paired_difference`` give the mean same-seed
  difference of two arms with a Student-t interval, ``fmt_interval``
  formats one.
- **Tables.** ``write_csv`` (one line per group), ``write_rows_csv`` (any
  rows) and ``write_table_json`` write atomically (``workdir.atomic_write``:
  a temp file in the same directory, then ``os.replace``), so a killed study
  never leaves a half-written table.

The plotting helpers studies share (``pyplot``, ``save``) are in
``awt.plots``.
"""

import csv
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from awt import workdir as workdir_lib

CELLS_DIR = "cells"
RESULTS = "results.json"
CONFIG = "config.json"
# What "±" means in every table a study writes: ``aggregate``'s statistic.
STATISTIC = "mean ± sample std (ddof 1)"


@dataclasses.dataclass(frozen=True)
class Cell:
  """One resumable unit of a sweep.

  Attributes:
    name: unique within the sweep; the sub-workdir's name, so letters,
      digits and ``-_.`` only.
    run: ``run(cell_workdir, done) -> results``: does the work in
      ``cell_workdir`` (created before the call; checkpoints written there
      are resumed by the next call after a kill) and returns a JSON-able
      dict. ``done`` maps the names of the cells before it to their results,
      so a cell can build on earlier ones.
  """

  name: str
  run: Callable[[str, Mapping[str, dict]], dict]


def cell_dir(workdir: str, name: str) -> str:
  """``<workdir>/cells/<name>``, the sub-workdir of cell ``name``."""
  return os.path.join(workdir, CELLS_DIR, name)


def load_results(path: str) -> dict | None:
  """A finished cell's results: ``<path>/results.json``, or None if absent.

  ``results.json`` is written atomically after the cell's work returned, so
  its existence is the cell's done marker.
  """
  results_path = os.path.join(path, RESULTS)
  if not os.path.exists(results_path):
    return None
  with open(results_path) as f:
    return json.load(f)


def _check_name(name: str) -> None:
  ok = name and all(ch.isalnum() or ch in "-_." for ch in name)
  if not ok or name in (".", ".."):
    raise ValueError(
      f"cell name {name!r} must be non-empty letters, digits and '-_.'"
    )


def check_config(workdir: str, config: Mapping[str, Any]) -> None:
  """Records a sweep's config, or checks a restarted sweep has the same one.

  Finished cells are reused by name, so a workdir must only ever hold one
  sweep: the first call writes ``<workdir>/config.json``; a later call with
  a different config raises instead of mixing results of two sweeps.

  Args:
    workdir: the sweep's workdir (created if needed).
    config: the sweep's config as a JSON-able mapping (``to_dict()``).

  Raises:
    ValueError: one line naming the first differing key.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG)
  new = workdir_lib.normalized(config)
  if not os.path.exists(path):
    workdir_lib.write_json(path, new)
    return
  with open(path) as f:
    old = json.load(f)
  workdir_lib.check_same(workdir, "a sweep with another config", old, new)


def check_numbers(
  values: Sequence,
  key: str,
  *,
  error: type[Exception] = ValueError,
  integer: bool = False,
  lo: float | None = None,
  hi: float | None = None,
  lo_open: bool = False,
  nonempty: bool = True,
) -> None:
  """Checks a grid axis of a study (``sweep.seeds``, ``sweep.sparsities``).

  Every entry a number (an integer with ``integer``; never a bool), ``>=
  lo`` (``> lo`` with ``lo_open``) and ``< hi`` where given, no entry
  twice, and (``nonempty``) at least one entry.

  Raises:
    error: one line naming ``key`` and the bad entry or values (studies
      pass ``awt.config.ConfigError``).

  Examples:
    >>> check_numbers((0.5, 0.9), "sweep.sparsities", lo=0.0, hi=1.0)
    >>> check_numbers((0, 0), "sweep.seeds", integer=True)
    Traceback (most recent call last):
    ...
    ValueError: sweep.seeds=(0, 0) has duplicates
  """
  what = "integers" if integer else "numbers"
  for v in values:
    if isinstance(v, bool) or not isinstance(
      v, int if integer else int | float
    ):
      raise error(f"{key}={tuple(values)!r} must be {what}")
    if lo is not None and (v <= lo if lo_open else v < lo):
      raise error(f"{key} entry {v} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and v >= hi:
      raise error(f"{key} entry {v} must be < {hi}")
  if len(set(values)) != len(values):
    raise error(f"{key}={tuple(values)!r} has duplicates")
  if nonempty and not values:
    raise error(f"{key} is empty")


def run_cells(
  workdir: str,
  cells: Sequence[Cell],
  *,
  log: Callable[[str], None] = print,
) -> dict[str, dict]:
  """Runs the cells of a sweep in order, skipping the finished ones.

  A cell is finished when ``cells/<name>/results.json`` exists (written
  atomically after ``run`` returns); its results are loaded from there. A
  progress line per cell reports how many are done, the mean time per cell
  run in this process and the ETA of the rest.

  Args:
    workdir: the sweep's workdir.
    cells: the cells, names unique.
    log: receives the progress lines.

  Returns:
    ``{name: results}`` for every cell, in order.

  Raises:
    ValueError: duplicate or unusable cell names.

  Examples:
    >>> import tempfile
    >>> cells = [Cell("a", lambda d, done: {"x": 1}),
    ...          Cell("b", lambda d, done: {"x": done["a"]["x"] + 1})]
    >>> run_cells(tempfile.mkdtemp(), cells, log=lambda s: None)["b"]
    {'x': 2}
  """
  names = [c.name for c in cells]
  for n in names:
    _check_name(n)
  if len(set(names)) != len(names):
    raise ValueError(f"cell names must be unique: {names}")
  done: dict[str, dict] = {}
  ran, ran_s = 0, 0.0
  total = len(cells)
  for i, c in enumerate(cells):
    path = cell_dir(workdir, c.name)
    finished = load_results(path)
    if finished is not None:
      done[c.name] = finished
      log(f"cell {i + 1}/{total} {c.name}: finished earlier, loaded")
      continue
    os.makedirs(path, exist_ok=True)
    log(f"cell {i + 1}/{total} {c.name}: running in {path}")
    t0 = time.perf_counter()
    results = c.run(path, dict(done))
    seconds = time.perf_counter() - t0
    workdir_lib.write_json(os.path.join(path, RESULTS), results)
    done[c.name] = load_results(path)  # as a restarted sweep will see them
    ran, ran_s = ran + 1, ran_s + seconds
    per_cell = ran_s / ran
    left = total - i - 1
    log(
      f"cell {i + 1}/{total} {c.name}: done in {seconds:.1f}s; "
      f"{60.0 / max(per_cell, 1e-9):.2f} cells/min, "
      f"ETA {workdir_lib.fmt_duration(per_cell * left)} for {left} more"
    )
  return done


def every(
  log: Callable[[str], None],
  seconds: float,
  prefix: str = "",
  *,
  clock: Callable[[], float] = time.monotonic,
) -> Callable[[str], None]:
  """``log`` thinned to at most one line per ``seconds``, each ``prefix``ed.

  A study runs many inner jobs (ticket searches) whose own progress lines
  would flood its log; through this a long job still shows it is moving,
  and a job shorter than ``seconds`` adds nothing. A line passes when
  ``seconds`` have gone by since the last one passed (or since this was
  made); the others are dropped.

  Examples:
    >>> t = iter([0.0, 10.0, 70.0, 80.0, 140.0])  # made, then one per line
    >>> thin = every(print, 60, "cell a: ", clock=lambda: next(t))
    >>> for line in ("1", "2", "3", "4"):
    ...   thin(line)
    cell a: 2
    cell a: 4
  """
  last = clock()

  def thinned(line: str) -> None:
    nonlocal last
    now = clock()
    if now - last >= seconds:
      last = now
      log(prefix + line)

  return thinned


def _is_number(v) -> bool:
  return (
    isinstance(v, int | float | np.integer | np.floating)
    and not isinstance(v, bool)
    and math.isfinite(float(v))
  )


def aggregate(
  rows: Sequence[Mapping[str, Any]],
  keys: Sequence[str],
  *,
  seed_key: str = "seed",
) -> list[dict]:
  r"""Mean and standard deviation over seeds of every numeric metric.

  Rows with equal values of ``keys`` form a group (groups in order of first
  appearance). Every other numeric field except ``seed_key`` is a metric;
  per group it becomes ``{"mean", "std", "values", "n"}`` where ``values``
  lists the per-seed values in row order (None where a row lacks the metric
  or it is None/NaN) and mean/std are over the present ones:

  .. math::
    \bar v = \frac{1}{n}\sum_i v_i, \qquad
    s = \sqrt{\frac{1}{n - 1}\sum_i (v_i - \bar v)^2}

  (the sample standard deviation, ddof 1: ``STATISTIC``; 0 for a single
  value, None for none). Tables say so with ``statistic_note``.

  Args:
    rows: flat dicts, one per seed of a configuration.
    keys: the fields that name a configuration, e.g. ``("model", "method",
      "sparsity")``.
    seed_key: the field naming the seed; listed per group as ``seeds``.

  Returns:
    One dict per group: the ``keys`` fields, ``seeds`` (list) and one
    ``{"mean", "std", "values", "n"}`` dict per metric.

  Examples:
    >>> rows = [{"m": "a", "seed": 0, "acc": 0.5},
    ...         {"m": "a", "seed": 1, "acc": 0.7}]
    >>> g = aggregate(rows, ["m"])[0]
    >>> g["seeds"], round(g["acc"]["mean"], 6), round(g["acc"]["std"], 6)
    ([0, 1], 0.6, 0.141421)
  """
  groups: dict[tuple, list[Mapping[str, Any]]] = {}
  for r in rows:
    missing = [k for k in keys if k not in r]
    if missing:
      raise ValueError(f"row lacks the key field(s) {missing}: {dict(r)}")
    groups.setdefault(tuple(r[k] for k in keys), []).append(r)
  out = []
  for group_key, members in groups.items():
    metrics = []
    for r in members:
      for k, v in r.items():
        if k in keys or k == seed_key or k in metrics:
          continue
        if v is None or _is_number(v) or isinstance(v, float):
          metrics.append(k)
    entry = dict(zip(keys, group_key, strict=True))
    entry["seeds"] = [r.get(seed_key) for r in members]
    for k in metrics:
      values = [float(r[k]) if _is_number(r.get(k)) else None for r in members]
      present = np.array([v for v in values if v is not None], np.float64)
      n = int(present.size)
      if not n and all(r.get(k) is None for r in members):
        continue  # a field that is never a number (all None) is no metric
      entry[k] = {
        "mean": float(present.mean()) if n else None,
        "std": float(present.std(ddof=1)) if n > 1 else (0.0 if n else None),
        "values": values,
        "n": n,
      }
    out.append(entry)
  return out


def statistic_note(summary: Sequence[Mapping[str, Any]]) -> str:
  """``"mean ± sample std (ddof 1) over n seeds"`` for a table's header.

  ``n`` is the number of seeds of ``aggregate``'s groups: one number where
  every group has as many, else their range (``"over 3–5 seeds"``).

  Examples:
    >>> statistic_note([{"seeds": [0, 1, 2]}, {"seeds": [3, 4, 5]}])
    'mean ± sample std (ddof 1) over 3 seeds'
  """
  counts = sorted({len(g["seeds"]) for g in summary})
  if not counts:
    return f"{STATISTIC} over seeds"
  n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
  return f"{STATISTIC} over {n} seed{'s' * (n != '1')}"


def table_lines(
  head: Sequence[str], rows: Sequence[Sequence[str]] = ()
) -> list[str]:
  """A Markdown table's lines: the header, its rule, then one per row.

  Examples:
    >>> table_lines(["arm", "acc %"], [["dense", "90.6"]])
    ['| arm | acc % |', '|---|---|', '| dense | 90.6 |']
  """
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def fmt_mean_std(
  stat: Mapping[str, Any] | None,
  fmt: Callable[[float], str],
  *,
  missing: str = "–",
) -> str:
  """``"<mean> ± <std>"`` of one ``aggregate`` metric, each through ``fmt``.

  ``missing`` where the metric or its mean is absent.

  Examples:
    >>> fmt_mean_std({"mean": 0.5, "std": 0.01}, lambda v: f"{100 * v:.1f}")
    '50.0 ± 1.0'
  """
  if not stat or stat.get("mean") is None:
    return missing
  return f"{fmt(stat['mean'])} ± {fmt(stat['std'])}"


def fmt_interval(d: Mapping[str, Any], fmt: Callable[[float], str]) -> str:
  """``"<mean> [<lo>, <hi>]"`` of a ``paired_difference``, each through
  ``fmt``; just ``"<mean>"`` where there is no interval (a single pair).

  Examples:
    >>> fmt_interval({"mean": 0.1, "lo": -0.15, "hi": 0.35}, "{:+.2f}".format)
    '+0.10 [-0.15, +0.35]'
  """
  if d.get("lo") is None:
    return fmt(d["mean"])
  return f"{fmt(d['mean'])} [{fmt(d['lo'])}, {fmt(d['hi'])}]"


def paired_difference(
  a: Sequence[float | None],
  b: Sequence[float | None],
  *,
  confidence: float = 0.95,
) -> dict | None:
  r"""Mean of the per-seed differences ``a_i - b_i`` with a t-interval.

  Pairs with a missing value on either side are dropped. With
  :math:`d_i = a_i - b_i` over :math:`n` pairs,

  .. math::
    \bar d \pm t_{(1 + c)/2,\, n - 1} \, \frac{s_d}{\sqrt n}

  (Student's t interval of the mean paired difference; :math:`s_d` the
  sample standard deviation of the differences). Pairing by seed removes
  what two arms of the same seed share (initialization, data order, attack
  randomness), so the interval is much narrower than the one of two
  independent means.

  Args:
    a, b: per-seed values in the same seed order.
    confidence: the interval's coverage ``c``.

  Returns:
    ``{"mean", "lo", "hi", "std", "n", "values"}``, or None for no pair;
    ``lo``/``hi`` are None for a single pair.

  Examples:
    >>> d = paired_difference([0.8, 0.7, 0.9], [0.7, 0.7, 0.7])
    >>> round(d["mean"], 4), round(d["lo"], 4), round(d["hi"], 4)
    (0.1, -0.1484, 0.3484)
  """
  from scipy import stats  # noqa: PLC0415 (scipy is slow to import)

  d = np.array(
    [
      float(x) - float(y)
      for x, y in zip(a, b, strict=True)
      if _is_number(x) and _is_number(y)
    ],
    np.float64,
  )
  if not d.size:
    return None
  mean = float(d.mean())
  out = {"mean": mean, "lo": None, "hi": None, "std": 0.0, "n": int(d.size)}
  out["values"] = d.tolist()
  if d.size > 1:
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, d.size - 1)) * sd
    half /= math.sqrt(d.size)
    out.update(std=sd, lo=mean - half, hi=mean + half)
  return out


def paired_by_seed(
  a: Mapping[Any, float | None],
  b: Mapping[Any, float | None],
  *,
  confidence: float = 0.95,
) -> dict | None:
  """``paired_difference`` of two arms, paired by seed.

  Args:
    a, b: seed -> value of the two arms; the seeds of ``a`` that ``b`` has
      are paired, in ``a``'s order (a seed of one arm only is dropped).
    confidence: the interval's coverage.

  Returns:
    ``paired_difference``'s dict, or None for no complete pair.

  Examples:
    >>> d = paired_by_seed({0: 0.8, 1: 0.7, 2: 0.9}, {1: 0.6, 0: 0.7})
    >>> [round(v, 6) for v in d["values"]]
    [0.1, 0.1]
  """
  seeds = [s for s in a if s in b]
  return paired_difference(
    [a[s] for s in seeds], [b[s] for s in seeds], confidence=confidence
  )


def metric_names(summary: Sequence[Mapping[str, Any]]) -> list[str]:
  """The metric fields of ``aggregate``'s groups, in first-seen order."""
  names: list[str] = []
  for g in summary:
    for k, v in g.items():
      if isinstance(v, Mapping) and "mean" in v and k not in names:
        names.append(k)
  return names


def write_rows_csv(
  path: str, header: Sequence[str], lines: Sequence[Sequence[Any]]
) -> None:
  """Writes a CSV file (``header``, then ``lines``), atomically.

  ``workdir.atomic_write``: a temp file in ``path``'s directory, renamed over
  ``path`` once complete; a writer that fails leaves the old file intact.
  """
  with workdir_lib.atomic_write(path, newline="") as f:
    w = csv.writer(f)
    w.writerow(list(header))
    w.writerows(lines)


def write_csv(
  path: str,
  summary: Sequence[Mapping[str, Any]],
  keys: Sequence[str],
  *,
  first: Sequence[str] = (),
) -> None:
  """Writes ``aggregate``'s groups as CSV, one line per group.

  Columns: the ``keys``, ``n_seeds``, then ``<metric>_mean`` and
  ``<metric>_sample_std`` (ddof 1; the column says which std) for every
  metric (empty where undefined): the metrics named in ``first`` in that
  order, then the others in first-seen order. The per-seed values are in
  the JSON (``write_table_json``).

  Args:
    path: the CSV file to write (atomically, ``write_rows_csv``).
    summary: ``aggregate``'s output.
    keys: the configuration fields, as given to ``aggregate``.
    first: metrics to put first.
  """
  found = metric_names(summary)
  metrics = [m for m in first if m in found]
  metrics += [m for m in found if m not in metrics]
  header = [*keys, "n_seeds"]
  for m in metrics:
    header += [f"{m}_mean", f"{m}_sample_std"]
  lines = []
  for g in summary:
    line = [g[k] for k in keys] + [len(g["seeds"])]
    for m in metrics:
      stat = g.get(m) or {}
      line += ["" if stat.get(s) is None else stat[s] for s in ("mean", "std")]
    lines.append(line)
  write_rows_csv(path, header, lines)


def read_csv(path: str) -> list[dict[str, str]]:
  """Reads a ``write_csv`` file back as dicts of strings."""
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def write_table_json(
  path: str,
  rows: Sequence[Mapping[str, Any]],
  summary: Sequence[Mapping[str, Any]],
  **extra,
) -> None:
  """Writes ``{"rows", "summary", "statistic", **extra}`` as JSON, atomically.

  ``rows`` are the per-seed rows, ``summary`` ``aggregate``'s groups and
  ``statistic`` says what their ``mean``/``std`` are (``STATISTIC``).
  """
  workdir_lib.write_json(
    path,
    {
      "rows": list(rows),
      "summary": list(summary),
      "statistic": STATISTIC,
      **extra,
    },
  )
