"""Tests for awt.models: registry, shapes, parameter counts, normalization, BN.

References are independent of the model code: parameter counts are summed
by hand from the papers' layer tables, the normalization is applied with
numpy outside the model, and BatchNorm running statistics are recomputed from
a plain ``lax.conv_general_dilated`` of the stem.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from awt import models

# name -> (tiny input shape, smallest-width options) used by the fast tests.
CASES = {
  "linear": ((2, 8, 8, 1), {}),
  "mlp": ((2, 8, 8, 1), {}),
  "lenet5": ((2, 8, 8, 1), {}),
  "conv2": ((2, 8, 8, 1), {}),
  "conv4": ((2, 8, 8, 1), {}),
  "conv6": ((2, 8, 8, 1), {}),
  "vgg16": ((2, 32, 32, 3), {"width_multiplier": 0.125}),
  "resnet18": ((2, 32, 32, 3), {"width": 8}),
  "wrn28": ((2, 32, 32, 3), {"width": 1}),
}
BN_MODELS = ("vgg16", "resnet18", "wrn28")
NUM_CLASSES = 10


def _uniform(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, jnp.float32)


def _abstract_init(model, shape):
  """The variables' shapes and dtypes; traces init without compiling it."""
  return jax.eval_shape(
    functools.partial(model.init, train=False),
    jax.random.key(0),
    jax.ShapeDtypeStruct(shape, jnp.float32),
  )


def _num_params(model, shape):
  variables = _abstract_init(model, shape)
  return sum(math.prod(p.shape) for p in jax.tree.leaves(variables["params"]))


def _cheap_variables(model, shape, seed=0):
  """Variables of init's structure filled by numpy (no PRNG compilation).

  Compiling flax's threefry initializers takes tens of seconds on 2 CPU
  cores for the BatchNorm nets, so most tests fill kernels with
  N(0, 2 / fan_in) and biases with N(0, 0.1^2) from numpy; BatchNorm scale
  and running variance are ones, BatchNorm bias and running mean zeros, as
  flax initializes them. ``test_init`` runs the real initializers.
  """
  rng = np.random.default_rng(seed)
  flat = flatten_dict(_abstract_init(model, shape))
  filled = {}
  for path, leaf in flat.items():
    if path[-1] == "kernel":
      std = math.sqrt(2.0 / math.prod(leaf.shape[:-1]))
      value = rng.normal(0.0, std, leaf.shape)
    elif path[-1] == "bias" and path[0] == "params":
      value = rng.normal(0.0, 0.1, leaf.shape)
    elif path[-1] in ("scale", "var"):
      value = np.ones(leaf.shape)
    else:
      value = np.zeros(leaf.shape)
    filled[path] = jnp.asarray(value, leaf.dtype)
  return unflatten_dict(filled)


def _traced_apply(model, variables, x, **kw):
  """Applies ``model`` under jit, recording every module call.

  Returns:
    (output, calls) with calls a list of (path, module type, output dtype,
    kernel_init or None).
  """
  calls = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__":
      module = context.module
      dtype = out.dtype if isinstance(out, jax.Array) else None
      init = getattr(module, "kernel_init", None)
      calls.append((module.path, type(module), dtype, init))
    return out

  @jax.jit
  def apply(variables, x):
    with nn.intercept_methods(interceptor):
      return model.apply(variables, x, **kw)

  return apply(variables, x), calls


@functools.cache
def _built(name):
  """(model, x, variables, logits, calls) for the tiny case of ``name``."""
  shape, kw = CASES[name]
  model = models.get(name, NUM_CLASSES, **kw)
  x = _uniform(shape)
  variables = _cheap_variables(model, shape)
  logits, calls = _traced_apply(model, variables, x, train=False)
  return model, x, variables, logits, calls


def test_names_are_the_sorted_registry():
  assert models.names() == tuple(sorted(CASES))


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_shapes_and_collections(name):
  _, x, variables, logits, _ = _built(name)
  assert logits.shape == (x.shape[0], NUM_CLASSES)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  expected = {"params", "batch_stats"} if name in BN_MODELS else {"params"}
  assert set(variables) == expected
  assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
  # Different images give different logits (the input reaches the output).
  assert not np.allclose(logits[0], logits[1])


