"""Tests for awt.pruning.layer_magnitude through tickets.find (by name)."""

import jax
import numpy as np
import pytest

from awt import masks, pruning, tickets
from awt.config import ConfigError
from awt.pruning import layer_magnitude
from experiments.configs import digits_mlp


def _config(**pruning_options):
  config = digits_mlp.get_config("smoke")
  config.model.widths = (24, 12)
  config.pruning.method = "layer_magnitude"
  config.pruning.scope = "layerwise"
  for k, v in pruning_options.items():
    config.pruning[k] = v
  return config


def _trained(config):
  """A stand-in for a trained net: the init with weights scaled per entry."""
  ticket = tickets.dense(config)
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda w: (np.asarray(w) * rng.lognormal(size=np.shape(w))).astype(w.dtype),
    ticket.params,
  )
  return ticket.replace(params=params)


@pytest.mark.parametrize("connect", [True, False])
def test_find_by_name_prunes_the_given_network_as_prune_mask(connect):
  config = _config(sparsity=0.98, output_density=0.1, connect_classes=connect)
  start = _trained(config)
  ticket = tickets.find(config, start=start, measure_ntk=False)
  want = layer_magnitude.prune_mask(
    start.params, 0.98, output_density=0.1, connect=connect
  )
  for a, b in zip(
    jax.tree.leaves(ticket.mask), jax.tree.leaves(want), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Pruned weights are zero, kept ones are the given (not the init) weights.
  kept = jax.tree.map(
    lambda w, m: np.asarray(w) * np.asarray(m), start.params, ticket.mask
  )
  for a, b in zip(
    jax.tree.leaves(ticket.params), jax.tree.leaves(kept), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a), b)
  densities = masks.layer_densities(ticket.mask)
  head = list(densities)[-1]
  assert densities[head] >= 0.1 - 1e-9  # the output layer's floor
  assert ticket.info["method"] == "layer_magnitude"
  assert ticket.info["passes"] == 0


def test_bad_output_density_is_refused_in_one_line():
  with pytest.raises(ConfigError, match=r"pruning.output_density=1.5") as e:
    pruning.validate(_config(output_density=1.5))
  assert "\n" not in str(e.value)
