r"""VGG-16 on CIFAR-10, PGD adversarial training (Madry et al. 2018).

CIFAR-10 adversarial training as Madry et al. (ICLR 2018) and Rice et
al. (ICML 2020) run it: l_inf eps 8/255, PGD-10 with step 2/255, SGD
momentum 0.9, lr 0.1, weight decay 5e-4, 200 epochs with step decay. VGG-16
(Simonyan & Zisserman 2015, with BatchNorm) is a pruning benchmark of the
lottery-ticket and HYDRA papers.

Needs the TFDS CIFAR-10 files (no download at run time): on a machine with
internet ``tfds build cifar10 --data_dir=DIR``, then

  python -m experiments.train \
    --config=experiments/configs/cifar10_vgg16.py \
    --config.data.data_dir=DIR --workdir=/tmp/awt/cifar10_vgg16

(``experiments.find_ticket`` takes the same config with
``--config.pruning.method=awt --config.pruning.sparsity=0.9``.) Meant for
accelerators: every PGD-10 training step costs 11 forward+backward passes.

Variants (``--config=experiments/configs/cifar10_vgg16.py:VARIANT``):
  natural  the same model trained without adversarial examples.
  smoke    two tiny epochs with a 2-step attack, to check a setup quickly.
"""

import ml_collections

from experiments.configs import _paper


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; ``variant`` is None, "natural" or "smoke"."""
  return _paper.cifar10(
    variant,
    name="vgg16",  # Simonyan & Zisserman 2015, BatchNorm variant.
    width_multiplier=1.0,  # the standard 64-512 channels.
  )