def test_init():
  model = models.get("mlp", NUM_CLASSES, widths=[16])  # lists from configs
  assert model.widths == (16,)
  x = _uniform((2, 8, 8, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  shapes = jax.tree.map(lambda p: (p.shape, p.dtype), variables)
  assert shapes == jax.tree.map(
    lambda p: (p.shape, p.dtype), _abstract_init(model, x.shape)
  )
  assert set(variables["params"]) == {"fc1", "head"}
  assert variables["params"]["fc1"]["kernel"].shape == (64, 16)
  np.testing.assert_array_equal(variables["params"]["head"]["bias"], 0.0)
  other = model.init(jax.random.key(1), x, train=False)
  assert not np.allclose(
    variables["params"]["fc1"]["kernel"], other["params"]["fc1"]["kernel"]
  )
  assert model.apply(variables, x, train=False).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernels_are_exactly_the_dense_and_conv_weights(name):
  _, _, variables, _, calls = _built(name)
  params = flatten_dict(variables["params"])
  kernel_owners = {path[:-1] for path in params if path[-1] == "kernel"}
  dense_conv = {p for p, t, _, _ in calls if t in (nn.Dense, nn.Conv)}
  assert kernel_owners == dense_conv
  assert ("head",) in dense_conv
  for path, module_type, _, _ in calls:
    if module_type is nn.BatchNorm:
      leaves = {k[-1] for k in params if k[:-1] == path}
      assert leaves == {"scale", "bias"}


@pytest.mark.parametrize(
  "name,fan",
  [("vgg16", "in"), ("resnet18", "in"), ("wrn28", "in"), ("conv4", "avg")],
)
def test_conv_kernel_initializers(name, fan):
  """He normal (fan_in, gain 2) for the BN nets, Glorot normal for Conv-k."""
  _, _, _, _, calls = _built(name)
  inits = {init for _, t, _, init in calls if t is nn.Conv}
  assert len(inits) == 1
  shape = (3, 3, 64, 128)
  kernel = np.asarray(inits.pop()(jax.random.key(0), shape, jnp.float32))
  fan_in, fan_out = 9 * 64, 9 * 128
  var = 2.0 / fan_in if fan == "in" else 2.0 / (fan_in + fan_out)
  np.testing.assert_allclose(kernel.var(), var, rtol=0.03)
  assert abs(kernel.mean()) < 0.02 * math.sqrt(var)
  # Untruncated Gaussian: about 0.27% of the draws lie beyond 3 sigma.
  beyond = np.mean(np.abs(kernel) > 3 * math.sqrt(var))
  assert 0.001 < beyond < 0.005


def _dense_count(sizes):
  return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


def _conv_count(k, cin, cout, bias=True):
  return k * k * cin * cout + (cout if bias else 0)


def test_param_count_mlp_lenet_300_100():
  expected = _dense_count([28 * 28, 300, 100, 10])
  assert expected == 266_610
  assert _num_params(models.get("mlp", 10), (1, 28, 28, 1)) == expected


@pytest.mark.parametrize("size,side", [(28, 5), (8, 2)])
def test_param_count_lenet5(size, side):
  # MNIST: 28 -SAME conv-> 28 -pool-> 14 -VALID 5x5-> 10 -pool-> 5.
  # Digits: 8 -SAME conv-> 8 -pool-> 4 -SAME (4 < 5) 5x5-> 4 -pool-> 2.
  expected = (
    _conv_count(5, 1, 6)
    + _conv_count(5, 6, 16)
    + _dense_count([side * side * 16, 120, 84, 10])
  )
  got = _num_params(models.get("lenet5", 10), (1, size, size, 1))
  assert got == expected


@pytest.mark.parametrize(
  "depth,size,channels,paper_millions",
  [(2, 32, 3, 4.3), (4, 32, 3, 2.4), (6, 32, 3, None), (6, 8, 1, None)],
)
def test_param_count_conv_nets(depth, size, channels, paper_millions):
  widths = [channels] + [64 * 2 ** (i // 2) for i in range(depth)]
  pairs = zip(widths[:-1], widths[1:], strict=True)
  convs = sum(_conv_count(3, a, b) for a, b in pairs)
  side = size // 2 ** (depth // 2)
  expected = convs + _dense_count([side * side * widths[-1], 256, 256, 10])
  model = models.get(f"conv{depth}", 10)
  got = _num_params(model, (1, size, size, channels))
  assert got == expected
  if paper_millions is not None:  # Frankle & Carbin 2019, Figure 2 (CIFAR).
    assert round(got / 1e6, 1) == paper_millions


def _bn_count(c):
  return 2 * c


def test_param_count_resnet18():
  expected = _conv_count(3, 3, 64, bias=False) + _bn_count(64)
  cin = 64
  for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
    for block in range(2):
      s = stride if block == 0 else 1
      expected += _conv_count(3, cin, cout, False) + _bn_count(cout)
      expected += _conv_count(3, cout, cout, False) + _bn_count(cout)
      if s != 1 or cin != cout:
        expected += _conv_count(1, cin, cout, False) + _bn_count(cout)
      cin = cout
  expected += _dense_count([512, 10])
  got = _num_params(models.get("resnet18", 10), (1, 32, 32, 3))
  assert got == expected
  assert round(got / 1e6, 1) == 11.2  # the usual "11.2M" of CIFAR ResNet-18.


def test_param_count_wrn28_10():
  expected = _conv_count(3, 3, 16, bias=False)
  cin = 16
  for cout in (160, 320, 640):
    for block in range(4):
      expected += _bn_count(cin) + _conv_count(3, cin, cout, False)
      expected += _bn_count(cout) + _conv_count(3, cout, cout, False)
      if block == 0 and cin != cout:
        expected += _conv_count(1, cin, cout, False)
      cin = cout
  expected += _bn_count(640) + _dense_count([640, 10])
  got = _num_params(models.get("wrn28", 10, width=10), (1, 32, 32, 3))
  assert got == expected
  assert round(got / 1e6, 1) == 36.5  # Zagoruyko & Komodakis 2016: 36.5M.


def test_param_count_vgg16():
  widths = [3, 64, 64, 128, 128, 256, 256, 256] + [512] * 6
  expected = sum(
    _conv_count(3, a, b, False) + _bn_count(b)
    for a, b in zip(widths[:-1], widths[1:], strict=False)
  )
  expected += _dense_count([512, 10])
  assert _num_params(models.get("vgg16", 10), (1, 32, 32, 3)) == expected


@functools.cache
def _jitted(name, train, **kw):
  """(model, jitted apply) for ``models.get(name, 10, **kw)``, compiled once.

  The function returns (logits, {"batch_stats": ...}) with the statistics
  after the call (an empty dict for models without BatchNorm).
  """
  model = models.get(name, NUM_CLASSES, **kw)
  fn = functools.partial(model.apply, train=train, mutable=["batch_stats"])
  return model, jax.jit(fn)


@pytest.mark.parametrize(
  "name,shape,mean,std",
  [
    ("mlp", (2, 8, 8, 3), (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)),
    ("lenet5", (2, 8, 8, 1), (0.1307,), (0.3081,)),
  ],
)
def test_normalization_is_inside_the_model(name, shape, mean, std):
  normalized, apply_normalized = _jitted(name, False, mean=mean, std=std)
  _, apply_plain = _jitted(name, False)
  x = _uniform(shape, seed=3)
  variables = _cheap_variables(normalized, shape)
  c = (1, 1, 1, -1)
  x_std = (np.asarray(x) - np.reshape(mean, c)) / np.reshape(std, c)
  logits, _ = apply_normalized(variables, x)
  np.testing.assert_allclose(
    logits,
    apply_plain(variables, jnp.asarray(x_std, jnp.float32))[0],
    rtol=1e-5,
    atol=1e-5,
  )
  assert not np.allclose(logits, apply_plain(variables, x)[0], atol=1e-3)


def test_bad_mean_std():
  model = models.get("linear", 10, mean=(0.1, 0.2))
  with pytest.raises(ValueError, match="mean has 2 entries"):
    _abstract_init(model, (1, 4, 4, 3))
  with pytest.raises(ValueError, match="std must be positive"):
    models.get("linear", 10, std=(0.5, 0.0, 0.5))


def test_unknown_model_lists_the_names():
  with pytest.raises(ValueError) as err:
    models.get("mpl", 10)
  assert str(err.value) == (
    "unknown model 'mpl'; known: " + ", ".join(sorted(CASES))
  )


@pytest.mark.parametrize(
  "name,option", [("mlp", "width"), ("conv4", "depth"), ("resnet18", "widths")]
)
def test_unknown_option_is_named(name, option):
  with pytest.raises(ValueError, match=f"'{option}' for model '{name}'"):
    models.get(name, 10, **{option: 3})


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_model_takes_axis_name_and_dtype(name):
  model = models.get(name, 10, axis_name="batch", dtype=jnp.bfloat16)
  assert model.axis_name == "batch"
  assert model.dtype == jnp.bfloat16
  assert {"axis_name", "dtype"} <= set(models.options(name))


# The BatchNorm tests share one small ResNet-18 and one batch, which splits
# into 2 examples on each of the 4 host devices.
BN_KW = {"width": 4, "mean": (0.5,), "std": (0.25,)}
BN_SHAPE = (8, 8, 8, 3)


@pytest.mark.parametrize(
  "name,shape", [("mlp", (2, 8, 8, 1)), ("resnet18", BN_SHAPE)]
)
def test_bfloat16_compute_keeps_float32_params_and_logits(name, shape):
  kw = BN_KW if name == "resnet18" else {}
  model = models.get(name, 10, dtype=jnp.bfloat16, **kw)
  abstract = _abstract_init(model, shape)
  assert {p.dtype for p in jax.tree.leaves(abstract)} == {jnp.dtype("float32")}
  x = _uniform(shape)
  variables = _cheap_variables(model, shape)
  logits, calls = _traced_apply(model, variables, x, train=False)
  assert logits.dtype == jnp.float32
  layer_dtypes = {d for _, t, d, _ in calls if t in (nn.Dense, nn.Conv)}
  assert layer_dtypes == {jnp.dtype("bfloat16")}
  _, apply_f32 = _jitted(name, False, **kw)
  reference, _ = apply_f32(variables, x)
  scale = float(jnp.max(jnp.abs(reference)))
  np.testing.assert_allclose(logits, reference, atol=0.05 * scale + 0.05)


def _stem_batch_moments(model, params, x):
  """Mean and biased variance over (B, H, W) of the ResNet stem conv."""
  c = (1, 1, 1, -1)
  h = (x - np.reshape(model.mean, c)) / np.reshape(model.std, c)
  out = jax.lax.conv_general_dilated(
    h,
    params["conv1"]["kernel"],
    window_strides=(1, 1),
    padding=((1, 1), (1, 1)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  return jnp.mean(out, axis=(0, 1, 2)), jnp.var(out, axis=(0, 1, 2))


def test_batchnorm_running_stats_update_in_train_mode_only():
  model, train_apply = _jitted("resnet18", True, **BN_KW)
  x = _uniform(BN_SHAPE, seed=5)
  variables = _cheap_variables(model, BN_SHAPE)
  logits, updated = train_apply(variables, x)
  mean, var = _stem_batch_moments(model, variables["params"], x)
  old = variables["batch_stats"]["bn1"]
  new = updated["batch_stats"]["bn1"]
  # running = 0.9 * running + 0.1 * batch (PyTorch momentum 0.1).
  np.testing.assert_allclose(
    new["mean"], 0.9 * old["mean"] + 0.1 * mean, rtol=1e-4, atol=1e-5
  )
  np.testing.assert_allclose(
    new["var"], 0.9 * old["var"] + 0.1 * var, rtol=1e-4, atol=1e-5
  )
  for before, after in zip(
    jax.tree.leaves(variables["batch_stats"]),
    jax.tree.leaves(updated["batch_stats"]),
    strict=True,
  ):
    assert not np.allclose(before, after)
  # Evaluation uses the running statistics and leaves them alone.
  _, eval_apply = _jitted("resnet18", False, **BN_KW)
  eval_logits, same = eval_apply(variables, x)
  assert not np.allclose(eval_logits, logits, atol=1e-3)
  jax.tree.map(
    np.testing.assert_array_equal,
    same,
    {"batch_stats": variables["batch_stats"]},
  )


@pytest.mark.slow
def test_batch_stats_are_all_reduced_under_pmap():
  n = jax.local_device_count()
  assert n == 4 and BN_SHAPE[0] % n == 0
  model, train_apply = _jitted("resnet18", True, **BN_KW)
  x = _uniform(BN_SHAPE, seed=7)
  variables = _cheap_variables(model, BN_SHAPE)
  logits, stats = train_apply(variables, x)
  synced = models.get("resnet18", 10, axis_name="batch", **BN_KW)
  p_logits, p_stats = jax.pmap(
    functools.partial(synced.apply, train=True, mutable=["batch_stats"]),
    axis_name="batch",
    in_axes=(None, 0),
  )(variables, x.reshape((n, -1) + x.shape[1:]))
  # Per-device statistics (no all-reduce) move the logits by O(0.1); a
  # different fp32 summation order across 20 normalized layers moves them by
  # O(1e-5) (3e-5 seen on a loaded 2-core machine).
  unsynced = models.get("resnet18", 10, **BN_KW)
  u_logits, _ = jax.pmap(
    functools.partial(unsynced.apply, train=True, mutable=["batch_stats"]),
    in_axes=(None, 0),
  )(variables, x.reshape((n, -1) + x.shape[1:]))
  assert np.max(np.abs(u_logits.reshape(logits.shape) - logits)) > 1e-2
  np.testing.assert_allclose(
    p_logits.reshape(logits.shape), logits, rtol=1e-4, atol=2e-4
  )
  for device in range(n):
    jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
      jax.tree.map(lambda s, d=device: s[d], p_stats),
      stats,
    )
