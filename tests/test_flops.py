"""The jaxpr FLOP counter of the benchmarks (``benchmarks/_flops.py``).

Checked against XLA's own cost analysis on loop-free programs, and on
loops against the body's count times the trip count (which XLA's analysis
does not do: it counts a loop body once).
"""

import functools

import jax
import jax.numpy as jnp
import optax
import pytest

from awt import models
from benchmarks import _flops

# Relative agreement with XLA's "flops" on a loop-free forward+backward
# pass. Matrix products and convolutions (counted exactly by both, measured
# equal) are over 90% of the count; the rest is elementwise work, which
# XLA's optimizer partly folds away or adds (the softmax through its own
# decomposition). Measured: 0.1-0.2% apart on these programs.
XLA_TOLERANCE = 0.02


def _loss_and_grad(model):
  def loss(params, x, y):
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return jax.value_and_grad(loss)


@pytest.mark.parametrize(
  "name", ["mlp", pytest.param("lenet5", marks=pytest.mark.slow)]
)
def test_agrees_with_xla_on_a_loop_free_program(name):
  # XLA's products: its cost analysis does not see dense_impl="mkl"'s
  # custom calls (which the jaxpr count does: tests/test_cpu_gemm.py).
  model = {"mlp": models.MLP, "lenet5": models.LeNet5}[name](
    num_classes=10, dense_impl="xla"
  )
  x = jnp.zeros((32, 28, 28, 1))
  y = jnp.zeros((32,), jnp.int32)
  params = model.init(jax.random.key(0), x[:1])["params"]
  fn = _loss_and_grad(model)
  ours = _flops.count(fn, params, x, y)
  xla = _flops.xla_flops(fn, params, x, y)
  assert ours.unbounded_loops == 0
  # Matrix products and convolutions dominate the count.
  assert (ours.matmul + ours.conv) / ours.total > 0.9
  assert abs(ours.total - xla) / xla < XLA_TOLERANCE, (ours, xla)


@pytest.mark.parametrize(
  "stride, padding", [((1, 1), "SAME"), ((2, 2), "VALID")]
)
def test_convolutions_count_as_in_xla(stride, padding):
  """Forward, filter and input gradients of a lax convolution, exactly.

  The strided convolution's input gradient is a convolution over a dilated
  input: its taps on the holes are not work, in XLA's count nor in ours.
  """
  dn = ("NHWC", "HWIO", "NHWC")

  def f(w, x):
    y = jax.lax.conv_general_dilated(
      x, w, stride, padding, dimension_numbers=dn
    )
    return jnp.sum(y)

  w, x = jnp.ones((5, 5, 6, 16)), jnp.ones((8, 28, 28, 6))
  for fn in (jax.grad(f, 0), jax.grad(f, 1)):
    ours = _flops.count(fn, w, x)
    assert ours.conv == _flops.xla_flops(fn, w, x)
  ours = _flops.count(f, w, x)
  # The sum: n additions here, n or n - 1 in XLA (depending on its plan).
  assert abs(ours.total - _flops.xla_flops(f, w, x)) <= 1


def test_loop_is_length_times_its_body():
  a = jnp.ones((64, 64))

  def body(x):
    return jnp.tanh(x @ a) + 1.0

  x = jnp.ones((8, 64))
  once = _flops.count(body, x)
  assert once.matmul == 2 * 8 * 64 * 64
  assert once.elementwise == 8 * 64
  assert once.transcendentals == 8 * 64
  for loop in (
    lambda x: jax.lax.fori_loop(0, 10, lambda i, x: body(x), x),
    lambda x: jax.lax.scan(lambda c, _: (body(c), None), x, None, length=10)[0],
  ):
    looped = _flops.count(loop, x)
    assert looped.matmul == 10 * once.matmul
    assert looped.transcendentals == 10 * once.transcendentals
    assert looped.unbounded_loops == 0
    # What XLA reports: the body once (the reason for this counter).
    assert _flops.xla_flops(loop, x) < 2 * once.total


def test_while_loop_is_flagged_and_cond_takes_the_larger_branch():
  a = jnp.ones((16, 16))

  def with_while(x):
    return jax.lax.while_loop(lambda x: x.sum() < 1e3, lambda x: x @ a, x)

  counted = _flops.count(with_while, jnp.ones((4, 16)))
  assert counted.unbounded_loops == 1
  assert counted.matmul == 2 * 4 * 16 * 16

  def with_cond(p, x):
    return jax.lax.cond(p, lambda x: x @ a @ a, lambda x: x + 1.0, x)

  counted = _flops.count(with_cond, True, jnp.ones((4, 16)))
  assert counted.matmul == 2 * (2 * 4 * 16 * 16)


def test_counting_jit_counts_concrete_calls_once_each():
  counter = _flops.COUNTER
  counter.reset()
  a = jnp.ones((32, 32))

  @functools.partial(_flops.counting_jit, static_argnames=("times",))
  def inner(x, times):
    for _ in range(times):
      x = x @ a
    return x

  outer = _flops.counting_jit(lambda x: inner(x, times=1) @ a)
  x = jnp.ones((4, 32))
  inner(x, times=2)
  inner(x, times=2)
  assert counter.traces == 1  # Cached per signature.
  inner(x, times=3)
  outer(x)  # inner's call inside outer is counted as part of outer.
  mm = 2 * 4 * 32 * 32
  assert counter.calls == 4
  assert counter.flops.matmul == (2 + 2 + 3 + 2) * mm
  calls, flops = counter.by_function[inner.__qualname__]
  assert (calls, flops.matmul) == (3, (2 + 2 + 3) * mm)
  assert jnp.allclose(inner(x, times=1), x @ a)


def test_structured_mlp_kernel_costs_fewer_flops_than_the_jacobians():
  """The search's structured kernel (``awt.ntk.structured_fn``) counts
  fewer FLOPs than neural-tangents' "auto" kernel of the same MLP (their
  values agree: ``tests/test_ntk_structured.py``)."""
  from awt.pruning import awt as awt_lib

  model = models.MLP(num_classes=3, widths=(8, 5))
  x = jax.random.uniform(jax.random.key(1), (6, 4, 4, 1))
  params = model.init(jax.random.key(0), x[:1])["params"]

  def f(p, z):
    return model.apply({"params": p}, z)

  def kernel(implementation):
    return lambda p, z: awt_lib.ntk_of(f, p, z, implementation=implementation)

  ours = _flops.count(kernel("structured"), params, x)
  theirs = _flops.count(kernel("auto"), params, x)
  assert 0 < ours.total < theirs.total
