r"""Where one AWT search step spends its FLOPs and its time.

  python -m benchmarks.profile_awt [--config=mnist5k_mlp] [--sparsity=0.95] \
    [--implementations=structured,auto,ntk_vector_products,...] \
    [--repeats=3] [--trace_steps=4] [--structured_steps=4] [--top=12]

Builds the search of ``awt.pruning.awt`` for the config (its first batch,
the teacher's magnitude mask at ``--sparsity``) and splits one step of
``_chunk`` into what it computes, each part jitted on its own:

* ``points``: PGD-k points against the teacher (``config.adversarial``);
* ``teacher_kernel``: the teacher's kernel on them, ``ntk_of(f, θ0, x)``;
* ``teacher_output``: ``f(θ0, x)``;
* ``student_loss_grad``: value and gradient of the loss in the student's
  weights (its output, its kernel and the gradient through that kernel,
  the L2 term);
* ``step``: the whole step (one ``_chunk`` of one step, Adam included).

For each part: FLOPs (``benchmarks/_flops.py``: the jaxpr count, PGD's
loop times its trip count) and wall seconds (median of ``--repeats`` calls
after one warm-up call, compilation excluded), per empirical-NTK
implementation (``structured``: ``awt.ntk.structured_fn``). Then a
``jax.profiler`` trace of ``--trace_steps`` steps of the search's own
``_chunk`` (its implementation: ``structured`` on these configs), every
event
attributed to its HLO instruction (``benchmarks._hlo.parse``)
and summed by part (:func:`part_of`, from the instruction's JAX name
stack) and opcode (a fusion by the dot or convolution it contains, else
its root).

``--structured_steps`` steps of the search's ``_chunk`` with its kernels
from ``awt.ntk.structured_fn`` (``structured``, what the search runs) and
with ``awt.ntk``'s ``auto`` (what it ran before) are counted and timed on
the same batches, with the kernels' agreement and the largest difference
of the per-step losses.

Prints one JSON line per part and implementation, one per step kind of the
structured-vs-auto comparison, one per (part, opcode)
of the trace (the ``--top`` most expensive) and one summary line.
"""

import collections
import json
import re
import statistics
import time

from absl import flags

from benchmarks import _common, _hlo

flags.DEFINE_enum(
  "config", "mnist5k_mlp", ["digits_mlp", "mnist5k_mlp", "mnist5k_lenet5"], ""
)
flags.DEFINE_float("sparsity", 0.95, "Of the search's mask.")
flags.DEFINE_list(
  "implementations",
  ["structured", "auto", "ntk_vector_products", "jacobian_contraction"],
  "Empirical-NTK implementations of the parts.",
)
flags.DEFINE_integer("repeats", 3, "Timed calls per part.")
flags.DEFINE_integer("trace_steps", 4, "Steps of the traced chunk; 0: none.")
flags.DEFINE_integer(
  "structured_steps",
  4,
  "Steps of the search with the structured and with the auto kernel (0: none).",
)
flags.DEFINE_integer("top", 12, "(part, opcode) pairs of the trace to print.")

PARTS = (
  "points",
  "teacher_kernel",
  "teacher_output",
  "student_loss_grad",
  "step",
)


def _search(config_name: str, sparsity: float):
  """``(ctx, settings, chunk arguments of S steps)`` of the config's search."""
  import importlib  # noqa: PLC0415

  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from awt import experiment, pruning, tickets  # noqa: PLC0415
  from awt.pruning import awt as awt_lib  # noqa: PLC0415

  mod = importlib.import_module(f"experiments.configs.{config_name}")
  config = mod.get_config()
  config.pruning.method = "awt"
  config.pruning.sparsity = sparsity
  s = tickets.load(config)
  params, batch_stats, keys = experiment.initialize(
    s.model, config.seed, s.info.image_shape
  )
  ctx = pruning.PruningContext(
    model=s.model,
    params=params,
    batch_stats=batch_stats,
    split=s.dataset.train,
    config=config,
    image_shape=s.info.image_shape,
    checkpoint_dir=None,
    log=None,
    pretrain_dir=None,
  )
  settings = awt_lib._settings(ctx, adversarial=True)
  scales = awt_lib._scales(ctx, settings)
  mask, _ = awt_lib._reset(params, settings, scales)
  coefs = {
    "lr": jnp.float32(settings.lr),
    "lambda_ntk": jnp.float32(settings.lambda_ntk),
    "lambda_l2": jnp.float32(settings.lambda_l2 / settings.density),
  }
  _, data_key, attack_key = jax.random.split(keys.mask, 3)
  seed = awt_lib._data_seed(data_key)

  def stacked(steps):
    return awt_lib._stacked(ctx, settings.batch, 0, steps, seed, attack_key)

  return ctx, settings, mask, coefs, stacked


