r"""ResNet-18 on CIFAR-10, PGD adversarial training (Rice et al. 2020).

CIFAR-10 adversarial training as Madry et al. (ICLR 2018) and Rice et
al. (ICML 2020) run it: l_inf eps 8/255, PGD-10 with step 2/255, SGD
momentum 0.9, lr 0.1, weight decay 5e-4, 200 epochs with step decay, on
ResNet-18 (He et al. 2016; Rice et al. 2020 use its pre-activation
form, awt's is post-activation).

Needs the TFDS CIFAR-10 files (no download at run time): on a machine with
internet ``tfds build cifar10 --data_dir=DIR``, then

  python -m experiments.train \
    --config=experiments/configs/cifar10_resnet18.py \
    --config.data.data_dir=DIR --workdir=/tmp/awt/cifar10_resnet18

(``experiments.find_ticket`` takes the same config with
``--config.pruning.method=awt --config.pruning.sparsity=0.9``.) Meant for
accelerators: every PGD-10 training step costs 11 forward+backward passes.

Variants (``--config=experiments/configs/cifar10_resnet18.py:VARIANT``):
  natural  the same model trained without adversarial examples.
  smoke    two tiny epochs with a 2-step attack, to check a setup quickly.
"""

import ml_collections

from experiments.configs import _paper


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; ``variant`` is None, "natural" or "smoke"."""
  return _paper.cifar10(
    variant,
    name="resnet18",  # He et al. 2016 (post-activation blocks).
    width=64,  # the standard first-stage width (He et al. 2016).
  )
