"""awt.models._cpu_gemm (Dense layers through MKL's sgemm) against XLA.

The reference is ``jnp.matmul`` / ``lax.dot_general`` (and float64 NumPy
for the product itself): values, reverse- and forward-mode derivatives,
second order, ``vmap`` over members, ``pmap``, PGD's loop and whole
models, within float32 rounding.
"""

import concurrent.futures
import importlib.metadata
import shutil
import subprocess
import sys

import _binary  # tests/_binary.py: the one subprocess runner
import _lowerings  # tests/_lowerings.py: checks both lowerings' tests share
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax import lax

from awt import models
from awt.models import _cpu_gemm
from benchmarks import _flops

RTOL = 1e-5

needs_mkl = pytest.mark.skipif(
  _cpu_gemm.unavailable_reason() is not None,
  reason=f"MKL path unavailable: {_cpu_gemm.unavailable_reason()}",
)


def _rel(a, b) -> float:
  """Largest absolute difference over the reference's largest magnitude."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _operands(ta, tb, batch=(), m=5, k=7, n=3, seed=0):
  ka, kb = jax.random.split(jax.random.PRNGKey(seed))
  a = jax.random.normal(ka, (*batch, *((k, m) if ta else (m, k))))
  b = jax.random.normal(kb, (*batch, *((n, k) if tb else (k, n))))
  return a, b


def _reference(a, b, ta, tb):
  return _cpu_gemm._reference(a, b, transpose_a=ta, transpose_b=tb)


def test_loads_wherever_mkl_and_a_compiler_are_installed():
  """CI installs the mkl extra: there the MKL path must not skip quietly."""
  try:
    importlib.metadata.distribution("mkl")
  except importlib.metadata.PackageNotFoundError:
    pytest.skip("the mkl package is not installed")
  if shutil.which("g++") is None:
    pytest.skip("no g++")
  assert _cpu_gemm.unavailable_reason() is None
  assert _cpu_gemm.resolve("auto") == "mkl"


@needs_mkl
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("batch", [(), (3,)])
def test_product_equals_float64(ta, tb, batch):
  """Small products and two large enough to be split over threads, one in
  row blocks (m > n), one in column blocks."""
  for m, k, n in [(5, 7, 3), (128, 300, 100), (64, 96, 200)]:
    a, b = _operands(ta, tb, batch, m, k, n)
    want = _reference(
      np.asarray(a, np.float64), np.asarray(b, np.float64), ta, tb
    )
    got = jax.jit(_cpu_gemm.gemm, static_argnums=(2, 3))(a, b, ta, tb)
    assert got.shape == want.shape
    assert _rel(got, want) <= RTOL
    assert _rel(_cpu_gemm.gemm(a, b, ta, tb), want) <= RTOL  # eager


@needs_mkl
def test_concurrent_callers_get_their_own_products():
  """Split products from four Python threads at once. The handler's helper
  threads serve the latest posted product only; every caller must still
  get its own result, whatever the helpers picked up."""
  f = jax.jit(_cpu_gemm.gemm)
  cases = [
    _operands(False, False, (), 96, 128, 64 + 16 * i, i) for i in range(4)
  ]
  wants = [
    _reference(np.asarray(a, np.float64), np.asarray(b, np.float64), 0, 0)
    for a, b in cases
  ]
  for a, b in cases:
    f(a, b).block_until_ready()  # compile before the threads start

  def worst(i):
    a, b = cases[i]
    return max(_rel(f(a, b), wants[i]) for _ in range(25))

  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    errors = list(pool.map(worst, range(4)))
  assert max(errors) <= RTOL, errors


@needs_mkl
def test_empty_operands():
  """Empty rows, columns or contraction: zeros of the right shape."""
  for m, k, n in [(0, 3, 2), (3, 0, 2), (3, 2, 0)]:
    a, b = jnp.ones((m, k)), jnp.ones((k, n))
    got = jax.jit(_cpu_gemm.gemm)(a, b)
    np.testing.assert_array_equal(got, np.zeros((m, n), np.float32))


@needs_mkl
def test_gemm_loads_its_handler_in_a_fresh_process():
  """Called first thing in a process, before any model resolved a
  dense_impl: the lowering loads and registers the handler itself, or
  says in one line why it cannot."""
  code = (
    "import jax.numpy as jnp; from awt.models import _cpu_gemm; "
    "print(float(_cpu_gemm.gemm(jnp.ones((2, 3)), jnp.ones((3, 4)))[0, 0]))"
  )
  env = _binary.environment(devices=None)
  ok = subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True
  )
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert ok.stdout.strip() == "3.0"
  env["AWT_MKL_LIB"] = "/nonexistent/libmkl_rt.so"
  bad = subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True
  )
  assert bad.returncode != 0
  assert "Unavailable: awt_gemm on the CPU: AWT_MKL_LIB=" in bad.stderr


@needs_mkl
def test_lowers_to_the_custom_call():
  a, b = _operands(False, False)
  hlo = jax.jit(_cpu_gemm.gemm).lower(a, b).as_text()
  assert _cpu_gemm.TARGET in hlo and "dot_general" not in hlo


@needs_mkl
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_derivatives_equal_matmul(ta, tb):
  """Reverse mode, forward mode and forward-over-reverse (the
  Hessian-vector products GraSP takes) against jnp.matmul's."""
  a, b = _operands(ta, tb, m=9, k=6, n=4)

  def loss(prod):
    return lambda a, b: jnp.sum(jnp.sin(prod(a, b)))

  ours = loss(lambda a, b: _cpu_gemm.gemm(a, b, ta, tb))
  ref = loss(lambda a, b: _reference(a, b, ta, tb))
  got_grads = jax.jit(jax.grad(ours, (0, 1)))(a, b)
  for got, want in zip(got_grads, jax.grad(ref, (0, 1))(a, b), strict=True):
    assert _rel(got, want) <= RTOL
  tangents = (jnp.cos(a), jnp.sin(b))
  assert (
    _rel(jax.jvp(ours, (a, b), tangents)[1], jax.jvp(ref, (a, b), tangents)[1])
    <= RTOL
  )

  def hvp(f):
    return jax.jvp(lambda a: jax.grad(f)(a, b), (a,), (tangents[0],))[1]

  assert _rel(hvp(ours), hvp(ref)) <= RTOL


