r"""LeNet-5 on MNIST, PGD adversarial training (Madry et al. 2018).

The MNIST setting of Madry et al. (ICLR 2018) on LeNet-5 (LeCun et al.
1998), the convolutional net Guo et al. (NeurIPS 2018) prune: l_inf eps
0.3, PGD-40 (step 0.01) training, PGD-40/100 evaluation.

Needs the TFDS MNIST files (no download at run time): on a machine with
internet ``tfds build mnist --data_dir=DIR``, then

  python -m experiments.train \
    --config=experiments/configs/mnist_lenet5.py \
    --config.data.data_dir=DIR --workdir=/tmp/awt/mnist_lenet5

(``experiments.find_ticket`` takes the same config with
``--config.pruning.method=awt --config.pruning.sparsity=0.9``.)

Variants (``--config=experiments/configs/mnist_lenet5.py:VARIANT``):
  natural  the same model trained without adversarial examples.
  smoke    two tiny epochs with a 3-step attack, to check a setup quickly.
"""

import ml_collections

from experiments.configs import _paper


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; ``variant`` is None, "natural" or "smoke"."""
  # LeCun et al. 1998 (Guo et al. 2018, Sec. 5).
  return _paper.mnist(variant, name="lenet5")
