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


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; ``variant`` is None, "natural" or "smoke"."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Madry et al. 2018 (MNIST): batch 50 for 100k steps (~83 epochs); 64
  # divides evenly over 1, 2, 4 or 8 devices.
  c.batch_size = 64
  c.num_epochs = 84  # 100k steps x 50 / 60k images (Madry et al. 2018).
  c.log_every_steps = 100
  c.checkpoint_every_epochs = 1
  c.checkpoint_every_steps = 0  # 0: only at epoch ends (and the end).

  c.data = ml_collections.ConfigDict()
  c.data.name = "mnist"  # LeCun et al. 1998; TFDS, prepared offline.
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"  # LeNet-300-100 (LeCun et al. 1998).
  c.model.widths = (300, 100)  # LeCun et al. 1998; Han et al. 2015.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"  # Madry et al. 2018 (MNIST): Adam, lr 1e-4.
  c.optimizer.learning_rate = 1e-4
  c.optimizer.momentum = 0.9  # used by momentum/nesterov only.
  c.optimizer.weight_decay = 0.0  # Madry et al. 2018: none on MNIST.
  c.optimizer.schedule = "constant"  # Madry et al. 2018: constant rate.
  c.optimizer.warmup_steps = 0

  c.adversarial = ml_collections.ConfigDict()
  c.adversarial.method = "pgd_at"  # Madry et al. 2018.
  c.adversarial.norm = "linf"
  c.adversarial.eps = 0.3  # Madry et al. 2018, MNIST.
  c.adversarial.step_size = 0.01  # Madry et al. 2018, MNIST.
  c.adversarial.steps = 40  # Madry et al. 2018, MNIST (PGD-40 training).
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
  # Madry et al. 2018 (MNIST) evaluate PGD-40 and PGD-100; awt's pgd<k> uses
  # step 2.5 * eps / k (their step 0.01 for both) and one random start.
  c.eval.attacks = ("pgd40", "pgd100")
  c.eval.eps = 0.3  # Madry et al. 2018, MNIST.
  c.eval.norm = "linf"
  c.eval.batch_size = 1000

  if variant == "natural":
    c.adversarial.method = "none"
  elif variant == "smoke":
    c.num_epochs = 2
    c.log_every_steps = 10
    c.adversarial.steps = 3
    c.adversarial.step_size = 0.1  # 3 steps must be able to reach eps.
    c.eval.attacks = ("fgsm", "pgd5")
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r}; known: natural, smoke")
  return c