@needs_mkl
def test_gradients_pass_check_grads():
  """Against finite differences, to second order (float32 tolerances)."""
  a, b = _operands(True, False, m=4, k=5, n=3)
  jax.test_util.check_grads(
    lambda a, b: _cpu_gemm.gemm(a, b, True, False),
    (a, b),
    order=2,
    modes=["fwd", "rev"],
  )


@needs_mkl
@pytest.mark.parametrize(
  "in_axes", [(0, None), (None, 0), (0, 0), (1, 0), (None, 2)]
)
@pytest.mark.parametrize("ta", [False, True])
def test_vmap_equals_matmul(in_axes, ta):
  """Every batching case: a folded unbatched weight, broadcast operands,
  batch axes not in front."""
  a, b = _operands(ta, False, m=6, k=5, n=4)
  size = 3
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  args = []
  for x, axis, key in zip((a, b), in_axes, keys, strict=True):
    if axis is not None:
      x = jnp.moveaxis(jax.random.normal(key, (size, *x.shape)), 0, axis)
    args.append(x)
  got = jax.jit(
    jax.vmap(lambda a, b: _cpu_gemm.gemm(a, b, ta, False), in_axes=in_axes)
  )(*args)
  want = jax.vmap(lambda a, b: _reference(a, b, ta, False), in_axes=in_axes)(
    *args
  )
  assert _rel(got, want) <= RTOL


