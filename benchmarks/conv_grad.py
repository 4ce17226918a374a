r"""Why PGD on conv nets is slow on XLA:CPU, and awt's CPU lowering of convs.

  python -m benchmarks.conv_grad [--batch=128] [--iterations=10] [--repeats=3]
  python -m benchmarks.conv_grad --steps_of=lenet5,conv4 [--batch=128] \
    [--iterations=10] [--repeats=5]

PGD takes the gradient of the loss in the input once per iteration inside a
``lax.fori_loop``. For a convolution that gradient is itself a convolution
of the output gradient with the spatially flipped, in/out-transposed
kernel. ``benchmarks/profile_step.py`` shows that inside the loop XLA:CPU
(JAX 0.10.2) emits it as a plain ``convolution`` with a reversed kernel in
``01oi`` layout, run by its generic convolution path, while the same
gradient outside a loop, or written as an ordinary ``01io`` convolution,
goes to a fast YNNPACK fusion (``ynn_fusion``).

For each conv layer shape of lenet5 and conv4 (3x3 / 5x5, 'SAME' / 'VALID'
as in awt's models), this times ``--iterations`` signed input-gradient steps
through the conv and a ReLU (a forward and an input-gradient convolution
per step, as in PGD; see :func:`loop`) in one ``fori_loop`` three ways:
``autodiff`` (``jax.vjp`` of ``lax.conv_general_dilated``,
``model.conv_impl="xla"``), ``custom_vjp`` (the same convolution with a
``jax.custom_vjp`` whose input gradient is ``conv(g, flip(w).transpose(0,
1, 3, 2))``) and ``awt_cpu`` (``awt.models._cpu_conv.conv_general_dilated``,
``conv_impl="cpu"``: that custom VJP or slice-and-matmul, by patch width),
reports the relative difference of each variant's first input-gradient
step to ``autodiff``'s (``grad_rel_diff`` and ``speedup`` for
``custom_vjp``, ``awt_cpu_``-prefixed for ``awt_cpu``; float rounding only:
the sums run in another order) and how many YNNPACK fusions each compiled
loop has. One JSON line per shape.

``--steps_of=lenet5,conv4`` instead times awt's PGD-``--iterations`` AT
step (``benchmarks/train_step.py``'s, ``pgd_at`` objective, one jitted
step per call) of each model built with ``conv_impl="xla"`` and with
``conv_impl="cpu"``, both compiled in this process and timed alternately,
``--repeats`` rounds of one call each (after a warm-up call), so that both
see the same machine load. One JSON line per model: median milliseconds of
each, the speed-up, the 1-minute load averages before and after.
"""

import json
import statistics

import jax
import jax.numpy as jnp
from absl import flags
from jax import lax

from awt.models import _cpu_conv
from benchmarks import _common, _jax
from experiments import _main

# layer: (H, W, C_in, C_out, kernel, padding) of the conv's input.
SHAPES = {
  "lenet5/conv1": (28, 28, 1, 6, 5, "SAME"),
  "lenet5/conv2": (14, 14, 6, 16, 5, "VALID"),
  "conv4/conv2": (32, 32, 64, 64, 3, "SAME"),
  "conv4/conv4": (16, 16, 128, 128, 3, "SAME"),
}
DIMS = ("NHWC", "HWIO", "NHWC")

flags.DEFINE_integer("batch", 128, "Images per call.")
flags.DEFINE_integer("iterations", 10, "Gradient steps in the loop.")
flags.DEFINE_integer("repeats", 3, "Timed calls per variant.")
flags.DEFINE_list("layers", list(SHAPES), "Layer shapes to time.")
flags.DEFINE_list(
  "steps_of", [], "Models whose AT step to time with both conv_impl values."
)


def conv(x: jax.Array, w: jax.Array, padding: str) -> jax.Array:
  """``lax.conv_general_dilated``, stride 1, NHWC / HWIO."""
  return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=DIMS)


def conv_fast_input_grad(padding: str):
  """``conv`` with a custom VJP: the input gradient as a 01io convolution.

  The transpose of a stride-1 convolution in its input is the convolution
  of the output gradient with the kernel flipped in space and transposed
  in/out, padded by ``k - 1 - p`` (``p`` the forward padding per side).
  """

  @jax.custom_vjp
  def f(x, w):
    return conv(x, w, padding)

  def fwd(x, w):
    return conv(x, w, padding), (x, w)

  def bwd(res, g):
    x, w = res
    k = w.shape[0]
    p = k // 2 if padding == "SAME" else 0
    pad = [(k - 1 - p, k - 1 - p)] * 2
    wt = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    gx = conv(g, wt, pad)
    gw = jax.vjp(lambda v: conv(x, v, padding), w)[1](g)[0]
    return gx, gw

  f.defvjp(fwd, bwd)
  return f


