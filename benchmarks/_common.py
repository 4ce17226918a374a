"""What the benchmarks and their PyTorch peers share: tasks, timing, ratios.

Pure Python (no JAX, no torch), so that a peer process imports neither
framework it does not measure. ``TASKS`` fixes each benchmark network's
inputs and attack budget for both sides. A measurement is a
:class:`Runner`: built (compiled) once, then ``call()`` runs one unit of
work (a training step, a scanned chunk of steps, an attack on one batch) and
blocks until it is done. :func:`ratio_fields` and :func:`fastest_peer`
summarize ``benchmarks/compare.py``'s alternating pairs.
"""

import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

# name: (input shape HWC, l_inf eps). The MNIST-shaped nets use MNIST's eps
# 0.3, the CIFAR-shaped ones 8/255 (Madry et al. 2018).
TASKS = {
  "mlp": ((28, 28, 1), 0.3),  # LeNet-300-100
  "lenet5": ((28, 28, 1), 0.3),
  "conv4": ((32, 32, 3), 8 / 255),  # Conv-4: 64-64-128-128, fc 256-256
  "resnet18": ((32, 32, 3), 8 / 255),
}
NUM_CLASSES = 10
# PGD-AT's optimizer on both sides: SGD with momentum 0.9 (Madry et al.'s
# and HYDRA's code), learning rate 0.01.
LEARNING_RATE = 0.01
MOMENTUM = 0.9
# PGD step size alpha = 2.5 eps / k (Madry et al. 2018), as
# awt.evaluation.parse_attack("pgdK") uses.
STEP_SIZE_FACTOR = 2.5


def peak_shape(device: str) -> tuple[int, int, int]:
  """``(m, k, n)`` of the matrix product whose rate stands for a device's
  peak (the ``--peak`` flags): 1024 on a CPU, 8192 on an accelerator
  ("cuda", "gpu", "tpu"): large enough to saturate it, small enough to
  time in seconds."""
  side = 1024 if device == "cpu" else 8192
  return (side, side, side)


def check_args(model: str, **positive: int) -> None:
  """Raises ValueError (one line) for an unknown model or a count below 1."""
  if model not in TASKS:
    raise ValueError(f"unknown model {model!r}; known: {', '.join(TASKS)}")
  check_positive(**positive)


def check_positive(**counts: int) -> None:
  """Raises ValueError (one line) naming the first flag ``--name`` below 1."""
  for name, value in counts.items():
    if value < 1:
      raise ValueError(f"--{name} must be >= 1, got {value}")


@dataclasses.dataclass
class Runner:
  """One compiled unit of work and what it processes.

  Attributes:
    call: runs the unit once and blocks until its results are ready.
    images_per_call: images the unit processes (batch x steps for a chunk).
    compile_s: seconds spent building it (JAX: lowering + XLA compilation;
      torch.compile: the first call's compilation; eager: 0).
    info: extra fields for the JSON record.
    hlo: JAX only: returns the compiled program's optimized HLO text (for
      ``benchmarks/profile_step.py``).
  """

  call: Callable[[], None]
  images_per_call: int
  compile_s: float
  info: dict = dataclasses.field(default_factory=dict)
  hlo: Callable[[], str] | None = None


def parse_shape(
  text: str, form: str = "MxKxN", kind: str = "shape"
) -> tuple[int, int, int]:
  """``"AxBxC"`` -> ``(a, b, c)``, three positive integers.

  Raises:
    ValueError: one line naming the bad ``kind`` and the ``form`` wanted.
  """
  parts = text.lower().split("x")
  if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
    raise ValueError(f"bad {kind} {text!r}: want {form} of positive integers")
  return tuple(int(p) for p in parts)


def significant(x: float, digits: int) -> float:
  """``x`` to ``digits`` significant digits: a record keeps the same
  relative precision for a 0.5 ms step and a 5 s one (decimals would print
  a tiny kernel's rate as 0.0)."""
  return float(f"{x:.{digits}g}")


