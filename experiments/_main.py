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
      # The error line must be the last word: background checkpoint threads
      # (tensorstore callbacks on orbax's closed event loop, after a failed
      # restore) print noise during teardown, so stderr is closed to them
      # and the process ends without it. Nothing is left to save here.
      sys.stdout.flush()
      sys.stderr.flush()
      err = os.dup(2)
      os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
      os.write(err, f"error: {msg}\n".encode())
      os._exit(1)

  return wrapped
