"""Tests for awt.pruning.pipelines: one_shot, imp, hydra, dns.

A tiny MLP (64-32-16-10) on 128 real digits, batch 32 (4 steps an epoch),
one or two epochs per phase; natural and PGD-2 adversarial training.
"""

import dataclasses
import functools
import math

import _tiny
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awt import masks, models, pruning, training
from awt.pruning import pipelines

BATCH = 32
NUM_EXAMPLES = 128
STEPS = NUM_EXAMPLES // BATCH


MODEL = models.get("mlp", 10, widths=(32, 16))


def _config(objective, **pruning_options):
  c = _tiny.smoke_config(sparsity=0.8, **pruning_options)
  c.batch_size = BATCH
  c.num_epochs = 1
  c.adversarial.method = objective
  c.adversarial.steps = 2
  return c


def _ctx(objective="none", **pruning_options):
  return _tiny.context(
    MODEL, _tiny.digits(NUM_EXAMPLES), _config(objective, **pruning_options)
  )


@functools.cache
def _find(method, objective="none", **pruning_options):
  """The ticket of ``method`` (cached: several tests read the same run)."""
  ctx = _ctx(objective, **pruning_options)
  return ctx, pruning.find(method, ctx, jax.random.PRNGKey(7))


def _leaves(tree):
  return {
    tuple(str(k.key) for k in kp): np.asarray(x)
    for kp, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _assert_exact(ticket, ctx):
  """Exact count (global or per layer), {0,1} mask, zeros where pruned."""
  p = ctx.config.pruning
  paths = masks.prunable_paths(
    ctx.params,
    keep_first=p.get("keep_first", False),
    keep_last=p.get("keep_last", False),
  )
  density = 1.0 - p.sparsity
  mask = _leaves(ticket.mask)
  params = _leaves(ticket.params)
  assert mask.keys() == _leaves(ctx.params).keys() == params.keys()
  for path, m in mask.items():
    assert set(np.unique(m)) <= {0.0, 1.0}
    assert np.all(params[path][m == 0] == 0.0)
    if path not in paths:
      assert np.all(m == 1.0), path
  kept = [int(mask[q].sum()) for q in paths]
  sizes = [mask[q].size for q in paths]
  if p.scope == "global":
    assert sum(kept) == round(density * sum(sizes))
  else:
    assert kept == [round(density * n) for n in sizes]


CASES = [
  ("one_shot", "none", "global", {"pretrain_epochs": 1, "keep_first": True}),
  ("one_shot", "pgd_at", "layerwise", {"pretrain_epochs": 1}),
  ("imp", "pgd_at", "global", {"imp_rounds": 2, "imp_epochs": 1}),
  ("imp", "none", "layerwise", {"imp_rounds": 2, "imp_epochs": 2,
                                "rewind_epoch": 1, "keep_last": True}),
  ("hydra", "pgd_at", "global", {"pretrain_epochs": 0, "score_epochs": 1}),
  ("hydra", "none", "layerwise", {"pretrain_epochs": 1, "score_epochs": 1}),
  ("dns", "none", "global", {"pretrain_epochs": 1, "dns_epochs": 2,
                             "dns_gamma": 0.0, "dns_interval": 2,
                             "dns_low": 1.0, "dns_high": 1.0}),
  ("dns", "pgd_at", "layerwise", {"dns_epochs": 1}),
]  # fmt: skip


def _expected_epochs(method, options):
  """Training epochs each method documents spending (all phases)."""
  if method == "imp":
    e, k = options["imp_epochs"], options.get("rewind_epoch", 0)
    return e + (options["imp_rounds"] - 1) * (e - k)
  names = {
    "one_shot": ("pretrain_epochs",),
    "hydra": ("pretrain_epochs", "score_epochs"),
    "dns": ("pretrain_epochs", "dns_epochs"),
  }[method]
  return sum(options.get(n, 0) for n in names)


@pytest.mark.parametrize(
  "method,objective,scope,options",
  CASES,
  ids=[f"{m}-{o}-{s}" for m, o, s, _ in CASES],
)
def test_exact_sparsity_and_documented_passes(
  method, objective, scope, options
):
  ctx, ticket = _find(method, objective, scope=scope, **options)
  _assert_exact(ticket, ctx)
  per_step = 1 if objective == "none" else ctx.config.adversarial.steps + 1
  assert ticket.info["passes"] == (
    _expected_epochs(method, options) * STEPS * per_step
  )
  assert ticket.info["method"] == method
  assert ticket.info["wall_time_s"] > 0.0
  assert (
    ticket.info["start"]
    == {
      "one_shot": "trained",
      "hydra": "trained",
      "dns": "trained",
      "imp": "rewound" if options.get("rewind_epoch", 0) else "init",
    }[method]
  )


def test_pipelines_are_registered():
  for name in ("one_shot", "imp", "hydra", "dns"):
    fn, declared = pipelines.METHODS[name]
    assert pruning.get(name) is fn
    assert set(declared) <= set(pruning.options(name))


def test_passes_per_step():
  assert pipelines.passes_per_step(None) == 1
  assert pipelines.passes_per_step({"method": "none"}) == 1
  assert pipelines.passes_per_step({"method": "pgd_at", "steps": 7}) == 8
  assert pipelines.passes_per_step({"method": "fast_at", "steps": 7}) == 2
  with pytest.raises(ValueError, match="unknown adversarial method 'pgd'"):
    pipelines.passes_per_step({"method": "pgd"})


def test_bad_options_raise():
  ctx = _ctx(scope="per_layer")
  with pytest.raises(
    ValueError,
    match="unknown pruning.scope 'per_layer'; known: global, layerwise",
  ):
    pipelines.one_shot(ctx, jax.random.PRNGKey(0))
  ctx = _ctx(imp_epochs=1, rewind_epoch=1)
  with pytest.raises(ValueError, match="rewind_epoch must be <"):
    pipelines.imp(ctx, jax.random.PRNGKey(0))


@pytest.mark.parametrize("sparsity,rounds", [(0.8, 3), (0.99, 5), (0.5, 1)])
def test_imp_densities_prune_a_constant_fraction(sparsity, rounds):
  d = pipelines.imp_densities(sparsity, rounds)
  assert len(d) == rounds and d[-1] == 1.0 - sparsity
  p = 1.0 - (1.0 - sparsity) ** (1.0 / rounds)
  previous = (1.0,) + d[:-1]
  np.testing.assert_allclose(np.array(d) / np.array(previous), 1.0 - p)


def test_imp_rewind_zero_restores_the_initial_weights():
  ctx, ticket = _find("imp", "pgd_at", scope="global", **CASES[2][3])
  expected = jax.tree.map(lambda p, m: p * m, ctx.params, ticket.mask)
  for a, b in zip(
    jax.tree.leaves(ticket.params), jax.tree.leaves(expected), strict=True
  ):
    np.testing.assert_array_equal(a, b)


def _train_dense(ctx, epochs, total_epochs, key):
  """Independent dense run: the trajectory a pipeline's first run follows."""
  c = ctx.config
  tx = training.make_optimizer(c.optimizer, total_epochs * STEPS)
  step = training.make_train_step(ctx.model, tx, c.adversarial, axis_name=None)
  state = training.create_train_state(
    ctx.params, ctx.batch_stats, masks.ones(ctx.params), tx, key
  )
  state, _ = training.train_epochs(
    step, state, ctx.split, batch_size=BATCH, epochs=epochs, seed=c.seed
  )
  return state.params


def test_imp_rewinds_survivors_to_their_epoch_k_values():
  options = CASES[3][3]
  ctx, ticket = _find("imp", "none", scope="layerwise", **options)
  theta_k = _train_dense(ctx, 1, options["imp_epochs"], jax.random.PRNGKey(7))
  moved = False
  for t, m, init, ref in zip(
    jax.tree.leaves(ticket.params),
    jax.tree.leaves(ticket.mask),
    jax.tree.leaves(ctx.params),
    jax.tree.leaves(theta_k),
    strict=True,
  ):
    np.testing.assert_array_equal(t, ref * m)
    moved |= bool(np.any((ref != init) & (m == 1)))
  assert moved, "epoch-1 weights equal the init: the test would prove nothing"


def test_hydra_mask_is_topk_of_learned_scores_on_pretrained_weights():
  ctx, ticket = _find("hydra", "none", scope="layerwise", **CASES[5][3])
  paths = masks.prunable_paths(ctx.params)
  expected = masks.topk(ticket.scores, 0.2, scope="layerwise", paths=paths)
  for a, b in zip(
    jax.tree.leaves(ticket.mask), jax.tree.leaves(expected), strict=True
  ):
    np.testing.assert_array_equal(a, b)
  pretrained = _train_dense(ctx, 1, 1, jax.random.PRNGKey(7))
  initial = pipelines.hydra_init_scores(pretrained, paths)
  changed = 0
  for path, t in _leaves(ticket.params).items():
    m = _leaves(ticket.mask)[path]
    np.testing.assert_array_equal(t, _leaves(pretrained)[path] * m)
    if path in paths:
      changed += int(
        np.sum(_leaves(ticket.scores)[path] != np.abs(_leaves(initial)[path]))
      )
    else:
      assert np.all(_leaves(ticket.scores)[path] == 0.0)
  assert changed > 0, "score optimization left every score at its init"


def test_hydra_init_scores_closed_form():
  rng = np.random.default_rng(0)
  params = {
    "conv": {"kernel": rng.normal(size=(3, 3, 2, 4)), "bias": rng.normal(4)},
    "head": {"kernel": rng.normal(size=(5, 3)), "bias": rng.normal(3)},
  }
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  paths = (("conv", "kernel"), ("head", "kernel"))
  scores = pipelines.hydra_init_scores(params, paths)
  for name, fan_in in (("conv", 18), ("head", 5)):
    theta = np.asarray(params[name]["kernel"])
    np.testing.assert_allclose(
      scores[name]["kernel"],
      math.sqrt(6.0 / fan_in) * theta / np.abs(theta).max(),
      rtol=1e-6,
    )
    np.testing.assert_array_equal(scores[name]["bias"], 0.0)


def _tiny_logits(w, x):
  hidden = x @ w["a"]["kernel"] + w["a"]["bias"][None, :]
  return jnp.tanh(hidden) @ w["b"]["kernel"]


def _tiny_problem():
  rng = np.random.default_rng(1)
  theta = {
    "a": {"kernel": rng.normal(size=(6, 5)), "bias": rng.normal(size=5)},
    "b": {"kernel": rng.normal(size=(5, 3))},
  }
  theta = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), theta)
  x = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  return theta, x


