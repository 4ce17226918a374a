"""Tests for the minimal-perturbation and black-box attacks.

DeepFool and Carlini-Wagner L2 are checked against closed forms on affine
classifiers (the distance to a hyperplane; for a 10-class model, C&W at the
sparsity sweep's budget within 5% of the exact distance on 95% of the
points) and must fool an undefended 64-64-10 MLP trained on scikit-learn's
digits; the Square Attack must fool
that MLP through a logits function that cannot be differentiated, stay in the
eps-ball and [0, 1], never return a point of lower loss than the clean one,
climb a linear margin towards its maximum over the ball, and give the same
result when a batch is split. Each attack configuration compiles once (a new
batch or eps of the same shape must not retrace).
"""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from awt.attacks import _common
from awt.attacks.cw import cw_l2, nearest_boundary
from awt.attacks.deepfool import _STABILITY, deepfool
from awt.attacks.square import square
from awt.studies import sparsity_robustness as sweep_lib
from experiments.configs import sparsity_robustness as sweep_config

# The module (the package re-exports the function under the same name).
square_lib = importlib.import_module("awt.attacks.square")

TOL = 1e-6
# Unoptimized XLA code compiles several times faster; these tiny programs run
# in milliseconds either way, and compilation dominates the file's run time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


class _Jitted:
  """``jax.jit(fn)`` that counts its traces (one per compilation)."""

  def __init__(self, fn):
    self.traces = 0

    def counted(*args, **kwargs):
      self.traces += 1
      return fn(*args, **kwargs)

    self._fn = jax.jit(counted, compiler_options=FAST_COMPILE)

  def __call__(self, *args, **kwargs):
    return self._fn(*args, **kwargs)


def _norms(v, norm):
  """Per-example float64 numpy norms of ``v: [B, ...]``."""
  v = np.asarray(v, np.float64).reshape(len(v), -1)
  if norm == "linf":
    return np.abs(v).max(axis=1)
  return np.sqrt((v * v).sum(axis=1))


def _assert_valid(x_adv, x):
  """Same shape and dtype as ``x``, inside [0, 1]."""
  x_adv = np.asarray(x_adv)
  assert x_adv.shape == x.shape and x_adv.dtype == np.float32
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def _fooled(logits_fn, x_adv, y):
  """``[B]`` bool numpy: the label of ``x_adv`` is not ``y``."""
  return np.asarray(jnp.argmax(logits_fn(x_adv), axis=1) != y)


# ----------------------------------------------------------------------------
# Affine models with closed-form minimal perturbations.


def _affine(w, b):
  """``logits_fn(x) = x.reshape(B, -1) @ w + b`` (float32)."""
  w = jnp.asarray(w, jnp.float32)
  b = jnp.asarray(b, jnp.float32)[None, :]
  return lambda x: x.reshape(x.shape[0], -1) @ w + b


