"""What every binary does around its main: devices, logging, clean failures.

Expected failures (bad config, unwritable workdir, missing dataset, bad or
foreign checkpoint, NaN) end the process with exit status 1 and ONE line on
stderr naming the problem, not a traceback.

Multi-host runs: every binary wrapped by :func:`wrap` accepts the flags
``jax.distributed.initialize`` needs and calls it before ``main`` (so before
any JAX computation): ``--jax_coordinator_address``, ``--jax_num_processes``
and ``--jax_process_id`` given explicitly (several GPU hosts), or
``--jax_distributed`` to let JAX detect them from the environment (TPU pod
slices, SLURM, Open MPI; explicit flags still override what is detected).
docs/multihost.md explains how to launch such a job.
"""

import functools
import os
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags, logging  # noqa: E402

EXPECTED_ERRORS = (ValueError, OSError, FloatingPointError, KeyError)

flags.DEFINE_string(
  "jax_coordinator_address",
  None,
  "Multi-host: host:port of the coordinator (process 0), for "
  "jax.distributed.initialize; needs --jax_num_processes and "
  "--jax_process_id unless --jax_distributed detects them.",
)
flags.DEFINE_integer(
  "jax_num_processes", None, "Multi-host: number of processes in the job."
)
flags.DEFINE_integer(
  "jax_process_id", None, "Multi-host: this process's id, 0 <= id < number."
)
flags.DEFINE_bool(
  "jax_distributed",
  False,
  "Multi-host: call jax.distributed.initialize(), detecting coordinator, "
  "process count and id from the environment (TPU pods, SLURM, Open MPI).",
)
DISTRIBUTED_FLAGS = (
  "jax_coordinator_address",
  "jax_num_processes",
  "jax_process_id",
  "jax_distributed",
)


def log(line: str) -> None:
  """Progress line to stderr with a wall-clock time stamp."""
  print(time.strftime("%H:%M:%S"), line, file=sys.stderr, flush=True)


def distributed_args(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  auto: bool,
) -> dict | None:
  """Keyword arguments of ``jax.distributed.initialize``, or None (one host).

  Args:
    coordinator_address: ``host:port`` of process 0's coordinator service.
    num_processes: number of processes in the job.
    process_id: this process's index.
    auto: let JAX detect what is not given (``--jax_distributed``).

  Returns:
    None when nothing is asked for; else the arguments given (with ``auto``
    JAX's cluster detection fills in the others).

  Raises:
    ValueError: an incomplete or inconsistent combination, in one line.
  """
  given = {
    "coordinator_address": coordinator_address,
    "num_processes": num_processes,
    "process_id": process_id,
  }
  given = {k: v for k, v in given.items() if v is not None}
  if not given and not auto:
    return None
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"--jax_num_processes must be >= 1, got {num_processes}")
  if process_id is not None and process_id < 0:
    raise ValueError(f"--jax_process_id must be >= 0, got {process_id}")
  if None not in (num_processes, process_id) and process_id >= num_processes:
    raise ValueError(
      f"--jax_process_id={process_id} must be < "
      f"--jax_num_processes={num_processes}"
    )
  if not auto:
    if coordinator_address is None:
      raise ValueError(
        "--jax_num_processes/--jax_process_id need "
        "--jax_coordinator_address (or --jax_distributed to detect it)"
      )
    if num_processes is None or process_id is None:
      raise ValueError(
        "--jax_coordinator_address needs --jax_num_processes and "
        "--jax_process_id (or --jax_distributed to detect them)"
      )
  return given


def initialize_distributed() -> None:
  """Calls ``jax.distributed.initialize`` if the flags ask for it.

  Raises:
    ValueError: a bad flag combination (see :func:`distributed_args`).
    ConnectionError: the coordinator could not be reached.
  """
  f = flags.FLAGS
  kwargs = distributed_args(
    f.jax_coordinator_address,
    f.jax_num_processes,
    f.jax_process_id,
    f.jax_distributed,
  )
  if kwargs is None:
    return
  import jax  # noqa: PLC0415 (only multi-host runs import it here)

  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:
    msg = str(e).strip().splitlines()
    raise ConnectionError(
      f"jax.distributed.initialize failed: {msg[0] if msg else e!r}"
    ) from e
  log(
    f"process {jax.process_index()} of {jax.process_count()}: "
    f"{jax.local_device_count()} local of {jax.device_count()} devices"
  )


