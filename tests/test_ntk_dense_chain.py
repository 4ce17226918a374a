"""awt.ntk.dense_chain_fn: the layer-by-layer NTK of a ReLU Dense chain
against neural-tangents' Jacobian contraction (awt.ntk.empirical_fn) of the
same network, in values and in the gradient through the kernel."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from awt import models, ntk, training
from awt.pruning import awt as pruning_awt


def _mlp(widths):
  model = models.get("mlp", 4, widths=widths)
  params, _ = training.init_variables(model, jax.random.PRNGKey(0), (5, 5, 1))
  # Non-zero biases, so that the bias term of each layer is exercised.
  params = jax.tree.map(lambda p: p + 0.1 if p.ndim == 1 else p, params)
  f = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
  return model, params, f


def _rel(a, b) -> float:
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.parametrize("widths", [(), (9, 6)])
@pytest.mark.parametrize("trace_axes", [(-1,), ()])
@pytest.mark.parametrize("cross", [False, True])
def test_equals_the_jacobian_contraction(widths, trace_axes, cross):
  model, params, f = _mlp(widths)
  x1 = jax.random.uniform(jax.random.PRNGKey(1), (5, 5, 5, 1))
  x2 = (
    jax.random.uniform(jax.random.PRNGKey(2), (3, 5, 5, 1)) if cross else None
  )
  inputs, layers = pruning_awt.dense_chain(model)
  got = ntk.dense_chain_fn(inputs, layers, trace_axes=trace_axes)(
    params, x1, x2
  )
  want = ntk.empirical_fn(
    f, trace_axes=trace_axes, implementation="jacobian_contraction"
  )(params, x1, x2)
  assert got.shape == want.shape
  assert _rel(got, want) <= 1e-5


def test_gradient_through_the_kernel_equals_the_jacobian_contractions():
  """The search differentiates the student's kernel in the weights."""
  model, params, f = _mlp((9, 6))
  x1 = jax.random.uniform(jax.random.PRNGKey(1), (4, 5, 5, 1))
  x2 = jax.random.uniform(jax.random.PRNGKey(2), (4, 5, 5, 1))
  target = jax.random.normal(jax.random.PRNGKey(3), (4, 4, 4, 4))
  inputs, layers = pruning_awt.dense_chain(model)
  kernels = {
    "dense_chain": ntk.dense_chain_fn(inputs, layers, trace_axes=()),
    "jacobian": ntk.empirical_fn(
      f, trace_axes=(), implementation="jacobian_contraction"
    ),
  }
  grads = {
    name: jax.grad(lambda p, k=k: jnp.sum((k(p, x1, x2) - target) ** 2))(params)
    for name, k in kernels.items()
  }
  flat = {k: jax.flatten_util.ravel_pytree(g)[0] for k, g in grads.items()}
  assert _rel(flat["dense_chain"], flat["jacobian"]) <= 1e-5


def test_no_layers_is_an_error():
  with pytest.raises(ValueError, match="at least one layer"):
    ntk.dense_chain_fn(lambda p, x: x, ())


def test_only_float32_mlps_are_dense_chains():
  assert pruning_awt.dense_chain(models.get("lenet5", 10)) is None
  assert (
    pruning_awt.dense_chain(models.get("mlp", 10, dtype=jnp.bfloat16)) is None
  )
  _, layers = pruning_awt.dense_chain(models.get("mlp", 10, widths=(5, 4, 3)))
  assert layers == ("fc1", "fc2", "fc3", "head")
  with pytest.raises(ValueError, match="needs a float32 awt.models.MLP"):
    pruning_awt.ntk_fn(
      lambda p, x: x, (), pruning_awt.LAYERWISE, models.get("lenet5", 10)
    )


def test_kernel_over_masked_weights_is_not_layerwise():
  """``J diag(m) Jᵀ`` does not factor by layers: asking for it fails."""
  model, params, f = _mlp((9,))
  mask = jax.tree.map(jnp.ones_like, params)
  x = jnp.zeros((4, 5, 5, 1))
  with pytest.raises(ValueError, match="needs a float32"):
    pruning_awt.student_ntk(
      f,
      params,
      mask,
      x,
      kernel="trace",
      student="masked",
      implementation=pruning_awt.LAYERWISE,
      model=model,
    )
  np.testing.assert_allclose(
    pruning_awt.student_ntk(
      f,
      params,
      mask,
      x,
      kernel="trace",
      student="all",
      implementation=pruning_awt.LAYERWISE,
      model=model,
    ),
    pruning_awt.ntk_of(f, params, x, kernel="trace"),
    rtol=1e-5,
    atol=1e-6,
  )
