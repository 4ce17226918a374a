"""Tests for the AWT/NTT ticket searches (awt.pruning.awt)."""

import _tiny
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from awt import attacks, data, masks, models, pruning
from awt.pruning import awt as awt_search


def _ctx(sparsity=0.8, scope="global", params=None, **pruning_kw):
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
  model = models.get("mlp", 10, widths=(24, 16))
  return _tiny.context(model, _tiny.digits(256), config, params=params)


def _held_out_loss(ctx, theta, mask, adversarial):
  """The search loss (defaults, as in ``_ctx``) on 64 unseen points."""
  digits = data.load("digits").train
  x = jnp.asarray(digits.images[-64:], jnp.float32) / 255.0
  y = jnp.asarray(digits.labels[-64:])
  f = awt_search.eval_logits_fn(ctx.model, ctx.batch_stats)
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
  paths = masks.prunable_paths(ctx.params)
  output, ntk, l2 = awt_search.loss_terms(
    f,
    theta,
    mask,
    x,
    f(ctx.params, x),
    awt_search.ntk_of(f, ctx.params, x),
    l2_paths=paths,
  )
  return float(output + 3.0 * ntk + 1e-4 / 0.2 * l2)


def _start_mask(ctx, scope):
  """The search's initial mask: the (normalized, if global) magnitudes."""
  paths = masks.prunable_paths(ctx.params)
  scales = awt_search.layer_scales(ctx.params, paths, scope == "global")
  score = awt_search.magnitude_scores(ctx.params, paths, scales)
  return masks.topk(score, 0.2, scope=scope, paths=paths)


def test_loss_is_exactly_zero_for_the_dense_network():
  ctx = _ctx()
  f = awt_search.eval_logits_fn(ctx.model, ctx.batch_stats)
  x = jnp.asarray(ctx.split.images[:8], jnp.float32) / 255.0
  k0 = awt_search.ntk_of(f, ctx.params, x)
  output, ntk, _ = awt_search.loss_terms(
    f, ctx.params, masks.ones(ctx.params), x, f(ctx.params, x), k0
  )
  assert float(output) == 0.0 and float(ntk) == 0.0
  # A pruned student is at a positive distance.
  m = masks.topk(jax.tree.map(jnp.abs, ctx.params), 0.2)
  output, ntk, _ = awt_search.loss_terms(
    f, ctx.params, m, x, f(ctx.params, x), k0
  )
  assert float(output) > 0 and float(ntk) > 0


@pytest.mark.parametrize(
  "scope,method",
  [
    ("global", "awt"),
    pytest.param("global", "ntt", marks=pytest.mark.slow),
    pytest.param("layerwise", "awt", marks=pytest.mark.slow),
    pytest.param("layerwise", "ntt", marks=pytest.mark.slow),
  ],
)
def test_search_reduces_the_loss_and_keeps_exact_density(scope, method):
  ctx = _ctx(scope=scope)
  ticket = pruning.find(method, ctx, jax.random.PRNGKey(1))
  hist = ticket.info["history"]
  assert [h["step"] for h in hist] == [4, 8, 12]
  paths = masks.prunable_paths(ctx.params)
  total = sum(np.size(masks._get(ctx.params, p)) for p in paths)
  for h in hist:  # after every mask update
    if scope == "global":
      assert h["kept"] == masks.num_to_keep(total, 0.2)
    assert h["ntk_to_output"] == pytest.approx(3.0 * h["ntk"] / h["output"])
    assert h["loss"] > h["output"] > 0 and h["ntk"] > 0 and h["l2"] > 0
  if scope == "layerwise":
    for p in paths:
      layer = np.asarray(masks._get(ticket.mask, p))
      assert layer.sum() == masks.num_to_keep(layer.size, 0.2)
  assert masks.sparsity(ticket.mask) == pytest.approx(0.8, abs=1e-3)
  # On fixed held-out points (per-batch history means are too noisy over
  # 12 steps), the ticket is closer to the dense teacher than the
  # magnitude mask the search started from.
  adv = method == "awt"
  assert _held_out_loss(ctx, ticket.params, ticket.mask, adv) < (
    _held_out_loss(ctx, ctx.params, _start_mask(ctx, scope), adv)
  )
  # The ticket's weights are zero where the mask is.
  for p in paths:
    w = np.asarray(masks._get(ticket.params, p))
    assert np.all(w[np.asarray(masks._get(ticket.mask, p)) == 0] == 0)
  assert ticket.info["passes"] > 0
  assert ticket.info["start"] == "searched" and ticket.info["steps"] == 12


