"""Tests for awt.pruning.ablations (Frankle et al. 2021 sanity checks)."""

import functools

import _tiny
import jax
import numpy as np
import pytest

from awt import masks, models, plots, pruning
from awt.pruning import ablations

FIND_KEY = jax.random.PRNGKey(0)
ABLATION_KEY = jax.random.PRNGKey(7)


MODEL = models.get("mlp", 10, widths=(32, 16), mean=0.3, std=0.4)


def _ctx(sparsity=0.8, **pruning_options):
  config = _tiny.smoke_config(sparsity=sparsity, **pruning_options)
  config.batch_size = 16
  return _tiny.context(MODEL, _tiny.noise(32), config, seed=3)


@functools.cache
def _found(method, sparsity=0.8, **pruning_options):
  """``(ctx, ticket)`` of ``method``, found once per setting."""
  ctx = _ctx(sparsity, **pruning_options)
  return ctx, pruning.find(method, ctx, FIND_KEY)


def _layer(tree, path):
  for k in path:
    tree = tree[k]
  return np.asarray(tree)


def _leaves(tree):
  return {
    masks.layer_name(tuple(str(k.key) for k in kp)): np.asarray(v)
    for kp, v in jax.tree_util.tree_leaves_with_path(tree)
  }


def test_shuffle_keeps_densities_and_values_and_moves_the_mask():
  ctx, ticket = _found("snip", scope="global", keep_last=True)
  out = ablations.apply("shuffle", ticket, ctx, ABLATION_KEY)
  paths = masks.prunable_paths(ctx.params, keep_last=True)
  assert paths == (("fc1", "kernel"), ("fc2", "kernel"))
  for p in paths:
    m0, m1 = _layer(ticket.mask, p), _layer(out.mask, p)
    w0, w1 = _layer(ticket.params, p), _layer(out.params, p)
    assert m1.sum() == m0.sum()  # Per-layer density, exactly.
    assert not np.array_equal(m1, m0)  # Which connections exist moved.
    np.testing.assert_array_equal(np.sort(w1.ravel()), np.sort(w0.ravel()))
    np.testing.assert_array_equal(np.sort(w1[m1 == 1]), np.sort(w0[m0 == 1]))
    assert np.all(w1[m1 == 0] == 0)
  # Everything outside the prunable layers (biases, the kept-dense head) is
  # untouched.
  before, after = _leaves(ticket.params), _leaves(out.params)
  before_m, after_m = _leaves(ticket.mask), _leaves(out.mask)
  for name in set(before) - {masks.layer_name(p) for p in paths}:
    np.testing.assert_array_equal(after[name], before[name])
    np.testing.assert_array_equal(after_m[name], before_m[name])
  assert out.info["ablation"] == "shuffle" and out.info["method"] == "snip"
  assert out.info["passes"] == ticket.info["passes"]


def test_shuffle_inputs_keeps_every_units_fan_in_and_values():
  ctx, ticket = _found("snip", scope="global", keep_last=True)
  out = ablations.apply("shuffle_inputs", ticket, ctx, ABLATION_KEY)
  paths = masks.prunable_paths(ctx.params, keep_last=True)
  for p in paths:
    m0, m1 = _layer(ticket.mask, p), _layer(out.mask, p)
    w0, w1 = _layer(ticket.params, p), _layer(out.params, p)
    s0, s1 = _layer(ticket.scores, p), _layer(out.scores, p)
    # Each unit (column): the same fan-in, the same incoming values; mask,
    # weights and scores moved by the same permutation.
    np.testing.assert_array_equal(m1.sum(0), m0.sum(0))
    np.testing.assert_array_equal(np.sort(w1, 0), np.sort(w0, 0))
    np.testing.assert_array_equal(np.sort(s1, 0), np.sort(s0, 0))
    for j in range(m0.shape[1]):
      np.testing.assert_array_equal(
        np.sort(w1[m1[:, j] == 1, j]), np.sort(w0[m0[:, j] == 1, j])
      )
    assert np.all(w1[m1 == 0] == 0)
    # Which inputs are read moved, and with it the inputs' fan-outs.
    assert not np.array_equal(m1, m0)
    assert not np.array_equal(m1.sum(1), m0.sum(1))
  before, after = _leaves(ticket.params), _leaves(out.params)
  for name in set(before) - {masks.layer_name(p) for p in paths}:
    np.testing.assert_array_equal(after[name], before[name])


