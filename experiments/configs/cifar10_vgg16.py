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


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; ``variant`` is None, "natural" or "smoke"."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 128  # Madry et al. 2018; Rice et al. 2020 (CIFAR-10).
  # Rice et al. 2020: 200 epochs with the rate cut x0.1 at epochs 100 and
  # 150 (their robust accuracy peaks just after the first cut: robust
  # overfitting; metrics.jsonl keeps the per-epoch curve).
  c.num_epochs = 200
  c.log_every_steps = 100
  c.checkpoint_every_epochs = 1
  c.checkpoint_every_steps = 0  # 0: only at epoch ends (and the end).

  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar10"  # Krizhevsky 2009; TFDS, prepared offline.
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)

  c.model = ml_collections.ConfigDict()
  c.model.name = "vgg16"  # Simonyan & Zisserman 2015, BatchNorm variant.
  c.model.width_multiplier = 1.0  # the standard 64-512 channels.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "momentum"  # SGD, momentum 0.9 (Rice et al. 2020).
  c.optimizer.learning_rate = 0.1  # Madry et al. 2018; Rice et al. 2020.
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4  # Rice et al. 2020 (Madry et al.: 2e-4).
  # x0.1 at 50% and 75% of training = epochs 100 and 150 of 200, Rice et
  # al.'s piecewise schedule ("cosine" is the common alternative).
  c.optimizer.schedule = "step"
  c.optimizer.warmup_steps = 0

  c.adversarial = ml_collections.ConfigDict()
  c.adversarial.method = "pgd_at"  # Madry et al. 2018.
  c.adversarial.norm = "linf"
  c.adversarial.eps = 8 / 255  # Madry et al. 2018, CIFAR-10.
  c.adversarial.step_size = 2 / 255  # Madry et al. 2018; Rice et al. 2020.
  c.adversarial.steps = 10  # PGD-10 training (Rice et al. 2020).
  c.adversarial.beta = 6.0  # TRADES only (Zhang et al. 2019).

  c.pruning = ml_collections.ConfigDict()
  c.pruning.method = "dense"  # any registry name with find_ticket.
  c.pruning.sparsity = 0.0  # fraction of prunable weights removed.
  c.pruning.scope = "global"
  c.pruning.keep_first = False
  c.pruning.keep_last = False
  # Sanity check applied to the found ticket (Frankle et al. ICLR 2021):
  # none | shuffle | reinit | invert | random_same_density.
  c.pruning.ablation = "none"

  c.eval = ml_collections.ConfigDict()
  # PGD-20 (Rice et al. 2020's test attack) and AutoAttack's white-box
  # attacks, APGD-CE and APGD-T (Croce & Hein 2020); "autoattack" adds
  # Square-5000 for the full standard ensemble.
  c.eval.attacks = ("pgd20", "apgd-ce", "apgd-t")
  c.eval.eps = 8 / 255
  c.eval.norm = "linf"
  c.eval.batch_size = 500

  if variant == "natural":
    c.adversarial.method = "none"
  elif variant == "smoke":
    c.num_epochs = 2
    c.log_every_steps = 10
    c.adversarial.steps = 2
    c.adversarial.step_size = 4 / 255  # 2 steps must be able to reach eps.
    c.eval.attacks = ("fgsm", "pgd5")
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r}; known: natural, smoke")
  return c
