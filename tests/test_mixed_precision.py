"""Mixed precision (``model.dtype="bfloat16"``): bf16 compute, fp32 weights.

References for the bf16 numbers, computed here independently of flax/XLA:

* an emulation in float64 with numpy and ``ml_dtypes.bfloat16``: every
  Dense layer rounds its input, kernel and bias to bf16, forms the product
  exactly (XLA accumulates bf16 products in float32 and rounds the result,
  so only a sum that straddles a bf16 rounding boundary can differ), rounds
  it, adds the bias and rounds again;
* the float32 network: bfloat16 keeps 8 significant bits (7 stored and the
  implicit one), so each rounding has relative error at most ``u = 2**-8``.
  Four roundings per layer (input, kernel, product, sum with the bias; the
  bias's own is part of the last) over the three layers of LeNet-300-100
  give, to first order, a relative error of at most ``12 u`` (4.7%).
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from awt import config as config_lib
from awt import data as data_lib
from awt import experiment, masks, training
from experiments.configs import digits_mlp

U = 2.0**-8  # unit roundoff of bfloat16 (8-bit significand).
BATCH = 64


@pytest.fixture(scope="module")
def digits():
  return data_lib.load("digits")


def _config(dtype):
  config = digits_mlp.get_config("smoke")
  config.model.dtype = dtype
  return config


def _batch(split):
  x = jnp.asarray(split.images[:BATCH], jnp.float32) / 255.0
  y = jnp.asarray(split.labels[:BATCH])
  return {"image": x, "label": y, "index": jnp.arange(BATCH, dtype=jnp.int32)}


def _emulated_bf16_logits(params, x, mean, std):
  """LeNet-300-100's logits ``[B, K]`` with every op rounded to bf16."""
  r = lambda a: np.asarray(a, np.float32).astype(ml_dtypes.bfloat16)
  r64 = lambda a: r(a).astype(np.float64)
  h = (np.asarray(x, np.float32) - np.float32(mean)) / np.float32(std)
  h = h.reshape(x.shape[0], -1)
  for name in ("fc1", "fc2", "head"):
    w, b = params[name]["kernel"], params[name]["bias"]
    z = r64(r64(r64(h) @ r64(w)) + r64(b))
    h = np.maximum(z, 0.0) if name != "head" else z
  return h


def test_validate_accepts_float32_and_bfloat16_only():
  for dtype in ("float32", "bfloat16"):
    config_lib.validate(_config(dtype))
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(_config("float16"))
  msg = str(e.value)
  assert "\n" not in msg
  assert "model.dtype" in msg and "'float16'" in msg
  assert "float32, bfloat16" in msg


def test_bf16_model_computes_in_bf16_with_float32_params(digits):
  model = config_lib.build_model(_config("bfloat16"), digits.info)
  params, _ = training.init_variables(
    model, jax.random.PRNGKey(0), digits.info.image_shape
  )
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype("float32")}
  x = _batch(digits.train)["image"]
  logits, state = model.apply({"params": params}, x, capture_intermediates=True)
  hidden = state["intermediates"]
  assert hidden["fc1"]["__call__"][0].dtype == jnp.bfloat16
  assert hidden["fc2"]["__call__"][0].dtype == jnp.bfloat16
  assert hidden["head"]["__call__"][0].dtype == jnp.bfloat16
  assert logits.dtype == jnp.float32  # returned as float32 for the loss


def _logits_both(digits):
  info = digits.info
  fp32 = config_lib.build_model(_config("float32"), info)
  bf16 = config_lib.build_model(_config("bfloat16"), info)
  params, _ = training.init_variables(
    fp32, jax.random.PRNGKey(0), info.image_shape
  )
  batch = _batch(digits.train)
  z32 = np.asarray(fp32.apply({"params": params}, batch["image"]), np.float64)
  z16 = np.asarray(bf16.apply({"params": params}, batch["image"]), np.float64)
  return params, batch, z32, z16


def test_bf16_logits_equal_an_emulation_of_bf16_rounding(digits):
  params, batch, z32, z16 = _logits_both(digits)
  info = digits.info
  assert len(info.mean) == 1 and len(info.std) == 1
  ze = _emulated_bf16_logits(params, batch["image"], info.mean[0], info.std[0])
  scale = np.max(np.abs(ze))
  # A rounding decision may differ where float32 and float64 sums straddle a
  # bf16 boundary; such a flip moves a value by one ulp, 2**-7 relative.
  assert np.max(np.abs(z16 - ze)) <= 2**-7 * scale
  assert np.mean(z16 == ze) >= 0.99
  # The float32 network is distinguishable from the emulation.
  assert np.mean(z32 == ze) < 0.5


def test_bf16_loss_close_to_fp32_loss(digits):
  _, batch, z32, z16 = _logits_both(digits)
  ce = lambda z: float(training.cross_entropy(jnp.asarray(z), batch["label"]))
  assert ce(z16) != ce(z32)
  assert abs(ce(z16) - ce(z32)) <= 12 * U * ce(z32)


def test_bf16_pgd_at_steps_keep_float32_master_weights(digits):
  config = _config("bfloat16")
  model = config_lib.build_model(config, digits.info)
  tx = training.make_optimizer(config.optimizer, 100)
  params, batch_stats = training.init_variables(
    model, jax.random.PRNGKey(0), digits.info.image_shape
  )
  state = training.create_train_state(
    params, batch_stats, masks.ones(params), tx, jax.random.PRNGKey(1)
  )
  step = jax.jit(
    training.make_train_step(model, tx, config.adversarial, axis_name=None)
  )
  batch = _batch(digits.train)
  losses = []
  for _ in range(5):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  for tree in (state.params, state.opt_state):
    dtypes = {p.dtype for p in jax.tree.leaves(tree) if p.ndim}
    assert dtypes == {jnp.dtype("float32")}
  moved = jax.tree.map(
    lambda a, b: float(jnp.max(jnp.abs(a - b))), params, state.params
  )
  assert min(jax.tree.leaves(moved)) > 0  # fp32 weights took the updates
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.slow
def test_bf16_run_trains_evaluates_and_reloads(tmp_path):
  config = _config("bfloat16")
  config.num_epochs = 1
  config.eval.attacks = ("fgsm",)
  results = experiment.train_and_evaluate(config, str(tmp_path))
  assert 0.0 <= results["clean_accuracy"] <= 1.0
  assert np.isfinite(results["history"][-1]["train_loss"])
  from awt import checkpoints

  run = checkpoints.restore(str(tmp_path))
  assert run["config"].model.dtype == "bfloat16"
  assert run["model"].dtype == jnp.bfloat16
  leaves = jax.tree.leaves(run["variables"]["params"])
  assert {p.dtype for p in leaves} == {jnp.dtype("float32")}
