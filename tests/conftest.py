"""Test configuration: 4 forced host devices (for pmap tests), XLA:CPU's
code generated at LLVM level 0 (``_binary.xla_flags``: values equal up to
rounding, compiled 2-3x faster), one JAX compilation cache for the session's
processes (``_binary.share_compilation_cache``), an empty folder for the
MKL handler to be built into (``_binary.fresh_native_cache``), strict numpy,
the smoke run of experiments/train.py (trained once per session), and a
binary that SIGKILLs itself for the preemption tests.

XLA_FLAGS must be set before JAX initializes its backends, so this runs at
import time of the conftest, before any test module imports jax.
"""

import os
import subprocess
import sys
import textwrap

import _binary  # tests/_binary.py: the one subprocess runner

os.environ["XLA_FLAGS"] = _binary.xla_flags(4, os.environ.get("XLA_FLAGS", ""))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_binary.share_compilation_cache()
_binary.fresh_native_cache()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

SMOKE = "experiments/configs/digits_mlp.py:smoke"


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
  """``(workdir, CompletedProcess)`` of experiments/train.py on the
  digits_mlp smoke config (2 epochs of 22 steps, 2 host devices).

  Trained once per session, i.e. per xdist worker: modules that use it
  carry ``pytest.mark.xdist_group("smoke_run")`` so that one worker runs
  them all. A test that changes the workdir works on a copy.
  """
  workdir = str(tmp_path_factory.mktemp("smoke"))
  proc = _binary.run(
    "experiments.train", f"--config={SMOKE}", f"--workdir={workdir}"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


# A binary that SIGKILLs itself at a chosen point of its progress log: when
# it logs a line matching PATTERN whose first group is a step >= FIRST, it
# waits (blocked in that log call, so it cannot go on) until orbax's async
# save has completed a checkpoint of step >= DONE under CHECKPOINT_DIR (a
# complete one is a directory named by its step), then kills itself. What
# preemption tests kill is thus the same point of every run, however fast
# or loaded the machine, with no test racing the process.
_KILL_ITSELF = textwrap.dedent(
  r"""
  import os, re, runpy, signal, sys, time
  from experiments import _main

  module, pattern, first, where, done = sys.argv[1:6]
  del sys.argv[1:6]
  log = _main.log

  def newest():
    if not os.path.isdir(where):
      return -1
    return max((int(d) for d in os.listdir(where) if d.isdigit()), default=-1)

  def log_then_die(line):
    log(line)
    m = re.search(pattern, line)
    if m and int(m.group(1)) >= int(first):
      deadline = time.time() + 600  # a hang guard only
      while newest() < int(done):
        if time.time() > deadline:
          sys.exit(f"no complete checkpoint of step >= {done} in {where}")
        time.sleep(0.01)
      os.kill(os.getpid(), signal.SIGKILL)

  _main.log = log_then_die
  runpy.run_module(module, run_name="__main__", alter_sys=True)
  """
)


@pytest.fixture
def run_until_killed():
  """``run(module, args, pattern, first, checkpoint_dir, done, **kw)``:
  ``python -m module *args`` killed as ``_KILL_ITSELF`` says; returns the
  ``subprocess.CompletedProcess`` (``returncode == -SIGKILL`` if killed).
  ``kw`` goes to ``subprocess.run`` (cwd, env)."""

  def run(module, args, pattern, first, checkpoint_dir, done, **kw):
    argv = [module, pattern, str(first), str(checkpoint_dir), str(done)]
    return subprocess.run(
      [sys.executable, "-c", _KILL_ITSELF, *argv, *args],
      capture_output=True,
      text=True,
      timeout=900,  # a hang guard only
      **kw,
    )

  return run