def _linear_binary(seed, batch, dists, norm):
  """A binary classifier ``[-g/2, g/2]``, ``g = w.x + b``, and inputs at the
  given distances from its boundary.

  Returns ``((w_pair [64, 2], b_pair [2]), x [B, 8, 8, 1], y [B], g [B])``,
  the model as arguments of ``_affine``. The points lie inside (0.2, 0.8) at
  ``dist_q(x, {g = 0}) = |g| / ||w||_q*`` equal to ``dists`` (``q* = 2`` for
  l_2, ``1`` for l_inf), alternately on either side; ``y`` is the predicted
  class; ``g`` is exact (float64) for the float32 inputs.
  """
  rng = np.random.default_rng(seed)
  w = rng.normal(size=64)
  b = -0.5 * w.sum()
  dual = np.linalg.norm(w) if norm == "l2" else np.abs(w).sum()
  g = np.where(np.arange(batch) % 2 == 0, 1.0, -1.0) * dists * dual
  base = rng.uniform(0.4, 0.6, size=(batch, 64))
  base += np.outer(g - base @ w - b, w) / (w @ w)
  x = base.astype(np.float32)
  assert 0.2 < x.min() and x.max() < 0.8
  g = x.astype(np.float64) @ w + b
  model = (np.stack([-w / 2, w / 2], axis=1), np.array([-b / 2, b / 2]))
  y = jnp.asarray((g > 0).astype(np.int32))
  return model, x.reshape(batch, 8, 8, 1), y, g


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_on_linear_binary_model_is_closed_form(norm):
  """One DeepFool step reaches the hyperplane: ``|g| / ||w||_q*`` along the
  steepest direction (``w / ||w||_2``, resp. ``sign(w)``)."""
  overshoot = 0.02
  attack = _Jitted(
    lambda w, b, x, y: deepfool(
      _affine(w, b), x, y, norm=norm, overshoot=overshoot
    )
  )
  dists = (
    np.linspace(0.05, 0.15, 8) if norm == "l2" else np.linspace(0.02, 0.06, 8)
  )
  for seed in range(2):  # a second model and batch must not retrace
    model, x, y, g = _linear_binary(seed, 8, dists, norm)
    x_adv = attack(*model, jnp.asarray(x), y)
    _assert_valid(x_adv, x)
    assert np.all(_fooled(_affine(*model), x_adv, y))
    r = (np.asarray(x_adv, np.float64) - x).reshape(8, -1) / (1 + overshoot)
    w = model[0][:, 1] * 2.0
    direction = np.sign(-g)[:, None]  # towards the boundary
    if norm == "l2":
      d = np.abs(g) / np.linalg.norm(w) + _STABILITY
      expected = direction * d[:, None] * w / np.linalg.norm(w)
    else:
      d = np.abs(g) / np.abs(w).sum() + _STABILITY
      expected = direction * d[:, None] * np.sign(w)
    np.testing.assert_allclose(_norms(r, norm), d, rtol=1e-4)
    np.testing.assert_allclose(r, expected, rtol=1e-3, atol=1e-6)
  assert attack.traces == 1


@pytest.mark.parametrize("num_classes", [None, 2])
def test_deepfool_on_affine_multiclass_model_picks_nearest_hyperplane(
  num_classes,
):
  """K = 4 affine classes: one step of length ``min_k |f'_k| / ||w'_k||``.

  With ``num_classes=2`` the only candidate is the runner-up class.
  """
  rng = np.random.default_rng(3)
  w = rng.normal(size=(64, 4))
  b = rng.normal(size=4)
  x = rng.uniform(0.3, 0.7, size=(16, 64)).astype(np.float32)
  f = _affine(w, b)
  z = x.astype(np.float64) @ w + b
  y = z.argmax(axis=1)
  rows = np.arange(16)
  diff_w = w.T[None, :, :] - w.T[y][:, None, :]  # [B, K, D]
  diff_f = z - z[rows, y][:, None]
  dist = np.abs(diff_f) / np.maximum(np.linalg.norm(diff_w, axis=2), 1e-300)
  dist[rows, y] = np.inf
  if num_classes == 2:
    runner_up = np.argsort(-z, axis=1)[:, 1]
    dist = np.where(np.arange(4) == runner_up[:, None], dist, np.inf)
  nearest = dist.argmin(axis=1)
  d = dist[rows, nearest] + _STABILITY
  w_near = diff_w[rows, nearest]
  expected = d[:, None] * w_near / np.linalg.norm(w_near, axis=1)[:, None]

  x_adv = _Jitted(functools.partial(deepfool, f, num_classes=num_classes))(
    jnp.asarray(x.reshape(16, 8, 8, 1)), jnp.asarray(y, jnp.int32)
  )
  assert 0.0 < float(x_adv.min()) and float(x_adv.max()) < 1.0  # box idle
  r = (np.asarray(x_adv, np.float64).reshape(16, -1) - x) / 1.02
  np.testing.assert_allclose(r, expected, rtol=1e-3, atol=1e-6)
  assert np.all(_fooled(f, x_adv, y))


