r"""float32 matmul and conv rates of XLA:CPU and PyTorch at the nets' shapes.

  python -m benchmarks.matmul [--shapes=MxKxN,...] [--convs=HxCINxCOUT,...] \
    [--rounds=2] [--repeats=30] [--threads=0]

Why: ``benchmarks.compare`` puts each step's achieved GFLOP/s next to a
1024 x 1024 matmul rate, but the networks multiply much smaller matrices.
This measures ``jnp.dot`` (awt's matmuls on XLA:CPU) and ``torch.mm`` on the
shapes the steps actually run. The defaults: LeNet-300-100's forward
matmuls at batch 128 (128x784x300, 128x300x100) and its input-gradient
ones (128x300x784, 128x100x300), Conv-4's widest convolution as one im2col
matmul (32768x1152x128) and the 1024^3 reference.

``--convs`` (default Conv-4's three wide layers, batch 128, 3x3 'SAME',
stride 1, on ``H x H x CIN`` inputs) times a convolution's forward and its
input gradient (the two PGD runs per step and layer): on the JAX side
awt's CPU path (``awt.models._cpu_conv.conv_general_dilated``: XLA's
convolution, and the flipped-kernel convolution for the input gradient),
on the torch side ``torch.nn.functional.conv2d`` and
``torch.nn.grad.conv2d_input`` (NCHW). The rate counts ``2 B H^2 9 CIN
COUT`` FLOPs per call.

Each framework runs in its own subprocess (``--worker``; JAX and torch never
share a process or thread pools), ``--rounds`` times in alternation; a
worker reports per shape the best of ``--repeats`` timed calls after 3
warm-up calls (``_jax.matmul_gflop_per_s`` and
``_torch_common.matmul_gflop_per_s``). Prints one JSON line per shape: both
rates per round and their ratio of medians (torch / XLA); then one per
conv, forward and input gradient.
"""

import json
import os
import statistics
import subprocess
import sys

from absl import flags

from benchmarks import _common
from experiments import _main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SHAPES = [
  "128x784x300",
  "128x300x100",
  "128x300x784",
  "128x100x300",
  "32768x1152x128",
  "1024x1024x1024",
]
DEFAULT_CONVS = ["32x64x64", "16x64x128", "16x128x128"]
CONV_BATCH = 128

flags.DEFINE_list("shapes", DEFAULT_SHAPES, "MxKxN: [M, K] times [K, N].")
flags.DEFINE_list("convs", DEFAULT_CONVS, "HxCINxCOUT: 3x3 convs, batch 128.")
flags.DEFINE_integer("rounds", 2, "Alternating (jax, torch) runs.")
flags.DEFINE_integer("repeats", 30, "Timed calls per shape; the best counts.")
flags.DEFINE_integer("threads", 0, "torch threads; 0: os.cpu_count().")
flags.DEFINE_enum("worker", None, ["jax", "torch"], "Internal: one side.")


def _torch_over_jax(torch_rates, jax_rates) -> float:
  """The ratio of the two sides' median rates over the rounds."""
  return round(statistics.median(torch_rates) / statistics.median(jax_rates), 3)


def _jax_conv_rates(h, cin, cout, repeats):
  """(forward, input gradient) GFLOP/s of awt's CPU conv path."""
  import jax  # noqa: PLC0415 (worker only)

  from awt.models import _cpu_conv  # noqa: PLC0415

  kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (CONV_BATCH, h, h, cin))
  w = jax.random.normal(kw, (3, 3, cin, cout)) * 0.05
  g = jax.random.normal(kg, (CONV_BATCH, h, h, cout))
  dims = ("NHWC", "HWIO", "NHWC")
  conv = lambda v: _cpu_conv.conv_general_dilated(  # noqa: E731
    v, w, (1, 1), "SAME", dimension_numbers=dims
  )
  fwd = jax.jit(conv)
  dx = jax.jit(lambda v, g: jax.vjp(conv, v)[1](g)[0])
  flops = 2 * CONV_BATCH * h * h * 9 * cin * cout
  return (
    _common.best_gflop_per_s(
      lambda: fwd(x).block_until_ready(), flops, repeats=repeats
    ),
    _common.best_gflop_per_s(
      lambda: dx(x, g).block_until_ready(), flops, repeats=repeats
    ),
  )


