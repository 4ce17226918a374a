"""awt.ntk.structured_fn: the NTK with its Dense layers factored, against
neural-tangents' Jacobian contraction (awt.ntk.empirical_fn) of the same
network, in values and in the gradient through the kernel."""

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import pytest

from awt import models, ntk, training


def _net(name, shape, **kw):
  model = models.get(name, 4, **kw)
  params, _ = training.init_variables(model, jax.random.PRNGKey(0), shape)
  # Non-zero biases, so that each layer's bias term is exercised.
  params = jax.tree.map(lambda p: p + 0.1 if p.ndim == 1 else p, params)
  return params, lambda p, x: model.apply({"params": p}, x)


class _Odd(nn.Module):
  """A Dense without bias, one called twice, one on [B, T, D] inputs."""

  @nn.compact
  def __call__(self, x):
    h = x.reshape(x.shape[0], -1)
    h = jnp.tanh(nn.Dense(6, use_bias=False, name="no_bias")(h))
    shared = nn.Dense(6, name="shared")
    h = jnp.tanh(shared(jnp.tanh(shared(h))))
    h = nn.Dense(3, name="per_token")(h.reshape(h.shape[0], 2, 3))
    return nn.Dense(4, name="head")(h.reshape(h.shape[0], -1))


def _rel(a, b) -> float:
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _reference(f, trace_axes):
  return ntk.empirical_fn(
    f, trace_axes=trace_axes, implementation="jacobian_contraction"
  )


NETS = {
  "linear": lambda: _net("mlp", (5, 5, 1), widths=()),
  "mlp": lambda: _net("mlp", (5, 5, 1), widths=(9, 6)),
  "lenet5": lambda: _net("lenet5", (12, 12, 1)),
  "odd": lambda: (
    _Odd().init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 1)))["params"],
    lambda p, x: _Odd().apply({"params": p}, x),
  ),
}


@pytest.mark.parametrize(
  "net,trace_axes",
  [
    *((n, t) for n in ("linear", "mlp", "odd") for t in ((-1,), ())),
  ],
)
def test_equals_the_jacobian_contraction(net, trace_axes):
  params, f = NETS[net]()
  x1 = jax.random.uniform(jax.random.PRNGKey(1), (3, 5, 5, 1))
  x2 = jax.random.uniform(jax.random.PRNGKey(2), (2, 5, 5, 1))
  for a, b in ((x1, None), (x1, x2)):
    got = ntk.structured_fn(f, trace_axes=trace_axes)(params, a, b)
    want = _reference(f, trace_axes)(params, a, b)
    assert got.shape == want.shape
    assert _rel(got, want) <= 1e-5


def test_which_dense_layers_are_factored():
  """Once-called Dense layers on [B, D] inputs; shared or per-token ones
  stay in the Jacobian part."""
  params, f = NETS["odd"]()
  x = jnp.zeros((2, 5, 5, 1))
  assert list(ntk.dense_layers(f, params, x)) == [("no_bias",), ("head",)]
  params, f = NETS["mlp"]()
  assert list(ntk.dense_layers(f, params, x)) == [("fc1",), ("fc2",), ("head",)]
  assert ntk.structured_fraction(f, params, x) == 1.0
  params, f = _net("lenet5", (12, 12, 1))
  fraction = ntk.structured_fraction(f, params, jnp.zeros((1, 12, 12, 1)))
  assert 0.5 < fraction < 1.0


def _value_and_vjp(kernel, params, x1, x2, cotangent):
  out, vjp = jax.vjp(lambda p: kernel(p, x1, x2), params)
  return out, jax.flatten_util.ravel_pytree(vjp(cotangent))[0]


@pytest.mark.parametrize(
  "net", ["odd", pytest.param("lenet5", marks=pytest.mark.slow)]
)
def test_value_and_gradient_equal_the_jacobian_contractions(net):
  """The full cross-kernel and the gradient through it in the weights (the
  search differentiates the student's kernel); both nets have weights
  outside the factored Dense layers (LeNet-5: its convolutions)."""
  params, f = NETS[net]()
  side = 12 if net == "lenet5" else 5
  x1 = jax.random.uniform(jax.random.PRNGKey(1), (3, side, side, 1))
  x2 = jax.random.uniform(jax.random.PRNGKey(2), (2, side, side, 1))
  cotangent = jax.random.normal(jax.random.PRNGKey(3), (3, 2, 4, 4))
  got = _value_and_vjp(
    ntk.structured_fn(f, trace_axes=()), params, x1, x2, cotangent
  )
  want = _value_and_vjp(_reference(f, ()), params, x1, x2, cotangent)
  for a, b in zip(got, want, strict=True):
    assert a.shape == b.shape
    assert _rel(a, b) <= 1e-5


def test_empirical_fn_offers_it_by_name_and_in_blocks():
  params, f = NETS["mlp"]()
  x = jax.random.uniform(jax.random.PRNGKey(1), (7, 5, 5, 1))
  got = ntk.empirical_fn(f, implementation="structured", batch_size=3)(
    params, x
  )
  assert _rel(got, _reference(f, (-1,))(params, x)) <= 1e-5
  assert "structured" in ntk.IMPLEMENTATION_NAMES


def test_a_jitted_apply_fn_with_a_cached_trace():
  """A jitted apply function whose trace is cached is not re-traced, so
  flax's interceptor does not see its Dense layers. Cached everywhere: no
  layer is factored and the kernel is the full Jacobian contraction's.
  Cached only after the layers were found: a clear error, never a kernel
  without their terms."""
  model = models.get("mlp", 4, widths=(9, 6))
  params, f = NETS["mlp"]()
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 5, 5, 1))
  jitted = jax.jit(model.apply)
  jitted({"params": params}, x[:1])  # traced at the per-example shape

  def cached(p, v):
    return jitted({"params": p}, v)

  assert not ntk.dense_layers(cached, params, x)
  got = ntk.structured_fn(cached, trace_axes=())(params, x)
  assert _rel(got, _reference(f, ())(params, x)) <= 1e-5
  calls = []

  def cached_after_the_first_trace(p, v):
    calls.append(1)
    return f(p, v) if len(calls) == 1 else cached(p, v)

  kernel = ntk.structured_fn(cached_after_the_first_trace, trace_axes=())
  with pytest.raises(ValueError, match="did not call the Dense layers"):
    kernel(params, x)
