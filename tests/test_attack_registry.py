"""Tests for the attack registry: one registration makes a name usable.

A toy attack registered under a new name runs through ``evaluation.evaluate``
and ``evaluation.evaluate_cascade`` by name, alone and in an ensemble; the
reference is numpy on a linear model, where the toy attack's point has a
closed form. The fixture unregisters it, so the registry is left as found.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awt import attacks, data, evaluation
from awt import config as config_lib
from experiments.configs import digits_mlp

K = 5


def shift_down(logits_fn, x, y, key, *, eps):
  """Every pixel moves by ``eps`` against the true-class logit's gradient.

  ``x_adv = clip(x - eps * sign(d z_y / dx), 0, 1)``; ``key`` is unused.
  """
  del key
  true_logit = lambda v: jnp.sum(
    jnp.take_along_axis(logits_fn(v), y[:, None], 1)
  )
  grad = jax.grad(true_logit)(x)
  return jnp.clip(x - eps * jnp.sign(grad), 0.0, 1.0)


def _toy_factory(eps, norm, *, divisor=1):
  """``toyshift[<divisor>]``: ``shift_down`` at ``eps / divisor`` (l_inf)."""
  assert norm == "linf"
  return functools.partial(shift_down, eps=eps / divisor)


@pytest.fixture
def toyshift():
  """Registers ``toyshift[<divisor>]`` for one test, then removes it."""
  spec = attacks.register("toyshift[<divisor>]", _toy_factory)
  yield spec
  attacks.unregister("toyshift")
  assert attacks.match("toyshift") is None


def _linear_problem():
  """A K-class linear model on 3x3 images stored exactly as uint8."""
  rng = np.random.default_rng(0)
  w = rng.normal(size=(9, K)).astype(np.float32)
  images = rng.integers(0, 256, size=(40, 3, 3, 1), dtype=np.uint8)
  x = images.astype(np.float32) / 255.0
  labels = np.argmax(x.reshape(40, -1) @ w, axis=1).astype(np.int32)
  labels[::7] = (labels[::7] + 1) % K  # some misclassified clean
  apply_fn = lambda variables, v: v.reshape(v.shape[0], -1) @ variables["w"]
  return apply_fn, {"w": jnp.asarray(w)}, data.Split(images, labels), x, w


def _correct_after_shift(x, w, labels, step):
  """numpy: classified correctly at ``clip(x - step * sign(w[:, y]))``."""
  flat = x.reshape(len(x), -1).astype(np.float64)
  x_adv = np.clip(flat - step * np.sign(w[:, labels].T), 0.0, 1.0)
  z = x_adv @ w.astype(np.float64)
  top2 = np.sort(z, axis=1)[:, -2:]
  assert np.min(top2[:, 1] - top2[:, 0]) > 1e-4  # no near-ties: well posed
  return np.argmax(z, axis=1) == labels


def test_registered_toy_attack_runs_by_name(toyshift):
  apply_fn, variables, split, x, w = _linear_problem()
  eps = 0.2
  clean = np.argmax(x.reshape(len(x), -1) @ w, axis=1) == split.labels
  at_eps = clean & _correct_after_shift(x, w, split.labels, eps)
  at_quarter = clean & _correct_after_shift(x, w, split.labels, eps / 4)
  # Not vacuous: the attack hurts, less at a quarter of the step, and the
  # ensemble differs from its first member.
  assert at_eps.sum() < at_quarter.sum() < clean.sum()
  n = len(x)
  want = {
    "toyshift": at_eps.sum() / n,
    "toyshift4": at_quarter.sum() / n,
    "toyshift4+toyshift": (at_eps & at_quarter).sum() / n,
  }
  names = tuple(want)
  kw = dict(attack_names=names, eps=eps, batch_size=16)
  full = evaluation.evaluate(apply_fn, variables, split, **kw)
  cascade = evaluation.evaluate_cascade(apply_fn, variables, split, **kw)
  for res in (full, cascade):
    assert res["clean_accuracy"] == clean.sum() / n
    for name in names:
      assert res["robust_accuracy"][name] == pytest.approx(want[name]), name
  assert toyshift.form in attacks.name_forms()
  assert not toyshift.black_box and not evaluation.is_black_box("toyshift2")


def test_registered_name_is_valid_in_configs(toyshift):
  del toyshift
  config = digits_mlp.get_config("smoke")
  config.eval.attacks = ("toyshift2", "pgd5+toyshift")
  config_lib.validate(config)
  config.eval.attacks = ("toyshift0",)
  with pytest.raises(config_lib.ConfigError, match="toyshift\\[<divisor>\\]"):
    config_lib.validate(config)


def test_unknown_names_raise_one_line_listing_the_forms():
  forms = attacks.name_forms()
  assert forms.split(", ") == [
    "fgsm",
    "pgd<steps>[r<restarts>]",
    "bim<steps>",
    "apgd-ce[<steps>]",
    "apgd-dlr[<steps>]",
    "apgd-t[<steps>]",
    "square[<queries>]",
    "autoattack",
    "<name>+<name>+...",
  ]
  assert attacks.name_forms(minimal=True) == (
    "deepfool[<max_iter>], cw_l2[-<binary_steps>x<steps>]"
  )
  for bad in ("toyshift", "pgd40+toyshift", "pgd0", "deepfool"):
    with pytest.raises(ValueError) as err:
      evaluation.parse_attack(bad)
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith(f"known forms: {forms}"), msg
  with pytest.raises(ValueError, match="unknown minimal-perturbation attack"):
    evaluation.parse_minimal_attack("toyshift")


def test_registry_rejects_bad_registrations(toyshift):
  del toyshift
  with pytest.raises(ValueError, match="already registered"):
    attacks.register("toyshift<divisor>", _toy_factory)
  with pytest.raises(ValueError, match="already registered"):
    attacks.register("pgd", _toy_factory)
  with pytest.raises(ValueError, match="takes no 'steps'"):
    attacks.register("toyother<steps>", _toy_factory)
  with pytest.raises(ValueError, match="needs a default"):
    attacks.register("toyother[<eps>]", lambda eps, norm: None)
  with pytest.raises(ValueError, match="unbalanced"):
    attacks.register("toyother[<divisor>", _toy_factory)
  with pytest.raises(ValueError, match="taken"):
    attacks.register_ensemble("autoattack", ("pgd5",))
  assert attacks.match("toyother") is None


def test_lookup_fills_defaults_from_the_factory():
  spec, params = attacks.lookup("pgd10")
  assert spec.name == "pgd" and params == {"steps": 10, "restarts": 1}
  assert attacks.lookup("pgd10r3")[1] == {"steps": 10, "restarts": 3}
  assert attacks.lookup("square")[1] == {"queries": 1000}
  assert attacks.lookup("square")[0].black_box
  spec, params = attacks.lookup("cw_l2-3x7", minimal=True)
  assert spec.minimal and params == {"binary_steps": 3, "steps": 7}
  assert attacks.match("cw_l2-3x7") is None  # minimal names are separate
  assert attacks.ensemble_members("autoattack") == attacks.AUTOATTACK
