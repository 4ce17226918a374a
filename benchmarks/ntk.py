r"""Time and peak memory of the empirical and adversarial NTKs, JSON lines.

  python -m benchmarks.ntk \
    [--models=mlp,lenet5] [--sizes=100] [--kinds=empirical,adversarial] \
    [--implementations=jacobian_contraction,ntk_vector_products] \
    [--batch_size=0] [--full_kernel=false] [--repeats=1] [--attack_steps=10]

A cell is (model, n, kind, implementation): ``kind=empirical`` times
``awt.ntk.empirical_fn(...)(params, x)``, the ``[n, n]`` NTK (mean over the
10 logits) of n random MNIST-shaped inputs ``[n, 28, 28, 1]``;
``kind=adversarial`` times ``awt.ntk.adversarial`` (an l_inf PGD, eps 0.3,
``--attack_steps`` steps against the same randomly initialized network,
then the NTK at the adversarial points), both as one jitted function.
Models: ``mlp`` (LeNet-300-100, 266,610 parameters) and ``lenet5`` (61,706).
The sizes of the issue are ``--sizes=100,500,1000,2000,5000``; beyond a few
hundred points the Jacobian-contraction kernel needs ``--batch_size`` (its
Jacobians of LeNet-300-100 take ``4 n 10 266610`` bytes: 10.7 GB at
n = 1000). The default is the quick subset (n = 100, both models, both
kinds, both implementations: 8 cells, about 3 minutes on 2 CPU cores).

Each cell runs in a fresh subprocess so that its peak memory is its own:
``peak_bytes`` is the device's ``memory_stats()["peak_bytes_in_use"]`` where
the backend reports it (GPU, TPU; ``memory_source="device"``), else the
process's peak resident set size from ``resource.getrusage``
(``memory_source="peak_rss"``, CPU: includes Python, JAX and the inputs;
``baseline_rss_bytes`` is the RSS before compiling, so the kernel's share is
about the difference). ``compile_s`` is lowering plus XLA compilation;
``median_s`` the median of ``--repeats`` timed runs of the compiled
function. ``xla_bytes`` is XLA's memory analysis of the compiled program:
arguments + outputs + its temporary buffer (``xla_temp_bytes``, the buffer
assignment's peak of live intermediates), known without running it;
``--noexecute`` reports only this, for cells too slow to run on the
machine at hand. ``auto_choice`` is what ``implementation="auto"`` would
pick for this cell (per block with ``--batch_size``), ``auto_costs`` its
cost model.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
from absl import flags

from awt import attacks, models, ntk
from experiments import _main

MODELS = ("mlp", "lenet5")
KINDS = ("empirical", "adversarial")
INPUT_SHAPE = (28, 28, 1)

flags.DEFINE_list("models", list(MODELS), f"Models: {', '.join(MODELS)}.")
flags.DEFINE_list("sizes", ["100"], "Numbers of inputs n (kernel [n, n]).")
flags.DEFINE_list("kinds", list(KINDS), f"Kernels: {', '.join(KINDS)}.")
flags.DEFINE_list(
  "implementations",
  ["jacobian_contraction", "ntk_vector_products"],
  "NTK implementations (auto, jacobian_contraction, ntk_vector_products).",
)
flags.DEFINE_integer("batch_size", 0, "NTK block size; 0: no blocks.")
flags.DEFINE_bool("full_kernel", False, "[n, n, 10, 10] instead of traced.")
flags.DEFINE_integer("repeats", 1, "Timed runs of the compiled function.")
flags.DEFINE_integer("attack_steps", 10, "PGD steps of the adversarial NTK.")
flags.DEFINE_bool(
  "execute",
  True,
  "Run the compiled kernel; --noexecute only compiles and reports XLA's "
  "memory analysis (for cells too slow to run here).",
)
flags.DEFINE_string("cell", "", "Internal: run one cell model,n,kind,impl.")


def _memory() -> tuple[int, str]:
  """(peak bytes, source): the device's peak if reported, else peak RSS."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device"
  # Linux reports ru_maxrss in KiB.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_rss"


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_cell(
  model_name: str,
  n: int,
  kind: str,
  implementation: str,
  *,
  batch_size: int | None,
  full_kernel: bool,
  repeats: int,
  attack_steps: int,
  execute: bool = True,
) -> dict:
  """Compiles and times one cell in this process; the JSON record."""
  model = models.get(model_name, 10)
  k_init, k_x, k_y, k_attack = jax.random.split(jax.random.PRNGKey(0), 4)
  variables = model.init(k_init, jnp.zeros((1, *INPUT_SHAPE)), train=False)
  x = jax.random.uniform(k_x, (n, *INPUT_SHAPE))
  y = jax.random.randint(k_y, (n,), 0, 10)
  apply_fn = lambda v, z: model.apply(v, z, train=False)
  trace_axes = () if full_kernel else (-1,)
  kw = dict(
    trace_axes=trace_axes, implementation=implementation, batch_size=batch_size
  )
  if kind == "empirical":
    kernel = ntk.empirical_fn(apply_fn, **kw)
    args = (variables, x)
  else:
    attack = _pgd(attack_steps)

    @jax.jit
    def kernel(variables, x, y, key):
      return ntk.adversarial(
        apply_fn, variables, x, y, key, attack=attack, **kw
      )[0]

    args = (variables, x, y, k_attack)
  block = x[: min(n, batch_size or n)]
  auto_costs = ntk.cost_model(apply_fn, variables, block, None, trace_axes)
  auto_choice = ntk.choose_implementation(
    apply_fn, variables, block, None, trace_axes
  )
  baseline = _rss_bytes()
  start = time.perf_counter()
  compiled = kernel.lower(*args).compile()
  compile_s = time.perf_counter() - start
  xla = compiled.memory_analysis()  # None where a backend has none.
  times = []
  for _ in range(repeats if execute else 0):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  peak, source = _memory() if execute else (None, None)
  return {
    "model": model_name,
    "n": n,
    "kind": kind,
    "implementation": implementation,
    "auto_choice": auto_choice,
    "auto_costs": {k: float(f"{v:.4g}") for k, v in auto_costs.items()},
    "trace_axes": list(trace_axes),
    "batch_size": batch_size,
    "attack": f"pgd-linf eps=0.3 steps={attack_steps}"
    if kind == "adversarial"
    else None,
    "compile_s": round(compile_s, 3),
    "median_s": round(statistics.median(times), 4) if times else None,
    "repeats": len(times),
    "peak_bytes": peak,
    "xla_bytes": None
    if xla is None
    else xla.argument_size_in_bytes
    + xla.output_size_in_bytes
    + xla.temp_size_in_bytes,
    "xla_temp_bytes": None if xla is None else xla.temp_size_in_bytes,
    "memory_source": source,
    "baseline_rss_bytes": baseline,
    "jax": jax.__version__,
    "device": jax.devices()[0].device_kind,
    "num_cpu": os.cpu_count(),
  }