def _numpy_top_half(scores):
  """{0,1} array keeping the larger half of ``|scores|`` (numpy reference)."""
  flat = np.abs(np.asarray(scores)).ravel()
  keep = np.zeros(flat.size, np.float32)
  keep[np.argsort(-flat, kind="stable")[: round(0.5 * flat.size)]] = 1.0
  return keep.reshape(np.shape(scores))


def test_hydra_weights_value_and_straight_through_gradient():
  theta, x = _tiny_problem()
  paths = (("a", "kernel"), ("b", "kernel"))
  rng = np.random.default_rng(2)
  scores = jax.tree.map(
    lambda v: jnp.asarray(rng.normal(size=v.shape), jnp.float32), theta
  )
  loss = lambda w: jnp.sum(_tiny_logits(w, x) ** 2)
  weights = jax.jit(
    lambda s: pipelines.hydra_weights(
      s, theta, 0.5, scope="layerwise", paths=paths
    )
  )
  hard = jax.tree.map(_numpy_top_half, scores)
  hard["a"]["bias"] = np.ones(5, np.float32)
  masked = jax.tree.map(lambda t, m: t * m, theta, hard)
  for a, b in zip(
    jax.tree.leaves(weights(scores)), jax.tree.leaves(masked), strict=True
  ):
    np.testing.assert_array_equal(a, b)
  # Reference: dL/ds = dL/dw (at the masked weights) * theta * sign(s).
  grad_w = jax.grad(loss)(masked)
  grad_s = jax.jit(jax.grad(lambda s: loss(weights(s))))(scores)
  for path in paths:
    g_w, t = grad_w[path[0]][path[1]], theta[path[0]][path[1]]
    s = scores[path[0]][path[1]]
    np.testing.assert_allclose(
      grad_s[path[0]][path[1]], g_w * t * jnp.sign(s), rtol=1e-5, atol=1e-6
    )
    pruned = hard[path[0]][path[1]] == 0
    assert np.all(np.asarray(grad_s[path[0]][path[1]])[pruned] != 0)


