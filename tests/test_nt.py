"""Tests for awt._nt: neural-tangents on current JAX, against closed forms.

Every NT result is checked against an independent reference: the empirical
NTK against a plain-JAX ``J J^T`` from ``jax.jacobian``, the infinite-width
kernels against the arc-cosine kernels of Cho & Saul (2009), the infinite-time
prediction against kernel regression, gradients against central finite
differences. Imports that must not load TensorFlow run in a subprocess.
"""

import functools
import importlib
import os
import pathlib
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import util as jax_util
from jax.flatten_util import ravel_pytree

from awt import _nt

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_CLASSES = 10
INPUT = (1, 8, 8, 1)  # [B, H, W, C] of the test networks.


class _MLP(nn.Module):
  """8x8x1 -> 16 -> 10 ReLU MLP."""

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(16)(x))
    return nn.Dense(NUM_CLASSES)(x)


class _ConvNet(nn.Module):
  """Conv 4 channels 3x3 -> ReLU -> flatten -> Dense 10."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(NUM_CLASSES)(x)


MODELS = {"mlp": _MLP, "conv": _ConvNet}


def _rel_frobenius(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _rng(seed):
  # NumPy draws test data: no XLA compile per shape, unlike eager jax.random.
  return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def inputs():
  """x1: [5, 8, 8, 1], x2: [3, 8, 8, 1] float32 in [0, 1]."""
  x = _rng(0).uniform(size=(8, *INPUT[1:])).astype(np.float32)
  return jnp.asarray(x[:5]), jnp.asarray(x[5:])


@functools.cache
def _init(name):
  """(apply_fn, variables) of test network ``name``, built once.

  Weights are N(0, 1/fan_in), biases N(0, 0.1^2) (non-zero, so their part of
  the NTK is tested), drawn with NumPy into the shapes ``init`` would give.
  """
  module = MODELS[name]()
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros(INPUT))
  leaves, treedef = jax.tree.flatten(shapes)
  rng = _rng(1)

  def draw(shape):
    scale = 0.1 if len(shape) == 1 else 1 / np.sqrt(np.prod(shape[:-1]))
    return jnp.asarray(rng.normal(size=shape).astype(np.float32) * scale)

  variables = jax.tree.unflatten(treedef, [draw(x.shape) for x in leaves])
  return module.apply, variables


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request, inputs):
  """(apply_fn, variables, J(x1), J(x2)) for each network; J: [N, K, P].

  J[n, k, p] = d f(x)[n, k] / d theta[p], theta the raveled parameters,
  from ``jax.jacobian`` of the flattened outputs.
  """
  apply_fn, variables = _init(request.param)
  x1, x2 = inputs
  flat, unravel = ravel_pytree(variables)
  x = jnp.concatenate([x1, x2])
  with jax.default_matmul_precision("highest"):
    jac = jax.jit(jax.jacobian(lambda t: apply_fn(unravel(t), x).ravel()))(flat)
  jac = np.asarray(jac, np.float64).reshape(x.shape[0], NUM_CLASSES, -1)
  return apply_fn, variables, jac[: x1.shape[0]], jac[x1.shape[0] :]


@pytest.mark.parametrize("impl", sorted(_nt.IMPLEMENTATIONS))
@pytest.mark.parametrize("trace_axes", [(-1,), ()], ids=["traced", "full"])
def test_empirical_ntk_matches_jacobian_contraction(
  model, inputs, impl, trace_axes
):
  """NT's empirical NTK equals J1 J2^T; traced over logits it is the mean.

  Traced: (1/K) sum_k J1_k J2_k^T, [N1, N2]. Full: [N1, N2, K, K].
  """
  apply_fn, variables, j1, j2 = model
  x1, x2 = inputs
  ntk_fn = _nt.nt.empirical_ntk_fn(
    apply_fn,
    trace_axes=trace_axes,
    vmap_axes=0,
    implementation=_nt.implementation(impl),
  )
  with jax.default_matmul_precision("highest"):
    ntk = jax.jit(ntk_fn)(x1, x2, variables)
  if trace_axes:
    want = np.einsum("akp,bkp->ab", j1, j2) / NUM_CLASSES
  else:
    want = np.einsum("akp,blp->abkl", j1, j2)
  assert ntk.shape == want.shape
  assert ntk.dtype == jnp.float32
  assert _rel_frobenius(ntk, want) < 1e-5


def _arccos_relu_kernels(x1, x2, w_std, b_std):
  """Closed-form NNGP and NTK of Dense -> ReLU -> Dense at infinite width.

  Uses the arc-cosine kernels of degree 1 and 0: for (u, v) Gaussian with
  covariance [[s11, s12], [s12, s22]] and theta = arccos(s12 / sqrt(s11 s22)),
  E[relu(u) relu(v)] = sqrt(s11 s22) (sin theta + (pi - theta) cos theta)
  / (2 pi) and E[relu'(u) relu'(v)] = (pi - theta) / (2 pi).

  Args:
    x1: [N1, D] float64 inputs.
    x2: [N2, D] float64 inputs.
    w_std: weight standard deviation (NTK parameterization).
    b_std: bias standard deviation.

  Returns:
    (nngp, ntk), each [N1, N2] float64.

  References:
    Cho & Saul, "Kernel Methods for Deep Learning", NeurIPS 2009, Sec. 2.1:
    k_n = |x|^n |y|^n J_n(theta) / pi, J_0 = pi - theta,
    J_1 = sin theta + (pi - theta) cos theta (the expectations above are
    k_1 / 2 and k_0 / 2).
    Jacot et al., "Neural Tangent Kernel", NeurIPS 2018, Theorem 1 (NTK
    recursion Theta_2 = Sigma_2 + Theta_1 * Sigma_dot_2).
  """
  d = x1.shape[1]
  s12 = w_std**2 * x1 @ x2.T / d + b_std**2
  s11 = w_std**2 * np.sum(x1 * x1, axis=1) / d + b_std**2
  s22 = w_std**2 * np.sum(x2 * x2, axis=1) / d + b_std**2
  norms = np.sqrt(np.outer(s11, s22))
  theta = np.arccos(np.clip(s12 / norms, -1.0, 1.0))
  e_relu = norms * (np.sin(theta) + (np.pi - theta) * np.cos(theta))
  e_relu /= 2 * np.pi
  e_drelu = (np.pi - theta) / (2 * np.pi)
  nngp = w_std**2 * e_relu + b_std**2
  ntk = nngp + w_std**2 * e_drelu * s12
  return nngp, ntk


def test_stax_relu_kernel_matches_arccos_closed_form():
  """stax's infinite-width NNGP and NTK equal the arc-cosine closed form."""
  w_std, b_std = 1.5, 0.3
  _, _, kernel_fn = _nt.stax.serial(
    _nt.stax.Dense(64, W_std=w_std, b_std=b_std),
    _nt.stax.Relu(),
    _nt.stax.Dense(1, W_std=w_std, b_std=b_std),
  )
  x = _rng(2).normal(size=(5, 4))
  x1, x2 = x[:3], x[3:]
  kernel = jax.jit(kernel_fn, static_argnames="get")(
    jnp.asarray(x1, jnp.float32), jnp.asarray(x2, jnp.float32), ("nngp", "ntk")
  )
  nngp, ntk = _arccos_relu_kernels(x1, x2, w_std, b_std)
  np.testing.assert_allclose(kernel.nngp, nngp, rtol=1e-5)
  np.testing.assert_allclose(kernel.ntk, ntk, rtol=1e-5)