@needs_mkl
def test_nested_vmap_equals_matmul():
  """vmap of vmap: per-member, per-example products as an NTK's Jacobians
  take them, either level batching the weight. The outer level then meets
  an unbatched weight that already has batch axes."""
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 6, 5))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 2))

  def examples_outside(prod):
    return jax.vmap(lambda a: jax.vmap(lambda b: prod(a, b))(w))(x)

  def weights_outside(prod):
    return jax.vmap(lambda b: jax.vmap(lambda a: prod(a, b))(x))(w)

  for nested in (examples_outside, weights_outside):
    got = jax.jit(lambda nested=nested: nested(_cpu_gemm.gemm))()
    assert _rel(got, nested(jnp.matmul)) <= RTOL


@needs_mkl
def test_dot_general_hands_other_products_to_lax():
  """bfloat16, contractions other than Dense's and empty arrays stay
  lax.dot_general (no custom call in the program)."""
  x = jnp.ones((4, 6))
  w = jnp.ones((6, 3))

  def uses_gemm(fn, *args):
    return "awt_gemm" in str(jax.make_jaxpr(fn)(*args))

  dense = (((1,), (0,)), ((), ()))
  assert uses_gemm(lambda x, w: _cpu_gemm.dot_general(x, w, dense), x, w)
  bf16 = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  assert not uses_gemm(lambda x, w: _cpu_gemm.dot_general(x, w, dense), *bf16)
  other = (((0,), (0,)), ((), ()))
  assert not uses_gemm(
    lambda x: _cpu_gemm.dot_general(x, x, other), jnp.ones((6, 4))
  )
  # Dense's contraction with a batch axis on each side: [B, K] . [K, B] -> [B].
  batched = (((1,), (0,)), ((0,), (1,)))
  xb = jax.random.normal(jax.random.PRNGKey(1), (4, 6))
  wb = jax.random.normal(jax.random.PRNGKey(2), (6, 4))
  got = _cpu_gemm.dot_general(xb, wb, batched)
  assert got.shape == (4,)
  assert _rel(got, lax.dot_general(xb, wb, batched)) <= RTOL
  empty = jnp.ones((0, 6))
  np.testing.assert_array_equal(
    _cpu_gemm.dot_general(empty, w, dense), lax.dot_general(empty, w, dense)
  )
  # [B, T, K] @ [K, N] (a Dense on a sequence) runs as one product of rows.
  x3 = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6))
  assert _rel(
    _cpu_gemm.dot_general(x3, w, (((2,), (0,)), ((), ()))), x3 @ w
  ) <= (RTOL)


def test_resolution_and_one_line_errors(monkeypatch, tmp_path):
  assert _cpu_gemm.resolve("xla") == "xla"
  with pytest.raises(ValueError, match="unknown dense_impl 'blas'"):
    _cpu_gemm.resolve("blas")
  with pytest.raises(ValueError, match="dense_impl"):
    models.get("mlp", 10, dense_impl="blas")
  monkeypatch.setenv("AWT_MKL_LIB", str(tmp_path / "nope.so"))
  with pytest.raises(_cpu_gemm.Unavailable, match="AWT_MKL_LIB=.*not a file"):
    _cpu_gemm._mkl_library()
  monkeypatch.setenv("AWT_MKL_LIB", str(tmp_path / "empty.so"))
  (tmp_path / "empty.so").write_bytes(b"")
  _cpu_gemm._load.cache_clear()
  try:
    assert "empty.so" in _cpu_gemm.unavailable_reason()  # not a library
    if shutil.which("g++"):  # a library, but not MKL: the handler itself
      monkeypatch.setenv("AWT_MKL_LIB", str(_cpu_gemm._build()))
      _cpu_gemm._load.cache_clear()
      assert "is not MKL" in _cpu_gemm.unavailable_reason()
  finally:
    monkeypatch.delenv("AWT_MKL_LIB")
    _cpu_gemm._load.cache_clear()
  monkeypatch.setenv("CXX", str(tmp_path / "no-compiler"))
  with pytest.raises(_cpu_gemm.Unavailable, match="no C.. compiler"):
    _cpu_gemm._build()
  monkeypatch.setenv("AWT_CACHE_DIR", str(tmp_path / "cache"))
  assert _cpu_gemm.cache_dir() == tmp_path / "cache"