def _chunk_fn(ctx, mask, coefs, hyper):
  """``(theta, opt_state, batches) -> _chunk(...)``: the search's steps
  from ``theta`` with the teacher's weights, this mask and ``hyper``,
  un-jitted so that callers count and jit it themselves."""
  from awt.pruning import awt as awt_lib  # noqa: PLC0415

  def chunk(theta, opt_state, batches):
    return awt_lib._chunk.__wrapped__(
      theta,
      opt_state,
      mask,
      ctx.params,
      ctx.batch_stats,
      coefs,
      batches,
      hyper=hyper,
    )

  return chunk


def _parts(ctx, settings, mask, coefs, batch, implementation):
  """name -> (function, args): the step's parts, jit-able."""
  import jax  # noqa: PLC0415
  import optax  # noqa: PLC0415

  from awt.pruning import awt as awt_lib  # noqa: PLC0415

  hyper = settings.hyper._replace(implementation=implementation)
  f = awt_lib.eval_logits_fn(ctx.model, ctx.batch_stats)
  teacher = ctx.params
  one = jax.tree.map(lambda v: v[0], batch)
  options = {
    "kernel": hyper.kernel,
    "student": hyper.student,
    "ntk_norm": hyper.ntk_norm,
    "l2_paths": hyper.l2_paths,
    "implementation": implementation,
  }

  def points(one):
    return awt_lib._points(f, hyper, teacher, teacher, one)

  x = jax.jit(points)(one)

  def teacher_kernel(x):
    return awt_lib.ntk_of(
      f,
      teacher,
      x,
      kernel=hyper.kernel,
      implementation=implementation,
    )

  k0 = jax.jit(teacher_kernel)(x)
  f0 = f(teacher, x)

  def student_loss_grad(theta, x, f0, k0):
    def total(w):
      terms = awt_lib.loss_terms(f, w, mask, x, f0, k0, **options)
      output, ntk_term, l2 = terms
      loss = output + coefs["lambda_ntk"] * ntk_term
      return loss + coefs["lambda_l2"] * l2

    return jax.value_and_grad(total)(theta)

  opt_state = optax.adam(settings.lr).init(teacher)
  step = _chunk_fn(ctx, mask, coefs, hyper)

  return {
    "points": (points, (one,)),
    "teacher_kernel": (teacher_kernel, (x,)),
    "teacher_output": (lambda x: f(teacher, x), (x,)),
    "student_loss_grad": (student_loss_grad, (teacher, x, f0, k0)),
    "step": (step, (teacher, opt_state, batch)),
  }


def measure_parts(ctx, settings, mask, coefs, batch, implementation, repeats):
  """One record per part: FLOPs and median wall seconds."""
  import jax  # noqa: PLC0415

  from benchmarks import _flops  # noqa: PLC0415

  records = []
  for name, (fn, args) in _parts(
    ctx, settings, mask, coefs, batch, implementation
  ).items():
    flops = _flops.count(fn, *args)
    jitted = jax.jit(fn)
    start = time.perf_counter()
    jax.block_until_ready(jitted(*args))
    first = time.perf_counter() - start
    times = _common.time_calls(
      lambda jitted=jitted, args=args: jax.block_until_ready(jitted(*args)),
      repeats,
    )
    records.append(
      {
        "benchmark": "profile_awt",
        "part": name,
        "implementation": implementation,
        "flops": flops.as_dict(),
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "first_call_s": round(first, 3),
        "load": _common.load_average(),
      }
    )
  return records