def _spy(monkeypatch):
  """Records ``(length, mask, theta after)`` of every compiled chunk."""
  calls = []
  chunk = awt_search._chunk

  def spy(theta, opt_state, mask, *args, **kw):
    out = chunk(theta, opt_state, mask, *args, **kw)
    calls.append((args[-1]["label"].shape[0], mask, out[0][0]))
    return out

  monkeypatch.setattr(awt_search, "_chunk", spy)
  return calls


def _same(a, b):
  return all(
    np.array_equal(np.asarray(u), np.asarray(v))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def _reset(ctx, theta):
  """The magnitude mask the search resets to (global, normalized)."""
  paths = masks.prunable_paths(ctx.params)
  scales = awt_search.layer_scales(ctx.params, paths, True)
  return masks.topk(
    awt_search.magnitude_scores(theta, paths, scales), 0.2, paths=paths
  )


def test_no_mask_update_in_the_final_period(monkeypatch):
  calls = _spy(monkeypatch)
  ctx = _ctx(awt_steps=10)
  ticket = pruning.find("ntt", ctx, jax.random.PRNGKey(1))
  assert [c[0] for c in calls] == [4, 4, 2]
  (_, m0, th4), (_, m4, th8), (_, m8, th10) = calls
  assert _same(m0, _start_mask(ctx, "global"))
  paths = masks.prunable_paths(ctx.params)
  total = sum(np.size(masks._get(ctx.params, p)) for p in paths)
  for m in (m0, m4, m8):  # The density is exact after every update.
    assert masks.counts(m, paths)[0] == masks.num_to_keep(total, 0.2)
  # Resets after steps 4 and 8, to the top scores of the weights there.
  assert _same(m4, _reset(ctx, th4)) and not _same(m4, m0)
  assert _same(m8, _reset(ctx, th8)) and not _same(m8, m4)
  # None after step 10: the final weights were trained under m8, returned.
  assert not _same(_reset(ctx, th10), m8)
  assert _same(ticket.mask, m8)
  assert _same(ticket.params, masks.apply(th10, m8))
  assert [h["step"] for h in ticket.info["history"]] == [4, 8, 10]
  # The ticket's scores are those that chose its mask.
  scales = awt_search.layer_scales(ctx.params, paths, True)
  assert _same(ticket.scores, awt_search.magnitude_scores(th8, paths, scales))

  # awt_final_update=True: the old behaviour, a reset after the last step.
  calls.clear()
  old = pruning.find(
    "ntt", _ctx(awt_steps=10, awt_final_update=True), jax.random.PRNGKey(1)
  )
  th10_old = calls[-1][2]
  assert _same(calls[-1][1], m8) and _same(th10_old, th10)
  assert _same(old.mask, _reset(ctx, th10))
  assert _same(old.params, masks.apply(th10, old.mask))


def test_a_search_of_one_period_keeps_the_initial_mask(monkeypatch):
  calls = _spy(monkeypatch)
  ctx = _ctx(awt_steps=4)
  ticket = pruning.find("ntt", ctx, jax.random.PRNGKey(1))
  assert len(calls) == 1
  assert _same(ticket.mask, _start_mask(ctx, "global"))
  assert _same(ticket.params, masks.apply(calls[0][2], ticket.mask))


def test_start_init_is_the_found_mask_on_the_initialization():
  key = jax.random.PRNGKey(1)
  searched = pruning.find("ntt", _ctx(), key)
  ctx = _ctx(awt_start="init")
  ticket = pruning.find("ntt", ctx, key)
  assert ticket.info["start"] == "init"
  assert _same(ticket.mask, searched.mask)
  assert _same(ticket.params, masks.apply(ctx.params, searched.mask))
  assert not _same(ticket.params, searched.params)


@pytest.mark.parametrize("score", ["normalized", "raw"])
def test_normalized_global_score_keeps_every_layer(score):
  # fc2's weights start 100x smaller than the other layers'.
  params = _ctx().params
  params = {
    **params,
    "fc2": {**params["fc2"], "kernel": params["fc2"]["kernel"] * 0.01},
  }
  ctx = _ctx(0.95, params=params, awt_steps=8, awt_global_score=score)
  ticket = pruning.find("ntt", ctx, jax.random.PRNGKey(1))
  kept = {
    p[0]: int(np.asarray(masks._get(ticket.mask, p)).sum())
    for p in masks.prunable_paths(params)
  }
  assert sum(kept.values()) == masks.num_to_keep(64 * 24 + 24 * 16 + 160, 0.05)
  if score == "normalized":
    assert min(kept.values()) > 0, kept
  else:  # the raw magnitudes empty fc2 (and it never comes back).
    assert kept["fc2"] == 0, kept


@pytest.mark.parametrize(
  "key,value,known",
  [
    ("awt_init", "grad", "magnitude, snip"),
    ("awt_kernel", "full", "cross_full, trace"),
    ("awt_student_kernel", "sparse", "all, masked"),
    ("awt_ntk_norm", "sum", "relative, mean"),
    ("awt_l2_on", "biases", "weights, all"),
    ("awt_start", "trained", "searched, init"),
    ("awt_global_score", "std", "normalized, raw"),
    ("awt_attack_against", "both", "teacher, student"),
    ("awt_output_points", "adversarial", "search, clean"),
  ],
)
def test_bad_options_are_named(key, value, known):
  with pytest.raises(ValueError) as e:
    pruning.find("awt", _ctx(**{key: value}), jax.random.PRNGKey(0))
  assert str(e.value) == f"unknown pruning.{key} {value!r}; known: {known}"


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("awt_final_update", "yes", "pruning.awt_final_update='yes' must be True"),
    ("awt_mask_every", 0, "pruning.awt_mask_every=0 must be >= 1"),
    ("awt_steps", 2.5, "pruning.awt_steps=2.5 must be an integer"),
    ("awt_lr", -1.0, "pruning.awt_lr=-1.0 must be >= 0"),
    ("awt_batch", 1000, "pruning.awt_batch=1000 must be between 2 and the"),
  ],
)
def test_bad_numbers_are_named(key, value, message):
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    pruning.find("awt", _ctx(**{key: value}), jax.random.PRNGKey(0))


