"""Tests for awt.ntk, each against an independent reference.

The empirical NTK against a plain-JAX ``J J^T`` (``jax.jacobian`` of the
raveled parameters, contracted in float64 NumPy); the cost model against
its closed form on networks whose FLOPs are known by hand; kernel metrics
against NumPy formulas and exact values (identity, rank one); linearized
dynamics against kernel regression, NumPy's matrix exponential and an
explicit Euler integration; training of a wide network against its
linearization (Lee et al. 2019).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from awt import attacks, ntk
from awt._nt import stax

NUM_CLASSES = 3
IMPLS = ("jacobian_contraction", "ntk_vector_products")


class _MLP(nn.Module):
  """[N, 4, 4, 1] -> 8 -> 3, ReLU."""

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(NUM_CLASSES)(nn.relu(nn.Dense(8)(x)))


class _ConvNet(nn.Module):
  """Conv(channels, 3x3, SAME) -> ReLU -> flatten -> Dense 3."""

  channels: int = 2

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.channels, (3, 3))(x))
    return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


def _rng(seed):
  return np.random.default_rng(seed)


def _images(seed, n, side=4):
  """[n, side, side, 1] float32 uniform in [0, 1] (NumPy: no compile)."""
  return jnp.asarray(_rng(seed).uniform(size=(n, side, side, 1)), jnp.float32)


@functools.cache
def _net(name):
  """(apply_fn, params) of a test network, initialized once."""
  module = {"mlp": _MLP(), "conv": _ConvNet()}[name]
  params = module.init(jax.random.PRNGKey(0), _images(0, 1))
  return module.apply, params


def _jacobian(apply_fn, params, x):
  """[N, K, P] float64: d f(x)[n, k] / d theta[p], raveled parameters."""
  flat, unravel = ravel_pytree(params)
  with jax.default_matmul_precision("highest"):
    jac = jax.jacobian(lambda t: apply_fn(unravel(t), x).ravel())(flat)
  return np.asarray(jac, np.float64).reshape(x.shape[0], NUM_CLASSES, -1)


def _reference_ntk(apply_fn, params, x1, x2, trace_axes):
  """J1 J2^T; traced over logits it is the mean (NT's convention)."""
  j1 = _jacobian(apply_fn, params, x1)
  j2 = j1 if x2 is None else _jacobian(apply_fn, params, x2)
  if trace_axes:
    return np.einsum("akp,bkp->ab", j1, j2) / NUM_CLASSES
  return np.einsum("akp,blp->abkl", j1, j2)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


# (batch_size, with x2): unbatched; blocks of 3 for N1 = 7, N2 = 5 (neither
# divisible); symmetric x2=None with blocks of 3 (only i <= j computed).
BATCHING = [(None, True), (3, True), (3, False)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("trace_axes", [(-1,), ()], ids=["traced", "full"])
@pytest.mark.parametrize(
  "batch_size,with_x2", BATCHING, ids=["whole", "blocks", "blocks-sym"]
)
def test_empirical_matches_jacobian_reference(
  impl, trace_axes, batch_size, with_x2
):
  """Both implementations, whole or in blocks, equal J1 J2^T."""
  apply_fn, params = _net("mlp")
  x1, x2 = _images(1, 7), (_images(2, 5) if with_x2 else None)
  with jax.default_matmul_precision("highest"):
    k = ntk.empirical(
      apply_fn,
      params,
      x1,
      x2,
      trace_axes=trace_axes,
      implementation=impl,
      batch_size=batch_size,
    )
  want = _reference_ntk(apply_fn, params, x1, x2, trace_axes)
  assert k.shape == want.shape and k.dtype == jnp.float32
  assert _rel(k, want) < 1e-5


def test_empirical_auto_on_conv_net_in_blocks():
  """ "auto" on a conv net, blocks of 2 of 5 points, equals J J^T."""
  apply_fn, params = _net("conv")
  x = _images(3, 5)
  with jax.default_matmul_precision("highest"):
    k = ntk.empirical(apply_fn, params, x, batch_size=2)
  assert _rel(k, _reference_ntk(apply_fn, params, x, None, (-1,))) < 1e-5


def test_gradient_through_blocked_kernel_equals_unblocked():
  """d/dtheta ||Theta||_F^2 is the same computed whole or in blocks."""
  apply_fn, params = _net("mlp")
  x = _images(14, 5)

  def grads(batch_size):
    kernel = ntk.empirical_fn(
      apply_fn,
      implementation="jacobian_contraction",
      batch_size=batch_size,
    )
    loss = lambda p: jnp.sum(jnp.square(kernel(p, x)))
    with jax.default_matmul_precision("highest"):
      return ravel_pytree(jax.grad(loss)(params))[0]

  whole, blocks = grads(None), grads(2)
  assert _rel(blocks, whole) < 1e-5 and float(jnp.linalg.norm(whole)) > 0


def test_empirical_fn_does_not_recompile():
  """The jitted kernel of empirical_fn traces once for repeated shapes."""
  apply_fn, params = _net("mlp")
  traces = []

  def counted(p, x):
    traces.append(None)
    return apply_fn(p, x)

  kernel = ntk.empirical_fn(counted, implementation="ntk_vector_products")
  kernel(params, _images(4, 3))
  n = len(traces)
  k = kernel(params, _images(5, 3))
  assert len(traces) == n
  want = _reference_ntk(apply_fn, params, _images(5, 3), None, (-1,))
  assert _rel(k, want) < 1e-5


def test_forward_flops_closed_form():
  """Dense: 2 * sum(in * out); conv: 2 * H * W * C_out * 3 * 3 * C_in."""
  apply_fn, params = _net("mlp")
  assert ntk.forward_flops(apply_fn, params, _images(0, 5)) == (
    2 * (16 * 8 + 8 * NUM_CLASSES),
    0.0,
  )
  module = _ConvNet(channels=4)
  x = jax.ShapeDtypeStruct((2, 6, 6, 1), jnp.float32)
  params = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  dense, conv = ntk.forward_flops(module.apply, params, x)
  assert conv == 2 * 6 * 6 * 4 * 9 * 1
  assert dense == 2 * (6 * 6 * 4) * NUM_CLASSES


def _closed_form_costs(n1, n2, n_jac, k, k_c, p, dense, conv):
  """Novak et al. (2022) Table 1 forms with awt.ntk's documented constants."""
  fp = dense + conv
  jc = 3 * n_jac * k * fp + 2 * n1 * n2 * k_c * p + 64 * n_jac * k * p
  vp = n1 * n2 * k * (1 * dense + 4 * conv)
  return jc, vp


@pytest.mark.parametrize("trace_axes", [(-1,), ()], ids=["traced", "full"])
def test_cost_model_closed_form(trace_axes):
  """cost_model equals the documented formula, with and without x2."""
  apply_fn, params = _net("mlp")
  p = ravel_pytree(params)[0].size
  dense = 2 * (16 * 8 + 8 * NUM_CLASSES)
  k_c = NUM_CLASSES if trace_axes else NUM_CLASSES**2
  x1 = jax.ShapeDtypeStruct((6, 4, 4, 1), jnp.float32)
  x2 = jax.ShapeDtypeStruct((5, 4, 4, 1), jnp.float32)
  for other, n2, n_jac in ((None, 6, 6), (x2, 5, 11)):
    costs = ntk.cost_model(apply_fn, params, x1, other, trace_axes)
    jc, vp = _closed_form_costs(6, n2, n_jac, NUM_CLASSES, k_c, p, dense, 0)
    np.testing.assert_allclose(costs["jacobian_contraction"], jc)
    np.testing.assert_allclose(costs["ntk_vector_products"], vp)
    assert costs["jacobian_bytes"] == 4 * n_jac * NUM_CLASSES * p


def test_auto_choice_flips_with_batch_size_on_a_conv_net():
  """Conv net (FLOPs >> params): NTK-VP for 1 point, J J^T for 32 points.

  With a 16x16 image and 8 channels the forward pass costs ~10x the
  parameter count, so the N^2 NTK-vector products lose to the Jacobian
  contraction once N is more than a few; at N = 1 the Jacobian's memory
  term dominates. An MLP ([FP] ~ 2P) takes NTK-vector products at any N.
  """
  module = _ConvNet(channels=8)
  x_one = jax.ShapeDtypeStruct((1, 16, 16, 1), jnp.float32)
  x_many = jax.ShapeDtypeStruct((32, 16, 16, 1), jnp.float32)
  params = jax.eval_shape(module.init, jax.random.PRNGKey(0), x_one)
  p = sum(leaf.size for leaf in jax.tree.leaves(params))
  dense, conv = 2.0 * 16 * 16 * 8 * NUM_CLASSES, 2.0 * 16 * 16 * 8 * 9
  choices = []
  for n in (1, 32):
    jc, vp = _closed_form_costs(
      n, n, n, NUM_CLASSES, NUM_CLASSES, p, dense, conv
    )
    x = x_one if n == 1 else x_many
    choice = ntk.choose_implementation(module.apply, params, x)
    assert choice in IMPLS
    assert choice == (
      "ntk_vector_products" if vp < jc else "jacobian_contraction"
    )
    choices.append(choice)
  assert choices == ["ntk_vector_products", "jacobian_contraction"]
  apply_fn, mlp_params = _net("mlp")
  for n in (1, 32, 4096):
    x = jax.ShapeDtypeStruct((n, 4, 4, 1), jnp.float32)
    assert (
      ntk.choose_implementation(apply_fn, mlp_params, x)
      == "ntk_vector_products"
    )


def test_bad_arguments_raise():
  """Unknown implementation (listing the known), bad axes, bad batch_size."""
  apply_fn, _ = _net("mlp")
  with pytest.raises(
    ValueError,
    match="unknown NTK implementation 'structured_derivatives'; known: auto, "
    "jacobian_contraction, ntk_vector_products",
  ):
    ntk.empirical_fn(apply_fn, implementation="structured_derivatives")
  with pytest.raises(ValueError, match="trace_axes"):
    ntk.empirical_fn(apply_fn, trace_axes=(0,))
  with pytest.raises(ValueError, match="batch_size"):
    ntk.empirical_fn(apply_fn, batch_size=0)
  with pytest.raises(ValueError, match="unknown method 'foo'"):
    ntk.compare_to_linearization(
      apply_fn, {}, None, None, None, learning_rate=1.0, steps=1, method="foo"
    )


def _pgd(eps):
  return functools.partial(
    attacks.pgd, eps=eps, step_size=eps / 4 if eps else 0.01, steps=5
  )


def test_adversarial_ntk():
  """eps = 0: the clean NTK; eps > 0: a different kernel at points in the
  ball, equal to J J^T at those points; attack_params attacks other params.
  """
  apply_fn, params = _net("mlp")
  x = _images(6, 6)
  y = jnp.asarray(_rng(7).integers(0, NUM_CLASSES, 6), jnp.int32)
  key = jax.random.PRNGKey(8)
  clean = ntk.empirical(apply_fn, params, x)

  k0, x0 = ntk.adversarial(apply_fn, params, x, y, key, attack=_pgd(0.0))
  np.testing.assert_array_equal(x0, x)
  np.testing.assert_allclose(k0, clean, rtol=1e-6, atol=1e-7)

  eps = 0.2
  k1, x1 = ntk.adversarial(apply_fn, params, x, y, key, attack=_pgd(eps))
  d = np.abs(np.asarray(x1, np.float64) - np.asarray(x))
  assert d.max() <= eps + 1e-6 and d.max() > eps / 2
  assert np.min(x1) >= 0.0 and np.max(x1) <= 1.0
  assert _rel(k1, clean) > 1e-3
  assert _rel(k1, _reference_ntk(apply_fn, params, x1, None, (-1,))) < 1e-5

  # attack_params: a fake attack that moves x by a function of the logits
  # it is given tells which parameters were attacked.
  def shift(logits_fn, x, y, key):
    del y, key
    return x + 0.01 * jnp.tanh(logits_fn(x)[:, 0]).reshape(-1, 1, 1, 1)

  teacher = jax.tree.map(lambda a: 2.0 * a, params)
  k2, x2 = ntk.adversarial(
    apply_fn, params, x, y, key, attack=shift, attack_params=teacher
  )
  want_x = x + 0.01 * np.tanh(
    np.asarray(apply_fn(teacher, x))[:, :1, None, None]
  )
  np.testing.assert_allclose(x2, want_x, atol=1e-6)
  assert _rel(x2, shift(lambda z: apply_fn(params, z), x, y, key)) > 1e-4
  assert _rel(k2, _reference_ntk(apply_fn, params, x2, None, (-1,))) < 1e-5


def _random_psd(seed, n, rank=None):
  a = _rng(seed).normal(size=(n, rank or n))
  return a @ a.T


def test_distance_and_alignment():
  """Exact values and a NumPy reference, centered with H = I - 11^T/n."""
  k1, k2 = _random_psd(0, 5), _random_psd(1, 5)
  j1, j2 = jnp.asarray(k1, jnp.float32), jnp.asarray(k2, jnp.float32)
  assert float(ntk.relative_distance(j1, j1)) == 0.0
  np.testing.assert_allclose(ntk.relative_distance(1.5 * j2, j2), 0.5, 1e-6)
  np.testing.assert_allclose(
    ntk.relative_distance(j1, j2),
    np.linalg.norm(k1 - k2) / np.linalg.norm(k2),
    rtol=1e-5,
  )
  np.testing.assert_allclose(ntk.alignment(j1, j1), 1.0, rtol=1e-6)
  want = np.sum(k1 * k2) / (np.linalg.norm(k1) * np.linalg.norm(k2))
  np.testing.assert_allclose(ntk.alignment(j1, j2), want, rtol=1e-5)
  np.testing.assert_allclose(ntk.alignment(7.0 * j1, j2), want, rtol=1e-5)
  h = np.eye(5) - np.ones((5, 5)) / 5
  c1, c2 = h @ k1 @ h, h @ k2 @ h
  want_c = np.sum(c1 * c2) / (np.linalg.norm(c1) * np.linalg.norm(c2))
  for scale in (1.0, 0.01):
    np.testing.assert_allclose(
      ntk.alignment(scale * j1, j2, centered=True), want_c, rtol=1e-4
    )
  # Adding a constant (a mean shift in feature space) leaves it unchanged.
  np.testing.assert_allclose(
    ntk.alignment(j1 + 3.0, j2, centered=True), want_c, rtol=1e-4
  )


def test_spectra():
  """Eigenvalues vs eigvalsh; erank(I_n) = n, rank one -> 1; overlaps."""
  k = _random_psd(2, 6)
  evals = ntk.eigenvalues(jnp.asarray(k, jnp.float32))
  np.testing.assert_allclose(evals, np.linalg.eigvalsh(k)[::-1], rtol=1e-4)
  assert np.all(np.diff(np.asarray(evals)) <= 0)
  np.testing.assert_allclose(ntk.effective_rank(jnp.eye(7)), 7.0, rtol=1e-6)
  rank_one = jnp.asarray(_random_psd(3, 6, rank=1), jnp.float32)
  np.testing.assert_allclose(ntk.effective_rank(rank_one), 1.0, rtol=1e-4)
  np.testing.assert_allclose(
    ntk.effective_rank(jnp.diag(jnp.array([3.0, 3.0, 0.0]))), 2.0, rtol=1e-6
  )
  np.testing.assert_allclose(
    ntk.condition_number(jnp.diag(jnp.array([1.0, 4.0, 2.0]))), 4.0
  )
  assert ntk.condition_number(rank_one) == np.inf
  kj = jnp.asarray(k, jnp.float32)
  for top in (1, 3, 6):
    np.testing.assert_allclose(
      ntk.topk_eigenvector_overlap(kj, kj, top), 1.0, rtol=1e-5
    )
  # Top-2 eigenspaces span e0, e1 and e2, e3: orthogonal; top-3 share e2.
  a = jnp.diag(jnp.array([5.0, 4.0, 3.0, 2.0, 1.0]))
  b = jnp.diag(jnp.array([1.0, 2.0, 4.0, 5.0, 3.0]))
  np.testing.assert_allclose(ntk.topk_eigenvector_overlap(a, b, 2), 0.0)
  np.testing.assert_allclose(
    ntk.topk_eigenvector_overlap(a, b, 3), 1 / 3, rtol=1e-6
  )


def test_full_kernel_as_matrix_is_the_jacobian_gram():
  """to_matrix([N, N, K, K]) = J J^T with rows (example, logit)."""
  apply_fn, params = _net("mlp")
  x = _images(9, 4)
  k = ntk.empirical(apply_fn, params, x, trace_axes=())
  j = _jacobian(apply_fn, params, x).reshape(4 * NUM_CLASSES, -1)
  assert _rel(ntk.to_matrix(k), j @ j.T) < 1e-5
  np.testing.assert_allclose(
    ntk.effective_rank(k),
    _erank(np.linalg.eigvalsh(j @ j.T)),
    rtol=1e-3,
  )


def _erank(evals):
  p = np.maximum(evals, 0) / np.maximum(evals, 0).sum()
  p = p[p > 0]
  return np.exp(-np.sum(p * np.log(p)))


def _regression_problem(seed, n=6, m=3, k=2):
  rng = _rng(seed)
  x = rng.normal(size=(n + m, 3))
  gram = np.exp(-0.5 * np.sum((x[:, None] - x[None]) ** 2, axis=-1))
  y = rng.normal(size=(n, k))
  f0 = rng.normal(size=(n + m, k)) * 0.1
  return gram[:n, :n], gram[n:, :n], y, f0[:n], f0[n:]


def _f32(*arrays):
  return [jnp.asarray(a, jnp.float32) for a in arrays]


def test_linearized_mse_matches_closed_form():
  """t = inf: kernel regression; finite t: expm by NumPy's eigh; t = 0: f0.

  Traced kernel [N, N] acts on each logit; the full kernel Theta (x) I_K
  (as [N, N, K, K]) gives the same predictions.
  """
  k_tt, k_st, y, f0, g0 = _regression_problem(10)
  n, c = y.shape
  lr, ts = 0.5, np.array([0.0, 3.0, 40.0, np.inf])
  full = np.einsum("ab,kl->abkl", k_tt, np.eye(c))
  full_st = np.einsum("ab,kl->abkl", k_st, np.eye(c))
  evals, evecs = np.linalg.eigh(k_tt)
  want_train, want_test = [], []
  for t in ts:
    decay = np.exp(-lr * t * evals / (n * c))
    e = evecs @ np.diag(decay) @ evecs.T
    want_train.append(y + e @ (f0 - y))
    inv = evecs @ np.diag((1 - decay) / evals) @ evecs.T
    want_test.append(g0 + k_st @ inv @ (y - f0))
  np.testing.assert_allclose(
    want_test[-1], g0 + k_st @ np.linalg.solve(k_tt, y - f0), rtol=1e-8
  )
  for kernels in ((k_tt, k_st), (full, full_st)):
    fx_train, fx_test = ntk.linearized_mse_predictions(
      *_f32(*kernels, y),
      ts,
      learning_rate=lr,
      fx_train_0=jnp.asarray(f0, jnp.float32),
      fx_test_0=jnp.asarray(g0, jnp.float32),
    )
    assert fx_train.shape == (4, n, c) and fx_test.shape == (4, 3, c)
    np.testing.assert_allclose(fx_train, np.stack(want_train), atol=2e-4)
    np.testing.assert_allclose(fx_test, np.stack(want_test), atol=2e-4)
  fx_train, fx_test = ntk.linearized_mse_predictions(
    *_f32(k_tt, k_st, y), ts[:1], learning_rate=lr
  )
  np.testing.assert_allclose(fx_train[0], 0.0)
  np.testing.assert_allclose(fx_test[0], 0.0)


def test_linearized_ce_matches_euler_integration():
  """NT's ODE solution equals a fine explicit Euler integration in NumPy."""
  k_tt, k_st, _, f0, g0 = _regression_problem(11, k=3)
  n = k_tt.shape[0]
  labels = _rng(12).integers(0, 3, n)
  y = np.eye(3)[labels]
  lr, t_end, dt = 2.0, 5.0, 1e-3
  fx_train, fx_test = ntk.linearized_ce_predictions(
    *_f32(k_tt, k_st, y),
    jnp.array([t_end]),
    learning_rate=lr,
    fx_train_0=jnp.asarray(f0, jnp.float32),
    fx_test_0=jnp.asarray(g0, jnp.float32),
  )
  f, g = f0.copy(), g0.copy()
  for _ in range(int(round(t_end / dt))):
    p = np.exp(f - f.max(axis=1, keepdims=True))
    grad = (p / p.sum(axis=1, keepdims=True) - y) / n  # d L / d f, L mean.
    f, g = f - lr * dt * k_tt @ grad, g - lr * dt * k_st @ grad
  assert _rel(f, f0) > 0.1  # It moved.
  np.testing.assert_allclose(fx_train[0], f, atol=1e-3)
  np.testing.assert_allclose(fx_test[0], g, atol=1e-3)


@functools.cache
def _wide_mlp():
  """1-hidden-layer ReLU MLP, width 512, NTK parameterization; tiny data."""
  init_fn, apply_fn, _ = stax.serial(
    stax.Dense(512, W_std=1.5, b_std=0.1),
    stax.Relu(),
    stax.Dense(2, W_std=1.5, b_std=0.1),
  )
  rng = _rng(13)
  x_train, x_test = rng.normal(size=(8, 4)), rng.normal(size=(4, 4))
  y_train = rng.normal(size=(8, 2))
  _, params = init_fn(jax.random.PRNGKey(1), x_train.shape)
  data = _f32(x_train, y_train, x_test)
  k = ntk.empirical(apply_fn, params, data[0], trace_axes=())
  # Stable, small step: eta * lambda_max / (N K) = 0.05.
  lr = 0.05 * y_train.size / float(ntk.eigenvalues(k)[0])
  return apply_fn, params, data, lr


@pytest.mark.slow
def test_wide_network_stays_close_to_its_linearization():
  """Lee et al. (2019): a wide net trained by GD tracks its linearization.

  Width 512, 400 full-batch steps (the MSE falls ~10x): the relative
  distance of outputs stays below 0.1 on train and test points at every
  step (measured: ~0.02 train, ~0.03 test). The closed-form kernel flow
  agrees with discrete GD on nt.linearize to O(learning rate).
  """
  apply_fn, params, (x_train, y_train, x_test), lr = _wide_mlp()
  runs = {
    method: ntk.compare_to_linearization(
      apply_fn,
      params,
      x_train,
      y_train,
      x_test,
      learning_rate=lr,
      steps=400,
      method=method,
    )
    for method in ("linearize", "kernel")
  }
  lin = runs["linearize"]
  assert lin.fx_train.shape == (401, 8, 2) and lin.fx_test.shape == (401, 4, 2)
  assert float(lin.train_distance[0]) == 0.0
  loss = [float(ntk.mse(lin.fx_train[i], y_train)) for i in (0, -1)]
  assert loss[1] < 0.2 * loss[0]
  for run in runs.values():
    assert float(jnp.max(run.train_distance)) < 0.1
    assert float(jnp.max(run.test_distance)) < 0.1
  # Both linearizations: discretization error ~ eta lambda / (N K) = 0.05.
  kern = runs["kernel"]
  gap = jax.vmap(ntk.relative_distance)(kern.fx_train_lin, lin.fx_train_lin)
  assert float(jnp.max(gap)) < 0.05
