"""Runs a repository binary in a fresh interpreter, the way a user does.

One helper for every test whose subject is a process: ``python -m module``
from the repository root, with a chosen number of forced host devices, and
a timeout that is only a hang guard (no test depends on the machine's
speed).
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANG_GUARD_S = 900

# LLVM's optimization level for the code XLA:CPU generates in tests. The
# tests check values, gradients and process behaviour, not how fast the
# generated loops run; at level 0 XLA still runs all its HLO passes
# (fusion, layouts, the same Eigen/oneDNN calls for dots and convs) and, as
# XLA:CPU does not enable fast-math, computes the same operations in the
# same order, while compiling 2-3x faster (most of this suite's time is
# compilation). A level already in XLA_FLAGS wins, so
# ``XLA_FLAGS=--xla_backend_optimization_level=3 pytest`` tests the code
# users run.
OPT_LEVEL_FLAG = "--xla_backend_optimization_level"
TEST_OPT_LEVEL = 0


def xla_flags(devices=None, inherited=""):
  """XLA_FLAGS for a test process.

  Args:
    devices: forced host devices, or None for the one CPU device.
    inherited: the XLA_FLAGS the tests were started with; their other
      flags are kept and their optimization level, if any, wins.

  Returns:
    The flags, one string.
  """
  flags = [
    f
    for f in inherited.split()
    if not f.startswith("--xla_force_host_platform_device_count")
  ]
  if not any(f.startswith(OPT_LEVEL_FLAG) for f in flags):
    flags.append(f"{OPT_LEVEL_FLAG}={TEST_OPT_LEVEL}")
  if devices is not None:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  return " ".join(flags)


def run(module, *args, devices=2, env=None):
  """``python -m module *args`` from the repository root.

  Args:
    module: e.g. ``"experiments.train"``.
    args: command-line arguments.
    devices: forced host devices (``XLA_FLAGS``); None: none forced, so
      the process has the one CPU device a user's run has.
    env: extra environment variables.

  Returns:
    The ``subprocess.CompletedProcess`` with text stdout and stderr.
  """
  full = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
  full["XLA_FLAGS"] = xla_flags(devices, os.environ.get("XLA_FLAGS", ""))
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=ROOT,
    env=full,
    capture_output=True,
    text=True,
    timeout=HANG_GUARD_S,
  )