def test_cw_l2_on_linear_binary_model_matches_distance_to_boundary():
  """The smallest successful point lies just past the hyperplane."""
  model, x, y, g = _linear_binary(5, 8, np.linspace(0.2, 0.5, 8), "l2")
  f = _affine(*model)
  attack = _Jitted(
    functools.partial(
      cw_l2, f, c_init=1e-2, binary_steps=6, steps=200, learning_rate=1e-2
    )
  )
  x_adv = attack(jnp.asarray(x), y)
  attack(jnp.asarray(x[::-1]), y[::-1])  # same shapes: no retrace
  assert attack.traces == 1
  _assert_valid(x_adv, x)
  assert np.all(_fooled(f, x_adv, y))
  d = np.abs(g) / np.linalg.norm(model[0][:, 1] * 2.0)
  found = _norms(np.asarray(x_adv, np.float64) - x, "l2")
  assert np.all(found >= d * (1 - 1e-4)), (found, d)
  assert np.all(found <= d * 1.05), found / d


def _linear_multiclass(seed, n, *, dim=64, classes=10, lo=0.02, hi=0.3):
  """A random affine 10-class model and ``n`` interior points near it.

  Returns ``((w [D, K], b [K]), x [n, 8, 8, 1] float32, y [n], exact [n],
  nearest [n])``: ``y`` the predicted class, ``exact`` the float64 l_2
  distance to the decision boundary, ``min_{j != y} (z_y - z_j) / ||w_y -
  w_j||``, and ``nearest`` its minimizing class. Points lie in [0.35, 0.65]
  with ``lo < exact < hi <= 0.35``, so the minimal perturbation moves no
  pixel out of [0, 1]: the box does not bind.
  """
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(dim, classes))
  b = rng.normal(size=classes)
  x = rng.uniform(0.35, 0.65, size=(20 * n, dim)).astype(np.float32)
  z = x.astype(np.float64) @ w + b
  y = z.argmax(axis=1)
  rows = np.arange(len(y))
  diff_w = w.T[None, :, :] - w.T[y][:, None, :]  # [N, K, D]
  dist = (z[rows, y][:, None] - z) / np.maximum(
    np.linalg.norm(diff_w, axis=2), 1e-300
  )
  dist[rows, y] = np.inf
  exact, nearest = dist.min(axis=1), dist.argmin(axis=1)
  keep = np.flatnonzero((exact > lo) & (exact < hi))[:n]
  assert len(keep) == n and hi <= 0.35
  x = x[keep].reshape(n, 8, 8, 1)
  return (w, b), x, y[keep], exact[keep], nearest[keep]


def test_nearest_boundary_is_the_closed_form_on_an_affine_model():
  (w, b), x, y, _, nearest = _linear_multiclass(0, 64)
  got = jax.jit(functools.partial(nearest_boundary, _affine(w, b)))(
    jnp.asarray(x), jnp.asarray(y, jnp.int32)
  )
  np.testing.assert_array_equal(np.asarray(got), nearest)


def test_sweep_budget_cw_and_deepfool_match_a_linear_boundary():
  """C&W at the sparsity sweep's budget and DeepFool on an affine model.

  The exact l_2 distance to the decision boundary of a 10-class affine
  model is ``min_{j != y} (z_y - z_j) / ||w_y - w_j||``. C&W, with the
  sweep's settings (``sparsity_robustness.cw_attack``), never goes below it
  and is within 5% of it on at least 95% of the points; DeepFool takes one
  step to the nearest hyperplane, so its distance is the exact one times
  its overshoot ``1 + eta`` (plus its 1e-4 stability term).
  """
  (w, b), x, y, exact, _ = _linear_multiclass(1, 100)
  f = _affine(w, b)
  x, y = jnp.asarray(x), jnp.asarray(y, jnp.int32)
  sweep = sweep_config.get_config("mnist5k").sweep
  cw = _Jitted(functools.partial(sweep_lib.cw_attack(sweep), f))(x, y)
  df = _Jitted(functools.partial(deepfool, f, norm="l2"))(x, y)
  for x_adv in (cw, df):
    _assert_valid(x_adv, x)
    assert np.all(_fooled(f, x_adv, y))
  found = _norms(np.asarray(cw, np.float64) - np.asarray(x), "l2")
  assert np.all(found >= exact * (1 - 1e-4)), (found / exact).min()
  assert np.mean(found <= 1.05 * exact) >= 0.95, np.sort(found / exact)[-8:]
  found = _norms(np.asarray(df, np.float64) - np.asarray(x), "l2")
  np.testing.assert_allclose(found, 1.02 * (exact + _STABILITY), rtol=1e-4)


