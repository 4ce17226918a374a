"""Runs a repository binary in a fresh interpreter, the way a user does.

One helper for every test whose subject is a process: ``python -m module``
from the repository root, with a chosen number of forced host devices, and
a timeout that is only a hang guard (no test depends on the machine's
speed).
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANG_GUARD_S = 900

# LLVM's optimization level for the code XLA:CPU generates in tests. The
# tests check values, gradients and process behaviour, not how fast the
# generated loops run; at level 0 XLA still runs all its HLO passes
# (fusion, layouts, the same library calls for dots and convs) and compiles
# 2-3x faster (most of this suite's time is compilation). Results agree
# with the default level's up to float rounding, not bit for bit (levels 0,
# 2 and 3 give three different last bits after 30 PGD-AT steps: FMA
# contraction and vectorization differ), so a test whose subject is a long
# training run of a shipped config runs it ``optimized``. A level already
# in XLA_FLAGS wins, so ``XLA_FLAGS=--xla_backend_optimization_level=3
# pytest`` tests the code users run.
OPT_LEVEL_FLAG = "--xla_backend_optimization_level"
TEST_OPT_LEVEL = 0


def xla_flags(devices=None, inherited="", optimized=False):
  """XLA_FLAGS for a test process.

  Args:
    devices: forced host devices, or None for the one CPU device.
    inherited: the XLA_FLAGS the tests were started with; their other
      flags are kept and their optimization level, if any, wins.
    optimized: leave out the tests' level (XLA's default, what users run).

  Returns:
    The flags, one string.
  """
  test_level = f"{OPT_LEVEL_FLAG}={TEST_OPT_LEVEL}"
  flags = [
    f
    for f in inherited.split()
    if not f.startswith("--xla_force_host_platform_device_count")
    and not (optimized and f == test_level)
  ]
  if not optimized and not any(f.startswith(OPT_LEVEL_FLAG) for f in flags):
    flags.append(test_level)
  if devices is not None:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  return " ".join(flags)


def share_compilation_cache():
  """One persistent JAX compilation cache for this test session.

  Called by the first process that imports the conftest (pytest's, or
  xdist's controller, which starts the workers after it): it creates a
  temporary directory, points ``JAX_COMPILATION_CACHE_DIR`` at it for
  itself and every process it starts (xdist workers, the binaries the
  tests run) and removes it at exit. Tests that build the same program
  (the same HLO and options: XLA's cache key) compile it once; every
  program is cached, however fast it compiled. A cache directory already
  in the environment is used as it is and kept.
  """
  if _session_folder("JAX_COMPILATION_CACHE_DIR", "awt-tests-jax-cache-"):
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"


def fresh_native_cache():
  """An empty ``AWT_CACHE_DIR`` for this test session.

  So that every session builds ``awt.models._cpu_gemm``'s handler from its
  source, as a fresh clone does, instead of loading one a previous session
  left in ``~/.cache/awt``; the xdist workers and the binaries the tests
  run race to build it into the same folder, as processes of one job may.
  Called, like :func:`share_compilation_cache`, by the first process that
  imports the conftest; a folder already in the environment is kept.
  """
  _session_folder("AWT_CACHE_DIR", "awt-tests-native-")


def _session_folder(variable: str, prefix: str) -> bool:
  """Points ``variable`` at a new temporary folder, removed at exit,
  unless it is set already; whether it made one."""
  if variable in os.environ:
    return False
  folder = tempfile.mkdtemp(prefix=prefix)
  os.environ[variable] = folder
  atexit.register(shutil.rmtree, folder, ignore_errors=True)
  return True


def environment(devices=2, extra=None, optimized=False):
  """The environment of a binary a test starts.

  Args:
    devices: forced host devices, or None for one CPU device.
    extra: more variables.
    optimized: XLA's default optimization level (see ``xla_flags``).

  Returns:
    This process's environment (with the session's compilation cache),
    the repository root on PYTHONPATH and ``xla_flags(devices)``.
  """
  env = dict(os.environ, PYTHONPATH=ROOT, **(extra or {}))
  env["XLA_FLAGS"] = xla_flags(
    devices, os.environ.get("XLA_FLAGS", ""), optimized
  )
  return env


def run(module, *args, devices=2, env=None, optimized=False):
  """``python -m module *args`` from the repository root.

  Args:
    module: e.g. ``"experiments.train"``.
    args: command-line arguments.
    devices: forced host devices (``XLA_FLAGS``); None: none forced, so
      the process has the one CPU device a user's run has.
    env: extra environment variables.
    optimized: XLA's default optimization level (see ``xla_flags``).

  Returns:
    The ``subprocess.CompletedProcess`` with text stdout and stderr.
  """
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=ROOT,
    env=environment(devices, env, optimized),
    capture_output=True,
    text=True,
    timeout=HANG_GUARD_S,
  )
