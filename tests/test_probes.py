"""awt.probes against plain-JAX forward passes, and tickets.restore."""

import _tiny
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awt import checkpoints, masks, models, probes, tickets


def _images(n: int, shape=_tiny.IMAGE_SHAPE, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).random((n, *shape), np.float32)


def test_mlp_matches_a_plain_forward_pass():
  """Each hidden layer's share of positive pre-ReLU outputs and the logits'
  spread, against the MLP written out as three dots."""
  model = models.get("mlp", num_classes=10)
  params, _ = _tiny.init(model)
  x = _images(32)
  got = probes.probe(model, {"params": params}, x)

  h = x.reshape(32, -1)  # mean 0, std 1: normalization is the identity
  want = {}
  for name in ("fc1", "fc2", "head"):
    h = h @ params[name]["kernel"] + params[name]["bias"][None]
    want[name] = float(np.mean(h > 0))
    logits, h = h, np.maximum(h, 0)
  assert list(got.active) == ["fc1", "fc2", "head"]
  for name, share in want.items():  # one unit flipped by rounding at most
    size = 32 * params[name]["kernel"].shape[1]
    assert got.active[name] == pytest.approx(share, abs=1.0 / size)
  assert 0.2 < got.active["fc1"] < 0.8
  np.testing.assert_allclose(
    got.logit_sd, np.std(logits, axis=0).mean(), rtol=1e-5
  )


def test_a_silent_layer_leaves_the_logits_constant():
  """The stall's signature: fc2 pruned away leaves no ReLU of fc2 active,
  and logits that no longer depend on the image (the head's bias, 0)."""
  model = models.get("mlp", num_classes=10)
  params, _ = _tiny.init(model)
  mask = masks.ones(params)
  mask["fc2"]["kernel"] = jnp.zeros_like(mask["fc2"]["kernel"])
  x = _images(16)
  dense = probes.probe(model, {"params": params}, x)
  silent = probes.probe(model, {"params": masks.apply(params, mask)}, x)
  assert dense.logit_sd > 0.01
  assert silent.active["fc1"] == dense.active["fc1"]
  assert silent.active["fc2"] == 0.0
  assert silent.logit_sd == 0.0


def test_lenet5_conv1_matches_lax_conv():
  """conv1's share from a direct convolution; layers in call order."""
  model = models.get("lenet5", num_classes=10)
  params, _ = _tiny.init(model)
  x = _images(8)
  logits, outputs = probes.layer_outputs(model, {"params": params}, x)
  assert list(outputs) == ["conv1", "conv2", "fc1", "fc2", "head"]
  assert outputs["conv1"].shape == (8, 8, 8, 6)
  np.testing.assert_array_equal(outputs["head"], logits)
  k, b = params["conv1"]["kernel"], params["conv1"]["bias"]
  h = jax.lax.conv_general_dilated(
    x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  h = h + b[None, None, None]
  np.testing.assert_allclose(outputs["conv1"], h, rtol=1e-5, atol=1e-6)
  got = probes.probe(model, {"params": params}, x)
  assert got.active["conv1"] == pytest.approx(
    float(np.mean(h > 0)), abs=1.0 / h.size
  )


class _Nested(nn.Module):
  """A dense layer inside a block, and a block called twice."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    block = _Block(name="block")
    h = block(x.reshape(x.shape[0], -1))
    return nn.Dense(3, name="head")(nn.relu(block(nn.relu(h))))


class _Block(nn.Module):
  @nn.compact
  def __call__(self, h):
    return nn.Dense(64, name="inner")(h)


def test_nested_layers_are_named_by_their_path_and_first_call():
  model = _Nested()
  x = _images(4)
  variables = model.init(jax.random.key(0), x)
  logits, outputs = probes.layer_outputs(model, variables, x)
  assert list(outputs) == ["block/inner", "head"]
  w, b = (variables["params"]["block"]["inner"][k] for k in ("kernel", "bias"))
  np.testing.assert_allclose(
    outputs["block/inner"], x.reshape(4, -1) @ w + b[None], rtol=1e-5, atol=1e-6
  )


def test_restore_gives_back_the_saved_ticket(tmp_path):
  config = _tiny.smoke_config(method="snip", sparsity=0.9)
  found = tickets.find(config, workdir=str(tmp_path), measure_ntk=False)
  config.seed = 7  # the seed does not shape the template
  config.pruning.method = "dense"
  back = tickets.restore(str(tmp_path), config)
  jax.tree.map(np.testing.assert_array_equal, found.arrays(), back.arrays())
  assert back.info["method"] == "snip"
  assert back.info["sparsity"] == pytest.approx(found.info["sparsity"])


def test_restore_names_a_missing_or_foreign_ticket(tmp_path):
  config = _tiny.smoke_config(method="snip", sparsity=0.9)
  with pytest.raises(checkpoints.CheckpointError, match="no ticket saved"):
    tickets.restore(str(tmp_path), config)
  tickets.find(config, workdir=str(tmp_path), measure_ntk=False)
  config.model.name = "lenet5"
  with pytest.raises(checkpoints.CheckpointError):
    tickets.restore(str(tmp_path), config)