def measure_structured(ctx, settings, mask, coefs, stacked, steps, repeats):
  """FLOPs and seconds per step of ``steps`` steps of the search
  (``_chunk``) with its kernels from ``awt.ntk.structured_fn`` (what the
  search runs on these configs) and with ``awt.ntk``'s ``"auto"``
  (NTK-vector products) on the same batches; the kernels' agreement and
  the largest relative difference of the two searches' per-step losses."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import optax  # noqa: PLC0415

  from awt.pruning import awt as awt_lib  # noqa: PLC0415
  from benchmarks import _flops  # noqa: PLC0415

  f = awt_lib.eval_logits_fn(ctx.model, ctx.batch_stats)
  x = stacked(1)["image"][0]
  kernels = [
    awt_lib.ntk_of(f, ctx.params, x, implementation=impl)
    for impl in ("structured", "auto")
  ]
  error = float(
    jnp.linalg.norm(kernels[0] - kernels[1]) / jnp.linalg.norm(kernels[1])
  )
  opt_state = optax.adam(settings.lr).init(ctx.params)
  batches = stacked(steps)
  carry = (ctx.params, opt_state)
  records, losses = [], {}
  for impl in ("structured", "auto"):
    steps_of = _chunk_fn(
      ctx, mask, coefs, settings.hyper._replace(implementation=impl)
    )

    def chunk(carry, batches, steps_of=steps_of):
      return steps_of(*carry, batches)

    flops = _flops.count(chunk, carry, batches).scaled(1 / steps)
    jitted = jax.jit(chunk)
    _, out = jax.block_until_ready(jitted(carry, batches))
    losses[impl] = out["loss"]
    times = _common.time_calls(
      lambda jitted=jitted: jax.block_until_ready(jitted(carry, batches)),
      repeats,
    )
    records.append(
      {
        "benchmark": "profile_awt_structured",
        "implementation": impl,
        "flops_per_step": flops.as_dict(),
        "median_s_per_step": round(statistics.median(times) / steps, 5),
        "kernel_relative_error": error,
        "load": _common.load_average(),
      }
    )
  a, b = losses["structured"], losses["auto"]
  gap = float(jnp.max(jnp.abs(a - b) / jnp.abs(b)))
  for r in records:
    r["max_relative_loss_difference"] = gap
  return records


_LOOPS = re.compile(r"while/body")


def part_of(op_name: str) -> str:
  """The part of the step an HLO instruction's ``op_name`` belongs to.

  From JAX's name stack: PGD's loop is a second ``while/body`` inside the
  search's scan; the kernels are ``jit(kernel)`` (``awt.ntk``) — the
  teacher's as such (outside the differentiated loss), the student's
  under ``jvp(...)`` (the kernel and its linearization) and under
  ``transpose(jvp(...))`` (the gradient through it).
  """
  if len(_LOOPS.findall(op_name)) >= 2:
    return "points (PGD)"
  if "transpose(jvp(jit(kernel)))" in op_name:
    return "student_kernel_grad"
  if "jvp(jit(kernel))" in op_name:
    return "student_kernel"
  if "jit(kernel)" in op_name:
    return "teacher_kernel"
  return "other"


def trace_chunk(ctx, settings, mask, coefs, stacked, steps: int):
  """Per-opcode ms per step of the search's ``_chunk`` of ``steps`` steps."""
  import jax  # noqa: PLC0415
  import optax  # noqa: PLC0415

  from awt.pruning import awt as awt_lib  # noqa: PLC0415

  opt_state = optax.adam(settings.lr).init(ctx.params)
  args = (
    ctx.params,
    opt_state,
    mask,
    ctx.params,
    ctx.batch_stats,
    coefs,
    stacked,
  )
  kw = {"hyper": settings.hyper}
  jax.block_until_ready(awt_lib._chunk(*args, **kw))  # compile, warm up
  text = awt_lib._chunk.lower(*args, **kw).compile().as_text()
  instructions, computations = _hlo.parse(text)
  events, wall = _hlo.trace(
    lambda: jax.block_until_ready(awt_lib._chunk(*args, **kw)), instructions
  )
  ns = collections.Counter()
  for name, duration in events:
    opcode, _, inner, *_ = _hlo.representative(name, instructions, computations)
    if opcode in _hlo.CONTAINERS:
      continue
    ns[(part_of(instructions[name][2] or inner), opcode)] += duration
  return ns, wall


def main(argv):
  del argv
  f = flags.FLAGS
  ctx, settings, mask, coefs, stacked = _search(f.config, f.sparsity)
  batch = stacked(1)
  common = {"config": f.config, **_common.machine()}
  totals = {}
  for impl in f.implementations:
    for r in measure_parts(ctx, settings, mask, coefs, batch, impl, f.repeats):
      print(json.dumps({**r, **common}), flush=True)
      totals[(impl, r["part"])] = r
  if f.structured_steps:
    for r in measure_structured(
      ctx, settings, mask, coefs, stacked, f.structured_steps, f.repeats
    ):
      print(json.dumps({**r, **common}), flush=True)
  if f.trace_steps:
    load = _common.load_average()
    ns, wall = trace_chunk(
      ctx, settings, mask, coefs, stacked(f.trace_steps), f.trace_steps
    )
    op_ms = sum(ns.values()) / 1e6 / f.trace_steps
    for (part, opcode), t in ns.most_common(f.top):
      ms = t / 1e6 / f.trace_steps
      print(
        json.dumps(
          {
            "benchmark": "profile_awt_trace",
            "part": part,
            "opcode": opcode,
            "ms_per_step": round(ms, 2),
            "share_of_op_time": round(ms / op_ms, 4),
            **common,
          }
        ),
        flush=True,
      )
    by_part = collections.Counter()
    for (part, _), t in ns.items():
      by_part[part] += t / 1e6 / f.trace_steps
    print(
      json.dumps(
        {
          "benchmark": "profile_awt_summary",
          "steps": f.trace_steps,
          "wall_s_per_step": round(wall / f.trace_steps, 4),
          "op_ms_per_step": round(op_ms, 2),
          "op_ms_per_step_by_part": {
            k: round(v, 2) for k, v in by_part.most_common()
          },
          "load_before": load,
          "load_after": _common.load_average(),
          **common,
        }
      ),
      flush=True,
    )


if __name__ == "__main__":
  from experiments import _main

  _main.run(main)
