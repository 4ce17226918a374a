"""Tests for awt.masks: exact top-k, structure checks, layer order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awt import masks


def _params(key=0):
  k = jax.random.split(jax.random.PRNGKey(key), 3)
  # Insertion order Dense_2, Dense_10 is the layer order; sorted order is not.
  return {
    "Dense_2": {
      "kernel": jax.random.normal(k[0], (6, 5)),
      "bias": jnp.zeros(5),
    },
    "Dense_10": {
      "kernel": jax.random.normal(k[1], (5, 4)),
      "bias": jnp.zeros(4),
    },
    "BatchNorm_0": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
    "Dense_11": {
      "kernel": jax.random.normal(k[2], (4, 3)),
      "bias": jnp.zeros(3),
    },
  }


def test_prunable_paths_in_layer_order():
  p = _params()
  assert masks.prunable_paths(p) == (
    ("Dense_2", "kernel"),
    ("Dense_10", "kernel"),
    ("Dense_11", "kernel"),
  )
  assert masks.prunable_paths(p, keep_first=True, keep_last=True) == (
    ("Dense_10", "kernel"),
  )


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.9, 1.0])
def test_topk_density_is_exact(scope, density):
  p = _params()
  m = masks.topk(jax.tree.map(jnp.abs, p), density, scope=scope)
  kept, total = masks.counts(m)
  if scope == "global":
    assert kept == masks.num_to_keep(total, density)
  else:
    for path in masks.prunable_paths(p):
      layer = np.asarray(masks._get(m, path))
      assert layer.sum() == masks.num_to_keep(layer.size, density)
  # Non-prunable leaves are all ones; values are exactly {0, 1}.
  assert np.all(np.asarray(m["Dense_2"]["bias"]) == 1)
  assert np.all(np.asarray(m["BatchNorm_0"]["scale"]) == 1)
  for leaf in jax.tree.leaves(m):
    assert set(np.unique(np.asarray(leaf))) <= {0.0, 1.0}


def test_topk_keeps_the_largest_scores_globally():
  p = _params()
  scores = jax.tree.map(jnp.abs, p)
  m = masks.topk(scores, 0.25)
  flat_s = np.concatenate(
    [np.asarray(masks._get(scores, q)).ravel() for q in masks.prunable_paths(p)]
  )
  flat_m = np.concatenate(
    [np.asarray(masks._get(m, q)).ravel() for q in masks.prunable_paths(p)]
  )
  assert flat_s[flat_m == 1].min() >= flat_s[flat_m == 0].max()


def test_topk_ties_never_keep_extra():
  s = {"Dense_0": {"kernel": jnp.ones((10, 10))}}
  m = masks.topk(s, 0.37)
  assert masks.counts(m) == (37, 100)


def test_apply_and_sparsity():
  p = _params()
  m = masks.random(jax.random.PRNGKey(1), p, 0.2)
  q = masks.apply(p, m)
  for path in masks.prunable_paths(p):
    pm = np.asarray(masks._get(m, path))
    assert np.all(np.asarray(masks._get(q, path))[pm == 0] == 0)
  np.testing.assert_allclose(
    masks.sparsity(m), 1 - masks.counts(m)[0] / masks.counts(m)[1]
  )
  dens = masks.layer_densities(m)
  assert set(dens) == {"Dense_2/kernel", "Dense_10/kernel", "Dense_11/kernel"}
  for path, d in dens.items():
    n = np.size(masks._get(p, tuple(path.split("/"))))
    assert d == masks.num_to_keep(n, 0.2) / n
  assert masks.sparsity(masks.ones(p)) == 0.0


def test_mismatched_mask_raises_a_clear_error():
  p = _params()
  m = masks.ones(p)
  m["Dense_10"]["kernel"] = jnp.ones((4, 5))
  with pytest.raises(ValueError, match=r"Dense_10/kernel of shape \(5, 4\)"):
    masks.apply(p, m)
  del m["Dense_11"]
  with pytest.raises(ValueError, match="missing.*Dense_11"):
    masks.check_compatible(p, m)


def test_bad_scope_and_density():
  p = _params()
  with pytest.raises(ValueError, match="unknown pruning scope 'glob'"):
    masks.topk(p, 0.5, scope="glob")
  with pytest.raises(ValueError, match="density must be in"):
    masks.topk(p, 0.0)
