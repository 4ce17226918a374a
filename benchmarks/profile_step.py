r"""Where a PGD-k training step spends its time: per-op profile, JAX or torch.

  python -m benchmarks.profile_step [--model=lenet5] [--framework=jax] \
    [--batch=128] [--steps=10] [--calls=2] [--top=12]

``--framework=jax`` traces ``--calls`` calls of awt's compiled step
(``benchmarks/_jax.py``, after a warm-up) with ``jax.profiler`` and reads
the trace back (``jax.profiler.ProfileData``): every event named after an
HLO instruction of the optimized program is attributed to that
instruction, whose opcode, layer and role come from the HLO text — a
convolution is ``forward``, ``input_grad`` (the transposed conv of the
backward pass that PGD needs every iteration) or ``filter_grad`` (output
shaped like the kernel); a fusion counts as the convolution or dot it
contains (a conv fused with its bias and ReLU is a convolution), else as
its root. Container
events (``while``, ``call``, the thunk executor) are skipped, so the
per-op times add up to the compute time (summed over threads), except for
convolutions run by Eigen (awt's CPU path, ``awt.models._cpu_conv``): XLA
runs them asynchronously on its intra-op thread pool, whose work carries no
instruction's name, so their time is the part of ``step_ms`` that
``op_ms_total`` leaves out.
``--framework=torch`` runs the PyTorch peer's step under
``torch.profiler`` and reports each aten op's self CPU time.

Prints one JSON line per op (the ``--top`` most expensive, ms per step and
share of the step's wall time) and one line with the totals of the ``--top``
most expensive categories.
"""

import collections
import json
import time

from absl import flags

from benchmarks import _common, _hlo
from experiments import _main

flags.DEFINE_string("model", "lenet5", f"Network: {', '.join(_common.TASKS)}.")
flags.DEFINE_enum("framework", "jax", ["jax", "torch"], "Which step.")
flags.DEFINE_integer("batch", 128, "Images per step.")
flags.DEFINE_integer("steps", 10, "PGD steps k of the training attack.")
flags.DEFINE_integer("calls", 2, "Profiled steps (after one warm-up).")
flags.DEFINE_integer("top", 12, "Ops to print.")
flags.DEFINE_integer("threads", 0, "torch threads; 0: os.cpu_count().")


def profile_jax(f) -> tuple[list[dict], float]:
  """Per-op ms of ``f.calls`` steps of awt's step; and the wall seconds."""
  from benchmarks import _jax  # noqa: PLC0415

  runner = _jax.train_runner(f.model, batch=f.batch, steps=f.steps)
  runner.call()
  instructions, computations = _hlo.parse(runner.hlo())

  def steps():
    for _ in range(f.calls):
      runner.call()

  events, wall = _hlo.trace(steps, instructions)
  ns, count = collections.Counter(), collections.Counter()
  for name, duration in events:
    ns[name] += duration
    count[name] += 1
  ops = []
  for name, total in ns.items():
    op = _hlo.classify(name, instructions, computations, f.batch)
    if op["opcode"] in _hlo.CONTAINERS:
      continue
    op["ms_per_step"] = total / 1e6 / f.calls
    op["calls_per_step"] = count[name] / f.calls
    ops.append(op)
  return ops, wall


def profile_torch(f) -> tuple[list[dict], float]:
  """Per-aten-op self CPU ms of the PyTorch peer's step; the wall seconds."""
  import torch  # noqa: PLC0415

  from benchmarks.peers import _torch_common  # noqa: PLC0415

  _torch_common.setup_threads(f.threads)
  runner = _torch_common.train_runner(f.model, batch=f.batch, steps=f.steps)
  runner.call()
  with torch.profiler.profile(
    activities=[torch.profiler.ProfilerActivity.CPU]
  ) as prof:
    start = time.perf_counter()
    for _ in range(f.calls):
      runner.call()
    wall = time.perf_counter() - start
  ops = []
  for ev in prof.key_averages():
    if ev.self_cpu_time_total <= 0:
      continue
    ops.append(
      {
        "op": ev.key,
        "opcode": ev.key,
        "role": "backward" if "backward" in ev.key else "",
        "layer": "",
        "shape": "",
        "ms_per_step": ev.self_cpu_time_total / 1e3 / f.calls,
        "calls_per_step": ev.count / f.calls,
      }
    )
  return ops, wall


def category(op: dict) -> str:
  """``opcode/role`` for convolutions, else the opcode."""
  if op["opcode"] == "convolution":
    return f"convolution/{op['role']}"
  return op["opcode"]


def main(argv):
  del argv
  f = flags.FLAGS
  _common.check_args(
    f.model, batch=f.batch, steps=f.steps, calls=f.calls, top=f.top
  )
  _main.log(f"profiling {f.calls} {f.framework} steps of {f.model}")
  ops, wall = (profile_jax if f.framework == "jax" else profile_torch)(f)
  step_ms = wall / f.calls * 1e3
  ops.sort(key=lambda o: -o["ms_per_step"])
  base = {
    "benchmark": "profile_step",
    "framework": f.framework,
    "model": f.model,
    "batch": f.batch,
    "attack_steps": f.steps,
  }
  for op in ops[: f.top]:
    op["ms_per_step"] = round(op["ms_per_step"], 3)
    op["share_of_step"] = round(op["ms_per_step"] / step_ms, 4)
    print(json.dumps({**base, **op}), flush=True)
  totals = collections.Counter()
  for op in ops:
    totals[category(op)] += op["ms_per_step"]
  print(
    json.dumps(
      {
        **base,
        "step_ms": round(step_ms, 2),
        "op_ms_total": round(sum(totals.values()), 2),
        "ms_per_category": {
          k: round(v, 2) for k, v in totals.most_common(f.top) if v >= 0.01
        },
        "load": _common.load_average(),
      }
    ),
    flush=True,
  )


if __name__ == "__main__":
  _main.run(main)
