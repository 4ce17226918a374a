"""Preemption and failure tests of experiments/train.py (subprocesses).

A run killed with SIGKILL in the middle of an epoch and started again with
the same workdir must end with parameters bit-identical to an uninterrupted
run; a run whose loss turns NaN stops with the step number and leaves the
last good checkpoint untouched; a corrupted checkpoint gives one clear line.
"""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from awt import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "experiments/configs/digits_mlp.py:smoke"
# 40 epochs x 22 steps; checkpoints every 10 steps, i.e. mid-epoch.
LONG = (
  "--config.num_epochs=40",
  "--config.checkpoint_every_steps=10",
  "--config.checkpoint_every_epochs=0",
  "--config.log_every_steps=5",
  "--config.eval.attacks=()",
)


def _cmd(workdir, *extra):
  return [
    sys.executable,
    "-m",
    "experiments.train",
    f"--config={SMOKE}",
    f"--workdir={workdir}",
    *extra,
  ]


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  env["PYTHONPATH"] = ROOT
  return env


def _run(workdir, *extra):
  return subprocess.run(
    _cmd(workdir, *extra),
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )


def _complete_steps(workdir):
  """Steps with a finished checkpoint (orbax renames a tmp dir when done)."""
  path = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(path):
    return []
  return [int(d) for d in os.listdir(path) if d.isdigit()]


def _params(workdir):
  return jax.tree.leaves(checkpoints.restore(workdir)["variables"])


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
  ref = tmp_path / "ref"
  proc = _run(ref, *LONG)
  assert proc.returncode == 0, proc.stderr[-2000:]

  killed = tmp_path / "killed"
  p = subprocess.Popen(
    _cmd(killed, *LONG),
    cwd=ROOT,
    env=_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 300
  # Kill once a mid-epoch checkpoint (step 30: epoch 2 has 22 steps) exists.
  while time.time() < deadline and p.poll() is None:
    if max(_complete_steps(killed), default=0) >= 30:
      break
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert p.returncode == -signal.SIGKILL, "run ended before it was killed"
  assert not (killed / "results.json").exists()
  step = checkpoints.latest_step(str(killed))
  assert step is not None and step % 22 != 0 and step < 880

  proc = _run(killed, *LONG)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"resuming from checkpoint at step {step}" in proc.stderr
  for a, b in zip(_params(ref), _params(killed), strict=True):
    np.testing.assert_array_equal(a, b)


def test_nan_stops_with_the_step_and_keeps_the_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  proc = _run(workdir, "--config.num_epochs=1")
  assert proc.returncode == 0, proc.stderr[-2000:]
  good = _params(workdir)
  # An absurd learning rate sends the loss to inf/nan within a few steps.
  proc = _run(
    workdir,
    "--config.num_epochs=3",
    "--config.optimizer.learning_rate=1e30",
  )
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: loss is") and "at step" in last, last
  assert checkpoints.latest_step(str(workdir)) == 22
  for a, b in zip(good, _params(workdir), strict=True):
    np.testing.assert_array_equal(a, b)


def test_corrupted_checkpoint_is_one_clear_line(tmp_path):
  workdir = tmp_path / "run"
  proc = _run(workdir, "--config.num_epochs=1")
  assert proc.returncode == 0, proc.stderr[-2000:]
  state_dir = workdir / "checkpoints" / "22" / "state"
  for root, _, files in os.walk(state_dir):
    for f in files:
      if f.endswith(".json") or "manifest" in f or f == "_METADATA":
        continue
      path = os.path.join(root, f)
      with open(path, "r+b") as fh:
        fh.write(b"\0garbage\0" * 8)
  proc = _run(workdir, "--config.num_epochs=2")
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: cannot restore checkpoint step 22"), last
  assert "Traceback" not in proc.stderr


def test_foreign_checkpoint_is_one_clear_line(tmp_path):
  workdir = tmp_path / "run"
  proc = _run(workdir, "--config.num_epochs=1")
  assert proc.returncode == 0, proc.stderr[-2000:]
  proc = _run(workdir, "--config.num_epochs=2", "--config.model.name=linear")
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "checkpoint" in last, last
  assert "Traceback" not in proc.stderr
