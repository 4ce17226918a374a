"""What every binary does around its main: devices, logging, clean failures.

Expected failures (bad config, unwritable workdir, missing dataset, bad or
foreign checkpoint, NaN) end the process with exit status 1 and ONE line on
stderr naming the problem, not a traceback.
"""

import functools
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import logging  # noqa: E402

EXPECTED_ERRORS = (ValueError, OSError, FloatingPointError, KeyError)


def log(line: str) -> None:
  """Progress line to stderr with a wall-clock time stamp."""
  print(time.strftime("%H:%M:%S"), line, file=sys.stderr, flush=True)


def wrap(main):
  """Wraps an absl main: INFO logging to stderr, one-line expected errors."""

  @functools.wraps(main)
  def wrapped(argv):
    # Orbax logs every checkpoint step at INFO; progress goes through log().
    logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except EXPECTED_ERRORS as e:
      msg = str(e).splitlines()[0] if str(e) else type(e).__name__
      print(f"error: {msg}", file=sys.stderr)
      sys.exit(1)

  return wrapped
