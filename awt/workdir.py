"""The workdir every binary writes (docs/design.md, "Workdir").

``config.json``, ``metrics.jsonl`` (one JSON object per logged step or
epoch), TensorBoard event files under ``tb/``, ``checkpoints/`` (see
``awt.checkpoints``), ``evaluation.json`` (the robust evaluation, kept as
soon as it is done, with what identifies it: ``awt.experiment``),
``results.json`` and ``plots/*.png``.
"""

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Mapping

import numpy as np

# The process's umask (read once; os.umask can only be read by setting it).
_UMASK = os.umask(0)
os.umask(_UMASK)


class WorkdirError(OSError):
  """A workdir that cannot be created or written."""


def prepare(workdir: str) -> str:
  """Creates ``workdir`` (and ``plots/``) and checks it is writable.

  Raises:
    WorkdirError: one line naming the directory and the reason.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise WorkdirError(
      f"workdir {workdir!r} is not writable: {e.strerror or e}"
    ) from None
  return workdir


def _jsonable(v):
  if isinstance(v, Mapping):
    return {str(k): _jsonable(x) for k, x in v.items()}
  if isinstance(v, list | tuple):
    return [_jsonable(x) for x in v]
  if isinstance(v, np.ndarray | np.generic) or hasattr(v, "__array__"):
    a = np.asarray(v)
    return a.item() if a.ndim == 0 else a.tolist()
  return v


@contextlib.contextmanager
def atomic_write(path: str, *, newline: str | None = None):
  """Opens a temp file beside ``path`` for writing; renames it on success.

  The temp file is in ``path``'s directory (so ``os.replace`` is one
  rename on the same file system): a reader sees the old file or the new
  one, never a half-written one, and a writer that raises (or a process
  killed mid-write) leaves the old file as it was and no temp file behind
  (when it raises).

  Args:
    path: the file to (re)write; its directory must exist.
    newline: passed to ``open`` (``""`` for the ``csv`` module).

  Yields:
    The temp file, open for text writing.

  Examples:
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> with atomic_write(p) as f:
    ...   _ = f.write("new")
    >>> open(p).read()
    'new'
  """
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(
    dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
  )
  try:
    os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would create it
    with os.fdopen(fd, "w", newline=newline) as f:
      yield f
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def normalized(obj):
  """``obj`` as JSON would give it back (tuples as lists, numpy as Python),
  for comparing a config or setting with one read from disk."""
  return json.loads(json.dumps(_jsonable(obj), sort_keys=True))


def write_json(path: str, obj) -> None:
  """Writes ``obj`` as indented JSON, atomically (``atomic_write``)."""
  with atomic_write(path) as f:
    json.dump(_jsonable(obj), f, indent=2, sort_keys=True)
    f.write("\n")


def write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path``, atomically (``atomic_write``)."""
  with atomic_write(path) as f:
    f.write(text)


def read_jsonl(path: str) -> list[dict]:
  """Reads ``metrics.jsonl`` back (empty list if absent)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricsWriter:
  """Appends metrics to ``metrics.jsonl`` and TensorBoard event files.

  Keys are written with their prefix (``train/loss``, ``eval/clean_accuracy``)
  and the step. On resume, records after the restored step are dropped first
  so the file holds each step once.
  """

  def __init__(self, workdir: str, *, resume_step: int | None = None):
    self.path = os.path.join(workdir, "metrics.jsonl")
    if resume_step is not None and os.path.exists(self.path):
      kept = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]
      with open(self.path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    elif resume_step is None and os.path.exists(self.path):
      os.remove(self.path)
    self._tb = None
    self._tb_dir = os.path.join(workdir, "tb")

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    record = {"step": int(step), **_jsonable(dict(metrics))}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is None:
      from tensorboardX import SummaryWriter  # noqa: PLC0415 (lazy: slow)

      self._tb = SummaryWriter(self._tb_dir)
    for k, v in record.items():
      if k != "step" and isinstance(v, int | float) and math.isfinite(v):
        self._tb.add_scalar(k, v, int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def plot_training(records: list[dict], path: str, title: str = "") -> None:
  """Training loss/accuracy and test accuracy against step, to a PNG."""
  import matplotlib  # noqa: PLC0415 (lazy: only binaries plot)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  series = {}
  for r in records:
    for k, v in r.items():
      if k != "step" and isinstance(v, int | float):
        series.setdefault(k, ([], []))
        series[k][0].append(r["step"])
        series[k][1].append(v)
  for k, (s, v) in series.items():
    ax = axes[0] if k.endswith("loss") else axes[1]
    if k.endswith("loss") or k.endswith("accuracy"):
      ax.plot(s, v, label=k, marker="." if k.startswith("eval/") else None)
  axes[0].set_ylabel("loss")
  axes[1].set_ylabel("accuracy")
  for ax in axes:
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.has_data():
      ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_members(
  histories: Mapping[str, list[dict]], path: str, title: str = ""
) -> None:
  """Per-epoch curves of several runs, to a PNG.

  Panels: training loss, clean test accuracy and (where present) the
  function-space distance to the reference run on clean and adversarial
  probe points; one line per run.

  Args:
    histories: run name -> ``results["history"]`` rows (``epoch``,
      ``train_loss``, ``clean_accuracy``, ``function_distance_clean``,
      ``function_distance_adv``).
    path: the PNG to write.
    title: figure title.
  """
  import matplotlib  # noqa: PLC0415 (lazy: only binaries plot)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  keys = ("train_loss", "clean_accuracy")
  dist = ("function_distance_clean", "function_distance_adv")
  if any(k in r for rows in histories.values() for r in rows for k in dist):
    keys += dist
  fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4))
  for ax, key in zip(axes, keys, strict=True):
    for name, rows in histories.items():
      pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
      if pts:
        ax.plot(*zip(*pts, strict=True), label=name, lw=1.2)
    ax.set_xlabel("epoch")
    ax.set_title(key.replace("_", " "), fontsize=9)
    ax.grid(alpha=0.3)
  if axes[0].has_data():
    axes[0].legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def first_difference(there, here, name: str = ""):
  """``(name, there, here)`` of the first difference of two JSON values.

  Dicts are compared key by key in ``here``'s order, then the keys only
  ``there`` has (a key missing on one side compares as None); ``name`` is
  the dotted path of the difference. None where the values are equal.
  """
  if isinstance(there, dict) and isinstance(here, dict):
    for k in [*here, *(k for k in there if k not in here)]:
      diff = first_difference(
        there.get(k), here.get(k), f"{name}.{k}" if name else k
      )
      if diff:
        return diff
    return None
  return None if there == here else (name, there, here)


def check_same(workdir: str, what: str, there, here, error=ValueError):
  """Refuses ``here`` where ``workdir`` holds ``what`` made with ``there``.

  Raises:
    error: one line naming the first differing key
      (:func:`first_difference`) and asking for a new ``--workdir``.
  """
  diff = first_difference(there, here)
  if diff:
    key, was, now = diff
    raise error(
      f"workdir {workdir!r} holds {what} ({key}: {was!r} there, {now!r} "
      "now); use a new --workdir"
    )


def fmt_duration(seconds: float) -> str:
  """``h:mm:ss`` of a non-negative duration (for progress lines)."""
  seconds = int(round(max(seconds, 0.0)))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
