"""awt.models._cpu_conv: the XLA:CPU lowerings equal XLA's conv and pooling.

Every comparison is in values, input gradients and parameter gradients, to
1e-5 relative (max |a - b| / max |b|), against ``lax.conv_general_dilated``,
``nn.Conv`` and ``nn.max_pool``; both lowerings of the conv are covered
(slice-and-matmul for patches kh * kw * C_in <= MATMUL_MAX_PATCH, the
flipped-kernel input gradient above), as are ``vmap`` over members,
``pmap``, PGD's loop and whole models.
"""

import _lowerings  # tests/_lowerings.py: checks both lowerings' tests share
import flax.linen as nn
import jax
import jax.extend.core
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax import lax

from awt import models
from awt.models import _cpu_conv
from awt.pruning import scores

DIMS = ("NHWC", "HWIO", "NHWC")
RTOL = 1e-5


def _rel(a, b) -> float:
  """max |a - b| / max |b| over all leaves."""
  num = jax.tree.leaves(
    jax.tree.map(lambda u, v: jnp.max(jnp.abs(u - v)), a, b)
  )
  den = jax.tree.leaves(jax.tree.map(lambda v: jnp.max(jnp.abs(v)), b))
  return float(max(num) / max(den))


def _value_and_vjp(fn, args, g):
  """``(fn(*args), vjp(g))``, compiled as one program."""
  out, vjp = jax.vjp(fn, *args)
  return out, vjp(g)


def _assert_same_vjp(new, ref, args, key):
  """``new`` and ``ref`` agree in value and in the VJP of every argument."""
  shape = jax.eval_shape(ref, *args)
  g = jax.random.normal(key, shape.shape)
  run = jax.jit(_value_and_vjp, static_argnums=0)
  out_ref, d_ref = run(ref, args, g)
  out_new, d_new = run(new, args, g)
  assert out_new.shape == out_ref.shape
  assert _rel(out_new, out_ref) <= RTOL
  for a, b in zip(d_new, d_ref, strict=True):
    assert a.shape == b.shape
    assert _rel(a, b) <= RTOL


# (H, W, C_in, C_out, kernel, stride, padding): patches of 25, 27, 150 and
# 50 (slice-and-matmul, channel-major: C_in <= CHANNEL_MAJOR_MAX_IN and
# C_out <= CHANNEL_MAJOR_MAX_OUT), 27 with 20 outputs and 72 with 8 inputs
# (slice-and-matmul, NHWC) and 288, 360, 288
# (flipped-kernel input gradient; the 'SAME' 7x7x32 and the 'VALID'
# 14x10x32 forwards are computed taller and cropped, ``_xla_conv``).
CONV_CASES = [
  (9, 9, 1, 4, 5, 1, "SAME"),
  (9, 9, 3, 20, 3, 1, "SAME"),
  (8, 8, 8, 4, 3, 1, "SAME"),
  (9, 8, 3, 4, 3, 2, "SAME"),
  (10, 9, 6, 5, 5, 2, "VALID"),
  (7, 8, 2, 3, 5, 1, ((1, 2), (0, 3))),
  (7, 7, 32, 8, 3, 1, "SAME"),
  (9, 8, 40, 6, 3, 2, "SAME"),
  (9, 9, 40, 6, 3, 2, "VALID"),
  (8, 7, 40, 6, 3, 1, "VALID"),
  (14, 10, 32, 20, 3, 1, "VALID"),
]


@pytest.mark.parametrize("h,w,cin,cout,k,s,padding", CONV_CASES)
def test_conv_general_dilated_equals_lax(h, w, cin, cout, k, s, padding):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(h * cin + s), 3)
  x = jax.random.normal(kx, (3, h, w, cin))
  kernel = jax.random.normal(kw, (k, k, cin, cout))
  dn = lax.conv_dimension_numbers(x.shape, kernel.shape, DIMS)

  def ref(a, b):
    return lax.conv_general_dilated(a, b, (s, s), padding, dimension_numbers=dn)

  def new(a, b):
    return _cpu_conv.conv_general_dilated(
      a, b, (s, s), padding, dimension_numbers=dn
    )

  _assert_same_vjp(new, ref, (x, kernel), kg)