def test_gradient_descent_mse_at_infinity_is_kernel_regression():
  """At t = inf the NTK-GD prediction is K_test,train K_train^-1 y_train."""
  rng = _rng(3)
  x_train, x_test = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
  y_train = rng.normal(size=(6, 2))

  def rbf(a, b):
    return np.exp(-0.5 * np.sum((a[:, None] - b[None]) ** 2, axis=-1))

  k_train, k_test_train = rbf(x_train, x_train), rbf(x_test, x_train)
  assert np.linalg.cond(k_train) < 1e3  # Keeps the float32 solve accurate.
  predict_fn = _nt.predict.gradient_descent_mse(
    jnp.asarray(k_train, jnp.float32), jnp.asarray(y_train, jnp.float32)
  )
  fx_train, fx_test = predict_fn(
    None, 0.0, 0.0, jnp.asarray(k_test_train, jnp.float32)
  )
  want = k_test_train @ np.linalg.solve(k_train, y_train)
  np.testing.assert_allclose(fx_test, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(fx_train, y_train, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", sorted(_nt.IMPLEMENTATIONS))
def test_grad_through_empirical_ntk_matches_finite_difference(inputs, impl):
  """d/dtheta ||Theta(theta)||_F^2 along v equals a central difference."""
  apply_fn, variables = _init("mlp")
  x1, _ = inputs
  ntk_fn = _nt.nt.empirical_ntk_fn(
    apply_fn,
    trace_axes=(-1,),
    vmap_axes=0,
    implementation=_nt.implementation(impl),
  )
  flat, unravel = ravel_pytree(variables)

  def loss(theta):
    return jnp.sum(ntk_fn(x1, None, unravel(theta)) ** 2)

  v = _rng(5).normal(size=flat.shape)
  v /= np.linalg.norm(v)
  with jax.default_matmul_precision("highest"):
    grad = jax.jit(jax.grad(loss))(flat)
    # The difference runs in float64 (scoped): in float32 its rounding error
    # (~eps_32 * loss / step) is ~1e-3 of the derivative, and a step large
    # enough to beat it can cross ReLU kinks.
    step = 1e-4
    theta = np.asarray(flat, np.float64)
    with jax.enable_x64(True):
      loss64 = jax.jit(loss)
      plus = loss64(jnp.asarray(theta + step * v))
      minus = loss64(jnp.asarray(theta - step * v))
      assert plus.dtype == jnp.float64
  assert grad.dtype == jnp.float32
  directional = np.dot(np.asarray(grad, np.float64), v)
  finite_diff = (float(plus) - float(minus)) / (2 * step)
  np.testing.assert_allclose(directional, finite_diff, rtol=1e-4)


def test_implementation_registry():
  """Names map to the two working NT implementations; typos list known."""
  assert _nt.implementation("jacobian_contraction") == (
    _nt.nt.NtkImplementation.JACOBIAN_CONTRACTION
  )
  assert set(_nt.IMPLEMENTATIONS.values()) == {
    _nt.nt.NtkImplementation.JACOBIAN_CONTRACTION,
    _nt.nt.NtkImplementation.NTK_VECTOR_PRODUCTS,
  }
  with pytest.raises(
    ValueError,
    match="unknown NTK implementation 'structured_derivatives'; known: "
    "jacobian_contraction, ntk_vector_products",
  ):
    _nt.implementation("structured_derivatives")


def test_aliases_restored_only_when_missing(monkeypatch):
  """A name JAX has is kept; a missing one comes from its current home."""
  marker = object()
  monkeypatch.setattr(jax.core, "Jaxpr", marker, raising=False)
  _nt._restore_aliases()
  assert jax.core.Jaxpr is marker

  monkeypatch.delattr(jax.core, "Jaxpr")
  _nt._restore_aliases()
  assert jax.core.Jaxpr is jax.extend.core.Jaxpr


def test_alias_without_any_home_is_skipped(monkeypatch):
  """A name found in none of its candidate homes is left unset, no error."""
  monkeypatch.setattr(
    _nt,
    "_ALIASES",
    ((jax.core, "NoSuchName", ("no_such_module", "jax._src.core")),),
  )
  _nt._restore_aliases()
  assert not hasattr(jax.core, "NoSuchName")


def test_jax_util_installed_when_missing(monkeypatch):
  """Without an importable jax.util, a module with safe_map/safe_zip appears."""
  real_import_module = importlib.import_module

  def import_module(name):
    if name == "jax.util":
      raise ImportError("simulated: no jax.util")
    return real_import_module(name)

  monkeypatch.delitem(sys.modules, "jax.util", raising=False)
  monkeypatch.setattr(importlib, "import_module", import_module)
  _nt._install_jax_util()
  assert sys.modules["jax.util"].safe_map is jax_util.safe_map
  assert sys.modules["jax.util"].safe_zip is jax_util.safe_zip


def _run_python(*parts):
  """Runs the dedented ``parts`` as one script in a fresh interpreter."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO), env.get("PYTHONPATH")) if p
  )
  code = "\n".join(textwrap.dedent(part) for part in parts)
  result = subprocess.run(
    [sys.executable, "-c", code],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,  # a hang guard only
  )
  assert result.returncode == 0, result.stderr[-3000:]


_NO_TENSORFLOW = """
  for name in ("tensorflow", "tf2jax"):
    assert name not in sys.modules, f"{name} was imported"
"""


def test_imports_keep_tensorflow_out():
  """`import awt` (the package) imports neither TensorFlow nor tf2jax; nor
  does `import awt._nt`, which loads NT with nt.experimental a stub.

  One fresh interpreter checks both, the package first (so that what it
  imports is checked before the bridge adds its own).
  """
  _run_python(
    "import sys\nimport awt",
    _NO_TENSORFLOW,
    """
    import awt._nt as bridge
    """,
    _NO_TENSORFLOW,
    """
    experimental = bridge.nt.experimental
    assert experimental is sys.modules["neural_tangents.experimental"]
    try:
      experimental.empirical_ntk_fn_tf
    except AttributeError as e:
      assert "unavailable through awt" in str(e), e
    else:
      raise AssertionError("the nt.experimental stub did not raise")
    """,
  )
