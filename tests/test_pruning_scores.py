"""Tests for awt.pruning (scores at initialization) and its registry."""

import dataclasses
import functools

import _tiny
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from awt import data as data_lib
from awt import masks, models, pruning
from awt.pruning import scores as scores_lib

IMAGE_SHAPE = _tiny.IMAGE_SHAPE
KEY = jax.random.PRNGKey(0)


def _ctx(widths=(32, 16), seed=0, **pruning_options):
  config = _tiny.smoke_config(
    **{"sparsity": 0.8, "synflow_iterations": 5, **pruning_options}
  )
  config.batch_size = 16
  config.adversarial.steps = 3
  model = models.get("mlp", 10, widths=widths, mean=0.3, std=0.4)
  return _tiny.context(model, _tiny.noise(32), config, seed=seed)


def _layer(tree, path):
  for k in path:
    tree = tree[k]
  return np.asarray(tree)


def _reference_loss(model, temperature=1.0):
  """Mean CE of logits / T via optax (independent of training.cross_entropy)."""

  def loss(params, x, y):
    logits = model.apply({"params": params}, x) / temperature
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return loss


# Forward+backward passes with score_batches=1, 5 SynFlow iterations.
_PASSES = {"random": 0, "erk": 0, "magnitude": 0, "snip": 1, "grasp": 2}
_PASSES["synflow"] = 5


@pytest.mark.parametrize(
  "method,scope,keep",
  [
    (m, scope, keep)
    for m in sorted(_PASSES)
    for scope, keep in (("global", "keep_last"), ("layerwise", "keep_first"))
    # ERK has its own layer allocation: pruning.scope does not apply.
    if not (m == "erk" and scope == "layerwise")
  ],
)
def test_exact_sparsity_scores_and_passes(method, scope, keep):
  ctx = _ctx(widths=(32, 16), scope=scope, **{keep: True})
  ticket = pruning.find(method, ctx, KEY)
  all_paths = masks.prunable_paths(ctx.params)
  paths = masks.prunable_paths(ctx.params, **{keep: True})
  excluded = set(all_paths) - set(paths)
  assert len(excluded) == 1
  density = 1.0 - ctx.config.pruning.sparsity
  for p in excluded:
    assert np.all(_layer(ticket.mask, p) == 1)
  kept, total = masks.counts(ticket.mask, paths)
  assert kept == masks.num_to_keep(total, density)
  if scope == "layerwise":
    for p in paths:
      layer = _layer(ticket.mask, p)
      assert layer.sum() == masks.num_to_keep(layer.size, density)
  # The mask keeps the highest scores (per layer where the ranking is).
  groups = (
    [paths] if scope == "global" and method != "erk" else [[p] for p in paths]
  )
  for group in groups:
    m = np.concatenate([_layer(ticket.mask, p).ravel() for p in group])
    s = np.concatenate([_layer(ticket.scores, p).ravel() for p in group])
    assert s[m == 1].min() >= s[m == 0].max()
  # Non-kernel leaves unmasked; the ticket's weights are params * mask.
  assert np.all(np.asarray(ticket.mask["fc1"]["bias"]) == 1)
  for p in all_paths:
    np.testing.assert_array_equal(
      _layer(ticket.params, p), _layer(ctx.params, p) * _layer(ticket.mask, p)
    )
  if method == "magnitude":  # The same selection as masks.topk.
    expected = masks.topk(ticket.scores, density, scope=scope, paths=paths)
    np.testing.assert_array_equal(
      ravel_pytree(ticket.mask)[0], ravel_pytree(expected)[0]
    )
  assert ticket.info["method"] == method
  assert ticket.info["passes"] == _PASSES[method]
  assert ticket.info["wall_time_s"] > 0


def test_registry_dense_and_errors():
  assert {"dense", "random", "erk", "magnitude", "snip", "grasp"} <= set(
    pruning.names()
  )
  assert "synflow" in pruning.METHODS
  with pytest.raises(ValueError, match="unknown pruning method 'snp'; known:"):
    pruning.find("snp", _ctx(), KEY)
  ticket = pruning.find("dense", _ctx(), KEY)
  assert masks.sparsity(ticket.mask) == 0.0
  assert ticket.info["passes"] == 0 and ticket.scores is None
  with pytest.raises(ValueError, match="unknown pruning.score_loss 'pgd'"):
    pruning.find("snip", _ctx(score_loss="pgd"), KEY)