def test_shuffle_inputs_draws_uniform_permutations_per_unit():
  # One unit reading 1 of 4 inputs: over many keys, the kept input is each
  # of the 4 about equally often, and two units move independently.
  mask = {"fc": {"kernel": np.array([[1.0, 1.0], [0, 0], [0, 0], [0, 0]])}}
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)
  paths = (("fc", "kernel"),)
  moved = jax.vmap(
    lambda k: ablations._permute_inputs(mask, paths, k[None])["fc"]["kernel"]
  )(keys)
  where = np.asarray(moved.argmax(1))  # [4000, 2]: the kept input per unit
  counts = np.stack([np.bincount(where[:, j], minlength=4) for j in (0, 1)])
  np.testing.assert_allclose(counts / 4000, 0.25, atol=0.03)
  assert np.mean(where[:, 0] == where[:, 1]) == pytest.approx(0.25, abs=0.03)


def test_shuffle_values_keeps_the_mask_and_moves_values_among_kept():
  ctx, ticket = _found("snip", scope="global", keep_last=True)
  out = ablations.apply("shuffle_values", ticket, ctx, ABLATION_KEY)
  paths = masks.prunable_paths(ctx.params, keep_last=True)
  for p in paths:
    m = _layer(ticket.mask, p)
    w0, w1 = _layer(ticket.params, p), _layer(out.params, p)
    np.testing.assert_array_equal(_layer(out.mask, p), m)
    np.testing.assert_array_equal(np.sort(w1[m == 1]), np.sort(w0[m == 1]))
    assert np.all(w1[m == 0] == 0)
    assert np.mean(w1[m == 1] == w0[m == 1]) < 0.2  # Values moved.
  before, after = _leaves(ticket.params), _leaves(out.params)
  for name in set(before) - {masks.layer_name(p) for p in paths}:
    np.testing.assert_array_equal(after[name], before[name])


def test_reinit_keeps_the_mask_and_redraws_weights_at_init_scale():
  # Sparsity 0.5 so each layer keeps enough weights for a stable std.
  ctx, ticket = _found("magnitude", sparsity=0.5, scope="layerwise")
  out = ablations.apply("reinit", ticket, ctx, ABLATION_KEY)
  for p in masks.prunable_paths(ctx.params):
    m = _layer(ticket.mask, p)
    np.testing.assert_array_equal(_layer(out.mask, p), m)
    new, old = _layer(out.params, p), _layer(ticket.params, p)
    assert np.all(new[m == 0] == 0)
    assert not np.any(new[m == 1] == old[m == 1])
    # The kept new weights are fresh draws of the init distribution:
    # compare with the std of the whole original layer at init (the
    # magnitude ticket's own kept weights are the largest ones, not a
    # sample of it).
    init_std = _layer(ctx.params, p).std()
    assert new[m == 1].std() == pytest.approx(init_std, rel=0.2)


def test_init_weights_is_the_awt_search_started_at_init():
  search = {"awt_steps": 4, "awt_mask_every": 2, "awt_batch": 8}
  ctx, ticket = _found("awt", **search)
  out = ablations.apply("init_weights", ticket, ctx, ABLATION_KEY)
  _, at_init = _found("awt", awt_start="init", **search)
  assert ticket.info["start"] == "searched" and at_init.info["start"] == "init"
  for name in ("mask", "params", "batch_stats"):
    got, want = _leaves(getattr(out, name)), _leaves(getattr(at_init, name))
    assert got.keys() == want.keys()
    for k in got:
      np.testing.assert_array_equal(got[k], want[k])
  # The mask is kept exactly; the weights are the initialization's.
  for k, m in _leaves(ticket.mask).items():
    np.testing.assert_array_equal(_leaves(out.mask)[k], m)
    np.testing.assert_array_equal(
      _leaves(out.params)[k], _leaves(ctx.params)[k] * m
    )
  assert any(
    not np.array_equal(_leaves(out.params)[k], v)
    for k, v in _leaves(ticket.params).items()
  )