def _torch_conv_rates(h, cin, cout, repeats):
  """(forward, input gradient) GFLOP/s of torch's conv2d."""
  import torch  # noqa: PLC0415 (worker only)

  gen = torch.Generator().manual_seed(0)
  x = torch.randn(CONV_BATCH, cin, h, h, generator=gen)
  w = torch.randn(cout, cin, 3, 3, generator=gen) * 0.05
  g = torch.randn(CONV_BATCH, cout, h, h, generator=gen)
  fwd = lambda: torch.nn.functional.conv2d(x, w, padding=1)  # noqa: E731
  dx = lambda: torch.nn.grad.conv2d_input(x.shape, w, g, padding=1)  # noqa: E731
  flops = 2 * CONV_BATCH * h * h * 9 * cin * cout
  with torch.no_grad():
    return (
      _common.best_gflop_per_s(fwd, flops, repeats=repeats),
      _common.best_gflop_per_s(dx, flops, repeats=repeats),
    )


def worker(side: str, shapes, convs, repeats: int, threads: int) -> dict:
  """``{shape text: GFLOP/s}`` and ``{"conv:" text: [fwd, dx] GFLOP/s}``."""
  if side == "jax":
    from benchmarks import _jax  # noqa: PLC0415 (worker only)

    rate, conv_rates = _jax.matmul_gflop_per_s, _jax_conv_rates
  else:
    from benchmarks.peers import _torch_common  # noqa: PLC0415

    _torch_common.setup_threads(threads)
    rate, conv_rates = _torch_common.matmul_gflop_per_s, _torch_conv_rates
  out = {s: rate(_common.parse_shape(s), repeats=repeats) for s in shapes}
  for c in convs:
    out["conv:" + c] = conv_rates(*_common.parse_shape(c), repeats)
  return out


def _run_worker(side: str, f) -> dict:
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "benchmarks.matmul",
      f"--worker={side}",
      f"--shapes={','.join(f.shapes)}",
      f"--convs={','.join(f.convs)}",
      f"--repeats={f.repeats}",
      f"--threads={f.threads}",
    ],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=ROOT),
    capture_output=True,
    text=True,
  )
  if proc.returncode != 0:
    last = proc.stderr.strip().splitlines()[-1:] or [""]
    raise RuntimeError(f"the {side} worker failed: {last[0]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  f = flags.FLAGS
  for s in f.shapes:
    _common.parse_shape(s)
  for c in f.convs:
    _common.parse_shape(c, "HxCINxCOUT")
  if f.worker:
    out = worker(f.worker, f.shapes, f.convs, f.repeats, f.threads)
    print(json.dumps(out))
    return
  if f.rounds < 1 or f.repeats < 1:
    raise ValueError("--rounds and --repeats must be >= 1")
  rates = {"jax": [], "torch": []}
  for i in range(f.rounds):
    for side in ("jax", "torch") if i % 2 == 0 else ("torch", "jax"):
      _main.log(f"round {i + 1}/{f.rounds}: {side}")
      rates[side].append(_run_worker(side, f))
  for s in f.shapes:
    jax_rates = [r[s] for r in rates["jax"]]
    torch_rates = [r[s] for r in rates["torch"]]
    record = {
      "benchmark": "matmul",
      "shape": list(_common.parse_shape(s)),
      "jax_gflop_per_s": jax_rates,
      "torch_gflop_per_s": torch_rates,
      "torch_over_jax": _torch_over_jax(torch_rates, jax_rates),
      "repeats": f.repeats,
      "load": _common.load_average(),
      **_common.machine(),
    }
    print(json.dumps(record), flush=True)
  for c in f.convs:
    h, cin, cout = _common.parse_shape(c)
    record = {"benchmark": "conv", "input_shape": [CONV_BATCH, h, h, cin]}
    record["kernel"] = [3, 3, cin, cout]
    for i, part in enumerate(("forward", "input_grad")):
      jax_rates = [r["conv:" + c][i] for r in rates["jax"]]
      torch_rates = [r["conv:" + c][i] for r in rates["torch"]]
      record[f"jax_{part}_gflop_per_s"] = jax_rates
      record[f"torch_{part}_gflop_per_s"] = torch_rates
      record[f"{part}_torch_over_jax"] = _torch_over_jax(torch_rates, jax_rates)
    record.update(repeats=f.repeats, load=_common.load_average())
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
  _main.run(main)