# ----------------------------------------------------------------------------
# An accurate, undefended MLP on the digits.


@pytest.fixture(scope="module")
def digits():
  """An undefended 64-64-10 MLP on digits and 96 held-out points.

  Returns ``(logits_fn, x [96, 8, 8, 1], y [96], correct [96] bool)``.
  """
  data = load_digits()
  x = (data.data / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
  y = data.target.astype(np.int32)
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  params = {
    "w1": jax.random.normal(k1, (64, 64)) / 8.0,
    "b1": jnp.zeros((1, 64)),
    "w2": jax.random.normal(k2, (64, 10)) / 8.0,
    "b2": jnp.zeros((1, 10)),
  }

  def apply(p, v):
    h = jax.nn.relu(v.reshape(v.shape[0], -1) @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"]

  opt = optax.adam(2e-2)
  x_train, y_train = jnp.asarray(x[:1400]), jnp.asarray(y[:1400])

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def train(p):
    def step(_, carry):
      p, state = carry
      grads = jax.grad(
        lambda q: jnp.mean(_common.ce_loss(apply(q, x_train), y_train))
      )(p)
      updates, state = opt.update(grads, state)
      return optax.apply_updates(p, updates), state

    return jax.lax.fori_loop(0, 150, step, (p, opt.init(p)))[0]

  params = train(params)
  logits_fn = functools.partial(apply, params)
  x_test, y_test = jnp.asarray(x[1400:1496]), jnp.asarray(y[1400:1496])
  correct = np.asarray(jnp.argmax(logits_fn(x_test), axis=1) == y_test)
  assert correct.mean() > 0.9 and not correct.all()
  return logits_fn, x_test, y_test, correct


@pytest.fixture(scope="module")
def minimal_attacks(digits):
  """Jitted DeepFool (l_2, l_inf) and a short CW L2 on the digits MLP."""
  f = digits[0]
  return {
    "deepfool_l2": _Jitted(functools.partial(deepfool, f, norm="l2")),
    "deepfool_linf": _Jitted(functools.partial(deepfool, f, norm="linf")),
    "cw_l2": _Jitted(
      functools.partial(cw_l2, f, c_init=1e-2, binary_steps=5, steps=100)
    ),
  }


@pytest.mark.parametrize("name", ["deepfool_l2", "deepfool_linf", "cw_l2"])
def test_minimal_attacks_fool_undefended_model(digits, minimal_attacks, name):
  f, x, y, correct = digits
  x_adv = minimal_attacks[name](x, y)
  _assert_valid(x_adv, x)
  assert _fooled(f, x_adv, y)[correct].mean() >= 0.95
  # Already misclassified points are already adversarial: (nearly) x.
  moved = _norms(np.asarray(x_adv) - np.asarray(x), "l2")
  assert np.all(moved[~correct] < 1e-4)


def test_cw_l2_decides_per_example_so_batch_splits_agree(
  digits, minimal_attacks
):
  """Early abort and the binary search are per example, not per batch."""
  _, x, y, _ = digits
  attack = minimal_attacks["cw_l2"]
  whole = np.asarray(attack(x, y))
  half = x.shape[0] // 2
  parts = [attack(x[s], y[s]) for s in (slice(0, half), slice(half, None))]
  np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------
# Square Attack.


def _no_gradient(logits_fn):
  """``logits_fn`` whose derivative rule raises: usable only for queries."""

  @jax.custom_jvp
  def f(x):
    return logits_fn(x)

  @f.defjvp
  def _(primals, tangents):
    raise AssertionError("the black-box attack differentiated the model")

  return f


@pytest.fixture(scope="module")
def square_attacks(digits):
  """Jitted 300-query Square Attacks on the digits MLP, per norm, eps traced.

  The model is wrapped by ``_no_gradient``: compiling succeeds only if the
  attack never differentiates it.
  """
  f = _no_gradient(digits[0])
  with pytest.raises(AssertionError, match="differentiated"):
    jax.grad(lambda v: jnp.sum(f(v)))(digits[1])
  return {
    norm: _Jitted(
      lambda x, y, key, eps, norm=norm: square(
        f, x, y, key, eps=eps, norm=norm, queries=300
      )
    )
    for norm in ("linf", "l2")
  }


@pytest.mark.parametrize(
  "norm, eps_large, eps_small", [("linf", 0.3, 0.05), ("l2", 3.0, 0.3)]
)
def test_square_fools_without_gradients_within_the_ball(
  digits, square_attacks, norm, eps_large, eps_small
):
  f, x, y, correct = digits
  attack = square_attacks[norm]
  keys = jax.random.split(jax.random.PRNGKey(0), x.shape[0])
  for eps in (eps_large, eps_small):
    x_adv = attack(x, y, keys, eps)
    if eps == eps_large:
      assert _fooled(f, x_adv, y)[correct].mean() >= 0.9
      traces = attack.traces  # a new eps must not retrace
    _assert_valid(x_adv, x)
    assert _norms(np.asarray(x_adv, np.float64) - x, norm).max() <= eps + TOL
    # Only improvements are accepted: the returned margin is never lower.
    clean = np.asarray(_common.margin_loss(f(x), y))
    adv = np.asarray(_common.margin_loss(f(x_adv), y))
    assert np.all(adv >= clean - 1e-5)
    assert np.array_equal(np.asarray(x_adv)[~correct], np.asarray(x)[~correct])
  # The small budget leaves some points unfooled, so monotonicity had bite.
  assert not _fooled(f, x_adv, y)[correct].all()
  assert attack.traces == traces


@pytest.mark.parametrize(
  "norm, eps, min_gain", [("linf", 0.05, 0.9), ("l2", 0.5, 0.5)]
)
def test_square_climbs_a_linear_margin_towards_its_maximum(norm, eps, min_gain):
  """Random search on an unreachable boundary of ``g = w.x + b``.

  Accepting only improvements, 300 queries raise ``g`` most of the way to
  its maximum over the ball, ``eps ||w||_1`` (l_inf) or ``eps ||w||_2``
  (l_2); accepting every proposal would leave the gain near 0. The box does
  not bind, so the points are vertices (l_inf) or on the sphere (l_2).
  """
  rng = np.random.default_rng(11)
  w = rng.normal(size=64)
  x = rng.uniform(0.3, 0.7, size=(16, 64)).astype(np.float32)
  b = -(x @ w).max() - 10.0
  f = _affine(np.stack([-w / 2, w / 2], axis=1), np.array([-b / 2, b / 2]))
  x_adv = _Jitted(
    functools.partial(square, f, eps=eps, norm=norm, queries=300)
  )(
    jnp.asarray(x.reshape(16, 8, 8, 1)),
    jnp.zeros(16, jnp.int32),
    jax.random.split(jax.random.PRNGKey(3), 16),
  )
  delta = np.asarray(x_adv, np.float64).reshape(16, -1) - x
  best = eps * (np.abs(w).sum() if norm == "linf" else np.linalg.norm(w))
  assert np.all(delta @ w >= min_gain * best), (delta @ w) / best
  if norm == "linf":
    np.testing.assert_allclose(np.abs(delta), eps, rtol=1e-5)
  else:
    np.testing.assert_allclose(_norms(delta, "l2"), eps, rtol=1e-5)


def test_square_per_example_keys_make_batch_splits_agree(
  digits, square_attacks
):
  f, x, y, _ = digits
  keys = jax.random.split(jax.random.PRNGKey(7), x.shape[0])
  attack = square_attacks["linf"]
  whole = attack(x, y, keys, 0.1)
  half = x.shape[0] // 2
  parts = [
    attack(x[s], y[s], keys[s], 0.1)
    for s in (slice(0, half), slice(half, None))
  ]
  np.testing.assert_allclose(
    np.concatenate(parts), np.asarray(whole), atol=TOL, rtol=0
  )


def test_square_targeted_moves_towards_the_target(digits):
  f, x, y, correct = digits
  target = (y + 1) % 10
  x_adv = _Jitted(
    functools.partial(
      square, f, eps=0.3, queries=300, targeted=True, target=target
    )
  )(x, y, jax.random.PRNGKey(2))
  _assert_valid(x_adv, x)
  assert _norms(np.asarray(x_adv, np.float64) - x, "linf").max() <= 0.3 + TOL
  hit = np.asarray(jnp.argmax(f(x_adv), axis=1) == target)
  assert hit[correct].mean() >= 0.7
  # The targeted margin z_t - max_{j != t} z_j never decreases.
  clean = -np.asarray(_common.margin_loss(f(x), target))
  adv = -np.asarray(_common.margin_loss(f(x_adv), target))
  assert np.all(adv >= clean - 1e-5)


def _reference_p_selection(p_init, it, n_iters):
  """The schedule as written in the reference code (attack.py)."""
  it = int(it / n_iters * 10000)
  if 10 < it <= 50:
    return p_init / 2
  if 50 < it <= 200:
    return p_init / 4
  if 200 < it <= 500:
    return p_init / 8
  if 500 < it <= 1000:
    return p_init / 16
  if 1000 < it <= 2000:
    return p_init / 32
  if 2000 < it <= 4000:
    return p_init / 64
  if 4000 < it <= 6000:
    return p_init / 128
  if 6000 < it <= 8000:
    return p_init / 256
  if 8000 < it <= 10000:
    return p_init / 512
  return p_init


@pytest.mark.parametrize("n_iters", [300, 1000, 10000])
def test_square_p_schedule_matches_reference_code(n_iters):
  ours = [square_lib._p_selection(0.8, i, n_iters) for i in range(n_iters)]
  ref = [_reference_p_selection(0.8, i, n_iters) for i in range(n_iters)]
  assert ours == ref
  assert len(set(ours)) == 10  # all ten levels are used


@pytest.mark.parametrize("s", [1, 2, 3, 5, 8])
def test_square_l2_update_pattern_is_a_unit_signed_bump(s):
  """Unit norm; positive on the top half, negative on the bottom half."""
  bump = square_lib._meta_pseudo_gaussian(s)
  assert bump.shape == (s, s)
  assert np.sum(bump**2) == pytest.approx(1.0, rel=1e-12)
  assert np.all(bump[: s // 2] > 0) and np.all(bump[s // 2 :] < 0)


@pytest.mark.parametrize(
  "fn, kwargs, match",
  [
    (square, {"eps": 0.1, "norm": "l1"}, "unknown norm 'l1'; known: linf, l2"),
    (square, {"eps": 0.1, "loss": "hinge"}, "unknown loss 'hinge'"),
    (square, {"eps": 0.1, "targeted": True}, "needs target"),
    (square, {"eps": 0.1, "queries": 0}, "queries must be >= 1"),
    (deepfool, {"norm": "l0"}, "unknown norm 'l0'"),
    (cw_l2, {"towards": "far"}, "unknown towards 'far'; known: max, nearest"),
  ],
)
def test_invalid_arguments_raise(fn, kwargs, match):
  x = jnp.full((2, 8, 8, 1), 0.5)
  f = _affine(np.ones((64, 3)), np.zeros(3))
  with pytest.raises(ValueError, match=match):
    fn(f, x, jnp.zeros(2, jnp.int32), jax.random.PRNGKey(0), **kwargs)