def test_search_length_in_epochs():
  ctx = _ctx(awt_steps=0, awt_epochs=0.5, awt_batch=16)
  s = awt_search._settings(ctx, True)
  assert s.steps == round(0.5 * 256 / 16) == 8
  assert awt_search._settings(_ctx(awt_epochs=0.5), True).steps == 12


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


def test_the_search_factors_dense_layers_unless_the_kernel_is_masked():
  """With the student kernel over all weights, a network whose weights are
  mostly Dense gets its kernels from ``awt.ntk.structured_fn``."""
  ctx = _ctx()
  assert awt_search._settings(ctx, True).hyper.implementation == "structured"
  masked = _ctx(awt_student_kernel="masked")
  assert awt_search._settings(masked, True).hyper.implementation == "auto"


@pytest.mark.slow
def test_mlp_search_with_the_structured_kernel_finds_the_same_ticket(
  monkeypatch,
):
  """With neural-tangents' ``"auto"`` kernels instead of the structured
  ones, the search's losses and its ticket are the same."""
  ctx = _ctx()
  structured = pruning.find("awt", ctx, jax.random.PRNGKey(1))
  monkeypatch.setattr(awt_search, "_implementation", lambda ctx, s: "auto")
  assert awt_search._settings(ctx, True).hyper.implementation == "auto"
  reference = pruning.find("awt", ctx, jax.random.PRNGKey(1))
  for got, want in zip(
    structured.info["history"], reference.info["history"], strict=True
  ):
    for key in ("loss", "output", "ntk", "l2"):
      assert got[key] == pytest.approx(want[key], rel=1e-4)
  assert _same(structured.mask, reference.mask)