def _bottom_k_reference(scores, k):
  """Indices of the k lowest scores, ties to the earlier position."""
  return set(np.argsort(scores, kind="stable")[:k].tolist())


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_invert_keeps_the_bottom_k_scores(scope):
  ctx, ticket = _found("snip", scope=scope, keep_first=True)
  out = ablations.apply("invert", ticket, ctx, ABLATION_KEY)
  paths = masks.prunable_paths(ctx.params, keep_first=True)
  np.testing.assert_array_equal(_layer(out.mask, ("fc1", "kernel")), 1)
  groups = [paths] if scope == "global" else [[p] for p in paths]
  for group in groups:
    s = np.concatenate([_layer(ticket.scores, p).ravel() for p in group])
    m0 = np.concatenate([_layer(ticket.mask, p).ravel() for p in group])
    m1 = np.concatenate([_layer(out.mask, p).ravel() for p in group])
    expected = _bottom_k_reference(s, int(m0.sum()))
    assert set(np.flatnonzero(m1).tolist()) == expected
  for p in masks.prunable_paths(ctx.params):
    np.testing.assert_array_equal(
      _layer(out.params, p), _layer(ctx.params, p) * _layer(out.mask, p)
    )


def test_random_same_density_matches_layer_counts():
  ctx, ticket = _found("snip", scope="global")
  out = ablations.apply("random_same_density", ticket, ctx, ABLATION_KEY)
  for p in masks.prunable_paths(ctx.params):
    m0, m1 = _layer(ticket.mask, p), _layer(out.mask, p)
    assert np.count_nonzero(m1) == np.count_nonzero(m0)
    assert not np.array_equal(m1, m0)
    np.testing.assert_array_equal(
      _layer(out.params, p), _layer(ctx.params, p) * m1
    )
  # Global SNIP gives the layers different densities; they are kept.
  densities = masks.layer_densities(ticket.mask)
  assert len(set(densities.values())) == len(densities)
  assert masks.layer_densities(out.mask) == densities


@pytest.mark.parametrize("name", ablations.ABLATIONS)
def test_every_ablation_keeps_pruned_weights_at_zero(name):
  ctx, ticket = _found("snip", scope="global")
  out = ablations.apply(name, ticket, ctx, ABLATION_KEY)
  masks.check_compatible(ctx.params, out.mask)
  for p in masks.prunable_paths(ctx.params):
    m = _layer(out.mask, p)
    assert set(np.unique(m).tolist()) <= {0.0, 1.0}
    assert np.all(_layer(out.params, p)[m == 0] == 0)
  assert masks.sparsity(out.mask) == pytest.approx(masks.sparsity(ticket.mask))
  assert out.info == {**ticket.info, "ablation": name}


def test_unknown_ablation_and_invert_without_scores_raise():
  ctx, ticket = _found("dense")
  with pytest.raises(ValueError, match="unknown ablation 'shufle'; known: "):
    ablations.apply("shufle", ticket, ctx, ABLATION_KEY)
  with pytest.raises(ValueError, match="method 'dense' has no scores"):
    ablations.apply("invert", ticket, ctx, ABLATION_KEY)


def test_plot_layer_densities_writes_a_png(tmp_path):
  path = tmp_path / "plots" / "densities.png"
  plots.plot_layer_densities(
    {
      "snip": {"fc1/kernel": 0.05, "fc2/kernel": 0.3, "head/kernel": 0.6},
      "random": {"fc1/kernel": 0.1, "fc2/kernel": 0.1, "head/kernel": 0.1},
    },
    str(path),
    title="tickets",
  )
  data = path.read_bytes()
  assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
