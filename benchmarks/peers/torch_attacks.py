r"""PyTorch PGD-k evaluation throughput: the peer of awt's PGD-40 evaluation.

  python -m benchmarks.peers.torch_attacks [--model=mlp] [--batch=128] \
    [--steps=40] [--repeats=5] [--compile] [--threads=0]

awt's evaluation attack ``pgd40`` (``awt.evaluation.parse_attack``: l_inf
PGD, 40 sign steps of ``2.5 eps / 40`` from a uniform random start, per
example the first iterate that fools the model, else the one of highest
loss) written in PyTorch (``_torch_common.pgd_linf(select="best")``): the
network in ``eval()`` mode, input gradients by ``torch.autograd.grad`` (as
torchattacks computes them), on random inputs labelled with the clean
predictions, eps 0.3 (MNIST-shaped) or 8/255 (CIFAR-shaped). ``--compile``
wraps the network in ``torch.compile`` (a failure is reported as
``"error"``). Two warm-up calls, then ``--repeats`` timed calls; one JSON
line. Its JAX counterpart is ``benchmarks/attacks.py`` (``--attacks=pgd40``)
and ``benchmarks/compare.py``.
"""

import json

from absl import flags

from benchmarks import _common
from benchmarks.peers import _torch_common
from experiments import _main

flags.DEFINE_string("model", "mlp", f"Network: {', '.join(_common.TASKS)}.")
flags.DEFINE_integer("batch", 128, "Images per attack call.")
flags.DEFINE_integer("steps", 40, "PGD steps.")
flags.DEFINE_integer("repeats", 5, "Timed calls after the warm-up.")
flags.DEFINE_bool("compile", False, "Wrap the network in torch.compile.")
flags.DEFINE_integer("threads", 0, "torch threads; 0: os.cpu_count().")


def main(argv):
  del argv
  f = flags.FLAGS
  _common.check_args(f.model, batch=f.batch, steps=f.steps, repeats=f.repeats)
  _torch_common.setup_threads(f.threads)
  runner = _torch_common.pgd_eval_runner(
    f.model, batch=f.batch, steps=f.steps, compiled=f.compile
  )
  record = _torch_common.measure(
    runner,
    compiled=f.compile,
    repeats=f.repeats,
    log=_main.log,
    benchmark="pgd_eval",
    model=f.model,
    batch=f.batch,
    steps=f.steps,
    dtype="float32",
  )
  print(json.dumps(record), flush=True)


if __name__ == "__main__":
  _main.run(main)
