"""Adversarial attacks in pixel space, jittable functions of a logits function.

Every attack has the signature ``attack(logits_fn, x, y, key, **kwargs) ->
x_adv`` with ``logits_fn: [B, H, W, C] -> [B, K]`` pure, ``x`` float32 in
[0, 1], ``y: [B]`` int32 true labels and ``key`` one PRNG key or per-example
keys ``[B, 2]``; targeted attacks take the target classes as ``target=``.
"""

from collections.abc import Callable

from awt.attacks.apgd import apgd
from awt.attacks.cw import cw_l2
from awt.attacks.deepfool import deepfool
from awt.attacks.fgsm import fgsm
from awt.attacks.pgd import pgd
from awt.attacks.square import square

_ATTACKS: dict[str, Callable] = {
  "apgd": apgd,
  "cw_l2": cw_l2,
  "deepfool": deepfool,
  "fgsm": fgsm,
  "pgd": pgd,
  "square": square,
}


def names() -> tuple[str, ...]:
  """The registered attack names, sorted."""
  return tuple(sorted(_ATTACKS))


def get(name: str) -> Callable:
  """The attack function registered under ``name``.

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  if name not in _ATTACKS:
    raise ValueError(f"unknown attack {name!r}; known: {', '.join(names())}")
  return _ATTACKS[name]


__all__ = [
  "apgd",
  "cw_l2",
  "deepfool",
  "fgsm",
  "get",
  "names",
  "pgd",
  "square",
]
