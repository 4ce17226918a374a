"""experiments/train.py: the binary's smoke run, restart and one-line errors.

The process boundary is tested where it is what matters: the workdir a run
writes, a restart of the binary, and how an expected error ends the process
(exit status 1, one ``error:`` line, no traceback) for one representative
bad config value and the flags absl rejects while parsing. Every other bad
config is checked in-process: ``awt.tickets.train`` (what the binary's
``main`` calls) raises one line that ``experiments._main`` turns into that
``error:`` line, before it touches the workdir.
"""

import json
import os
import shutil

import _binary  # tests/_binary.py: the one subprocess runner
import jax
import numpy as np
import pytest

from awt import checkpoints, data, tickets
from experiments import _main
from experiments.configs import digits_mlp

# conftest's smoke_run (the trained smoke config) is built once per xdist
# worker; its users run in one.
pytestmark = pytest.mark.xdist_group("smoke_run")
SMOKE = "experiments/configs/digits_mlp.py:smoke"


def _run(*args):
  return _binary.run("experiments.train", *args)


@pytest.mark.slow
def test_smoke_run_writes_the_workdir(smoke_run):
  workdir, proc = smoke_run
  for name in ("config.json", "metrics.jsonl", "results.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert os.path.exists(os.path.join(workdir, "plots", "training.png"))
  assert os.listdir(os.path.join(workdir, "tb"))
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert set(results["robust_accuracy"]) == {"fgsm", "pgd5"}
  assert 0.0 <= results["robust_accuracy"]["pgd5"] <= results["clean_accuracy"]
  assert results["sparsity"] == 0.0
  assert results["wall_time_s"] > 0
  lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
  records = [json.loads(x) for x in lines]
  assert any("train/loss" in r for r in records)
  assert any("eval/clean_accuracy" in r for r in records)
  assert "img/s" in proc.stderr and "ETA" in proc.stderr


@pytest.mark.slow
def test_restore_reloads_the_run(smoke_run):
  workdir, _ = smoke_run
  run = checkpoints.restore(workdir)
  assert run["config"].model.name == "mlp"
  # 1,437 training digits, batch 64, 2 epochs, drop_remainder -> 44 steps.
  assert run["step"] == 44
  from awt import data

  test = data.load("digits").test
  x = np.asarray(test.images, np.float32) / 255.0
  logits = run["model"].apply(run["variables"], x)
  acc = float(np.mean(np.argmax(logits, -1) == test.labels))
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert acc == pytest.approx(results["clean_accuracy"], abs=1e-6)
  leaves = jax.tree.leaves(run["mask"])
  assert all(np.all(np.asarray(m) == 1) for m in leaves)


@pytest.mark.slow
def test_restore_refuses_arrays_its_recorded_model_does_not_take(
  smoke_run, tmp_path
):
  workdir = shutil.copytree(smoke_run[0], tmp_path / "run")
  meta_file = workdir / "checkpoints" / "44" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  config = json.loads(meta["config"])
  config["model"] = {"name": "lenet5", "dtype": "float32"}
  meta["config"] = json.dumps(config)
  meta_file.write_text(json.dumps(meta))
  with pytest.raises(
    checkpoints.CheckpointError, match=r"model \(LeNet5\) does not take"
  ):
    checkpoints.restore(str(workdir))


@pytest.mark.slow
def test_rerun_resumes_and_does_not_retrain(smoke_run, tmp_path):
  workdir = str(shutil.copytree(smoke_run[0], tmp_path / "run"))
  before = checkpoints.restore(workdir)
  proc = _run(f"--config={SMOKE}", f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "resuming from checkpoint at step 44" in proc.stderr
  after = checkpoints.restore(workdir)
  for a, b in zip(
    jax.tree.leaves(before["variables"]),
    jax.tree.leaves(after["variables"]),
    strict=True,
  ):
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------ expected failures


@pytest.fixture(scope="module")
def saved_workdir(tmp_path_factory):
  """A workdir holding an orbax checkpoint (step 44), written without
  training: what a bad config must leave alone."""
  workdir = str(tmp_path_factory.mktemp("saved"))
  state = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
  with checkpoints.manager(workdir) as mngr:
    checkpoints.save(mngr, 44, state, {"note": "kept"})
    mngr.wait_until_finished()
  assert checkpoints.latest_step(workdir) == 44
  return workdir


def _workdir_bytes(workdir):
  """Every file under ``workdir``: path -> contents."""
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      p = os.path.join(root, f)
      out[p] = open(p, "rb").read()
  return out


def _smoke_config(**overrides):
  config = digits_mlp.get_config("smoke")
  config.update_from_flattened_dict(overrides)
  return config


@pytest.mark.parametrize(
  "key, value, expected",
  [
    ("model.name", "mpl", "unknown model.name 'mpl'; known: "),
    ("data.name", "mnistt", "unknown data.name 'mnistt'"),
    ("adversarial.eps", -0.1, "adversarial.eps=-0.1 must be >= 0"),
    ("pruning.sparsity", 1.0, "pruning.sparsity=1.0 must be < 1"),
    (
      "pruning.sparsity",
      0.9,
      "pruning.sparsity=0.9 has no effect with pruning.method='dense'",
    ),
    ("batch_size", 5000, "batch_size=5000 is larger than the 1437"),
    ("eval.attacks", ("pgdx",), "unknown attack 'pgdx'"),
  ],
)
def test_bad_config_is_one_line_and_keeps_checkpoints(
  saved_workdir, key, value, expected
):
  before = _workdir_bytes(saved_workdir)
  with pytest.raises(_main.EXPECTED_ERRORS) as e:
    tickets.train(_smoke_config(**{key: value}), saved_workdir)
  assert "\n" not in str(e.value) and expected in str(e.value), str(e.value)
  assert _workdir_bytes(saved_workdir) == before


@pytest.mark.parametrize(
  "override, expected",
  [
    # The representative config error, from the binary.
    ("--config.model.name=mpl", "unknown model.name 'mpl'; known: "),
    # Misspelt keys fail inside flag parsing, before main runs.
    ("--config.adversarial.epss=0.1", "--config.<key> names a field"),
    ("--config.num_epochs=many", "num_epochs"),
  ],
)
def test_bad_flag_ends_the_binary_in_one_line(
  saved_workdir, override, expected
):
  before = _workdir_bytes(saved_workdir)
  proc = _run(f"--config={SMOKE}", f"--workdir={saved_workdir}", override)
  assert proc.returncode == 1
  lines = [x for x in proc.stderr.splitlines() if x.strip()]
  assert lines[-1].startswith("error: ") and expected in lines[-1], lines
  assert "Traceback" not in proc.stderr
  assert _workdir_bytes(saved_workdir) == before


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(_main.EXPECTED_ERRORS) as e:
    tickets.train(_smoke_config(), f"{blocker}/run")
  msg = str(e.value)
  assert msg.startswith("workdir") and "not writable" in msg, msg
  assert "\n" not in msg
  assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize(
  "config, expected",
  [
    ("experiments/configs/nope.py", "no such config file 'experiments/"),
    ("experiments/configs/nope.py:smoke", "no such config file"),
    (
      "experiments/configs/digits_mlp.py:smok",
      "unknown variant 'smok'; known: natural, adam, smoke",
    ),
    ("README.md", "cannot load config file 'README.md': SyntaxError"),
  ],
)
def test_a_config_file_that_does_not_load_is_one_line(
  tmp_path, config, expected
):
  # An override on a config that did not load fails inside flag parsing.
  for extra in ((), ("--config.num_epochs=1",)):
    proc = _run(f"--config={config}", f"--workdir={tmp_path / 'w'}", *extra)
    assert proc.returncode == 1
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines == [lines[-1]] and expected in lines[-1], lines
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
  "body, expected",
  [
    ("def get_config():\n  return undefined_name\n", "(line 2): NameError"),
    ("import no_such_module_here\n", "(line 1): ModuleNotFoundError"),
  ],
)
def test_a_config_file_that_raises_is_named_with_its_line(
  tmp_path, body, expected
):
  config = tmp_path / "my_config.py"
  config.write_text(body)
  proc = _run(f"--config={config}", f"--workdir={tmp_path / 'w'}")
  assert proc.returncode == 1
  lines = [x for x in proc.stderr.splitlines() if x.strip()]
  assert len(lines) == 1, lines
  assert lines[0].startswith(f"error: cannot load config file '{config}' ")
  assert expected in lines[0], lines
  assert not (tmp_path / "w").exists()


def test_an_unprepared_tfds_dataset_is_one_line_without_native_info_logs(
  tmp_path,
):
  pytest.importorskip("tensorflow")
  proc = _run(
    "--config=experiments/configs/mnist_mlp.py",
    f"--config.data.data_dir={tmp_path}",
    f"--workdir={tmp_path / 'w'}",
  )
  assert proc.returncode == 1
  lines = [x for x in proc.stderr.splitlines() if x.strip()]
  assert lines[-1].startswith("error: dataset 'mnist' is not prepared"), lines
  # TensorFlow's C++ INFO start-up lines are gone; TFDS's own warning stays.
  assert not [x for x in lines if data._NATIVE_INFO.match(x)], lines
  assert "absl::InitializeLog" not in proc.stderr and len(lines) <= 2, lines
