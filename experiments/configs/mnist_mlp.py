r"""LeNet-300-100 on MNIST, PGD adversarial training (Madry et al. 2018).

The MNIST setting of Madry et al. (ICLR 2018) on the fully connected
LeNet-300-100 that Guo et al. (NeurIPS 2018) and the lottery-ticket papers
prune: l_inf eps 0.3, PGD-40 (step 0.01) training, PGD-40/100 evaluation.

Needs the TFDS MNIST files (no download at run time): on a machine with
internet ``tfds build mnist --data_dir=DIR``, then

  python -m experiments.train \
    --config=experiments/configs/mnist_mlp.py \
    --config.data.data_dir=DIR --workdir=/tmp/awt/mnist_mlp

(``experiments.find_ticket`` takes the same config with
``--config.pruning.method=awt --config.pruning.sparsity=0.9``.)

Variants (``--config=experiments/configs/mnist_mlp.py:VARIANT``):
  natural  the same model trained without adversarial examples.
  smoke    two tiny epochs with a 3-step attack, to check a setup quickly.
"""

import ml_collections

from experiments.configs import _paper


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; ``variant`` is None, "natural" or "smoke"."""
  return _paper.mnist(
    variant,
    name="mlp",  # LeNet-300-100 (LeCun et al. 1998).
    widths=(300, 100),  # LeCun et al. 1998; Han et al. 2015.
  )
