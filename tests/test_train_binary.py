"""Smoke and failure tests of experiments/train.py (run as a subprocess)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from awt import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "experiments/configs/digits_mlp.py:smoke"


def _run(*args, timeout=300):
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  env["PYTHONPATH"] = ROOT
  return subprocess.run(
    [sys.executable, "-m", "experiments.train", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("smoke"))
  proc = _run(f"--config={SMOKE}", f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


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


def test_rerun_resumes_and_does_not_retrain(smoke_run):
  workdir, _ = smoke_run
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


def _checkpoint_bytes(workdir):
  out = {}
  for root, _, files in os.walk(os.path.join(workdir, "checkpoints")):
    for f in files:
      p = os.path.join(root, f)
      out[p] = open(p, "rb").read()
  return out


@pytest.mark.parametrize(
  "override, expected",
  [
    ("--config.model.name=mpl", "unknown model.name 'mpl'; known: "),
    ("--config.data.name=mnistt", "unknown data.name 'mnistt'"),
    ("--config.adversarial.eps=-0.1", "adversarial.eps=-0.1 must be >= 0"),
    ("--config.pruning.sparsity=1.0", "pruning.sparsity=1.0 must be < 1"),
    ("--config.batch_size=5000", "batch_size=5000 is larger than the 1437"),
    ("--config.eval.attacks=('pgdx',)", "unknown attack 'pgdx'"),
    # Misspelt keys fail inside flag parsing, before main runs.
    ("--config.adversarial.epss=0.1", "--config.<key> names a field"),
    ("--config.num_epochs=many", "num_epochs"),
  ],
)
def test_bad_config_is_one_line_and_keeps_checkpoints(
  smoke_run, override, expected
):
  workdir, _ = smoke_run
  before = _checkpoint_bytes(workdir)
  proc = _run(f"--config={SMOKE}", f"--workdir={workdir}", override)
  assert proc.returncode != 0
  lines = [x for x in proc.stderr.splitlines() if x.strip()]
  assert lines[-1].startswith("error: ") and expected in lines[-1], lines
  assert "Traceback" not in proc.stderr
  assert _checkpoint_bytes(workdir) == before


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  proc = _run(f"--config={SMOKE}", f"--workdir={blocker}/run")
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: workdir") and "not writable" in last
  assert "Traceback" not in proc.stderr