def test_straight_through_updates_pruned_weights_with_the_masked_gradient():
  theta, x = _tiny_problem()
  paths = (("a", "kernel"), ("b", "kernel"))
  mask = masks.random(jax.random.PRNGKey(0), theta, 0.5, paths=paths)
  loss = lambda w: jnp.sum(_tiny_logits(w, x) ** 2)
  masked = jax.tree.map(lambda t, m: t * m, theta, mask)
  value = pipelines.straight_through(theta, mask)
  for a, b in zip(jax.tree.leaves(value), jax.tree.leaves(masked), strict=True):
    np.testing.assert_array_equal(a, b)
  # DNS: theta <- theta - lr * dL/d(theta * m), pruned entries included.
  grad = jax.grad(lambda t: loss(pipelines.straight_through(t, mask)))(theta)
  reference = jax.grad(loss)(masked)
  for a, b in zip(
    jax.tree.leaves(grad), jax.tree.leaves(reference), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  pruned = np.asarray(mask["a"]["kernel"]) == 0
  assert np.all(np.asarray(grad["a"]["kernel"])[pruned] != 0)


def _dns_reference(theta, mask, density, scope, paths, low, high):
  """Plain numpy DNS hysteresis around the k-th largest magnitude."""
  mags = {p: np.abs(np.asarray(theta[p[0]][p[1]])) for p in paths}

  def kth(values):
    k = round(density * values.size)
    return np.sort(values.ravel())[::-1][k - 1]

  if scope == "global":
    t_all = kth(np.concatenate([v.ravel() for v in mags.values()]))
  out = {}
  for p in paths:
    t = t_all if scope == "global" else kth(mags[p])
    m = np.asarray(mask[p[0]][p[1]]).copy()
    m[mags[p] < low * t] = 0.0
    m[mags[p] >= high * t] = 1.0
    out[p] = m
  return out


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_dns_mask_prunes_below_a_and_splices_back_above_b(scope):
  theta, _ = _tiny_problem()
  paths = (("a", "kernel"), ("b", "kernel"))
  mask = masks.random(jax.random.PRNGKey(1), theta, 0.5, paths=paths)
  # The constructed case: the largest weight of layer a is pruned, and a
  # tiny weight of layer a is kept.
  a = np.asarray(theta["a"]["kernel"]).copy()
  a[0, 0], a[1, 1] = 10.0, 1e-4
  ma = np.asarray(mask["a"]["kernel"]).copy()
  ma[0, 0], ma[1, 1] = 0.0, 1.0
  theta["a"]["kernel"], mask["a"]["kernel"] = jnp.asarray(a), jnp.asarray(ma)
  new = pipelines.dns_mask(theta, mask, 0.3, scope=scope, paths=paths)
  assert new["a"]["kernel"][0, 0] == 1.0, "the large pruned weight is back"
  assert new["a"]["kernel"][1, 1] == 0.0, "the tiny kept weight is pruned"
  ref = _dns_reference(theta, mask, 0.3, scope, paths, 0.9, 1.1)
  for p in paths:
    np.testing.assert_array_equal(new[p[0]][p[1]], ref[p])
  np.testing.assert_array_equal(new["a"]["bias"], mask["a"]["bias"])
  # Between a and b a weight keeps its state: both states occur there.
  both = [
    np.asarray(mask[p[0]][p[1]])[(ref[p] == np.asarray(mask[p[0]][p[1]]))]
    for p in paths
  ]
  assert {0.0, 1.0} <= set(np.concatenate(both))


def test_dns_updates_on_schedule_and_splices_during_training():
  options = CASES[6][3]
  _, ticket = _find("dns", "none", scope="global", **options)
  # gamma = 0: every step t (from the start of surgery) with t % interval
  # == 0 updates the mask, here t = 0, 2, 4, 6.
  steps = options["dns_epochs"] * STEPS
  assert ticket.info["mask_updates"] == len(range(0, steps, 2))
  # With a = b = t every update re-ranks all weights, pruned ones included
  # (they keep training), so some pruned weight comes back.
  assert ticket.info["spliced"] > 0


def test_rewound_rounds_resume_the_learning_rate_schedule():
  # Linear decay 1 -> 0 over 10 steps: at step 4 the learning rate is 0.6.
  opt = {"name": "sgd", "learning_rate": 1.0, "schedule": "linear"}
  tx = training.make_optimizer(opt, 10)
  params = {"w": jnp.ones(3)}
  state = pipelines._resume_schedule(tx.init(params), 4)
  updates, _ = tx.update({"w": jnp.full(3, 2.0)}, state, params)
  np.testing.assert_allclose(updates["w"], -0.6 * 2.0, rtol=1e-6)


@pytest.mark.slow
def test_shared_pretraining_gives_the_tickets_of_separate_ones(tmp_path):
  """HYDRA, one-shot and IMP of one seed train the dense net once."""
  lines = []
  shared = dict(pretrain_dir=str(tmp_path), log=lines.append)
  key = jax.random.PRNGKey(3)
  for method in ("hydra", "one_shot", "imp"):
    alone = pruning.find(method, _ctx("none", imp_rounds=2), key)
    ctx = dataclasses.replace(_ctx("none", imp_rounds=2), **shared)
    cached = pruning.find(method, ctx, key)
    for a, b in zip(
      jax.tree.leaves((alone.mask, alone.params)),
      jax.tree.leaves((cached.mask, cached.params)),
      strict=True,
    ):
      np.testing.assert_array_equal(a, b)
  # Trained by HYDRA, loaded by one-shot and IMP; one directory in all.
  assert sum("dense pretraining loaded" in line for line in lines) == 2
  assert len(list(tmp_path.iterdir())) == 1
  # Another objective is another pretraining, not a reuse.
  ctx = dataclasses.replace(_ctx("fast_at"), **shared)
  pruning.find("one_shot", ctx, key)
  assert len(list(tmp_path.iterdir())) == 2
