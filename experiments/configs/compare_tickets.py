r"""Shi et al. (AISTATS 2022) comparison on the bundled digits: the main job.

Every ticket method at each sparsity, 3 seeds, trained with PGD-AT from
scratch next to the dense net (one vectorized program per sparsity):

  python -m experiments.compare_tickets \
    --config=experiments/configs/compare_tickets.py \
    --workdir=/tmp/awt/compare_tickets

Sized to finish in about 10 minutes on 2 CPU cores; ``:full`` is the
complete grid (more sparsities, the ablations of Frankle et al. 2021), and
``:smoke`` a tiny grid for tests.
"""

import ml_collections

from experiments.configs import digits_mlp

METHODS = (
  "awt",
  "ntt",
  "random",
  "magnitude",
  "snip",
  "grasp",
  "synflow",
  "one_shot",
  "imp",
  "hydra",
)


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; ``variant`` is None, "full" or "smoke"."""
  c = digits_mlp.get_config()
  # 30 epochs (330 steps): dense PGD-AT reaches ~its 60-epoch accuracy.
  c.num_epochs = 30
  c.checkpoint_every_epochs = 5
  # Three-stage methods: dense pretraining and each IMP round as long as
  # the final training (their usual setting), 3 IMP rounds to 90%.
  c.pruning.imp_rounds = 3
  # PGD-40 (Madry et al. 2018) and a stronger ensemble: PGD-40, then
  # APGD-CE and APGD-T (Croce & Hein 2020) on what PGD-40 did not break.
  c.eval.attacks = ("pgd40", "pgd40+apgd-ce+apgd-t")

  c.sweep = ml_collections.ConfigDict()
  c.sweep.methods = METHODS  # "dense" is always trained as the reference.
  c.sweep.sparsities = (0.9,)
  c.sweep.seeds = (0, 1, 2)
  c.sweep.ablations = ("none",)
  if variant == "full":
    c.num_epochs = 60
    c.pruning.imp_rounds = 5
    c.sweep.sparsities = (0.5, 0.8, 0.9, 0.95, 0.98)
    c.sweep.ablations = ("none", "shuffle", "reinit")
  elif variant == "smoke":
    c.num_epochs = 1
    c.batch_size = 64
    c.log_every_steps = 5
    c.model.widths = (32, 16)
    c.adversarial.steps = 2
    c.adversarial.step_size = 0.05
    c.pruning.imp_rounds = 2
    c.pruning.awt_steps = 4
    c.pruning.awt_mask_every = 2
    c.pruning.awt_batch = 8
    c.eval.attacks = ("fgsm", "fgsm+pgd5")
    c.sweep.methods = ("awt", "snip", "one_shot")
    c.sweep.seeds = (0, 1)
    c.sweep.ablations = ("none", "shuffle")
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r}; known: full, smoke")
  return c