def test_channel_major_input_gradient_is_a_matmul():
  """The input gradient of a narrow conv is a dot's output (stored once),
  not a sum of pads XLA would fuse into, and recompute in, its consumer."""
  assert _cpu_conv.CHANNEL_MAJOR_MAX_IN >= 6
  assert _cpu_conv.CHANNEL_MAJOR_MAX_OUT >= 16
  x, kernel = jnp.ones((2, 8, 8, 6)), jnp.ones((5, 5, 6, 16))

  def grad_x(a):
    out, vjp = jax.vjp(
      lambda v: _cpu_conv.conv_general_dilated(
        v, kernel, (1, 1), "VALID", dimension_numbers=DIMS
      ),
      a,
    )
    return vjp(out)[0]

  eqns = jax.make_jaxpr(grad_x)(x).jaxpr.eqns
  last_dot = max(
    i for i, e in enumerate(eqns) if e.primitive.name == "dot_general"
  )
  assert eqns[last_dot].outvars[0].aval.shape == (2 * 8 * 8, 6)
  assert {e.primitive.name for e in eqns[last_dot + 1 :]} <= {
    "reshape",
    "transpose",
  }


def _primitive_count(jaxpr, name: str) -> int:
  """Equations named ``name`` in ``jaxpr`` and every jaxpr nested in it."""
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == name
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      count += _primitive_count(sub, name)
  return count


def test_wide_conv_backward_has_no_kernel_gradient_convolution():
  """The flipped-kernel conv's VJP: one convolution forward, one for the
  input gradient, none for the kernel gradient (XLA:CPU's batch-contracting
  kernel-gradient convolution is 100-250x slower inside a lax.scan); the
  reference, lax's VJP, has three."""
  x = jnp.ones((2, 6, 6, 40))
  kernel = jnp.ones((3, 3, 40, 4))

  def convs(conv):
    def fwd_bwd(a, b):
      out, vjp = jax.vjp(
        lambda u, v: conv(u, v, (1, 1), "SAME", dimension_numbers=DIMS), a, b
      )
      return vjp(out)

    return _primitive_count(
      jax.make_jaxpr(fwd_bwd)(x, kernel).jaxpr, "conv_general_dilated"
    )

  assert convs(_cpu_conv.conv_general_dilated) == 2
  assert convs(lax.conv_general_dilated) == 3


