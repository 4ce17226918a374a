r"""Variants of the MKL handler (``awt/models/_cpu_gemm.cc``), timed together.

  python -m benchmarks.gemm_variants [--model=mlp] [--batch=128] \
    [--steps=10] [--rounds=30] [--calls=40] BASE.cc VARIANT.cc [...]

Two builds of the handler timed in two processes are confounded with the
host: on the project's 2-core VM a 100-call median of the MLP step moved
by 20% within a minute (``benchmarks/README.md``). This tool builds every
source under a target of its own (``awt_sgemm_<hash of the source>``, by
renaming the handler's two exported symbols, ``AwtSgemm`` and
``awt_set_sgemm``), checks each variant's product against float64 NumPy,
compiles awt's PGD-k training step once per target (the same model,
weights and batch; ``benchmarks._jax.train_runner``) and times them
alternately (``_common.time_alternately``: ``--rounds`` rounds of
``--calls`` calls per variant, the order reversed every other round). A
round's ratio is BASE's median time over the variant's: above 1, the
variant is faster. On the 2-core Xeon of ``benchmarks/README.md``
(2026-12-06) A/A controls gave medians of 1.002 (quartiles 0.93 and 1.16,
20 rounds of 40 calls) and 1.01 (0.996 and 1.032): differences inside
such a band are noise. A source given twice is built and registered once
(targets are named after the content) and compiled into two steps.

Each distinct source has its own helper threads; the shipped handler's
spin 2 ms after a product and then sleep, so they do not compete with the
next variant's turn.

Prints one JSON line per variant: its source, median ms a step, and the
median, quartiles and wins of its per-round ratios against BASE. Only where
``dense_impl="mkl"`` loads; elsewhere it ends with the reason.
"""

import ctypes
import functools
import hashlib
import json
import pathlib
import statistics
import tempfile

import jax
import numpy as np
from absl import flags

from awt.models import _cpu_gemm
from benchmarks import _common, _jax
from experiments import _main

flags.DEFINE_string("model", "mlp", f"Network: {', '.join(_common.TASKS)}.")
flags.DEFINE_integer("batch", 128, "Images per step.")
flags.DEFINE_integer("steps", 10, "PGD steps k of the training attack.")
flags.DEFINE_integer("rounds", 30, "Alternating rounds.")
flags.DEFINE_integer("calls", 40, "Timed steps per variant and round.")

SYMBOLS = ("XLA_FFI_DEFINE_HANDLER_SYMBOL(AwtSgemm,", "awt_set_sgemm(")


# Digests of the sources registered in this process: XLA's FFI registry
# is per process and keeps the first handler registered under a name.
_REGISTERED: set[str] = set()


def check_symbols(source: pathlib.Path) -> str:
  """``source``'s text; ValueError unless it exports the handler's symbols
  once each, as ``_cpu_gemm.cc`` does (they are renamed per variant)."""
  text = source.read_text()
  for symbol in SYMBOLS:
    if text.count(symbol) != 1:
      raise ValueError(f"{source}: expected one {symbol!r}, as _cpu_gemm.cc")
  return text


def register(text: str) -> str:
  """Builds ``text`` (a handler source that passed :func:`check_symbols`)
  and registers it under a target named after its content
  (``awt_sgemm_<hash>``), once per process; the target."""
  digest = hashlib.sha256(text.encode()).hexdigest()[:12]
  target = f"awt_sgemm_{digest}"
  if digest in _REGISTERED:
    return target
  renamed = text.replace(SYMBOLS[0], f"{SYMBOLS[0][:-1]}_{digest},")
  renamed = renamed.replace(SYMBOLS[1], f"awt_set_sgemm_{digest}(")
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / f"{target}.cc"
    path.write_text(renamed)
    lib = ctypes.CDLL(str(_cpu_gemm._build(path)))
  getattr(lib, f"awt_set_sgemm_{digest}")(
    ctypes.c_void_p(_cpu_gemm.sgemm_address())
  )
  handler = jax.ffi.pycapsule(getattr(lib, f"AwtSgemm_{digest}"))
  jax.ffi.register_ffi_target(target, handler, "cpu")
  _REGISTERED.add(digest)
  return target


