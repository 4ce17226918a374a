"""The multi-host flags of every binary (experiments/_main.py).

The binaries run as subprocesses where the process is what is tested: absl
parses their flags (``--help``, and one bad combination ending the binary
in one line before anything runs), and ``jax.distributed.initialize`` must
run before JAX initializes its backends. The other bad combinations are
checked in-process on ``_main.distributed_args``, which raises the line.
"""

import json
import os
import socket
import subprocess
import sys

import _binary
import pytest

from experiments import _main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "experiments/configs/digits_mlp.py:smoke"
FLAGS = (
  "--jax_coordinator_address",
  "--jax_num_processes",
  "--jax_process_id",
  "--[no]jax_distributed",
)


def _train(*args):
  return subprocess.Popen(
    [sys.executable, "-m", "experiments.train", *args],
    cwd=ROOT,
    env=_binary.environment(None),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def test_help_lists_the_multihost_flags():
  proc = _train("--help")
  out, err = proc.communicate(timeout=900)  # a hang guard only
  assert "Multi-host" in out, err[-2000:]  # absl's --help exits with 1
  for flag in FLAGS:
    assert flag in out, flag


def test_bad_combination_is_one_error_line(tmp_path):
  workdir = str(tmp_path / "run")
  flags = ["--jax_num_processes=2"]
  proc = _train(f"--config={SMOKE}", f"--workdir={workdir}", *flags)
  _, err = proc.communicate(timeout=900)  # a hang guard only
  assert proc.returncode == 1
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  words = "need --jax_coordinator_address"
  assert lines[0].startswith("error: ") and words in lines[0], lines[0]
  assert not os.path.exists(workdir)  # nothing ran


@pytest.mark.parametrize(
  "args, words",
  [
    ((None, 2, None), "need --jax_coordinator_address"),
    ((None, None, 0), "need --jax_coordinator_address"),
    (
      ("localhost:1234", None, None),
      "needs --jax_num_processes and --jax_process_id",
    ),
    (
      ("localhost:1234", 2, 2),
      "--jax_process_id=2 must be < --jax_num_processes=2",
    ),
  ],
)
def test_bad_combination_raises_one_line(args, words):
  """(--jax_coordinator_address, --jax_num_processes, --jax_process_id)."""
  with pytest.raises(_main.EXPECTED_ERRORS) as e:
    _main.distributed_args(*args, False)
  assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_distributed_args():
  assert _main.distributed_args(None, None, None, False) is None
  assert _main.distributed_args(None, None, None, True) == {}
  assert _main.distributed_args("h:1", 4, 3, False) == {
    "coordinator_address": "h:1",
    "num_processes": 4,
    "process_id": 3,
  }
  # With detection, a partial set is passed on for JAX to complete.
  assert _main.distributed_args(None, 2, None, True) == {"num_processes": 2}
  for bad in ((None, 0, None, True), ("h:1", 2, -1, False)):
    with pytest.raises(ValueError):
      _main.distributed_args(*bad)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_train_in_lockstep(tmp_path):
  """Two processes on this machine form one job (Gloo collectives on CPU).

  Each process feeds the whole global batch to its one device and the
  gradients are averaged over both, so both compute what one process
  computes: equal results on the two, equal to a single-process run.
  """
  address = f"localhost:{_free_port()}"
  common = [f"--config={SMOKE}", "--config.num_epochs=1"]
  common.append("--config.eval.attacks=('fgsm',)")
  procs = [
    _train(
      *common,
      f"--workdir={tmp_path / str(i)}",
      f"--jax_coordinator_address={address}",
      "--jax_num_processes=2",
      f"--jax_process_id={i}",
    )
    for i in range(2)
  ]
  single = _train(*common, f"--workdir={tmp_path / 'single'}")
  for i, p in enumerate([*procs, single]):
    _, err = p.communicate(timeout=900)  # a hang guard only
    assert p.returncode == 0, err[-2000:]
    if i < 2:  # the job formed: each process sees both devices
      assert f"process {i} of 2: 1 local of 2 devices" in err, err[-2000:]
  results = [
    json.load(open(tmp_path / name / "results.json"))
    for name in ("0", "1", "single")
  ]
  for r in results[1:]:
    assert r["clean_accuracy"] == results[0]["clean_accuracy"]
    assert r["robust_accuracy"] == results[0]["robust_accuracy"]