def test_snip_scores_equal_direct_gradient():
  """|θ ⊙ Σ_s ∂L_s/∂θ| from a separately written jax.grad of optax's CE."""
  ctx = _ctx(score_batches=2)
  ticket = pruning.find("snip", ctx, KEY)
  batches, _ = scores_lib.score_inputs(ctx, KEY)
  assert batches["image"].shape == (2, 16, *IMAGE_SHAPE)
  loss = _reference_loss(ctx.model)
  grad = jax.jit(jax.grad(loss))
  grads = [
    grad(ctx.params, batches["image"][s], batches["label"][s]) for s in range(2)
  ]
  g = jax.tree.map(lambda a, b: a + b, *grads)
  expected = jax.tree.map(lambda p, gi: np.abs(p * gi), ctx.params, g)
  for p in masks.prunable_paths(ctx.params):
    np.testing.assert_allclose(
      _layer(ticket.scores, p), _layer(expected, p), rtol=1e-4, atol=1e-9
    )
  assert ticket.info["passes"] == 2


def _smooth_mlp_loss(params, x, y):
  """A float64-capable two-layer tanh MLP cross-entropy (plain JAX)."""
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["fc1"]["kernel"])
  h = h + params["fc1"]["bias"][None, :]
  logits = h @ params["head"]["kernel"] + params["head"]["bias"][None, :]
  return optax.softmax_cross_entropy_with_integer_labels(logits / 3.0, y).mean()


