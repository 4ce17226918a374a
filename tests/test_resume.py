"""Preemption and failure tests of experiments/train.py (subprocesses).

A run killed with SIGKILL in the middle of an epoch and started again with
the same workdir must end with parameters bit-identical to an uninterrupted
run; a run whose loss turns NaN stops with the step number and leaves the
last good checkpoint untouched; a corrupted checkpoint gives one clear line.

The kill is deterministic: the killed run SIGKILLs itself from its progress
log once a mid-epoch checkpoint is complete (conftest's run_until_killed),
so no test races the process or depends on how fast the machine is. The
failure tests start from copies of the uninterrupted reference run, which
is trained once for the module.
"""

import json
import os
import shutil
import signal

import _binary
import jax
import numpy as np
import pytest

from awt import checkpoints
from awt import workdir as workdir_lib

# One xdist worker runs this module, so its trained fixture is built once.
pytestmark = pytest.mark.xdist_group("resume")
SMOKE = "experiments/configs/digits_mlp.py:smoke"
# 2 epochs x 22 steps in chunks of 5 (5, ..., 20, 22, 27, ..., 42, 44);
# a checkpoint whenever a chunk crosses a multiple of 10 steps: 10, 20, 32
# (mid-epoch 2), 42, and at the end.
LONG = (
  "--config.num_epochs=2",
  "--config.checkpoint_every_steps=10",
  "--config.checkpoint_every_epochs=0",
  "--config.log_every_steps=5",
  "--config.eval.attacks=()",
)


def _args(workdir, *extra):
  return [f"--config={SMOKE}", f"--workdir={workdir}", *extra]


def _run(workdir, *extra):
  return _binary.run("experiments.train", *_args(workdir, *extra))


def _params(workdir):
  return jax.tree.leaves(checkpoints.restore(workdir)["variables"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run of the LONG config (checkpoints 42 and 44 kept)."""
  ref = tmp_path_factory.mktemp("reference") / "run"
  proc = _run(ref, *LONG)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert checkpoints.latest_step(str(ref)) == 44
  return ref


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(
  reference, tmp_path, run_until_killed
):
  # Killed when it logs the first chunk ending at step 35 or later ("step
  # 37/44 ..."), once the checkpoint saved before that chunk (step 32) is
  # complete: a chunk's progress line comes before its checkpoint, so the
  # process dies between two saves, in the middle of epoch 2.
  killed = tmp_path / "killed"
  proc = run_until_killed(
    "experiments.train",
    _args(killed, *LONG),
    r"^step (\d+)/",
    35,
    killed / "checkpoints",
    30,
    cwd=_binary.ROOT,
    env=_binary.environment(2),
  )
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  assert not (killed / "results.json").exists()
  step = checkpoints.latest_step(str(killed))
  assert step is not None and step % 22 != 0 and 30 <= step < 44, step

  proc = _run(killed, *LONG)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"resuming from checkpoint at step {step}" in proc.stderr
  for a, b in zip(_params(reference), _params(killed), strict=True):
    np.testing.assert_array_equal(a, b)
  # The interrupted epoch's loss is its mean over all 22 steps, as in the
  # uninterrupted run, not over the steps after the restart.
  assert _epoch_losses(killed) == pytest.approx(_epoch_losses(reference))


def _epoch_losses(workdir):
  return [
    r["train/epoch_loss"]
    for r in workdir_lib.read_jsonl(str(workdir / "metrics.jsonl"))
    if "train/epoch_loss" in r
  ]


@pytest.fixture
def trained(reference, tmp_path):
  """A private copy of the reference run's workdir, for a test to damage."""
  return shutil.copytree(reference, tmp_path / "run")


@pytest.mark.slow
def test_nan_stops_with_the_step_and_keeps_the_checkpoint(trained):
  good = _params(trained)
  # A run that diverges after its last checkpoint: its record says an
  # absurd learning rate, which sends the loss to inf/nan within a few
  # steps of the resumed epoch (a resumed run must keep its config).
  record = json.loads((trained / "config.json").read_text())
  record["optimizer"]["learning_rate"] = 1e30
  (trained / "config.json").write_text(json.dumps(record))
  proc = _run(
    trained,
    "--config.num_epochs=3",
    "--config.optimizer.learning_rate=1e30",
  )
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: loss is") and "at step" in last, last
  assert checkpoints.latest_step(str(trained)) == 44
  for a, b in zip(good, _params(trained), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_corrupted_checkpoint_is_one_clear_line(trained):
  state_dir = trained / "checkpoints" / "44" / "state"
  for root, _, files in os.walk(state_dir):
    for f in files:
      if f.endswith(".json") or "manifest" in f or f == "_METADATA":
        continue
      path = os.path.join(root, f)
      with open(path, "r+b") as fh:
        fh.write(b"\0garbage\0" * 8)
  proc = _run(trained, "--config.num_epochs=3")
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: cannot restore checkpoint step 44"), last
  assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_resuming_under_another_config_is_one_line_and_keeps_the_record(
  trained,
):
  record = (trained / "config.json").read_bytes()
  good = _params(trained)
  proc = _run(trained, "--config.optimizer.learning_rate=0.5")
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "another config" in last, last
  assert "(optimizer.learning_rate: 0.4 there, 0.5 now)" in last, last
  assert "Traceback" not in proc.stderr
  assert (trained / "config.json").read_bytes() == record
  for a, b in zip(good, _params(trained), strict=True):
    np.testing.assert_array_equal(a, b)
  # What a resumed run may change: its length and its evaluation.
  proc = _run(trained, "--config.num_epochs=3", "--config.eval.attacks=()")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "resuming from checkpoint at step 44" in proc.stderr
  assert checkpoints.latest_step(str(trained)) == 66


@pytest.mark.slow
def test_foreign_checkpoint_is_one_clear_line(trained):
  proc = _run(trained, "--config.num_epochs=3", "--config.model.name=linear")
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "checkpoint" in last, last
  assert "Traceback" not in proc.stderr
