"""What the MNIST and CIFAR-10 paper configs share: the threat models, the
optimizers and the evaluation of Madry et al. (ICLR 2018) and Rice et al.
(ICML 2020); each ``mnist_*.py`` / ``cifar10_*.py`` file names its model.
"""

import ml_collections

from awt import pruning


def _common(batch_size: int, num_epochs: int, dataset: str, model: dict):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = batch_size
  c.num_epochs = num_epochs
  c.log_every_steps = 100
  c.checkpoint_every_epochs = 1
  c.checkpoint_every_steps = 0  # 0: only at epoch ends (and the end).
  # Members of one program (seeds, tickets): "vmap", "loop" (one after
  # another) or "auto" (loop for conv nets on the CPU; awt.experiment).
  c.member_map = "auto"

  c.data = ml_collections.ConfigDict()
  c.data.name = dataset  # TFDS, prepared offline.
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
  # Training examples held out as the evaluation split (0: the test set);
  # for choosing hyperparameters without looking at the test set.
  c.data.validation = 0

  # Compute dtype ("bfloat16": mixed precision, float32 master weights).
  c.model = ml_collections.ConfigDict({"dtype": "float32", **model})

  c.adversarial = ml_collections.ConfigDict()
  c.adversarial.method = "pgd_at"  # Madry et al. 2018.
  c.adversarial.norm = "linf"
  c.adversarial.beta = 6.0  # TRADES only (Zhang et al. 2019).

  # Every registered method's options at their declared defaults
  # (awt.pruning.options()); pruning.method: any registry name with
  # find_ticket.
  c.pruning = pruning.defaults(method="dense")

  c.eval = ml_collections.ConfigDict()
  c.eval.norm = "linf"
  return c


def _variant(c, variant: str | None, smoke_steps: int, smoke_step_size: float):
  """Applies ``natural`` or ``smoke``; raises on an unknown variant."""
  if variant == "natural":
    c.adversarial.method = "none"
  elif variant == "smoke":
    c.num_epochs = 2
    c.log_every_steps = 10
    c.adversarial.steps = smoke_steps
    # The few smoke steps must be able to reach eps.
    c.adversarial.step_size = smoke_step_size
    c.eval.attacks = ("fgsm", "pgd5")
  elif variant is not None:
    raise ValueError(f"unknown variant {variant!r}; known: natural, smoke")
  return c


def mnist(variant: str | None, **model) -> ml_collections.ConfigDict:
  """Madry et al. 2018's MNIST setting for ``model`` (``c.model`` keys)."""
  # Madry et al. 2018 (MNIST): batch 50 for 100k steps (~83 epochs); 64
  # divides evenly over 1, 2, 4 or 8 devices; 84 epochs = 100k x 50 / 60k.
  c = _common(64, 84, "mnist", model)  # LeCun et al. 1998.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"  # Madry et al. 2018 (MNIST): Adam, lr 1e-4.
  c.optimizer.learning_rate = 1e-4
  c.optimizer.momentum = 0.9  # used by momentum/nesterov only.
  c.optimizer.weight_decay = 0.0  # Madry et al. 2018: none on MNIST.
  c.optimizer.schedule = "constant"  # Madry et al. 2018: constant rate.
  c.optimizer.warmup_steps = 0

  c.adversarial.eps = 0.3  # Madry et al. 2018, MNIST.
  c.adversarial.step_size = 0.01  # Madry et al. 2018, MNIST.
  c.adversarial.steps = 40  # Madry et al. 2018, MNIST (PGD-40 training).

  # Madry et al. 2018 (MNIST) evaluate PGD-40 and PGD-100; awt's pgd<k> uses
  # step 2.5 * eps / k (their step 0.01 for both) and one random start.
  c.eval.attacks = ("pgd40", "pgd100")
  c.eval.eps = 0.3  # Madry et al. 2018, MNIST.
  c.eval.batch_size = 1000
  return _variant(c, variant, smoke_steps=3, smoke_step_size=0.1)


def cifar10(variant: str | None, **model) -> ml_collections.ConfigDict:
  """Madry et al. / Rice et al.'s CIFAR-10 setting for ``model``."""
  # Batch 128: Madry et al. 2018; Rice et al. 2020. Rice et al. 2020: 200
  # epochs with the rate cut x0.1 at epochs 100 and 150 (their robust
  # accuracy peaks just after the first cut: robust overfitting;
  # metrics.jsonl keeps the per-epoch curve).
  c = _common(128, 200, "cifar10", model)  # Krizhevsky 2009.

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "momentum"  # SGD, momentum 0.9 (Rice et al. 2020).
  c.optimizer.learning_rate = 0.1  # Madry et al. 2018; Rice et al. 2020.
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4  # Rice et al. 2020 (Madry et al.: 2e-4).
  # x0.1 at 50% and 75% of training = epochs 100 and 150 of 200, Rice et
  # al.'s piecewise schedule ("cosine" is the common alternative).
  c.optimizer.schedule = "step"
  c.optimizer.warmup_steps = 0

  c.adversarial.eps = 8 / 255  # Madry et al. 2018, CIFAR-10.
  c.adversarial.step_size = 2 / 255  # Madry et al. 2018; Rice et al. 2020.
  c.adversarial.steps = 10  # PGD-10 training (Rice et al. 2020).

  # PGD-20 (Rice et al. 2020's test attack) and AutoAttack's white-box
  # attacks, APGD-CE and APGD-T (Croce & Hein 2020); "autoattack" adds
  # Square-5000 for the full standard ensemble.
  c.eval.attacks = ("pgd20", "apgd-ce", "apgd-t")
  c.eval.eps = 8 / 255
  c.eval.batch_size = 500
  return _variant(c, variant, smoke_steps=2, smoke_step_size=4 / 255)