def test_a_broken_compiler_is_reported_in_one_line(monkeypatch, tmp_path):
  """A compiler that fails leaves no library in the cache."""
  compiler = tmp_path / "cxx"
  compiler.write_text("#!/bin/sh\necho 'cxx: error: bad flag' >&2\nexit 1\n")
  compiler.chmod(0o755)
  monkeypatch.setenv("CXX", str(compiler))
  monkeypatch.setenv("AWT_CACHE_DIR", str(tmp_path / "cache"))
  with pytest.raises(
    _cpu_gemm.Unavailable, match="failed: cxx: error: bad flag"
  ):
    _cpu_gemm._build()
  assert not list((tmp_path / "cache").glob("*.so"))


def _model_pair(name, shape):
  xla = models.get(name, 10, dense_impl="xla")
  mkl = models.get(name, 10, dense_impl="mkl")
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, *shape))
  y = jnp.arange(4) % 10
  variables = xla.init(jax.random.PRNGKey(1), x, train=False)
  return xla, mkl, variables, x, y


@needs_mkl
@pytest.mark.parametrize(
  "name, shape",
  [("mlp", (28, 28, 1)), ("lenet5", (28, 28, 1)), ("linear", (8, 8, 1))],
)
def test_models_equal_between_implementations(name, shape):
  """Same parameters; logits and every gradient within float32 rounding."""
  xla, mkl, variables, x, _ = _model_pair(name, shape)
  assert jax.tree.structure(
    mkl.init(jax.random.PRNGKey(1), x, train=False)
  ) == jax.tree.structure(variables)

  def grads(model):
    def f(v, images):
      logits = model.apply(v, images, train=False)
      return jnp.sum(jax.nn.log_softmax(logits) * jnp.arange(10.0)[None, :])

    return jax.jit(jax.grad(f, argnums=(0, 1)))(variables, x)

  assert "awt_gemm" in str(jax.make_jaxpr(mkl.apply)(variables, x))
  assert _rel(mkl.apply(variables, x), xla.apply(variables, x)) <= RTOL
  for a, b in zip(
    jax.tree.leaves(grads(mkl)), jax.tree.leaves(grads(xla)), strict=True
  ):
    assert _rel(a, b) <= RTOL


@needs_mkl
def test_vmap_over_members_and_pmap():
  """Three members' stacked parameters under vmap; the batch split over 2
  devices under pmap (tests/conftest.py forces 4)."""
  xla, mkl, variables, x, _ = _model_pair("mlp", (28, 28, 1))
  stacked = jax.tree.map(lambda v: jnp.stack([v, -0.5 * v, 2.0 * v]), variables)

  def f(model):
    return lambda v, images: jnp.sum(
      model.apply(v, images, train=False) * jnp.arange(10.0)[None, :]
    )

  def members(model):
    grad = jax.grad(f(model), argnums=(0, 1))
    return jax.jit(jax.vmap(grad, in_axes=(0, None)))(stacked, x)

  def sharded(model):
    grad = jax.grad(f(model), argnums=(0, 1))
    return jax.pmap(grad, in_axes=(None, 0))(
      variables, x.reshape(2, 2, 28, 28, 1)
    )

  for run in (members, sharded):
    for a, b in zip(
      jax.tree.leaves(run(mkl)), jax.tree.leaves(run(xla)), strict=True
    ):
      assert _rel(a, b) <= RTOL


@needs_mkl
def test_pgd_finds_the_same_adversarial_examples():
  """awt's PGD (random start, sign steps in a fori_loop) on the MLP: the
  same iterates with either implementation."""
  xla, mkl, variables, x, y = _model_pair("mlp", (28, 28, 1))
  _lowerings.assert_same_pgd_iterates(xla, mkl, variables, x, y)


