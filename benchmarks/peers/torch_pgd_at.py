r"""PyTorch PGD-k adversarial-training step: the peer of train_step.py.

  python -m benchmarks.peers.torch_pgd_at [--model=mlp] [--batch=128] \
    [--steps=10] [--repeats=10] [--dtype=float32] [--compile] \
    [--compile_mode=default] [--threads=0] [--device=auto] [--channels_last] \
    [--peak]

The step a researcher writes in PyTorch (Madry et al.'s and HYDRA's PGD-AT
loop): ``model.train()``; a k-step l_inf PGD from a uniform random start
(sign steps of ``2.5 eps / k``, projection to the eps-ball, clamp to [0, 1],
input gradients by ``torch.autograd.grad``); then ``zero_grad``, the
cross-entropy of the adversarial batch, ``backward`` and one
``torch.optim.SGD`` step (momentum 0.9, learning rate 0.01) — the same
networks (``_torch_common``), inputs, budget and optimizer as
``benchmarks/train_step.py``. ``--compile`` wraps the network in
``torch.compile`` (default inductor backend); ``--compile_mode`` sets its
``mode`` (and implies ``--compile``): ``reduce-overhead`` replays CUDA
graphs on a GPU, PyTorch's answer to a launch-bound step. If compiling
fails the JSON line carries ``"error"`` instead of a time.
``--dtype=bfloat16`` runs the forward passes under ``torch.autocast`` in
bfloat16 (float32 master weights). ``--device`` picks the CPU or a CUDA
GPU (``auto``: the GPU when torch sees one); on a GPU each timed call
waits for its kernels.
``--channels_last`` keeps weights and inputs in channels-last memory order
(cuDNN's preferred layout for convolutions); ``--cudnn_benchmark`` lets
cuDNN time its algorithms on the first calls (the warm-up). ``--peak`` adds
``matmul_gflop_per_s``, torch's rate on one large matrix product in the
compute dtype (``_common.peak_shape``), the reference for "FLOP/s as a
fraction of peak". ``--threads`` sets ``torch.set_num_threads`` (0: the
number of CPU cores, as XLA uses them all). The first call (compilation for
``--compile``) and one more are warm-up; ``--repeats`` calls are timed.
Needs the ``bench`` extra: ``pip install -e '.[bench]'``.
"""

import json

import torch
from absl import flags

from benchmarks import _common
from benchmarks.peers import _torch_common
from experiments import _main

flags.DEFINE_string("model", "mlp", f"Network: {', '.join(_common.TASKS)}.")
flags.DEFINE_integer("batch", 128, "Images per step.")
flags.DEFINE_integer("steps", 10, "PGD steps k of the training attack.")
flags.DEFINE_integer("repeats", 10, "Timed steps after the warm-up.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute.")
flags.DEFINE_bool("compile", False, "Wrap the network in torch.compile.")
flags.DEFINE_enum(
  "compile_mode",
  "default",
  list(_torch_common.COMPILE_MODES),
  "torch.compile's mode; other than default implies --compile.",
)
flags.DEFINE_integer("threads", 0, "torch threads; 0: os.cpu_count().")
flags.DEFINE_enum(
  "device", "auto", list(_torch_common.DEVICES), "auto: CUDA if torch sees it."
)
flags.DEFINE_bool("channels_last", False, "Channels-last weights and inputs.")
flags.DEFINE_bool("peak", False, "Also time one large matmul (dtype, device).")
flags.DEFINE_bool(
  "cudnn_benchmark", False, "torch.backends.cudnn.benchmark: timed algorithms."
)


def main(argv):
  del argv
  f = flags.FLAGS
  _common.check_args(f.model, batch=f.batch, steps=f.steps, repeats=f.repeats)
  _torch_common.setup_threads(f.threads)
  torch.backends.cudnn.benchmark = f.cudnn_benchmark
  compiled = f.compile or f.compile_mode != "default"
  runner = _torch_common.train_runner(
    f.model,
    batch=f.batch,
    steps=f.steps,
    dtype=f.dtype,
    compiled=compiled,
    device=f.device,
    channels_last=f.channels_last,
    compile_mode=f.compile_mode,
  )
  record = _torch_common.measure(
    runner,
    compiled=compiled,
    repeats=f.repeats,
    log=_main.log,
    benchmark="train_step",
    model=f.model,
    batch=f.batch,
    steps=f.steps,
    dtype=f.dtype,
  )
  if f.peak:
    device = runner.info["device"]
    _main.log(f"timing a {f.dtype} matmul on the {device}")
    record["matmul_gflop_per_s"] = _torch_common.matmul_gflop_per_s(
      _common.peak_shape(device), dtype=f.dtype, device=device
    )
  print(json.dumps(record), flush=True)


if __name__ == "__main__":
  _main.run(main)