def time_calls(call: Callable[[], None], repeats: int) -> list[float]:
  """Wall seconds of ``repeats`` consecutive calls, each timed on its own."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return times


def time_alternately(
  calls: dict[str, Callable[[], None]], repeats: int, per_turn: int = 1
) -> dict[str, list[float]]:
  """Seconds per call of each variant, the variants taking turns.

  Each variant is called once to warm up; then ``repeats`` rounds, each
  giving every variant a turn of ``per_turn`` timed calls, in sorted name
  order on even rounds and reversed on odd ones, so that a drift in the
  machine's speed falls on all of them alike.

  Returns:
    ``{name: [repeats * per_turn seconds]}``.
  """
  times = {name: [] for name in calls}
  for call in calls.values():
    call()
  for r in range(repeats):
    for name in sorted(calls, reverse=bool(r % 2)):
      times[name].extend(time_calls(calls[name], per_turn))
  return times


def turn_medians(times: list[float], per_turn: int) -> list[float]:
  """The median of each turn of ``per_turn`` calls in one variant's
  :func:`time_alternately` times: one number per round."""
  return [
    statistics.median(times[i : i + per_turn])
    for i in range(0, len(times), per_turn)
  ]


def best_gflop_per_s(
  call: Callable[[], None], flops: float, warmup: int = 3, repeats: int = 10
) -> float:
  """A kernel's rate: ``flops`` over the fastest of ``repeats`` timed calls.

  Args:
    call: runs the kernel once and blocks until it is done.
    flops: the FLOPs of one call.
    warmup: untimed calls first (compilation, caches, thread pools).
    repeats: timed calls; the best counts (the rate the machine reaches
      when nothing else interferes).

  Returns:
    GFLOP/s to 4 significant digits (:func:`significant`).
  """
  for _ in range(warmup):
    call()
  return significant(flops / min(time_calls(call, repeats)) / 1e9, 4)


def time_block(
  call: Callable[[], None], seconds: float, max_calls: int
) -> list[float]:
  """Times calls one by one until ``seconds`` have passed (at least one call,
  at most ``max_calls``); their seconds."""
  times, start = [], time.perf_counter()
  while not times or (
    time.perf_counter() - start < seconds and len(times) < max_calls
  ):
    times.extend(time_calls(call, 1))
  return times


def serve(runner: Runner | None, error: str | None = None) -> None:
  """The worker side of ``benchmarks/compare.py``: timed blocks on request.

  Writes one JSON line ``{"compile_s", "images_per_call", "info"}`` (or
  ``{"error"}``, then returns) once the runner is built and warmed up, then
  reads commands from stdin, one per line: ``run SECONDS MAX_CALLS`` answers
  ``{"times": [...], "load": ...}`` from :func:`time_block`; ``quit`` (or
  end of input) returns. Between commands the process only waits on stdin.
  """
  if runner is None:
    print(json.dumps({"error": error}), flush=True)
    return
  print(
    json.dumps(
      {
        "compile_s": runner.compile_s,
        "images_per_call": runner.images_per_call,
        "info": runner.info,
      }
    ),
    flush=True,
  )
  for line in sys.stdin:
    words = line.split()
    if not words or words[0] == "quit":
      return
    times = time_block(runner.call, float(words[1]), int(words[2]))
    print(json.dumps({"times": times, "load": load_average()}), flush=True)


def summarize(times: list[float], images_per_call: int) -> dict:
  """Median seconds per call and images/s (from the median), with the range.

  Args:
    times: seconds per call, at least one.
    images_per_call: images one call processes.

  Returns:
    ``{"median_s", "min_s", "max_s", "images_per_s"}``, to 6 and 5
    significant digits (:func:`significant`).
  """
  median = statistics.median(times)
  return {
    "median_s": significant(median, 6),
    "min_s": significant(min(times), 6),
    "max_s": significant(max(times), 6),
    "images_per_s": significant(images_per_call / median, 5),
  }


def record(
  runner: Runner | None,
  times: list[float],
  *,
  benchmark: str,
  framework: str,
  model: str,
  batch: int,
  steps: int,
  dtype: str,
  load_before: float,
  error: str | None = None,
  **extra,
) -> dict:
  """The JSON record of one measurement (``error``: it could not run).

  Args:
    runner: the measured Runner (its ``info`` and ``compile_s`` are
      copied), or None when building it failed.
    times: seconds of the timed calls (empty with ``error``).
    benchmark: "train_step" or "pgd_eval".
    framework: "jax" or "torch".
    model: a key of ``TASKS``.
    batch, steps, dtype: the measured configuration.
    load_before: ``load_average()`` before the measurement.
    error: one line saying why there is no time.
    **extra: framework versions, threads, ...

  Returns:
    A JSON-able dict; ``input_shape`` is ``[B, H, W, C]`` for both
    frameworks (torch runs it as NCHW).
  """
  out = {
    "benchmark": benchmark,
    "framework": framework,
    "model": model,
    "input_shape": [batch, *TASKS[model][0]],
    "attack_steps": steps,
    "dtype": dtype,
    **(runner.info if runner else {}),
  }
  if error is not None:
    out["error"] = error
  else:
    out["compile_s"] = round(runner.compile_s, 3)
    out.update(summarize(times, runner.images_per_call))
    out["repeats"] = len(times)
  out.update(load_before=load_before, load_after=load_average())
  out.update(extra)
  out.update(machine())
  return out


def ratio_fields(ours: list[float], peer: list[float]) -> dict:
  """Per-pair ratios ours/peer of images/s, and their median and range.

  Args:
    ours: our images/s, one per pair [P], P >= 1.
    peer: the peer's images/s in the same pairs [P].

  Returns:
    ``ratio_median``, ``ratio_min``, ``ratio_max`` and ``ratios`` [P],
    rounded to 3 decimals.
  """
  ratios = [a / b for a, b in zip(ours, peer, strict=True)]
  return {
    "ratio_median": round(statistics.median(ratios), 3),
    "ratio_min": round(min(ratios), 3),
    "ratio_max": round(max(ratios), 3),
    "ratios": [round(r, 3) for r in ratios],
  }


def fastest_peer(ours: list[float], peers: dict[str, list[float]]) -> dict:
  """Ours against the fastest peer of each pair.

  Args:
    ours: our images/s, one per pair [P], P >= 1.
    peers: peer name -> its images/s in the same pairs [P]; at least one.

  Returns:
    ``fastest_peers``: per pair the name of the peer of most images/s (the
    first one listed on a tie) [P]; ``peer_images_per_s``: its images/s [P];
    and :func:`ratio_fields` of ours over it.

  Raises:
    ValueError: no peers.
  """
  if not peers:
    raise ValueError("no peer to compare with")
  names = [
    max(peers, key=lambda name: peers[name][i]) for i in range(len(ours))
  ]
  best = [peers[name][i] for i, name in enumerate(names)]
  return {
    "fastest_peers": names,
    "peer_images_per_s": best,
    **ratio_fields(ours, best),
  }


def load_average() -> float:
  """The 1-minute load average (``uptime``): other work on the machine."""
  return round(os.getloadavg()[0], 2)


def machine() -> dict:
  """CPU model, core count and Python version, for the JSON records.

  ``cpu`` is the model name; ``cpu_id`` adds the family and model numbers
  (``"family 6 model 167"``), which tell apart CPUs that a virtual machine
  names alike (two different Xeons are both "Intel(R) Xeon(R) Processor").
  """
  model = platform.processor() or platform.machine()
  fields = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "cpu family", "model"):
          fields.setdefault(key, value.strip())
        if len(fields) == 3:
          break
  except OSError:
    pass
  out = {"cpu": fields.get("model name", model)}
  if "cpu family" in fields and "model" in fields:
    out["cpu_id"] = f"family {fields['cpu family']} model {fields['model']}"
  out.update(num_cpu=os.cpu_count(), python=platform.python_version())
  return out


def read_records(paths: list[str]) -> list[dict]:
  """The records of the JSON-lines files, in order.

  Raises:
    ValueError: a line that is not a JSON object, named by file and line.
  """
  records = []
  for path in paths:
    with open(path) as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
        if not isinstance(record, dict):
          raise ValueError(f"{path}:{number}: not a JSON object")
        records.append(record)
  return records


def table_number(value, digits: int = 3) -> str:
  """A cell: ``digits`` significant digits, whole numbers from 1,000 up, "–"
  for None; a string (an error) as it is."""
  if value is None:
    return "–"
  if isinstance(value, str):
    return value
  return f"{value:,.{digits}g}" if value < 1000 else f"{value:,.0f}"


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
  """A markdown table of string cells: the header, its rule, one line a row."""
  line = lambda cells: "| " + " | ".join(cells) + " |"
  rule = "|" + "---|" * len(head)
  return "\n".join([line(head), rule, *map(line, rows)])