def test_grasp_hvp_matches_central_finite_difference():
  """θ ⊙ Hg equals θ ⊙ (∇L(θ+εg) − ∇L(θ−εg)) / 2ε, g on kernels only."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    params = {
      "fc1": {
        "kernel": jnp.asarray(rng.normal(size=(12, 7)) / 3),
        "bias": jnp.asarray(rng.normal(size=(7,)) / 3),
      },
      "head": {
        "kernel": jnp.asarray(rng.normal(size=(7, 5)) / 2),
        "bias": jnp.zeros((5,), jnp.float64),
      },
    }
    images = jnp.asarray(rng.uniform(size=(2, 6, 12)))
    labels = jnp.array([[0, 1, 2, 3, 4, 0], [1, 1, 2, 2, 3, 3]])
    got = jax.jit(functools.partial(scores_lib.grasp_scores, _smooth_mlp_loss))(
      params, images, labels
    )

    @jax.jit
    def grad(p):
      return [
        jax.grad(_smooth_mlp_loss)(p, images[s], labels[s]) for s in range(2)
      ]

    g = jax.tree.map(lambda a, b: a + b, *grad(params))
    g = {
      name: {"kernel": layer["kernel"], "bias": jnp.zeros_like(layer["bias"])}
      for name, layer in g.items()
    }
    eps = 1e-5
    plus = jax.tree.map(lambda p, v: p + eps * v, params, g)
    minus = jax.tree.map(lambda p, v: p - eps * v, params, g)
    fd = jax.tree.map(
      lambda a, b, c, d: (a + b - c - d) / (2 * eps), *grad(plus), *grad(minus)
    )
    expected = jax.tree.map(lambda p, h: p * h, params, fd)
    got_flat, expected_flat = ravel_pytree(got)[0], ravel_pytree(expected)[0]
    err = jnp.linalg.norm(got_flat - expected_flat)
    assert got_flat.dtype == jnp.float64
    assert float(jnp.linalg.norm(expected_flat)) > 0
    assert err <= 1e-6 * jnp.linalg.norm(expected_flat)


def test_grasp_ticket_matches_explicit_hessian():
  """Ticket scores = θ ⊙ (H g) with H from jax.hessian, T = 200, kernels."""
  ctx = _ctx(widths=(6,))
  ticket = pruning.find("grasp", ctx, KEY)
  batches, _ = scores_lib.score_inputs(ctx, KEY)
  theta, unravel = ravel_pytree(ctx.params)
  loss = _reference_loss(ctx.model, temperature=200.0)
  x, y = batches["image"][0], batches["label"][0]
  is_kernel = ravel_pytree(
    {
      name: {
        "kernel": jnp.ones_like(layer["kernel"]),
        "bias": jnp.zeros_like(layer["bias"]),
      }
      for name, layer in ctx.params.items()
    }
  )[0]

  @jax.jit
  def reference(v):
    flat_loss = lambda w: loss(unravel(w), x, y)
    g = jax.grad(flat_loss)(v) * is_kernel
    return v * (jax.hessian(flat_loss)(v) @ g)

  expected = reference(theta)
  got = ravel_pytree(ticket.scores)[0]
  scale = float(jnp.abs(expected).max())
  assert scale > 0
  np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * scale)
  assert ticket.info["passes"] == 2


def _connected(mask, paths):
  """Whether some input reaches some output through kept weights."""
  reach = np.ones(_layer(mask, paths[0]).shape[0], bool)
  for p in paths:
    kept = _layer(mask, p) != 0
    reach = (reach.astype(np.int64) @ kept.astype(np.int64)) > 0
  return bool(reach.any())


@pytest.mark.slow
def test_synflow_avoids_layer_collapse_where_magnitude_does_not():
  """Tanaka et al. (2020), Fig. 1: global magnitude collapses a layer.

  The MLP 64-256-16-16-16-16-10 uses flax's default LeCun-normal init,
  std = 1/sqrt(fan_in): the 256->16 layer has std 1/16 while the 16->16 and
  16->10 layers have std 1/4, four times larger. At 99% sparsity the global
  top 1% (214 of 21,408 weights) is filled by the ~900 weights of std 1/4
  (and the largest of the 64->256 layer's 16k of std 1/8); the 256->16
  layer's weights would need 4+ sigma outliers to compete, so global
  magnitude keeps none of them: the network is disconnected. SynFlow's
  iterative, data-free scores keep every layer and an input-output path.
  """
  ctx = _ctx(
    widths=(256, 16, 16, 16, 16), sparsity=0.99, synflow_iterations=100
  )
  paths = masks.prunable_paths(ctx.params)
  magnitude = pruning.find("magnitude", ctx, KEY)
  synflow = pruning.find("synflow", ctx, KEY)
  mag_counts = [int(_layer(magnitude.mask, p).sum()) for p in paths]
  sf_counts = [int(_layer(synflow.mask, p).sum()) for p in paths]
  assert min(mag_counts) == 0 and not _connected(magnitude.mask, paths)
  assert min(sf_counts) >= 1 and _connected(synflow.mask, paths)
  kept, total = masks.counts(synflow.mask)
  assert kept == masks.num_to_keep(total, 0.01) == sum(mag_counts)
  assert synflow.info["passes"] == 100


def test_synflow_input_is_ones_after_normalization():
  model = models.get("mlp", 10, mean=(0.3,), std=(0.4,))
  x = scores_lib.synflow_input(model, IMAGE_SHAPE)
  np.testing.assert_allclose(
    model.normalize(x), np.ones((1, *IMAGE_SHAPE)), rtol=1e-6
  )


def test_synflow_scores_closed_form_on_linear_chain():
  """For a bias-free linear net R = 1ᵀ|W1||W2|1: ∂R/∂W1_ij = Σ_k |W2|_jk."""
  ctx = _ctx(widths=(6,))
  params = ctx.params
  w1, w2 = np.abs(params["fc1"]["kernel"]), np.abs(params["head"]["kernel"])
  x = scores_lib.synflow_input(ctx.model, IMAGE_SHAPE)
  s = scores_lib.synflow_scores(ctx.model, params, {}, x, masks.ones(params))
  # ReLU is the identity on the positive flow; biases are zero at init.
  np.testing.assert_allclose(
    s["fc1"]["kernel"], w1 * w2.sum(1)[None, :], rtol=1e-5
  )
  np.testing.assert_allclose(
    s["head"]["kernel"], w2 * w1.sum(0)[:, None], rtol=1e-5
  )


def test_erk_densities_closed_form():
  shapes = {("fc1",): (64, 32), ("fc2",): (32, 16), ("head",): (16, 10)}
  sizes = {p: int(np.prod(s)) for p, s in shapes.items()}
  n = sum(sizes.values())
  # Uncapped: d_l = eps (n_in + n_out) / (n_in n_out),
  # eps = d N / Σ_l (n_in + n_out).
  eps = 0.1 * n / sum(sum(s) for s in shapes.values())
  got = pruning.erk_densities(shapes, 0.1)
  for p, (a, b) in shapes.items():
    assert got[p] == pytest.approx(eps * (a + b) / (a * b))
  # Capped: at d = 0.5 the head would get 8 * 26/160 = 1.3 > 1, so it is dense
  # and eps is re-solved over fc1, fc2 keeping the total at d N.
  got = pruning.erk_densities(shapes, 0.5)
  eps = (0.5 * (2048 + 512) - 0.5 * 160) / (96 + 48)
  assert got[("head",)] == 1.0
  assert got[("fc1",)] == pytest.approx(eps * 96 / 2048)
  assert got[("fc2",)] == pytest.approx(eps * 48 / 512)
  assert sum(got[p] * sizes[p] for p in shapes) == pytest.approx(0.5 * n)
  # Conv kernels: (k_h + k_w + n_in + n_out) / (k_h k_w n_in n_out).
  conv = {("c",): (3, 3, 4, 8), ("d",): (4, 10)}
  got = pruning.erk_densities(conv, 0.2)
  ratio = got[("c",)] / got[("d",)]
  assert ratio == pytest.approx((18 / 288) / (14 / 40))
  # Exact integer counts summing to round(d N).
  counts = pruning.erk_counts(shapes, 0.37)
  assert sum(counts.values()) == masks.num_to_keep(n, 0.37)
  dens = pruning.erk_densities(shapes, 0.37)
  for p in shapes:
    assert abs(counts[p] - dens[p] * sizes[p]) < 1


def test_erk_ticket_layer_counts():
  ctx = _ctx(widths=(32, 16), sparsity=0.9)
  ticket = pruning.find("erk", ctx, KEY)
  paths = masks.prunable_paths(ctx.params)
  shapes = {p: _layer(ctx.params, p).shape for p in paths}
  expected = pruning.erk_counts(shapes, 1.0 - ctx.config.pruning.sparsity)
  for p in paths:
    assert int(_layer(ticket.mask, p).sum()) == expected[p]
  # ERK gives the small head layer a higher density than the big fc1.
  assert expected[paths[-1]] / 160 > expected[paths[0]] / (64 * 32)


def test_adversarial_score_loss_uses_pgd_points():
  """PGD points inside the eps-ball that fool the net; a different mask."""
  ctx_nat = _ctx(score_loss="natural")
  # Label the data with the dense net's own predictions, so that every clean
  # point is classified correctly and PGD has something to break.
  x_all = ctx_nat.split.images.astype(np.float32) / 255
  logits_fn = lambda x: ctx_nat.model.apply({"params": ctx_nat.params}, x)
  labels = np.asarray(jnp.argmax(logits_fn(x_all), -1), np.int32)
  split = data_lib.Split(ctx_nat.split.images, labels)
  ctx_nat = dataclasses.replace(ctx_nat, split=split)
  ctx_adv = dataclasses.replace(_ctx(score_loss="adversarial"), split=split)
  nat, nat_passes = scores_lib.score_inputs(ctx_nat, KEY)
  adv, adv_passes = scores_lib.score_inputs(ctx_adv, KEY)
  eps = ctx_adv.config.adversarial.eps
  np.testing.assert_array_equal(nat["label"], adv["label"])
  delta = np.abs(np.asarray(adv["image"]) - np.asarray(nat["image"]))
  assert delta.max() <= eps + 1e-6 and delta.max() > 0.5 * eps
  assert adv["image"].min() >= 0 and adv["image"].max() <= 1
  assert nat_passes == 0 and adv_passes == ctx_adv.config.adversarial.steps
  accuracy = lambda x: np.mean(
    np.argmax(logits_fn(x[0]), -1) == adv["label"][0]
  )
  assert accuracy(nat["image"]) == 1.0
  assert accuracy(adv["image"]) < 0.5
  ticket_nat = pruning.find("snip", ctx_nat, KEY)
  ticket_adv = pruning.find("snip", ctx_adv, KEY)
  loss = _reference_loss(ctx_adv.model)
  g = jax.jit(jax.grad(loss))(ctx_adv.params, adv["image"][0], adv["label"][0])
  expected = jax.tree.map(lambda p, gi: np.abs(p * gi), ctx_adv.params, g)
  for p in masks.prunable_paths(ctx_adv.params):
    np.testing.assert_allclose(
      _layer(ticket_adv.scores, p), _layer(expected, p), rtol=1e-4, atol=1e-9
    )
  assert not np.array_equal(
    ravel_pytree(ticket_nat.mask)[0], ravel_pytree(ticket_adv.mask)[0]
  )
  assert ticket_adv.info["passes"] == 1 + ctx_adv.config.adversarial.steps