def wrap(main):
  """Wraps an absl main: logging, multi-host setup, one-line expected errors.

  The multi-host flags become key flags of the main module, so ``--help``
  lists them.
  """
  for name in DISTRIBUTED_FLAGS:
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])

  @functools.wraps(main)
  def wrapped(argv):
    # Orbax logs every checkpoint step at INFO; progress goes through log().
    logging.set_verbosity(logging.WARNING)
    try:
      initialize_distributed()
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


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag ending in one ``error:`` line.

  A misspelt ``--config.x.y`` override raises inside ml_collections
  (AttributeError, KeyError, TypeError, ValueError) during parsing, before
  ``main`` runs; absl would print a traceback. A config file's own error
  (an unknown variant, a syntax error) is named by its last line, and a
  missing config file by its path.
  """
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    lines = [x for x in str(e).splitlines() if x.strip()]
    msg = lines[0]
    if "Traceback" in str(e):  # the config file raised: say what it said
      msg = f"{lines[0].rstrip(':')} {lines[-1].strip()}"
  except (SyntaxError, NameError, ImportError) as e:  # in a config file
    msg = f"{_failed_config_file(argv, e)}: {type(e).__name__}: {e}"
  except OSError as e:  # an override applied to a config that did not load
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    msg = _missing_config_file(argv) or f"cannot load a config file: {first}"
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    first = str(e).splitlines()[0] if str(e) else ""
    msg = (
      f"cannot apply a command-line flag ({type(e).__name__}: {first}); "
      "check that every --config.<key> names a field of the config"
    )
  else:
    msg = _missing_config_file(argv)
    if msg is None:
      return rest
  print(f"error: {msg}", file=sys.stderr, flush=True)
  sys.exit(1)


def _config_files(argv: list[str]) -> list[tuple[str, str, str]]:
  """``(flag name, value, file path)`` of each config-file flag in ``argv``."""
  found = []
  for arg in argv[1:]:
    name, _, given = arg.lstrip("-").partition("=")
    flag = flags.FLAGS[name] if name in flags.FLAGS else None
    # config_flags' file flags (their config_filename is a property).
    if given and isinstance(
      getattr(type(flag), "config_filename", None), property
    ):
      found.append((name, given, given.split(":")[0]))
  return found


def _missing_config_file(argv: list[str]) -> str | None:
  """The line naming a ``--config`` file in ``argv`` that does not exist,
  or None (ml_collections defers that error to the config's first use)."""
  for name, given, path in _config_files(argv):
    if not os.path.isfile(path):
      return f"--{name}={given}: no such config file {path!r}"
  return None


def _failed_config_file(argv: list[str], error: Exception) -> str:
  """``cannot load config file 'f.py' (line N)``: the config file that raised
  ``error`` while loading, and its line where the traceback shows one (a
  SyntaxError's message already holds its own)."""
  paths = {os.path.abspath(p): p for _, _, p in _config_files(argv)}
  where = None  # the innermost frame in a config file
  for frame, lineno in traceback.walk_tb(error.__traceback__):
    path = paths.get(os.path.abspath(frame.f_code.co_filename))
    where = f"{path!r} (line {lineno})" if path else where
  if where is not None:
    return f"cannot load config file {where}"
  if len(paths) == 1:
    return f"cannot load config file {next(iter(paths.values()))!r}"
  return "cannot load a config file"


def run(main) -> None:
  """``app.run`` of a wrapped main with one-line flag errors."""
  from absl import app  # noqa: PLC0415

  app.run(wrap(main), flags_parser=parse_flags)
