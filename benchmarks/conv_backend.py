r"""Which library runs XLA:CPU's convolutions, and awt's way around YNNPACK.

  python -m benchmarks.conv_backend [--convs=HxCINxCOUT[:valid],...] \
    [--kernel_grads=HxCINxCOUT,...] [--batch=128] [--rounds=3] [--repeats=5]

Why: XLA:CPU (jaxlib 0.10) gives a 2-D float32 NHWC convolution with more
than 16 input or output channels to YNNPACK unless its output is larger
than its input in a spatial dimension; other convolutions run in Eigen's
spatial convolution. On this project's CPU YNNPACK was the slower of the
two on every wide conv awt's models have, so awt's CPU path
(``awt.models._cpu_conv._xla_conv``) computes a stride-1 conv one output row
taller (three for a 3x3 'VALID' one) and crops it, which sends it to Eigen.

``--convs`` (3x3, stride 1, 'SAME' unless ``:valid``; batch ``--batch``)
times each convolution's forward two ways: ``ynnpack``
(``lax.conv_general_dilated`` as is) and ``eigen`` (``_xla_conv``).
``--kernel_grads`` (3x3 'SAME') times a conv's kernel gradient three ways:
``autodiff`` (``jax.vjp`` of ``lax.conv_general_dilated`` in the kernel),
``dots`` (``_cpu_conv._kernel_grad_dots``: one dot per kernel row over the
whole batch) and ``chunked`` (``_cpu_conv._kernel_grad``, awt's: the batch
contracted in cache-sized chunks in a ``lax.scan``).

The variants of a shape are compiled in this process and timed in
alternation, ``--rounds`` rounds of the best of ``--repeats`` calls each
(after a warm-up call), so they see the same machine load. Rates count the
nominal FLOPs (``2 B H' W' 9 CIN COUT``), not the cropped rows. Prints one
JSON line per shape: each variant's GFLOP/s per round, the number of
YNNPACK fusions (``__ynn_fusion``) in its compiled program, its largest
relative difference to the first variant, and the speed-up of the last
variant over the first (ratio of median rates).
"""

import json
import statistics

import jax
from absl import flags
from jax import lax

from awt.models import _cpu_conv
from benchmarks import _common, _jax
from experiments import _main

DEFAULT_CONVS = [
  "32x64x64",
  "16x64x128",
  "16x128x128",
  "16x128x64",
  "8x256x256",
  "4x512x512",
  "32x64x64:valid",
]
DEFAULT_KERNEL_GRADS = ["32x64x64", "16x64x128", "16x128x128"]
DIMS = ("NHWC", "HWIO", "NHWC")

flags.DEFINE_list("convs", DEFAULT_CONVS, "HxCINxCOUT[:valid] 3x3 convs.")
flags.DEFINE_list("kernel_grads", DEFAULT_KERNEL_GRADS, "HxCINxCOUT.")
flags.DEFINE_integer("batch", 128, "Images per call.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds over the variants.")
flags.DEFINE_integer("repeats", 5, "Timed calls per round; the best counts.")


def parse_conv(text: str) -> tuple[int, int, int, str]:
  """``"HxCINxCOUT[:valid]"`` -> ``(h, cin, cout, padding)``.

  Raises:
    ValueError: one line naming the bad shape or padding.
  """
  shape, _, pad = text.partition(":")
  if pad not in ("", "valid"):
    raise ValueError(f"bad conv {text!r}: the only padding suffix is ':valid'")
  h, cin, cout = _common.parse_shape(shape, "HxCINxCOUT", kind="conv")
  return h, cin, cout, pad.upper() or "SAME"


def _problem(text: str, batch: int):
  """A conv's operands: ``(pads, x, w, g, flops)``.

  ``x`` [B, H, H, CIN], ``w`` [3, 3, CIN, COUT], ``g`` (an output
  gradient) [B, H', H', COUT]; ``flops`` the nominal ``2 B H'^2 9 CIN
  COUT``.
  """
  h, cin, cout, padding = parse_conv(text)
  pads = lax.padtype_to_pads((h, h), (3, 3), (1, 1), padding)
  out_h = h + sum(pads[0]) - 2
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(h * cin + cout), 3)
  x = jax.random.normal(kx, (batch, h, h, cin))
  w = jax.random.normal(kw, (3, 3, cin, cout)) * 0.05
  g = jax.random.normal(kg, (batch, out_h, out_h, cout))
  return pads, x, w, g, 2 * batch * out_h * out_h * 9 * cin * cout