def lowered_with(target: str, build):
  """``build()`` with ``awt_gemm`` lowered to the FFI target ``target``."""
  saved = _cpu_gemm.TARGET
  _cpu_gemm.TARGET = target
  try:
    return build()
  finally:
    _cpu_gemm.TARGET = saved


def _compiled_product(a, b, transpose_b: bool):
  def product(x, y):
    return _cpu_gemm.gemm(x, y, transpose_b=transpose_b)

  return jax.jit(product).lower(a, b).compile()


def check_product(target: str) -> float:
  """The variant's ``[128, 784] @ [784, 300]`` product, plain and with the
  right operand transposed (``[300, 784]ᵀ``): the largest error relative to
  float64; ValueError above 1e-5 (a wrong variant must not be timed)."""
  rng = np.random.default_rng(0)
  a = rng.standard_normal((128, 784), np.float32)
  b = rng.standard_normal((784, 300), np.float32)
  worst = 0.0
  for transpose_b, rhs in ((False, b), (True, np.ascontiguousarray(b.T))):
    build = functools.partial(_compiled_product, a, rhs, transpose_b)
    fn = lowered_with(target, build)
    want = a.astype(np.float64) @ (rhs.T if transpose_b else rhs)
    got = np.asarray(fn(a, rhs), np.float64)
    worst = max(worst, float(np.max(np.abs(got - want)) / np.max(np.abs(want))))
  if worst > 1e-5:
    raise ValueError(f"{target}: products off by {worst:.2e} of float64's")
  return worst


def measure(sources: list[pathlib.Path], f) -> list[dict]:
  """Every source's step timed alternately against the first; records.

  Every source is built and its products checked before any step is
  compiled, so a broken variant fails in seconds.
  """
  texts = [check_symbols(source) for source in sources]
  targets = [register(text) for text in texts]
  errors = [check_product(target) for target in targets]
  runners = {}
  for i, (source, target) in enumerate(zip(sources, targets, strict=True)):
    runner = lowered_with(
      target,
      lambda: _jax.train_runner(
        f.model, batch=f.batch, steps=f.steps, dense_impl="mkl"
      ),
    )
    if f'custom_call_target="{target}"' not in runner.hlo():
      raise ValueError(f"{source}: the step was not lowered to {target}")
    runners[f"v{i:03d}"] = runner
  times = _common.time_alternately(
    {t: r.call for t, r in runners.items()}, f.rounds, per_turn=f.calls
  )
  rounds = {t: _common.turn_medians(ts, f.calls) for t, ts in times.items()}
  base = rounds["v000"]
  out = []
  for (name, per_round), source, target, error in zip(
    rounds.items(), sources, targets, errors, strict=True
  ):
    ratios = [b / v for b, v in zip(base, per_round, strict=True)]
    q1, median, q3 = (
      statistics.quantiles(ratios, n=4, method="inclusive")
      if len(ratios) > 1
      else ratios * 3
    )
    rec = {
      "benchmark": "gemm_variants",
      "model": f.model,
      "batch": f.batch,
      "steps": f.steps,
      "source": str(source),
      "target": target,
      "ms": round(statistics.median(times[name]) * 1e3, 3),
      "ratio_median": round(median, 3),
      "ratio_q1": round(q1, 3),
      "ratio_q3": round(q3, 3),
      "rounds_faster": sum(r > 1 for r in ratios),
      "rounds": f.rounds,
      "calls": f.calls,
      "product_rel_error": error,
    }
    rec.update(_jax.versions())
    rec.update(_common.machine())
    out.append(rec)
  return out


def main(argv):
  f = flags.FLAGS
  sources = [pathlib.Path(a) for a in argv[1:]]
  if len(sources) < 2:
    raise ValueError("give the base handler source and at least one variant")
  for source in sources:
    if not source.is_file():
      raise ValueError(f"no handler source {source}")
  _common.check_args(f.model)
  _common.check_positive(
    batch=f.batch, steps=f.steps, rounds=f.rounds, calls=f.calls
  )
  reason = _cpu_gemm.unavailable_reason()
  if reason is not None:
    raise ValueError(f"dense_impl='mkl' is unavailable here: {reason}")
  _main.log(f"{f.model}: building {len(sources)} handlers and their steps")
  for rec in measure(sources, f):
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
  _main.run(main)
