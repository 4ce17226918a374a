r"""Sparsity vs robustness sweep (Guo et al. 2018) on the bundled 8x8 digits.

For LeNet-300-100 and the linear classifier: train dense (natural training,
as Guo et al.), prune by magnitude + retrain and by dynamic network surgery
at 0-99% sparsity, 3 seeds, and measure clean, FGSM and BIM accuracy and
DeepFool / C&W rho_2. Sized to finish end to end in about 10 minutes on 2
CPU cores.

  python -m experiments.sparsity_robustness \
    --config=experiments/configs/sparsity_robustness.py \
    --workdir=/tmp/awt/sparsity_robustness

On MNIST (after ``tfds build mnist --data_dir=DIR``): add
``--config.data.name=mnist --config.data.data_dir=DIR
'--config.sweep.linf_eps=(0.1,0.2,0.3)'`` (and more epochs).

Variants (``--config=experiments/configs/sparsity_robustness.py:VARIANT``):
  smoke  2 sparsities, 2 seeds, 1 epoch, tiny attacks: for tests and CI.
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; ``variant`` is None or "smoke"."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # unused by the sweep: every cell runs sweep.seeds.
  c.batch_size = 128  # global batch, split over local devices.
  # Dense training, 20 epochs x 11 steps (measured: LeNet-300-100 at 96-97%
  # clean by epoch 10; the linear model at 96-97% with its learning rate
  # below); fewer than digits_mlp's 60 so the sweep fits in ~10 minutes.
  c.num_epochs = 20
  c.log_every_steps = 50
  c.checkpoint_every_epochs = 10
  c.checkpoint_every_steps = 0  # 0: only at epoch ends (and the end).

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"  # scikit-learn's 1,797 real 8x8 digits; bundled.
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"  # replaced by each of sweep.models.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"  # Adam: fast, robust convergence on a tiny set.
  c.optimizer.learning_rate = 1e-3  # also the retraining rate (cosine again).
  c.optimizer.momentum = 0.9  # used by momentum/nesterov only.
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 0

  c.adversarial = ml_collections.ConfigDict()
  c.adversarial.method = "none"  # Guo et al. 2018 train naturally.
  # Only read with --config.adversarial.method=pgd_at (Madry et al. 2018):
  c.adversarial.norm = "linf"
  c.adversarial.eps = 0.1
  c.adversarial.step_size = 0.025  # 2.5 * eps / steps.
  c.adversarial.steps = 10
  c.adversarial.beta = 6.0  # TRADES only (Zhang et al. 2019).

  c.pruning = ml_collections.ConfigDict()
  c.pruning.method = "dense"  # set per cell: dense, magnitude, dns.
  c.pruning.sparsity = 0.0  # set per cell from sweep.sparsities.
  # Per-layer thresholds: Han et al. 2015 prune each layer by its own
  # threshold, and DNS (Guo, Yao & Chen 2016) is layerwise; a global ranking
  # empties LeNet-300-100's small last layer at high sparsity.
  c.pruning.scope = "layerwise"
  c.pruning.keep_first = False
  c.pruning.keep_last = False
  # DNS surgery epochs, from the trained dense net (Guo et al. 2016 start
  # from a trained reference model); then fine-tuned sweep.retrain_epochs.
  c.pruning.dns_epochs = 10
  c.pruning.dns_interval = 1  # mask update every step ...
  c.pruning.dns_gamma = 1e-4  # ... with probability (1 + gamma t)^-power
  c.pruning.dns_power = 1.0  # (Guo et al. 2016, Sec. 3.3).
  c.pruning.ablation = "none"  # schema field; not used by this sweep.

  c.eval = ml_collections.ConfigDict()
  c.eval.attacks = ()  # the sweep's attacks are under sweep.
  c.eval.eps = 0.1
  c.eval.norm = "linf"
  c.eval.batch_size = 500  # the whole 360-digit test set in one call.

  c.sweep = ml_collections.ConfigDict()
  # The DNN and the linear classifier, whose robustness Guo et al. show
  # behaves differently with sparsity (their Sec. 3 and Fig. 1).
  c.sweep.models = ("mlp", "linear")
  # Magnitude prune + retrain (Han et al. 2015) and DNS (Guo et al. 2016):
  # the two pruning methods of Guo et al. 2018, Sec. 4.
  c.sweep.methods = ("magnitude_retrain", "dns")
  # Guo et al. 2018's range, up to 99% (their Figs. 2-4); 0 is the dense net.
  c.sweep.sparsities = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
  c.sweep.seeds = (0, 1, 2)  # error bars: std over these seeds.
  # Per-model Adam learning rate (others: optimizer.learning_rate). The
  # linear model (logistic regression) at 1e-3 stops at 83-86% clean after
  # 30 epochs (train loss 0.8-0.9); at 3e-2 it reaches 96-97% in 20.
  c.sweep.learning_rates = ml_collections.ConfigDict({"linear": 3e-2})
  # Fine-tuning with the mask fixed (Han et al.'s retraining step), with
  # a fresh cosine schedule from the same learning rate.
  c.sweep.retrain_epochs = 10
  # l_inf budgets on the 8x8 digits (17 grey levels: 0.05 is < 1 level);
  # MNIST's 0.1-0.3 would erase strokes at this resolution.
  c.sweep.linf_eps = (0.02, 0.05, 0.1)
  c.sweep.bim = "bim10"  # Kurakin et al. 2017: PGD without random start.
  c.sweep.deepfool = "deepfool"  # l_2, 50 iterations, overshoot 0.02.
  # C&W-l2 (Carlini & Wagner 2017) with 5 binary steps x 100 Adam steps,
  # not the reference 9 x 1000: the 96 networks must fit in minutes.
  c.sweep.cw = "cw_l2-5x100"

  if variant == "smoke":
    c.num_epochs = 1
    c.batch_size = 64
    c.log_every_steps = 5
    c.checkpoint_every_epochs = 1
    c.pruning.dns_epochs = 1
    c.sweep.sparsities = (0.0, 0.9)
    c.sweep.seeds = (0, 1)
    c.sweep.retrain_epochs = 1
    c.sweep.linf_eps = (0.05,)
    c.sweep.bim = "bim2"
    c.sweep.deepfool = "deepfool3"
    c.sweep.cw = "cw_l2-4x20"  # c reaches 1: some points are fooled.
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r}; known: smoke")
  return c
