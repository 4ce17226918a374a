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


def run(module, *args, devices=2, env=None):
  """``python -m module *args`` from the repository root.

  Args:
    module: e.g. ``"experiments.train"``.
    args: command-line arguments.
    devices: forced host devices (``XLA_FLAGS``); None: the variable is
      removed, so the process has the one CPU device a user's run has.
    env: extra environment variables.

  Returns:
    The ``subprocess.CompletedProcess`` with text stdout and stderr.
  """
  full = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
  if devices is None:
    full.pop("XLA_FLAGS", None)
  else:
    full["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=ROOT,
    env=full,
    capture_output=True,
    text=True,
    timeout=HANG_GUARD_S,
  )