def compare(variants: dict, args, flops: int, rounds: int, repeats: int):
  """Times jitted ``variants`` (name -> fn of ``args``) in alternation.

  Returns:
    ``{name: {"gflop_per_s": [per round], "ynn_fusions": n,
    "rel_diff": to the first variant}}`` and the last variant's speed-up
    over the first (ratio of median rates).
  """
  compiled = {
    name: jax.jit(fn).lower(*args).compile() for name, fn in variants.items()
  }
  outs = {name: c(*args) for name, c in compiled.items()}
  first = next(iter(outs.values()))
  rates = {name: [] for name in compiled}
  for _ in range(rounds):
    for name, c in compiled.items():
      rates[name].append(
        _common.best_gflop_per_s(
          lambda c=c: jax.block_until_ready(c(*args)), flops, repeats=repeats
        )
      )
  result = {
    name: {
      "gflop_per_s": rates[name],
      "ynn_fusions": compiled[name].as_text().count('"__ynn_fusion"'),
      "rel_diff": _common.significant(_jax.max_rel_diff(outs[name], first), 2),
    }
    for name in compiled
  }
  names = list(compiled)
  speedup = statistics.median(rates[names[-1]]) / statistics.median(
    rates[names[0]]
  )
  return result, round(speedup, 3)


def _record(kind: str, text: str, batch: int, timed: tuple) -> dict:
  """The JSON record of one shape from :func:`compare`'s result."""
  result, speedup = timed
  return {
    "benchmark": "conv_backend",
    "kind": kind,
    "conv": text,
    "batch": batch,
    **result,
    "speedup": speedup,
    "load": _common.load_average(),
  }


def measure_conv(text: str, batch: int, rounds: int, repeats: int) -> dict:
  """One ``--convs`` record: the forward by YNNPACK and by Eigen."""
  pads, x, w, _, flops = _problem(text, batch)
  variants = {
    "ynnpack": lambda a, b: lax.conv_general_dilated(
      a, b, (1, 1), pads, dimension_numbers=DIMS
    ),
    "eigen": lambda a, b: _cpu_conv._xla_conv(a, b, (1, 1), pads, None),
  }
  timed = compare(variants, (x, w), flops, rounds, repeats)
  return _record("forward", text, batch, timed)


def measure_kernel_grad(text: str, batch: int, rounds: int, repeats: int):
  """One ``--kernel_grads`` record: autodiff, whole-batch dots, chunked."""
  pads, x, w, g, flops = _problem(text, batch)

  def autodiff(a, d):
    conv = lambda v: lax.conv_general_dilated(  # noqa: E731
      a, v, (1, 1), pads, dimension_numbers=DIMS
    )
    return jax.vjp(conv, w)[1](d)[0]

  variants = {
    "autodiff": autodiff,
    "dots": lambda a, d: _cpu_conv._kernel_grad_dots(
      a, d, kernel_shape=w.shape, strides=(1, 1), pads=pads, precision=None
    ),
    "chunked": lambda a, d: _cpu_conv._kernel_grad(
      a, d, w.shape, (1, 1), pads, None
    ),
  }
  timed = compare(variants, (x, g), flops, rounds, repeats)
  return _record("kernel_grad", text, batch, timed)


def main(argv):
  del argv
  f = flags.FLAGS
  _common.check_positive(batch=f.batch, rounds=f.rounds, repeats=f.repeats)
  for text in f.convs + f.kernel_grads:
    parse_conv(text)
  for text in f.convs:
    _main.log(f"forward {text}: compiling and timing ynnpack, eigen")
    rec = measure_conv(text, f.batch, f.rounds, f.repeats)
    print(json.dumps(rec), flush=True)
  for text in f.kernel_grads:
    _main.log(f"kernel gradient {text}: autodiff, dots, chunked")
    rec = measure_kernel_grad(text, f.batch, f.rounds, f.repeats)
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
  _main.run(main)
