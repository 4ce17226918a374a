"""What a training run's per-epoch history says about how it trained.

A history is ``results.json``'s ``history``: one dict per epoch with
``epoch`` (0 at initialization), ``train_loss`` (the epoch's mean
training loss, absent at epoch 0), ``clean_accuracy`` and, for a member
with a reference, the function distances. These summaries are what the
studies tabulate for every arm and seed and what training reports as it
goes: whether the loss has flattened (``loss_drop``), and whether a run
ever left the loss of the constant classifier, ``ln K`` (``stalled``,
``epochs_at_chance``). A stalled run's logits do not depend on its
input, so its accuracy is chance and a mean over seeds that mixes it
with trained runs describes neither. On mnist5k, 10 of the 30 LeNet-5
tickets that AWT's raw-ranking search found at 95% sparsity stayed at
``ln 10`` for all 30 epochs under the 5-epoch budget ramp
(docs/results/awt.md, "What a stall is" and the sections after it).
"""

import math


def final(history: list[dict], key: str):
  """The last epoch's ``key`` that is not None (None if there is none)."""
  vals = [r[key] for r in history if r.get(key) is not None]
  return vals[-1] if vals else None


def loss_drop(history: list[dict], at: float) -> float | None:
  """Relative fall of the epoch training loss after fraction ``at``.

  ``(L(at E) - L(E)) / L(at E)`` from the per-epoch ``train_loss``: about 0
  when the loss curve has flattened by ``at E``, large while it still falls
  (the "trained long enough" check of every arm).
  """
  losses = {r["epoch"]: r["train_loss"] for r in history if "train_loss" in r}
  if len(losses) < 2:
    return None
  last = max(losses)
  mid = min(losses, key=lambda e: abs(e - at * last))
  return float((losses[mid] - losses[last]) / losses[mid])


# How close to the constant classifier's loss a run's last epoch must be
# to count as stalled: stalled LeNet-5 tickets end at 2.29-2.30 against
# ln 10 = 2.303, the ones that train at 1.31 or below (docs/results/awt.md,
# "What a stall is").
STALL_MARGIN = 0.01


def chance_loss(num_classes: int) -> float:
  """Cross-entropy of the uniform prediction, ``ln K``: what a network whose
  output does not depend on its input reaches at best on balanced classes
  (the bundled ones are: the label entropy of digits' training split is
  2.30248 nats, mnist5k's stratified one exactly ln 10 = 2.30259; a TFDS
  dataset with skewed classes would stall slightly below ``ln K``)."""
  return math.log(num_classes)


# Objectives whose training loss adds a term to the cross-entropy: TRADES'
# is CE + beta KL (Zhang et al. 2019, Eq. 5), at or above ln K while the
# network already learns, so ln K does not mark a constant classifier.
NOT_CROSS_ENTROPY = ("trades",)


def objective_chance(objective: str, num_classes: int) -> float | None:
  """``chance_loss(num_classes)`` where ``adversarial.method``'s training
  loss is the cross-entropy (``none``, ``pgd_at``, ``fast_at``); None
  otherwise, which turns ``stalled`` and ``epochs_at_chance`` off."""
  if objective in NOT_CROSS_ENTROPY:
    return None
  return chance_loss(num_classes)


def stalled(history: list[dict], chance: float | None) -> float | None:
  """1.0 when training never left the constant classifier, else 0.0.

  A stall is a run whose last-epoch training loss is still within
  ``STALL_MARGIN`` of ``chance`` (``chance_loss``): its logits barely depend
  on the input, because one layer's ReLUs went silent and pass no gradient
  back. Such runs make a mean over seeds bimodal (35 ± 41%: three seeds at
  chance, two trained), so the table counts them. A float, so that
  ``_sweep.aggregate``'s mean over seeds is the stalled fraction; None
  without a training loss or a ``chance``.
  """
  last = final(history, "train_loss")
  if chance is None or last is None:
    return None
  return float(last >= (1.0 - STALL_MARGIN) * chance)


# A run has left the constant classifier once an epoch's training loss is
# below this fraction of ln K (2.19 nats for 10 classes): every LeNet-5
# ticket that went on to train crossed it within one or two epochs of
# leaving 2.29-2.31, the stalled ones never reached it (docs/results/awt.md,
# "What a stall is").
ESCAPE_FRACTION = 0.95


def epochs_at_chance(history: list[dict], chance: float | None) -> float | None:
  """How many epochs training spent at the constant classifier's loss.

  The number of leading epochs whose training loss is at or above
  ``ESCAPE_FRACTION * chance``: 0 when the first epoch already falls below
  it, the number of epochs when the run never leaves (a stall, or a run
  that ends between the two thresholds). Tickets that start as
  anti-classifiers spend their first epochs there while the PGD budget
  ramps up (``adversarial.eps_warmup_epochs``); how long tells arms apart
  that all end up training (e.g. 1-3 epochs for permuted searched values
  against 3-7 for the original initialization). A float, for
  ``_sweep.aggregate``; None without a training loss or a ``chance``.
  """
  losses = [r["train_loss"] for r in history if r.get("train_loss") is not None]
  if chance is None or not losses:
    return None
  below = [loss < ESCAPE_FRACTION * chance for loss in losses]
  return float(below.index(True) if any(below) else len(losses))


def still_at_chance(history: list[dict], chance: float | None) -> bool:
  """True while every epoch so far trained at the constant classifier's loss.

  ``epochs_at_chance`` equal to the number of epochs with a training loss:
  the run has not yet fallen below ``ESCAPE_FRACTION * chance``. False
  before the first epoch and without a ``chance``.
  """
  n = sum(r.get("train_loss") is not None for r in history)
  return chance is not None and n > 0 and epochs_at_chance(history, chance) == n
