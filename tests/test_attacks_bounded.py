"""Tests for the gradient-based l_p-bounded attacks: fgsm, pgd, apgd.

Every attack output is checked to lie in the eps-ball and in [0, 1]. Models:
a linear binary classifier (closed-form one-step attacks) and a 64-64-10 MLP
trained on scikit-learn's digits, once naturally and once with PGD
adversarial training, by one compiled trainer. Each attack configuration is
compiled once with the parameters and eps as traced arguments and reused.
"""

import collections
import functools
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from awt import attacks
from awt.attacks import _common

TOL = 1e-6
# Unoptimized XLA code compiles ~4x faster; these tiny programs run in
# milliseconds either way, and compilation dominates the file's run time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _assert_in_ball(x_adv, x, eps, norm):
  """Independent numpy check: same shape/dtype, in [0, 1] and in the ball."""
  x_adv, x = np.asarray(x_adv), np.asarray(x)
  assert x_adv.shape == x.shape and x_adv.dtype == np.float32
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  d = (x_adv.astype(np.float64) - x).reshape(len(x), -1)
  if norm == "linf":
    n = np.abs(d).max(axis=1)
  else:
    n = np.sqrt((d * d).sum(axis=1))
  assert n.max() <= eps + TOL, n.max()


class _Compiled:
  """Jitted attacks of ``apply_fn(params, .)``: one compilation per config.

  ``params``, ``eps`` and the inputs are traced arguments, so one compiled
  program serves every model, budget and batch of the same shape; ``traces``
  counts the traces per config (a config that retraces for a new input of
  the same shape would be a missed single compilation).
  """

  def __init__(self, apply_fn):
    self.apply_fn = apply_fn
    self.fns = {}
    self.traces = collections.Counter()

  def __call__(self, name, params, x, y, key, eps, *, target=None, **static):
    cfg = self.config(name, target is not None, **static)
    if cfg not in self.fns:
      self.fns[cfg] = self._make(cfg, name, static)
    return self.fns[cfg](params, x, y, key, eps, target)

  @staticmethod
  def config(name, targeted, **static):
    return (name, targeted, tuple(sorted(static.items())))

  def _make(self, cfg, name, static):
    def run(params, x, y, key, eps, target):
      self.traces[cfg] += 1
      kw = dict(static)
      rel_step = kw.pop("rel_step", 2.5)
      if name == "pgd":
        kw["step_size"] = rel_step * eps / kw["steps"]
      return getattr(attacks, name)(
        functools.partial(self.apply_fn, params),
        x,
        y,
        key,
        eps=eps,
        targeted=target is not None,
        target=target,
        **kw,
      )

    return jax.jit(run, compiler_options=FAST_COMPILE)


class _MLP(nn.Module):
  """64-64-10 ReLU MLP on flattened 8x8 digits."""

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(10)(nn.relu(nn.Dense(64)(x)))


def _accuracy(logits_fn, x, y):
  return float(jnp.mean(jnp.argmax(logits_fn(x), -1) == y))


@pytest.fixture(scope="module")
def digits():
  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)[..., None]
  y = d.target.astype(np.int32)
  perm = np.random.RandomState(0).permutation(len(x))
  x, y = jnp.asarray(x[perm]), jnp.asarray(y[perm])
  return {"xtr": x[:1500], "ytr": y[:1500], "xte": x[1500:], "yte": y[1500:]}


@pytest.fixture(scope="module")
def mlp(digits):
  """Natural and PGD-AT (l_inf 0.1, 5 steps) params from one compiled trainer.

  Adam, 300 steps of batch 128; eps is traced, eps = 0 is natural training.
  """
  model = _MLP()
  xtr, ytr = digits["xtr"], digits["ytr"]
  opt = optax.adam(1e-2)
  batches = jnp.asarray(np.random.RandomState(1).randint(0, 1500, (300, 128)))
  keys = jax.random.split(jax.random.PRNGKey(1), 300)
  params = model.init(jax.random.PRNGKey(0), xtr[:1])

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def train(params, eps):
    def step(carry, batch):
      params, opt_state = carry
      idx, key = batch
      x, y = xtr[idx], ytr[idx]
      x_adv = attacks.pgd(
        functools.partial(model.apply, params),
        x,
        y,
        key,
        eps=eps,
        step_size=2.5 * eps / 5,
        steps=5,
      )

      def loss_fn(p):
        logits = model.apply(p, jax.lax.stop_gradient(x_adv))
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

      grads = jax.grad(loss_fn)(params)
      updates, opt_state = opt.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    init = (params, opt.init(params))
    return jax.lax.scan(step, init, (batches, keys))[0][0]

  return {
    "natural": train(params, 0.0),
    "robust": train(params, 0.1),
    "apply": model.apply,
    "attacks": _Compiled(model.apply),
  }


def _linear_apply(params, x):
  w, b = params
  return x.reshape(x.shape[0], -1) @ w + b[None, :]


