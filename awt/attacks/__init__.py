"""Adversarial attacks in pixel space, jittable functions of a logits function.

Every attack has the signature ``attack(logits_fn, x, y, key, **kwargs) ->
x_adv`` with ``logits_fn: [B, H, W, C] -> [B, K]`` pure, ``x`` float32 in
[0, 1], ``y: [B]`` int32 true labels and ``key`` one PRNG key or per-example
keys ``[B, 2]``; targeted attacks take the target classes as ``target=``.

Configs and binaries name attacks by string (``pgd40``, ``apgd-t``,
``square1000``, ``a+b+c``); ``register`` adds a name form, ``lookup``
resolves a name, ``name_forms`` lists the accepted forms (see
``awt.attacks._registry``).
"""

from awt.attacks._registry import (
  AUTOATTACK,
  AttackSpec,
  ensemble_members,
  lookup,
  match,
  name_forms,
  register,
  register_ensemble,
  unregister,
)
from awt.attacks.apgd import APGD_T_TARGETS, apgd, apgd_t
from awt.attacks.cw import cw_l2
from awt.attacks.deepfool import deepfool
from awt.attacks.fgsm import fgsm
from awt.attacks.pgd import pgd
from awt.attacks.square import square

__all__ = [
  "APGD_T_TARGETS",
  "AUTOATTACK",
  "AttackSpec",
  "apgd",
  "apgd_t",
  "cw_l2",
  "deepfool",
  "ensemble_members",
  "fgsm",
  "lookup",
  "match",
  "name_forms",
  "pgd",
  "register",
  "register_ensemble",
  "square",
  "unregister",
]