def loop(apply, iterations: int, signed: bool = True):
  """``x -> x_T``: T steps on ``sum(relu(apply(x)) * g)`` in one fori_loop.

  The ReLU makes each step's input gradient depend on the iterate, as
  PGD's does, so every step runs a forward and an input-gradient
  convolution. Without it the gradient ``conv^T(g)`` is loop-invariant:
  XLA hoists it out of the loop and drops the forward (before 2026-11-30
  this benchmark timed that: a conv4/conv2 "loop" of 10 steps took 143 ms,
  1,350 GFLOP/s of nominal work on 2 cores, i.e. one convolution).

  ``signed``: sign steps as PGD takes them; else plain gradient steps (to
  compare two variants without sign flips of gradients that are zero up to
  rounding).
  """

  def run(x, w, g):
    def body(_, xa):
      grad = jax.vjp(lambda v: jax.nn.relu(apply(v, w)), xa)[1](g)[0]
      return xa + 0.01 * (jnp.sign(grad) if signed else grad)

    return lax.fori_loop(0, iterations, body, x)

  return run


def measure(layer: str, batch: int, iterations: int, repeats: int) -> dict:
  """Times both variants for one layer shape; the JSON record."""
  h, w_, cin, cout, k, padding = SHAPES[layer]
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.uniform(kx, (batch, h, w_, cin))
  w = jax.random.normal(kw, (k, k, cin, cout)) * 0.1
  out = jax.eval_shape(lambda: conv(x, w, padding))
  g = jax.random.normal(kg, out.shape)
  variants = {
    "autodiff": lambda v, w: conv(v, w, padding),
    "custom_vjp": conv_fast_input_grad(padding),
    "awt_cpu": lambda v, w: _cpu_conv.conv_general_dilated(
      v, w, (1, 1), padding, dimension_numbers=DIMS
    ),
  }
  rec = {
    "benchmark": "conv_grad",
    "layer": layer,
    "input_shape": [batch, h, w_, cin],
    "kernel": [k, k, cin, cout],
    "iterations": iterations,
  }
  steps, medians = {}, {}
  for name, apply in variants.items():
    # One step: later iterates drift apart once a ReLU gate flips on a
    # rounding difference, which says nothing about the gradient.
    plain = jax.jit(loop(apply, 1, signed=False))
    steps[name] = plain(x, w, g) - x
    compiled = jax.jit(loop(apply, iterations)).lower(x, w, g).compile()
    times = _common.time_calls(
      lambda c=compiled: jax.block_until_ready(c(x, w, g)), repeats
    )
    medians[name] = statistics.median(times)
    rec[f"{name}_ms"] = round(medians[name] * 1e3, 2)
    rec[f"{name}_ynn_fusions"] = compiled.as_text().count("ynn_fusion")
  for name, prefix in (("custom_vjp", ""), ("awt_cpu", "awt_cpu_")):
    speedup = medians["autodiff"] / medians[name]  # unrounded: no 0 ms
    rec[f"{prefix}speedup"] = round(speedup, 2)
    rec[f"{prefix}grad_rel_diff"] = _jax.max_rel_diff(
      steps[name], steps["autodiff"]
    )
  rec["load"] = _common.load_average()
  rec["jax"] = jax.__version__
  return rec


def measure_step(model_name: str, batch: int, steps: int, repeats: int):
  """Both ``conv_impl`` values' AT steps, timed alternately; the record."""
  load_before = _common.load_average()
  calls = {
    i: _jax.train_runner(model_name, batch=batch, steps=steps, conv_impl=i).call
    for i in ("xla", "cpu")
  }
  times = _common.time_alternately(calls, repeats)
  rec = {"benchmark": "conv_grad_step", "model": model_name, "batch": batch}
  rec["steps"] = steps
  medians = {impl: statistics.median(ts) for impl, ts in times.items()}
  for impl, median in medians.items():
    rec[f"{impl}_ms"] = round(median * 1e3, 1)
  rec["speedup"] = round(medians["xla"] / medians["cpu"], 2)
  rec["load_before"] = load_before
  rec["load_after"] = _common.load_average()
  rec["jax"] = jax.__version__
  return rec


def main(argv):
  del argv
  f = flags.FLAGS
  _common.check_positive(
    batch=f.batch, iterations=f.iterations, repeats=f.repeats
  )
  if f.steps_of:
    for model_name in f.steps_of:
      _common.check_args(model_name)
      _main.log(f"{model_name}: compiling and timing both conv_impl steps")
      rec = measure_step(model_name, f.batch, f.iterations, f.repeats)
      print(json.dumps(rec), flush=True)
    return
  for layer in f.layers:
    if layer not in SHAPES:
      raise ValueError(f"unknown layer {layer!r}; known: {', '.join(SHAPES)}")
  for layer in f.layers:
    _main.log(f"{layer}: compiling and timing both variants")
    rec = measure(layer, f.batch, f.iterations, f.repeats)
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
  _main.run(main)