@pytest.fixture(scope="module")
def linear_attacks():
  return _Compiled(_linear_apply)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"norm": "l1"}, "unknown norm 'l1'; known: linf, l2"),
    ({"loss": "xent"}, "unknown loss 'xent'; known: ce, dlr, margin"),
    ({"targeted": True}, "targeted=True needs target"),
    ({"target": jnp.zeros(2, jnp.int32)}, "target given but targeted=False"),
    ({"restarts": 2, "random_start": False}, "needs random_start=True"),
  ],
)
def test_invalid_arguments_raise(kwargs, match):
  f = lambda v: v.reshape(v.shape[0], -1)[:, :3]
  x, y = jnp.zeros((2, 2, 2, 1)), jnp.zeros(2, jnp.int32)
  with pytest.raises(ValueError, match=match):
    attacks.pgd(
      f, x, y, jax.random.PRNGKey(0), eps=0.1, step_size=0.1, steps=1, **kwargs
    )


def test_losses_match_hand_computed_values():
  z = jnp.array([[1.0, 3.0, 2.0, 0.5], [4.0, 1.0, 0.0, -1.0]])
  y = jnp.array([0, 0])
  t = jnp.array([3, 2])
  np.testing.assert_allclose(_common.margin_loss(z, y), [3 - 1, 1 - 4])
  # DLR: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3).
  np.testing.assert_allclose(
    _common.dlr_loss(z, y), [2 / (3 - 1), -3 / (4 - 0)], rtol=1e-6
  )
  # Targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).
  np.testing.assert_allclose(
    _common.targeted_dlr_loss(z, y, t),
    [-(1 - 0.5) / (3 - (1 + 0.5) / 2), -(4 - 0) / (4 - (0 - 1) / 2)],
    rtol=1e-6,
  )
  # Both DLRs are invariant to shifting and positively rescaling the logits.
  np.testing.assert_allclose(
    _common.dlr_loss(3 * z + 7, y), _common.dlr_loss(z, y), rtol=1e-5
  )
  np.testing.assert_allclose(
    _common.targeted_dlr_loss(3 * z + 7, y, t),
    _common.targeted_dlr_loss(z, y, t),
    rtol=1e-5,
  )


def test_apgd_checkpoints_follow_the_paper():
  # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (Croce & Hein 2020, 3.2).
  checkpoints = importlib.import_module("awt.attacks.apgd").checkpoints
  np.testing.assert_array_equal(
    checkpoints(100), [22, 41, 57, 70, 80, 87, 93, 99]
  )
  np.testing.assert_array_equal(checkpoints(10), [3, 5, 6, 7, 8, 9, 10])


@pytest.mark.parametrize(
  "name, norm, targeted",
  [
    ("pgd", "linf", False),
    ("pgd", "l2", False),
    ("fgsm", "linf", False),
    ("fgsm", "linf", True),
    ("fgsm", "l2", False),
  ],
)
def test_one_step_on_linear_binary_model_is_closed_form(
  linear_attacks, name, norm, targeted
):
  """On z = x w + b, one CE step moves x along w_other - w_y (sign / unit)."""
  kw, kx = jax.random.split(jax.random.PRNGKey(0))
  params = (0.1 * jax.random.normal(kw, (64, 2)), jnp.array([0.1, -0.1]))
  x = jax.random.uniform(kx, (16, 8, 8, 1), minval=0.25, maxval=0.75)
  y = jnp.argmax(_linear_apply(params, x), -1).astype(jnp.int32)
  eps = 0.1 if norm == "linf" else 0.5
  static = {"norm": norm}
  if name == "pgd":
    static.update(steps=1, rel_step=1.0, random_start=False)
  target = 1 - y if targeted else None
  x_adv = linear_attacks(
    name, params, x, y, jax.random.PRNGKey(1), eps, target=target, **static
  )
  w = np.asarray(params[0])
  d = w[:, 1 - np.asarray(y)].T - w[:, np.asarray(y)].T  # [B, 64]
  if norm == "linf":
    step = eps * np.sign(d)
  else:
    step = eps * d / np.linalg.norm(d, axis=1, keepdims=True)
  want = np.clip(np.asarray(x).reshape(16, -1) + step, 0.0, 1.0)
  np.testing.assert_allclose(np.asarray(x_adv).reshape(16, -1), want, atol=TOL)
  _assert_in_ball(x_adv, x, eps, norm)


def test_strong_attacks_break_undefended_model(digits, mlp):
  x, y = digits["xte"], digits["yte"]
  params, run = mlp["natural"], mlp["attacks"]
  f = functools.partial(mlp["apply"], params)
  clean = _accuracy(f, x, y)
  assert clean >= 0.9
  eps, key = 0.5, jax.random.PRNGKey(2)
  x_fgsm = run("fgsm", params, x, y, key, eps, norm="linf")
  x_pgd = run("pgd", params, x, y, key, eps, norm="linf", steps=20)
  x_apgd = run("apgd", params, x, y, key, eps, norm="linf", steps=20)
  for x_adv in (x_fgsm, x_pgd, x_apgd):
    _assert_in_ball(x_adv, x, eps, "linf")
  assert _accuracy(f, x_fgsm, y) <= clean - 0.5
  assert _accuracy(f, x_pgd, y) <= 0.05
  assert _accuracy(f, x_apgd, y) <= 0.05


