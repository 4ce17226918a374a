r"""awt's PGD-10 training step with XLA's and with MKL's Dense products.

  python -m benchmarks.dense_impl [--models=mlp,lenet5,conv4] \
    [--batch=128] [--steps=10] [--rounds=6] [--calls=20]

Builds ``benchmarks._jax.train_runner`` twice per model, with
``dense_impl="xla"`` (``lax.dot_general``) and ``dense_impl="mkl"``
(``awt.models._cpu_gemm``: MKL's sgemm through an XLA FFI call), both
compiled in this process, and times them alternately: ``--rounds`` rounds,
each giving both ``--calls`` timed steps (``_common.time_alternately``).
Prints one JSON line per model: the median ms per step and img/s of each,
each round's img/s, and ``speedup`` = XLA's median time over MKL's. Only
on a machine where ``dense_impl="mkl"`` loads (``pip install
'awt[mkl]'``, a C++ compiler); elsewhere it ends with the reason.
"""

import json
import statistics

from absl import flags

from awt.models import _cpu_gemm
from benchmarks import _common, _jax
from experiments import _main

flags.DEFINE_list("models", ["mlp", "lenet5", "conv4"], "Networks to time.")
flags.DEFINE_integer("batch", 128, "Images per step.")
flags.DEFINE_integer("steps", 10, "PGD steps k of the training attack.")
flags.DEFINE_integer("rounds", 6, "Alternating rounds.")
flags.DEFINE_integer("calls", 20, "Timed steps per variant and round.")

IMPLS = ("xla", "mkl")


def measure(model_name: str, batch: int, steps: int, rounds: int, calls: int):
  """Both ``dense_impl`` values' steps, timed alternately; the record."""
  load_before = _common.load_average()
  runners = {
    i: _jax.train_runner(model_name, batch=batch, steps=steps, dense_impl=i)
    for i in IMPLS
  }
  times = _common.time_alternately(
    {i: r.call for i, r in runners.items()}, rounds, per_turn=calls
  )
  rec = {"benchmark": "dense_impl", "model": model_name, "batch": batch}
  rec["steps"] = steps
  medians = {i: statistics.median(ts) for i, ts in times.items()}
  for i, ts in times.items():
    rec[f"{i}_ms"] = round(medians[i] * 1e3, 2)
    rec[f"{i}_images_per_s"] = round(batch / medians[i])
    rec[f"{i}_round_images_per_s"] = [
      round(batch / t) for t in _common.turn_medians(ts, calls)
    ]
  rec["speedup"] = round(medians["xla"] / medians["mkl"], 3)
  rec["load_before"] = load_before
  rec["load_after"] = _common.load_average()
  rec.update(_jax.versions())
  rec.update(_common.machine())
  return rec


def main(argv):
  del argv
  f = flags.FLAGS
  for model_name in f.models:
    _common.check_args(model_name)
  _common.check_positive(
    batch=f.batch, steps=f.steps, rounds=f.rounds, calls=f.calls
  )
  reason = _cpu_gemm.unavailable_reason()
  if reason is not None:
    raise ValueError(f"dense_impl='mkl' is unavailable here: {reason}")
  for model_name in f.models:
    _main.log(f"{model_name}: compiling and timing both dense_impl steps")
    print(
      json.dumps(measure(model_name, f.batch, f.steps, f.rounds, f.calls)),
      flush=True,
    )


if __name__ == "__main__":
  _main.run(main)
