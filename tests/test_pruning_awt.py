"""Tests for the AWT/NTT ticket searches (awt.pruning.awt)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from awt import attacks, data, masks, models, pruning, training
from awt.pruning import awt as awt_search


def _ctx(sparsity=0.8, scope="global", **pruning_kw):
  model = models.get("mlp", 10, widths=(24, 16))
  params, bs = training.init_variables(model, jax.random.PRNGKey(0), (8, 8, 1))
  digits = data.load("digits").train
  split = data.Split(digits.images[:256], digits.labels[:256])
  config = ml_collections.ConfigDict(
    {
      "batch_size": 32,
      "seed": 0,
      "adversarial": {
        "method": "pgd_at",
        "norm": "linf",
        "eps": 0.1,
        "step_size": 0.05,
        "steps": 2,
      },
      "pruning": {
        "method": "awt",
        "sparsity": sparsity,
        "scope": scope,
        "awt_steps": 12,
        "awt_mask_every": 4,
        "awt_batch": 16,
        "awt_lr": 3e-3,
        **pruning_kw,
      },
    }
  )
  return pruning.PruningContext(
    model=model,
    params=params,
    batch_stats=bs,
    split=split,
    config=config,
    image_shape=(8, 8, 1),
  )


def _held_out_loss(ctx, theta, mask, adversarial):
  """The AWT loss (weights of ``_ctx``) on 64 points the search never saw."""
  digits = data.load("digits").train
  x = jnp.asarray(digits.images[-64:], jnp.float32) / 255.0
  y = jnp.asarray(digits.labels[-64:])
  f = awt_search.eval_logits_fn(ctx.model, ctx.batch_stats)
  kfn = awt_search.ntk_fn(f)
  if adversarial:
    x = attacks.pgd(
      lambda z: f(ctx.params, z),
      x,
      y,
      jax.random.PRNGKey(5),
      eps=0.1,
      step_size=0.05,
      steps=2,
      select="last",
    )
  output, ntk, l2 = awt_search.loss_terms(
    f, kfn, theta, mask, x, f(ctx.params, x), kfn(x, None, ctx.params)
  )
  return float(output + ntk + 1e-5 / 0.2 * l2)


def test_loss_is_exactly_zero_for_the_dense_network():
  ctx = _ctx()
  f = awt_search.eval_logits_fn(ctx.model, ctx.batch_stats)
  kfn = awt_search.ntk_fn(f)
  x = jnp.asarray(ctx.split.images[:8], jnp.float32) / 255.0
  output, ntk, _ = awt_search.loss_terms(
    f,
    kfn,
    ctx.params,
    masks.ones(ctx.params),
    x,
    f(ctx.params, x),
    kfn(x, None, ctx.params),
  )
  assert float(output) == 0.0 and float(ntk) == 0.0
  # A pruned student is at a positive distance.
  m = masks.topk(jax.tree.map(jnp.abs, ctx.params), 0.2)
  output, ntk, _ = awt_search.loss_terms(
    f, kfn, ctx.params, m, x, f(ctx.params, x), kfn(x, None, ctx.params)
  )
  assert float(output) > 0 and float(ntk) > 0


@pytest.mark.parametrize("method", ["awt", "ntt"])
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_search_reduces_the_loss_and_keeps_exact_density(method, scope):
  ctx = _ctx(scope=scope)
  ticket = pruning.find(method, ctx, jax.random.PRNGKey(1))
  hist = ticket.info["history"]
  assert len(hist) == 3
  paths = masks.prunable_paths(ctx.params)
  total = sum(np.size(masks._get(ctx.params, p)) for p in paths)
  for h in hist:  # after every mask update
    if scope == "global":
      assert h["kept"] == masks.num_to_keep(total, 0.2)
  if scope == "layerwise":
    for p in paths:
      layer = np.asarray(masks._get(ticket.mask, p))
      assert layer.sum() == masks.num_to_keep(layer.size, 0.2)
  assert masks.sparsity(ticket.mask) == pytest.approx(0.8, abs=1e-3)
  # On fixed held-out points (per-batch history means are too noisy over
  # 12 steps), the ticket is closer to the dense teacher than the
  # magnitude mask the search started from.
  start = masks.topk(jax.tree.map(jnp.abs, ctx.params), 0.2, scope=scope)
  adv = method == "awt"
  assert _held_out_loss(ctx, ticket.params, ticket.mask, adv) < (
    _held_out_loss(ctx, ctx.params, start, adv)
  )
  # The ticket's weights are zero where the mask is.
  for p in paths:
    w = np.asarray(masks._get(ticket.params, p))
    assert np.all(w[np.asarray(masks._get(ticket.mask, p)) == 0] == 0)
  assert ticket.info["passes"] > 0


def test_adversarial_ntk_distance_is_zero_for_the_dense_net():
  ctx = _ctx()
  x = jnp.asarray(ctx.split.images[:8], jnp.float32) / 255.0
  y = jnp.asarray(ctx.split.labels[:8])
  adv = ctx.config.adversarial
  args = (ctx.model, ctx.batch_stats, ctx.params)
  key = jax.random.PRNGKey(2)
  assert awt_search.adversarial_ntk_distance(
    *args, ctx.params, x, y, key, adv
  ) == pytest.approx(0.0, abs=1e-6)
  sparse = masks.apply(
    ctx.params, masks.topk(jax.tree.map(jnp.abs, ctx.params), 0.1)
  )
  assert awt_search.adversarial_ntk_distance(*args, sparse, x, y, key, adv) > 0


def test_bad_options_are_named():
  with pytest.raises(ValueError, match="unknown pruning.awt_init 'grad'"):
    pruning.find("awt", _ctx(awt_init="grad"), jax.random.PRNGKey(0))