@pytest.mark.parametrize(
  "name, static",
  [
    ("pgd", {"norm": "linf", "steps": 20}),
    ("apgd", {"norm": "linf", "steps": 20, "loss": "dlr"}),
  ],
)
def test_targeted_attacks_reach_the_target(digits, mlp, name, static):
  x, y = digits["xte"], digits["yte"]
  params = mlp["natural"]
  f = functools.partial(mlp["apply"], params)
  target = (y + 1) % 10
  eps = 0.5
  x_adv = mlp["attacks"](
    name, params, x, y, jax.random.PRNGKey(3), eps, target=target, **static
  )
  _assert_in_ball(x_adv, x, eps, "linf")
  assert float(jnp.mean(jnp.argmax(f(x_adv), -1) == target)) >= 0.9


def test_restarts_keep_the_strongest_point_per_example(digits, mlp):
  """restarts=3 beats each of its restarts, run alone with the same keys."""
  x, y = digits["xte"][:64], digits["yte"][:64]
  params, run = mlp["natural"], mlp["attacks"]
  f = functools.partial(mlp["apply"], params)
  keys = jax.random.split(jax.random.PRNGKey(4), 64)
  eps = 0.6
  static = {"norm": "l2", "loss": "margin", "steps": 5}

  def outcome(x_adv):
    _assert_in_ball(x_adv, x, eps, "l2")
    z = f(x_adv)
    return np.asarray(jnp.argmax(z, -1) != y), np.asarray(
      _common.margin_loss(z, y)
    )

  success3, loss3 = outcome(
    run("pgd", params, x, y, keys, eps, restarts=3, **static)
  )
  singles = []
  for r in range(3):
    # Restart r draws from keys (r = 0) or fold_in(keys[i], r).
    keys_r = (
      keys if r == 0 else jax.vmap(jax.random.fold_in, (0, None))(keys, r)
    )
    singles.append(outcome(run("pgd", params, x, y, keys_r, eps, **static)))
  success1 = np.stack([s for s, _ in singles])
  loss1 = np.stack([lo for _, lo in singles])
  assert 0.0 < success3.mean() < 1.0  # a regime where restarts can matter
  assert np.all(success3 >= success1.max(axis=0))
  never = ~success1.any(axis=0)
  assert np.all(loss3[never] >= loss1.max(axis=0)[never] - 1e-5)
  # The single-restart attack compiled once for its three inputs.
  cfg = _Compiled.config("pgd", False, **static)
  assert run.traces[cfg] == 1


def test_apgd_at_least_as_strong_as_pgd_on_robust_model(digits, mlp):
  x, y = digits["xte"], digits["yte"]
  params, run = mlp["robust"], mlp["attacks"]
  f = functools.partial(mlp["apply"], params)
  eps, key = 0.1, jax.random.PRNGKey(5)
  x_pgd = run("pgd", params, x, y, key, eps, norm="linf", steps=20)
  x_apgd = run("apgd", params, x, y, key, eps, norm="linf", steps=20)
  _assert_in_ball(x_pgd, x, eps, "linf")
  _assert_in_ball(x_apgd, x, eps, "linf")
  clean = _accuracy(f, x, y)
  robust_pgd, robust_apgd = _accuracy(f, x_pgd, y), _accuracy(f, x_apgd, y)
  assert clean >= 0.9
  assert 0.5 <= robust_pgd < clean  # adversarial training worked, PGD bites
  assert robust_apgd <= robust_pgd + 0.01


def test_per_example_keys_make_batch_splits_agree(digits, mlp):
  """Halves of the batch with halves of the keys give the full-batch result.

  The two halves are two inputs of one shape: one new compilation.
  """
  x, y = digits["xte"][:64], digits["yte"][:64]
  params, run = mlp["natural"], mlp["attacks"]
  f = functools.partial(mlp["apply"], params)
  keys = jax.random.split(jax.random.PRNGKey(6), 64)
  eps = 2.0
  static = {"norm": "l2", "loss": "dlr", "steps": 20, "restarts": 2}
  cfg = _Compiled.config("apgd", False, **static)
  full = run("apgd", params, x, y, keys, eps, **static)
  traces = run.traces[cfg]
  halves = [
    run("apgd", params, x[s], y[s], keys[s], eps, **static)
    for s in (slice(0, 32), slice(32, 64))
  ]
  assert run.traces[cfg] == traces + 1
  _assert_in_ball(full, x, eps, "l2")
  np.testing.assert_allclose(jnp.concatenate(halves), full, atol=1e-5)
  assert _accuracy(f, full, y) <= 0.05