def _pgd(steps: int):
  """l_inf PGD, eps 0.3 (Madry et al. 2018, MNIST), step 2.5 eps / steps."""

  def attack(logits_fn, x, y, key):
    return attacks.pgd(
      logits_fn, x, y, key, eps=0.3, step_size=0.75 / steps, steps=steps
    )

  return attack


def _cell_in_subprocess(cell: str, argv_flags: list[str]) -> dict:
  """Runs ``--cell`` in a fresh interpreter; its JSON record."""
  result = subprocess.run(
    [sys.executable, "-m", "benchmarks.ntk", f"--cell={cell}", *argv_flags],
    capture_output=True,
    text=True,
  )
  lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
  if result.returncode != 0 or not lines:
    model, n, kind, impl = cell.split(",")
    tail = result.stderr.strip().splitlines()[-1:] or ["no output"]
    return {
      "model": model,
      "n": int(n),
      "kind": kind,
      "implementation": impl,
      "error": f"exit {result.returncode}: {tail[0][:300]}",
    }
  return json.loads(lines[-1])


def main(argv):
  del argv
  f = flags.FLAGS
  batch_size = f.batch_size or None
  options = dict(
    batch_size=batch_size,
    full_kernel=f.full_kernel,
    repeats=f.repeats,
    attack_steps=f.attack_steps,
    execute=f.execute,
  )
  if f.cell:
    model, n, kind, impl = f.cell.split(",")
    record = run_cell(model, int(n), kind, impl, **options)
    print(json.dumps(record), flush=True)
    return
  for name, values, known in (
    ("model", f.models, MODELS),
    ("kind", f.kinds, KINDS),
    ("NTK implementation", f.implementations, ntk.IMPLEMENTATION_NAMES),
  ):
    for v in values:
      if v not in known:
        raise ValueError(f"unknown {name} {v!r}; known: {', '.join(known)}")
  sizes = [int(s) for s in f.sizes]
  if min(sizes) < 1 or f.repeats < 1 or f.batch_size < 0:
    raise ValueError("--sizes, --repeats must be >= 1, --batch_size >= 0")
  passed = [
    f"--batch_size={f.batch_size}",
    f"--full_kernel={str(f.full_kernel).lower()}",
    f"--repeats={f.repeats}",
    f"--attack_steps={f.attack_steps}",
    f"--execute={str(f.execute).lower()}",
  ]
  for model in f.models:
    for n in sizes:
      for kind in f.kinds:
        for impl in f.implementations:
          cell = f"{model},{n},{kind},{impl}"
          _main.log(f"{cell}: compiling and timing in a subprocess")
          print(json.dumps(_cell_in_subprocess(cell, passed)), flush=True)


if __name__ == "__main__":
  _main.run(main)