def test_output_term_on_other_points_leaves_the_kernel_term():
  ctx = _ctx()
  f = awt_search.eval_logits_fn(ctx.model, ctx.batch_stats)
  x = jnp.asarray(ctx.split.images[:8], jnp.float32) / 255.0
  x_adv = jnp.clip(x + 0.1 * jnp.sign(x - 0.5), 0.0, 1.0)
  m = masks.topk(jax.tree.map(jnp.abs, ctx.params), 0.2)
  k0 = awt_search.ntk_of(f, ctx.params, x_adv)
  f0 = f(ctx.params, x)
  output, ntk, _ = awt_search.loss_terms(
    f, ctx.params, m, x_adv, f0, k0, x_output=x
  )
  _, ntk_search, _ = awt_search.loss_terms(
    f, ctx.params, m, x_adv, f(ctx.params, x_adv), k0
  )
  student = f(masks.apply(ctx.params, m), x)
  np.testing.assert_allclose(output, np.mean((student - f0) ** 2), rtol=1e-6)
  assert float(ntk) == float(ntk_search)


@pytest.mark.parametrize("points", ["search", "clean"])
def test_search_step_takes_its_output_term_on_the_chosen_points(points):
  # One compiled step at the teacher's weights, against the output term
  # written out on the step's own batch: clean, or its PGD points.
  ctx = _ctx(awt_output_points=points)
  s = awt_search._settings(ctx, adversarial=True)
  assert s.hyper.output_points == points
  mask, _, _ = awt_search._initial_mask(
    ctx, s, jax.random.PRNGKey(0), awt_search._scales(ctx, s)
  )
  batch = awt_search._stacked(ctx, 16, 0, 1, 3, jax.random.PRNGKey(4))
  coefs = {
    "lr": jnp.float32(1e-3),
    "lambda_ntk": jnp.float32(3.0),
    "lambda_l2": jnp.float32(0.0),
  }
  _, metrics = awt_search._chunk(
    ctx.params,
    optax.adam(1e-3).init(ctx.params),
    mask,
    ctx.params,
    ctx.batch_stats,
    coefs,
    batch,
    hyper=s.hyper,
  )
  f = awt_search.eval_logits_fn(ctx.model, ctx.batch_stats)
  one = jax.tree.map(lambda v: v[0], batch)
  x = one["image"]
  if points == "search":
    x = attacks.pgd(
      lambda z: f(ctx.params, z),
      x,
      one["label"],
      one["keys"],
      eps=0.1,
      step_size=0.05,
      steps=2,
      select="last",
    )
  expected = np.mean(
    (f(masks.apply(ctx.params, mask), x) - f(ctx.params, x)) ** 2
  )
  np.testing.assert_allclose(metrics["output"][0], expected, rtol=1e-5)


def test_output_points_are_recorded_and_fingerprinted():
  ctx = _ctx(awt_output_points="clean")
  ticket = pruning.find("awt", ctx, jax.random.PRNGKey(1))
  assert ticket.info["output_points"] == "clean"
  s = awt_search._settings(ctx, adversarial=True)
  assert (
    awt_search._fingerprint(s, ctx, jax.random.PRNGKey(1))["output_points"]
    == "clean"
  )
  # NTT's points are clean already: the option does not apply.
  assert awt_search._settings(ctx, adversarial=False).hyper.output_points == (
    "search"
  )
