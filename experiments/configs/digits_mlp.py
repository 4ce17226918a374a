r"""LeNet-300-100 on the bundled 8x8 digits, PGD adversarial training.

The default quick config: no download, about a minute on 2 CPU cores.

  python -m experiments.train \
    --config=experiments/configs/digits_mlp.py --workdir=/tmp/awt/digits_mlp

Variants (``--config=experiments/configs/digits_mlp.py:VARIANT``):
  natural  the same model trained without adversarial examples.
  smoke    two tiny epochs, for tests and CI.
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; ``variant`` is None, "natural" or "smoke"."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 128  # global batch, split over local devices.
  c.num_epochs = 60  # 11 steps/epoch on 1,437 training digits -> 660 steps.
  c.log_every_steps = 50
  c.checkpoint_every_epochs = 10
  c.checkpoint_every_steps = 0  # 0: only at epoch ends (and the end).

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"  # scikit-learn's 1,797 real 8x8 digits; bundled.
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"  # LeNet-300-100 (LeCun et al. 1998).
  c.model.dtype = "float32"  # compute; "bfloat16": mixed precision.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"  # Adam: fast, robust convergence on a tiny set.
  c.optimizer.learning_rate = 1e-3
  c.optimizer.momentum = 0.9  # used by momentum/nesterov only.
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 0

  c.adversarial = ml_collections.ConfigDict()
  c.adversarial.method = "pgd_at"  # Madry et al. 2018.
  c.adversarial.norm = "linf"
  # eps 0.1 on digits: the 8x8 images have 17 grey levels, so 0.1 is about
  # 1.6 levels per pixel; MNIST's 0.3 would erase most strokes at this size.
  c.adversarial.eps = 0.1
  c.adversarial.step_size = 0.025  # 2.5 * eps / steps (Madry et al. 2018).
  c.adversarial.steps = 10
  c.adversarial.beta = 6.0  # TRADES only (Zhang et al. 2019).

  c.pruning = ml_collections.ConfigDict()
  c.pruning.method = "dense"
  c.pruning.sparsity = 0.0  # fraction of prunable weights removed.
  c.pruning.scope = "global"
  c.pruning.keep_first = False
  c.pruning.keep_last = False
  # The AWT/NTT search (awt/pruning/awt.py; Shi et al. 2022, Liu & Zenke
  # 2020): Adam steps on the student, a magnitude mask reset every
  # awt_mask_every steps, awt_batch points per step.
  c.pruning.awt_steps = 100
  c.pruning.awt_mask_every = 10
  c.pruning.awt_batch = 32
  c.pruning.awt_lr = 1e-3
  c.pruning.awt_lambda_ntk = 1.0  # weight of the NTK term (lambda_K).
  c.pruning.awt_lambda_l2 = 1e-5
  c.pruning.awt_init = "magnitude"  # magnitude | snip.
  c.pruning.awt_attack_against = "teacher"  # teacher | student.
  # Search checkpoints (WORKDIR/search) every this many steps; 0: at mask
  # resets (awt_mask_every).
  c.pruning.awt_checkpoint_every = 0
  # Sanity check applied to the found ticket (Frankle et al. ICLR 2021):
  # none | shuffle | reinit | invert | random_same_density.
  c.pruning.ablation = "none"

  c.eval = ml_collections.ConfigDict()
  c.eval.attacks = ("pgd40",)  # Madry et al. 2018's MNIST evaluation attack.
  c.eval.eps = 0.1
  c.eval.norm = "linf"
  c.eval.batch_size = 500

  if variant == "natural":
    c.adversarial.method = "none"
  elif variant == "smoke":
    c.num_epochs = 2
    c.batch_size = 64
    c.log_every_steps = 5
    c.checkpoint_every_epochs = 1
    c.adversarial.steps = 3
    c.adversarial.step_size = 0.05
    c.eval.attacks = ("fgsm", "pgd5")
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r}; known: natural, smoke")
  return c