@needs_mkl
def test_flop_counters_count_the_custom_product():
  """benchmarks._flops and awt.ntk count awt_gemm as the dot it replaces."""
  from awt import ntk

  xla, mkl, variables, x, _ = _model_pair("mlp", (28, 28, 1))

  def step(model):
    return lambda v, images: jax.grad(
      lambda v: jnp.sum(model.apply(v, images, train=False))
    )(v)

  assert _flops.count(step(mkl), variables, x) == _flops.count(
    step(xla), variables, x
  )
  want = ntk.forward_flops(lambda p, v: xla.apply(p, v), variables, x)
  assert ntk.forward_flops(lambda p, v: mkl.apply(p, v), variables, x) == want
  assert want[0] == 2 * (784 * 300 + 300 * 100 + 100 * 10)


@pytest.mark.skipif(
  _cpu_gemm._API_MISSING is not None, reason=str(_cpu_gemm._API_MISSING)
)
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("batch", [(), (3,)])
def test_matmul_flops_counts_two_per_multiply_add(ta, tb, batch):
  """2 m n k (times the batch) for awt_gemm and for the same product as a
  dot_general, counted from the shapes the test chose, not from the eqn;
  None for an equation that is no product."""
  m, k, n = 5, 7, 3
  a, b = _operands(ta, tb, batch, m=m, k=k, n=n)
  want = 2.0 * np.prod(batch, dtype=int) * m * n * k
  gemm = jax.make_jaxpr(lambda a, b: _cpu_gemm.gemm(a, b, ta, tb))(a, b)
  (eqn,) = gemm.eqns
  assert eqn.primitive.name == "awt_gemm"
  assert models.matmul_flops(eqn) == want
  dot = jax.make_jaxpr(lambda a, b: _reference(a, b, ta, tb))(a, b)
  (eqn,) = [e for e in dot.eqns if e.primitive.name == "dot_general"]
  assert models.matmul_flops(eqn) == want
  (eqn,) = jax.make_jaxpr(jnp.sin)(a).eqns
  assert models.matmul_flops(eqn) is None


@needs_mkl
@pytest.mark.slow
def test_gemm_variants_times_each_build_under_its_own_target(tmp_path):
  """benchmarks.gemm_variants (in fresh processes: it defines absl flags
  other benchmark modules define too): a source given twice shares one
  target, which the compiled steps call (checked by the tool), records
  against the first source; a variant whose products are wrong, or that
  lacks the handler's symbols, fails in one line before any timing."""
  import json

  base = str(_cpu_gemm._SOURCE)
  small = ["--batch=8", "--steps=1", "--rounds=2", "--calls=1"]
  copy = tmp_path / "copy.cc"
  source = _cpu_gemm._SOURCE.read_text()
  copy.write_text(source)
  proc = _binary.run(
    "benchmarks.gemm_variants", *small, base, str(copy), devices=None
  )
  assert proc.returncode == 0, proc.stderr
  first, second = (json.loads(line) for line in proc.stdout.splitlines())
  assert first["target"] == second["target"]
  assert first["target"].startswith("awt_sgemm_")
  assert first["target"] != _cpu_gemm.TARGET
  assert first["ratio_median"] == 1.0 and first["rounds_faster"] == 0
  assert second["source"] == str(copy) and second["ratio_median"] > 0
  assert second["product_rel_error"] <= 1e-5
  wrong = tmp_path / "wrong.cc"
  assert source.count("k, 1.0f,") == 2  # both sgemm calls' alpha
  wrong.write_text(source.replace("k, 1.0f,", "k, 0.5f,"))
  bare = tmp_path / "bare.cc"
  bare.write_text(source.replace("awt_set_sgemm(", "set_sgemm("))
  for variant, message in [
    (wrong, "products off by"),
    (bare, "expected one 'awt_set_sgemm('"),
  ]:
    proc = _binary.run(
      "benchmarks.gemm_variants", *small, base, str(variant), devices=None
    )
    assert proc.returncode != 0 and not proc.stdout
    assert message in proc.stderr.strip().splitlines()[-1]
