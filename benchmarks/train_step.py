r"""PGD-k adversarial-training step throughput through awt's own step.

  python -m benchmarks.train_step [--model=mlp] [--batch=128] [--steps=10] \
    [--repeats=10] [--dtype=float32] [--scan_length=0] [--peak]

Times ``awt.training.make_train_step`` with the ``pgd_at`` objective (Madry
et al. 2018: a k-step l_inf PGD from a uniform random start inside the
eps-ball, sign steps of ``2.5 eps / k``, projection and clipping to [0, 1],
then one SGD-momentum update on the adversarial batch), the step every awt
training run executes, on random inputs:

=============  ======================================  ===============
``--model``    network (registry name)                 input, eps
=============  ======================================  ===============
``mlp``        LeNet-300-100 (``mlp``)                 28x28x1, 0.3
``lenet5``     LeNet-5 (``lenet5``)                    28x28x1, 0.3
``conv4``      Conv-4, 64-64-128-128, fc 256-256       32x32x3, 8/255
``resnet18``   CIFAR ResNet-18 (``resnet18``)          32x32x3, 8/255
=============  ======================================  ===============

With ``--scan_length=0`` one call is one ``jax.jit``-ed step (state donated),
the unit a user dispatches; with ``--scan_length=S`` one call is S steps in
one compiled ``lax.scan`` (``awt.training.scan_steps``, as the binaries and
the pruning pipelines run them), which removes the per-step dispatch.
``compile_s`` (lowering + XLA compilation) is reported separately; one
warm-up call follows, then ``--repeats`` timed calls; ``images_per_s`` is
``batch x steps-per-call / median``. ``--dtype=bfloat16`` computes in bf16
with float32 parameters (the ``model.dtype`` config switch). ``--peak`` adds
``matmul_gflop_per_s``, XLA's rate on one large matrix product in the
compute dtype on the same device (``_common.peak_shape``), the reference
for "FLOP/s as a fraction of peak" next to the record's
``flops_per_call``. Prints one JSON line. The runner lives in
``benchmarks/_jax.py``; the PyTorch counterpart is
``benchmarks/peers/torch_pgd_at.py``.
"""

import json

import jax
from absl import flags

from benchmarks import _common, _jax
from experiments import _main

flags.DEFINE_string("model", "mlp", f"Network: {', '.join(_common.TASKS)}.")
flags.DEFINE_integer("batch", 128, "Images per step.")
flags.DEFINE_integer("steps", 10, "PGD steps k of the training attack.")
flags.DEFINE_integer("repeats", 10, "Timed calls after the warm-up call.")
flags.DEFINE_enum("dtype", "float32", list(_jax.DTYPES), "Compute dtype.")
flags.DEFINE_integer(
  "scan_length", 0, "0: time single jitted steps; S: S steps per lax.scan."
)
flags.DEFINE_bool("peak", False, "Also time one large matmul (dtype, device).")


def main(argv):
  del argv
  f = flags.FLAGS
  _common.check_args(f.model, batch=f.batch, steps=f.steps, repeats=f.repeats)
  if f.scan_length < 0:
    raise ValueError(f"--scan_length must be >= 0, got {f.scan_length}")
  load_before = _common.load_average()
  _main.log(f"{f.model}: compiling the PGD-{f.steps} training step")
  runner = _jax.train_runner(
    f.model,
    batch=f.batch,
    steps=f.steps,
    dtype=f.dtype,
    scan_length=f.scan_length,
  )
  runner.call()  # warm-up
  _main.log(f"{f.model}: timing {f.repeats} calls")
  times = _common.time_calls(runner.call, f.repeats)
  out = _common.record(
    runner,
    times,
    benchmark="train_step",
    framework="jax",
    model=f.model,
    batch=f.batch,
    steps=f.steps,
    dtype=f.dtype,
    load_before=load_before,
    **_jax.versions(),
  )
  if f.peak:
    backend = jax.default_backend()
    _main.log(f"timing a {f.dtype} matmul on the {backend}")
    out["matmul_gflop_per_s"] = _jax.matmul_gflop_per_s(
      _common.peak_shape(backend), dtype=f.dtype
    )
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  _main.run(main)
