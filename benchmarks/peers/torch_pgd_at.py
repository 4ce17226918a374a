r"""PyTorch PGD-k adversarial-training step: the peer of train_step.py.

  python -m benchmarks.peers.torch_pgd_at [--model=mlp] [--batch=128] \
    [--steps=10] [--repeats=10] [--dtype=float32] [--compile] [--threads=0]

The step a researcher writes in PyTorch (Madry et al.'s and HYDRA's PGD-AT
loop): ``model.train()``; a k-step l_inf PGD from a uniform random start
(sign steps of ``2.5 eps / k``, projection to the eps-ball, clamp to [0, 1],
input gradients by ``torch.autograd.grad``); then ``zero_grad``, the
cross-entropy of the adversarial batch, ``backward`` and one
``torch.optim.SGD`` step (momentum 0.9, learning rate 0.01) — the same
networks (``_torch_common``), inputs, budget and optimizer as
``benchmarks/train_step.py``. ``--compile`` wraps the network in
``torch.compile`` (default inductor backend); if compiling fails the JSON
line carries ``"error"`` instead of a time. ``--dtype=bfloat16`` runs the
forward passes under ``torch.autocast("cpu", torch.bfloat16)`` (float32
master weights). ``--threads`` sets ``torch.set_num_threads`` (0: the number
of CPU cores, as XLA uses them all). The first call (compilation for
``--compile``) and one more are warm-up; ``--repeats`` calls are timed.
Needs the ``bench`` extra: ``pip install -e '.[bench]'``.
"""

import json

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
flags.DEFINE_integer("threads", 0, "torch threads; 0: os.cpu_count().")


def main(argv):
  del argv
  f = flags.FLAGS
  _common.check_args(f.model, batch=f.batch, steps=f.steps, repeats=f.repeats)
  _torch_common.setup_threads(f.threads)
  runner = _torch_common.train_runner(
    f.model, batch=f.batch, steps=f.steps, dtype=f.dtype, compiled=f.compile
  )
  record = _torch_common.measure(
    runner,
    compiled=f.compile,
    repeats=f.repeats,
    log=_main.log,
    benchmark="train_step",
    model=f.model,
    batch=f.batch,
    steps=f.steps,
    dtype=f.dtype,
  )
  print(json.dumps(record), flush=True)


if __name__ == "__main__":
  _main.run(main)
