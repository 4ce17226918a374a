"""Sanity checks of a robustness evaluation (Carlini et al. 2019).

Each check returns a dict with a ``passed`` flag and the numbers behind it.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np

from awt.attacks import _common

# Slack for comparing accuracies that are ratios of counts.
_FLOAT_SLACK = 1e-9


def check_monotone(
  eps: Sequence[float], accuracy: Sequence[float], *, tolerance: float = 0.01
) -> dict:
  """Sanity check: robust accuracy does not increase with eps.

  A larger ball contains the smaller one, so a working attack cannot do
  worse; an increase means the attack fails to find points it could reach.

  Args:
    eps: ``[E]`` budgets.
    accuracy: ``[E]`` robust accuracies at those budgets.
    tolerance: allowed increase between consecutive budgets (attack noise).

  Returns:
    ``{"passed", "max_increase", "at_eps" (where the largest increase
    ends, None without one), "tolerance", "eps", "robust_accuracy"}``
    (sorted by eps).

  Examples:
    >>> c = check_monotone([0.0, 0.1, 0.2], [0.9, 0.5, 0.6])
    >>> c["passed"], round(c["max_increase"], 6), c["at_eps"]
    (False, 0.1, 0.2)

  References:
    Carlini et al., *On Evaluating Adversarial Robustness*, arXiv:1902.06705,
    2019, Sec. 5.3 ("perform a sweep over eps").
  """
  order = np.argsort(np.asarray(eps, np.float64), kind="stable")
  e = np.asarray(eps, np.float64)[order]
  a = np.asarray(accuracy, np.float64)[order]
  rises = np.diff(a)
  max_increase = float(max(rises.max(), 0.0)) if rises.size else 0.0
  at_eps = float(e[int(np.argmax(rises)) + 1]) if max_increase > 0 else None
  return {
    "passed": bool(max_increase <= tolerance + _FLOAT_SLACK),
    "max_increase": max_increase,
    "at_eps": at_eps,
    "tolerance": tolerance,
    "eps": e.tolist(),
    "robust_accuracy": a.tolist(),
  }


def check_large_eps(
  eps: float, accuracy: float, *, max_accuracy: float = 0.02
) -> dict:
  """Sanity check: at a very large eps the attack brings accuracy near zero.

  With a ball that covers the whole image box any input is reachable, so
  only a constant classifier keeps accuracy; a model that does not drop to
  ~0 masks its gradients (or the attack is broken).

  Args:
    eps: the large budget.
    accuracy: robust accuracy there.
    max_accuracy: the largest accuracy that passes.

  Returns:
    ``{"passed", "eps", "robust_accuracy", "max_accuracy"}``.

  References:
    Carlini et al. 2019, Sec. 5.3 ("unbounded attacks should reach 100%
    success"); Athalye, Carlini & Wagner, ICML 2018, Sec. 3.1.
  """
  return {
    "passed": bool(accuracy <= max_accuracy + _FLOAT_SLACK),
    "eps": float(eps),
    "robust_accuracy": float(accuracy),
    "max_accuracy": max_accuracy,
  }


def check_gradient_masking(
  black_box: Mapping[str, float],
  white_box: Mapping[str, float],
  *,
  margin: float = 0.02,
) -> dict:
  """Sanity check: the black-box attack is not much stronger than white-box.

  Fails when the strongest black-box attack's robust accuracy is more than
  ``margin`` below the strongest white-box attack's: gradients that mislead
  the white-box attacks (masking) while the model is not robust.

  Args:
    black_box: attack name -> robust accuracy (score-based attacks).
    white_box: attack name -> robust accuracy (gradient-based attacks).
    margin: allowed advantage of the black-box attack (accuracy units).

  Returns:
    ``{"passed", "black_box_attack", "black_box_accuracy",
    "best_white_box_attack", "best_white_box_accuracy", "margin"}``.

  Raises:
    ValueError: if either map is empty.

  References:
    Athalye, Carlini & Wagner, *Obfuscated Gradients Give a False Sense of
    Security*, ICML 2018, Sec. 3.1 ("black-box attacks are better than
    white-box"); Carlini et al. 2019, Sec. 5.
  """
  if not black_box or not white_box:
    raise ValueError("check_gradient_masking needs black- and white-box")
  bb = min(black_box, key=black_box.get)
  wb = min(white_box, key=white_box.get)
  return {
    "passed": bool(black_box[bb] >= white_box[wb] - margin - _FLOAT_SLACK),
    "black_box_attack": bb,
    "black_box_accuracy": float(black_box[bb]),
    "best_white_box_attack": wb,
    "best_white_box_accuracy": float(white_box[wb]),
    "margin": margin,
  }


def check_convergence(
  attack: str,
  accuracy: float,
  stronger: str,
  stronger_accuracy: float,
  *,
  margin: float = 0.02,
) -> dict:
  """Sanity check: more steps and restarts do not lower accuracy much more.

  Fails when the stronger attack (``stronger_pgd``: 4x steps, 3x restarts)
  is more than ``margin`` below the configured one: the configured attack
  has not converged and overestimates robustness.

  Args:
    attack: the configured attack's name.
    accuracy: its robust accuracy.
    stronger: the stronger attack's name.
    stronger_accuracy: its robust accuracy.
    margin: allowed drop (accuracy units).

  Returns:
    ``{"passed", "attack", "robust_accuracy", "stronger_attack",
    "stronger_robust_accuracy", "margin"}``.

  References:
    Carlini et al. 2019, Sec. 5.2 ("verify that the attack has converged",
    "increase the number of iterations and random restarts").
  """
  return {
    "passed": bool(stronger_accuracy >= accuracy - margin - _FLOAT_SLACK),
    "attack": attack,
    "robust_accuracy": float(accuracy),
    "stronger_attack": stronger,
    "stronger_robust_accuracy": float(stronger_accuracy),
    "margin": margin,
  }


def large_eps(norm: str, image_shape: Sequence[int]) -> float:
  """A budget whose ball covers the image box ``[0, 1]^d``.

  1 for l_inf; ``sqrt(d)``, the box's diameter, for l_2.
  """
  _common.check_norm(norm)
  return 1.0 if norm == "linf" else float(math.sqrt(np.prod(image_shape)))