@pytest.mark.parametrize("b,s", [(5, 1), (4, 1), (5, 2)])
def test_kernel_gradient_in_chunks_equals_lax(monkeypatch, b, s):
  """The batch contracted two images at a time in a scan (plus a last odd
  image for b = 5) gives lax's kernel gradient."""
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(b + s), 3)
  x = jax.random.normal(kx, (b, 9, 8, 20))
  kernel = jax.random.normal(kw, (3, 3, 20, 6))
  pads = lax.padtype_to_pads(x.shape[1:3], (3, 3), (s, s), "SAME")
  g = jax.random.normal(kg, (b, (9 + s - 1) // s, (8 + s - 1) // s, 6))
  row_bytes = g.shape[1] * g.shape[2] * 3 * 20 * 4
  monkeypatch.setattr(_cpu_conv, "KERNEL_GRAD_CHUNK_BYTES", 2 * row_bytes)

  def chunked(a, d):
    return _cpu_conv._kernel_grad(a, d, kernel.shape, (s, s), pads, None)

  assert _primitive_count(jax.make_jaxpr(chunked)(x, g).jaxpr, "scan") == 1
  _, vjp = jax.vjp(
    lambda v: lax.conv_general_dilated(
      x, v, (s, s), pads, dimension_numbers=DIMS
    ),
    kernel,
  )
  assert _rel(jax.jit(chunked)(x, g), vjp(g)[0]) <= RTOL


def test_wide_convs_run_outside_ynnpack():
  """The premise of ``_xla_conv``: this jaxlib's XLA:CPU gives a 'SAME'
  conv with 32 channels to YNNPACK (skip if not), and the CPU path's
  forward and input-gradient convs to Eigen (no YNNPACK fusion)."""
  if jax.default_backend() != "cpu":
    pytest.skip("XLA:CPU only")
  x = jnp.ones((2, 8, 8, 32))
  kernel = jnp.ones((3, 3, 32, 32))

  def hlo(conv):
    def fwd_and_input_grad(a):
      out, vjp = jax.vjp(
        lambda u: conv(u, kernel, (1, 1), "SAME", dimension_numbers=DIMS), a
      )
      return out, vjp(out)

    return jax.jit(fwd_and_input_grad).lower(x).compile().as_text()

  if "__ynn_fusion" not in hlo(lax.conv_general_dilated):
    pytest.skip("this XLA:CPU does not give convolutions to YNNPACK")
  assert "__ynn_fusion" not in hlo(_cpu_conv.conv_general_dilated)


@pytest.mark.parametrize("cin,s", [(1, 1), (40, 1), (40, 2)])
def test_gradients_inside_a_scan_equal_lax(cin, s):
  """Per-step kernel and input gradients inside ``lax.scan``, as awt's
  training epochs compute them: both lowerings (patch 9 and 360)."""
  keys = jax.random.split(jax.random.PRNGKey(cin + s), 3)
  xs = jax.random.normal(keys[0], (3, 2, 9, 8, cin))
  kernel = jax.random.normal(keys[1], (3, 3, cin, 5))
  gs = jax.random.normal(keys[2], (3, 2, (9 + s - 1) // s, (8 + s - 1) // s, 5))

  def scanned(conv):
    def step(carry, xg):
      a, g = xg
      _, vjp = jax.vjp(
        lambda u, v: conv(u, v, (s, s), "SAME", dimension_numbers=DIMS),
        a,
        kernel,
      )
      dx, dw = vjp(g)
      return carry + dw, dx

    return jax.jit(lambda: lax.scan(step, jnp.zeros_like(kernel), (xs, gs)))()

  got, want = (
    scanned(_cpu_conv.conv_general_dilated),
    scanned(lax.conv_general_dilated),
  )
  assert _rel(got, want) <= RTOL


def test_custom_gradients_pass_check_grads():
  """Both custom VJPs against finite differences (float64 would be exact;
  float32 differences need the loose default tolerances)."""
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (2, 5, 5, 30))
  kernel = jax.random.normal(key, (3, 3, 30, 2)) * 0.1
  conv = jax.jit(
    lambda a, b: _cpu_conv.conv_general_dilated(
      a, b, (2, 2), "SAME", dimension_numbers=DIMS
    )
  )
  jax.test_util.check_grads(conv, (x, kernel), order=1, modes=["rev"])
  pool = jax.jit(lambda a: _cpu_conv.max_pool(a, 2, "cpu"))
  jax.test_util.check_grads(pool, (x,), order=1, modes=["rev"])


def test_other_convolutions_fall_back_to_lax():
  """Dilated or grouped convolutions are lax's, bit for bit."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 4))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 4))
  kw = dict(dimension_numbers=DIMS, feature_group_count=2, rhs_dilation=(2, 2))
  np.testing.assert_array_equal(
    _cpu_conv.conv_general_dilated(x, kernel, (1, 1), "SAME", **kw),
    lax.conv_general_dilated(x, kernel, (1, 1), "SAME", **kw),
  )


@pytest.mark.parametrize("shape", [(3, 8, 6, 2), (2, 7, 9, 3)])
def test_max_pool_equals_nn_max_pool(shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  ref = lambda a: nn.max_pool(a, (2, 2), strides=(2, 2))  # noqa: E731
  new = lambda a: _cpu_conv.max_pool(a, 2, "cpu")  # noqa: E731
  _assert_same_vjp(new, ref, (x,), jax.random.PRNGKey(1))


def test_max_pool_ties_go_to_the_first_maximum_like_nn_max_pool():
  """Rounded inputs tie often (and ReLU outputs tie at 0): each window's
  gradient goes to its first maximum in row-major order, as nn.max_pool's
  select_and_scatter does."""
  x = jnp.round(jax.random.normal(jax.random.PRNGKey(0), (4, 6, 6, 3)))
  x = x.at[0, :2, :2, 0].set(2.0)  # a window of four equal values
  g = jnp.ones((4, 3, 3, 3))
  d_new = jax.vjp(lambda a: _cpu_conv.max_pool(a, 2, "cpu"), x)[1](g)[0]
  d_ref = jax.vjp(lambda a: nn.max_pool(a, (2, 2), strides=(2, 2)), x)[1](g)
  np.testing.assert_array_equal(d_new, d_ref[0])
  np.testing.assert_array_equal(d_new[0, :2, :2, 0], [[1.0, 0.0], [0.0, 0.0]])


@pytest.mark.slow
def test_forward_mode_and_hessian_vector_products():
  """The pooling and the slice-and-matmul conv support jax.jvp (lenet5 is
  all of those); GraSP's forward-over-reverse H v also goes through the
  flipped-kernel conv's custom VJP (conv2's second conv)."""
  xla, cpu, variables, x, _ = _model_pair("lenet5", (12, 12, 1))
  t = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  jvp = lambda m: jax.jit(  # noqa: E731
    lambda v, u: jax.jvp(lambda a: m.apply(variables, a), (v,), (u,))
  )(x, t)
  assert _rel(jvp(cpu), jvp(xla)) <= RTOL
  xla, cpu, variables, x, _ = _model_pair("conv2", (8, 8, 3))
  params = variables["params"]

  def hvp(model):
    loss = lambda p, v: jnp.sum(model.apply({"params": p}, v) ** 2)  # noqa: E731
    run = lambda p, v: scores.hessian_vector_product(loss, p, p, v)  # noqa: E731
    return jax.jit(run)(params, x)

  got, want = hvp(cpu), hvp(xla)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    assert _rel(a, b) <= RTOL


def test_impl_resolution_and_validation():
  assert _cpu_conv.resolve("auto") == (
    "cpu" if jax.default_backend() == "cpu" else "xla"
  )
  assert _cpu_conv.resolve("xla") == "xla"
  with pytest.raises(ValueError, match="unknown conv_impl 'cuda'; known"):
    _cpu_conv.resolve("cuda")
  with pytest.raises(ValueError, match="unknown conv_impl"):
    models.get("lenet5", 10, conv_impl="fast")
  assert "conv_impl" in models.options("conv4")


def _model_pair(name, shape):
  """(xla model, cpu model, variables, x, y) for a registry conv model."""
  xla = models.get(name, 10, mean=0.5, std=0.25, conv_impl="xla")
  cpu = models.get(name, 10, mean=0.5, std=0.25, conv_impl="cpu")
  kx, ky = jax.random.split(jax.random.PRNGKey(3))
  x = jax.random.uniform(kx, (4, *shape))
  y = jax.random.randint(ky, (4,), 0, 10)
  variables = jax.jit(xla.init)(jax.random.PRNGKey(0), x)
  return xla, cpu, variables, x, y


@pytest.mark.parametrize(
  "name,shape", [("lenet5", (28, 28, 1)), ("conv4", (8, 8, 3))]
)
def test_models_equal_between_implementations(name, shape):
  """Same parameters at init; same logits, input and parameter gradients."""
  xla, cpu, variables, x, y = _model_pair(name, shape)
  cpu_vars = jax.jit(cpu.init)(jax.random.PRNGKey(0), x)
  assert jax.tree.structure(cpu_vars) == jax.tree.structure(variables)
  jax.tree.map(np.testing.assert_array_equal, cpu_vars, variables)

  def loss(model):
    def f(params, images):
      logits = model.apply({"params": params}, images, train=False)
      return jnp.mean(
        -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)
      )

    return f

  params = variables["params"]
  logits = lambda m: jax.jit(m.apply)(variables, x)  # noqa: E731
  assert _rel(logits(cpu), logits(xla)) <= RTOL
  grads_xla = jax.jit(jax.grad(loss(xla), argnums=(0, 1)))(params, x)
  grads_cpu = jax.jit(jax.grad(loss(cpu), argnums=(0, 1)))(params, x)
  for leaf_cpu, leaf_xla in zip(
    jax.tree.leaves(grads_cpu), jax.tree.leaves(grads_xla), strict=True
  ):
    assert _rel(leaf_cpu, leaf_xla) <= RTOL


def test_vmap_over_members():
  """Three members' stacked parameters under vmap."""
  xla, cpu, variables, x, _ = _model_pair("lenet5", (12, 12, 1))
  stacked = jax.tree.map(lambda v: jnp.stack([v, -0.5 * v, 2.0 * v]), variables)

  def member_grads(model):
    def f(v, images):
      logits = model.apply(v, images, train=False)
      return jnp.sum(logits * jnp.arange(10.0)[None, :])

    return jax.jit(jax.vmap(jax.grad(f, argnums=(0, 1)), in_axes=(0, None)))

  got = member_grads(cpu)(stacked, x)
  want = member_grads(xla)(stacked, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    assert _rel(a, b) <= RTOL


def test_pmap():
  """The batch split over 2 devices (tests/conftest.py forces 4)."""
  xla, cpu, variables, x, _ = _model_pair("lenet5", (12, 12, 1))
  shards = x.reshape(2, 2, *x.shape[1:])

  def sharded_grad(model):
    f = lambda v, images: jnp.sum(model.apply(v, images, train=False))  # noqa: E731
    return jax.pmap(jax.grad(f, argnums=(0, 1)), in_axes=(None, 0))

  got = sharded_grad(cpu)(variables, shards)
  want = sharded_grad(xla)(variables, shards)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    assert _rel(a, b) <= RTOL


def test_pgd_finds_the_same_adversarial_examples():
  """awt's PGD (random start, sign steps in a fori_loop) on lenet5: the same
  iterates with either implementation."""
  xla, cpu, variables, x, y = _model_pair("lenet5", (28, 28, 1))
  _lowerings.assert_same_pgd_iterates(xla, cpu, variables, x, y)
