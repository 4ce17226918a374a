"""Tests for awt.pruning.allocation: a given layer allocation, every method.

The allocation's arithmetic is checked against its closed form (one scale
``ε`` when no layer fills up, ``Σ c_l = round(d N)`` always); every method
that prunes to a budget is run on a tiny MLP (64-24-16-10, 128 digits, one
epoch per phase) and must keep exactly the allocation's count in each layer.
"""

import dataclasses
import json
import math

import _tiny
import jax
import numpy as np
import pytest

from awt import masks, models, pruning, tickets
from awt.config import ConfigError
from awt.pruning import allocation
from awt.studies import compare_tickets

SIZES = (64 * 24, 24 * 16, 16 * 10)  # fc1, fc2, head
SPEC = "fc1=0.5;fc2/kernel=0.2;head=1"
RELATIVE = (0.5, 0.2, 1.0)
SPARSITY = 0.8


def test_parse_spec_reads_names_with_or_without_kernel():
  assert allocation.parse_spec("k", SPEC) == {
    "fc1": 0.5,
    "fc2": 0.2,
    "head": 1.0,
  }
  assert allocation.parse_spec("k", "") == {}


@pytest.mark.parametrize(
  "spec, words",
  [
    ("fc1", "<layer>=<density>"),
    ("fc1=0", "in (0, 1]"),
    ("fc1=1.5", "in (0, 1]"),
    ("fc1=abc", "in (0, 1]"),
    ("fc1=0.5;fc1/kernel=0.2", "twice"),
  ],
)
def test_parse_spec_refuses_a_bad_entry_in_one_line(spec, words):
  with pytest.raises(ConfigError, match="pruning.layer_densities") as e:
    allocation.parse_spec("pruning.layer_densities", spec)
  assert words in str(e.value) and "\n" not in str(e.value)


def test_scaled_is_one_factor_when_no_layer_fills():
  d = allocation.scaled(SIZES, RELATIVE, 0.2)
  eps = (
    0.2 * sum(SIZES) / sum(r * n for r, n in zip(RELATIVE, SIZES, strict=True))
  )
  np.testing.assert_allclose(d, [eps * r for r in RELATIVE], rtol=1e-12)


def test_scaled_fills_a_layer_and_rescales_the_others():
  # At 60% the head's share (eps * 1.0) would exceed 1: it is made dense
  # and the rest of the budget is split over fc1 and fc2 at ratio 5:2.
  d = allocation.scaled(SIZES, RELATIVE, 0.6)
  assert d[2] == 1.0
  left = 0.6 * sum(SIZES) - SIZES[2]
  eps = left / (0.5 * SIZES[0] + 0.2 * SIZES[1])
  np.testing.assert_allclose(d[:2], [0.5 * eps, 0.2 * eps], rtol=1e-12)
  assert max(d) <= 1.0


@pytest.mark.parametrize("density", [0.01, 0.05, 0.2, 0.5, 0.9, 1.0])
def test_whole_counts_spend_exactly_the_budget(density):
  rng = np.random.default_rng(int(density * 100))
  sizes = tuple(int(n) for n in rng.integers(1, 5000, size=7))
  relative = tuple(float(r) for r in rng.uniform(0.01, 1.0, size=7))
  counts = allocation.whole_counts(
    sizes, allocation.scaled(sizes, relative, density), density
  )
  assert sum(counts) == masks.num_to_keep(sum(sizes), density)
  assert all(0 <= c <= n for c, n in zip(counts, sizes, strict=True))


def test_densities_that_spend_the_budget_come_back_unchanged():
  # A ticket's own densities c_l / n_l at its sparsity: the same counts.
  counts = (301, 77, 38)
  given = tuple(c / n for c, n in zip(counts, SIZES, strict=True))
  density = sum(counts) / sum(SIZES)
  out = allocation.densities(SIZES, given, density)
  assert [
    masks.num_to_keep(n, d) for n, d in zip(SIZES, out, strict=True)
  ] == list(counts)


def test_schedule_is_geometric_per_layer_and_ends_exactly():
  target = (0.25, 0.04, 1.0)
  steps = allocation.schedule(target, 2)
  np.testing.assert_allclose(steps[0], [0.5, 0.2, 1.0], rtol=1e-12)
  assert steps[-1] == target
  assert allocation.schedule(0.25, 2) == (0.5, 0.25)


def test_erk_counts_when_the_floors_already_spend_the_budget():
  # Two equal layers at 50%: every ideal count is whole (left == 0), which
  # used to index a reversed iterator.
  counts = pruning.erk_counts({("a",): (10, 10), ("b",): (10, 10)}, 0.5)
  assert counts == {("a",): 50, ("b",): 50}


def test_topk_keeps_each_layers_own_density():
  scores_tree = {
    "a": {"kernel": jax.random.normal(jax.random.PRNGKey(0), (10, 10))},
    "b": {"kernel": jax.random.normal(jax.random.PRNGKey(1), (4, 5))},
  }
  mask = masks.topk(scores_tree, (0.3, 0.55), scope="layerwise")
  assert float(mask["a"]["kernel"].sum()) == 30
  assert float(mask["b"]["kernel"].sum()) == 11
  alone = masks.topk({"b": scores_tree["b"]}, 0.55, scope="layerwise")
  np.testing.assert_array_equal(mask["b"]["kernel"], alone["b"]["kernel"])
  with pytest.raises(ValueError, match="scope='layerwise'"):
    masks.topk(scores_tree, (0.3, 0.55), scope="global")
  with pytest.raises(ValueError, match="one per prunable layer"):
    masks.topk(scores_tree, (0.3,), scope="layerwise")


# ---------------------------------------------------------------------------
# Every method, on a tiny MLP.


MODEL = models.get("mlp", 10, widths=(24, 16))


def _ctx(**pruning_options):
  c = _tiny.smoke_config(
    **{
      "sparsity": SPARSITY,
      "scope": "layerwise",
      "layer_densities": SPEC,
      **pruning_options,
    }
  )
  c.batch_size = 32
  c.num_epochs = 1
  c.adversarial.method = "pgd_at"
  c.adversarial.steps = 2
  return _tiny.context(MODEL, _tiny.digits(128), c)


def _leaves(tree) -> list:
  return [np.asarray(x).tolist() for x in jax.tree.leaves(tree)]


def _kept(mask) -> list[int]:
  return [int(np.sum(mask[p[0]][p[1]])) for p in masks.prunable_paths(mask)]


EXPECTED = list(
  allocation.whole_counts(
    SIZES, allocation.scaled(SIZES, RELATIVE, 1 - SPARSITY), 1 - SPARSITY
  )
)

# Each method with the options that make it tiny.
METHODS = {
  "random": {},
  "magnitude": {},
  "snip": {},
  "grasp": {},
  "synflow": {"synflow_iterations": 3},
  "one_shot": {"pretrain_epochs": 1},
  "imp": {"imp_rounds": 2, "imp_epochs": 1},
  "hydra": {"pretrain_epochs": 1, "score_epochs": 1},
  "dns": {"dns_epochs": 1},
  "awt": {"awt_steps": 4, "awt_mask_every": 2, "awt_batch": 16},
  "ntt": {"awt_steps": 4, "awt_mask_every": 2, "awt_batch": 16},
}


def test_every_budget_method_is_listed():
  refused = {"dense", "erk", "layer_magnitude"}
  assert set(METHODS) | refused == set(pruning.names())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_method_keeps_the_allocations_count_in_each_layer(method):
  assert sum(EXPECTED) == masks.num_to_keep(sum(SIZES), 1 - SPARSITY)
  ctx = _ctx(**METHODS[method])
  ticket = pruning.find(method, ctx, jax.random.PRNGKey(3))
  assert _kept(ticket.mask) == EXPECTED


def test_a_tickets_own_densities_reproduce_its_layer_counts():
  ctx = _ctx(scope="global", layer_densities="")
  snip = pruning.find("snip", ctx, jax.random.PRNGKey(3))
  kept = _kept(snip.mask)
  spec = ";".join(
    f"{name}={k / n!r}"
    for name, k, n in zip(("fc1", "fc2", "head"), kept, SIZES, strict=True)
  )
  ticket = pruning.find(
    "random", _ctx(layer_densities=spec), jax.random.PRNGKey(4)
  )
  assert _kept(ticket.mask) == kept
  assert kept != EXPECTED  # SNIP's own allocation, not the fixture's


def test_snip_inside_snips_own_allocation_is_snip():
  # Per-layer top-k with the global ranking's per-layer counts picks the
  # same weights as the global ranking (no ties in continuous scores).
  key = jax.random.PRNGKey(3)
  own = pruning.find("snip", _ctx(scope="global", layer_densities=""), key)
  ticket = pruning.find("snip", _ctx(layer_densities="snip"), key)
  assert _leaves(ticket.mask) == _leaves(own.mask)
  assert ticket.info["allocation_from"]["method"] == "snip"
  assert ticket.info["allocation_from"]["layer_densities"] == (
    masks.layer_densities(own.mask)
  )


def test_a_method_takes_another_methods_allocation_per_key():
  ctx = _ctx(layer_densities="snip")
  for seed in (3, 4):
    key = jax.random.PRNGKey(seed)
    snip = pruning.find("snip", _ctx(scope="global", layer_densities=""), key)
    ticket = pruning.find("random", ctx, key)
    assert _kept(ticket.mask) == _kept(snip.mask)
    assert ticket.info["passes"] == snip.info["passes"]  # random: 0 passes
  assert ctx.config.pruning.layer_densities == "snip"  # the caller's config


def test_an_allocation_from_a_checkpointing_search(tmp_path):
  ctx = dataclasses.replace(
    _ctx(layer_densities="imp", **METHODS["imp"], **METHODS["awt"]),
    checkpoint_dir=str(tmp_path / "search"),
  )
  imp = pruning.find(
    "imp",
    _ctx(scope="global", layer_densities="", **METHODS["imp"]),
    jax.random.PRNGKey(3),
  )
  ticket = pruning.find("awt", ctx, jax.random.PRNGKey(3))
  assert _kept(ticket.mask) == _kept(imp.mask)
  assert ticket.info["passes"] > imp.info["passes"]


def test_a_method_name_outside_find_is_one_line():
  with pytest.raises(ConfigError, match="names a method; call") as e:
    pruning.get("random")(_ctx(layer_densities="snip"), jax.random.PRNGKey(0))
  assert "\n" not in str(e.value)


def test_an_allocation_that_empties_a_layer_is_refused():
  def empty_fc2(ctx, key):
    ticket = pruning.find("snip", ctx, key)
    mask = jax.tree.map(np.asarray, ticket.mask)
    mask["fc2"]["kernel"] = np.zeros_like(mask["fc2"]["kernel"])
    return ticket.replace(mask=mask)

  pruning.register("empty_fc2", empty_fc2)
  try:
    with pytest.raises(ConfigError, match="empties fc2/kernel"):
      pruning.find(
        "random", _ctx(layer_densities="empty_fc2"), jax.random.PRNGKey(0)
      )
  finally:
    pruning.unregister("empty_fc2")


@pytest.mark.parametrize(
  "options, words",
  [
    ({"layer_densities": "nosuch"}, "neither '<layer>=<density>;...' nor"),
    ({"scope": "global"}, "scope='layerwise'"),
    ({"layer_densities": "fc1=0.5;fc2=0.2"}, "missing: head"),
    ({"layer_densities": SPEC + ";conv1=0.3"}, "not prunable: conv1"),
    ({"keep_last": True}, "not prunable: head"),
  ],
)
def test_a_bad_allocation_is_one_line(options, words):
  with pytest.raises(ConfigError) as e:
    pruning.find("random", _ctx(**options), jax.random.PRNGKey(0))
  assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("method", ["erk", "layer_magnitude"])
def test_a_method_with_its_own_allocation_refuses_one(method):
  with pytest.raises(ConfigError, match=f"does not apply to method '{method}'"):
    pruning.find(method, _ctx(), jax.random.PRNGKey(0))


@pytest.mark.parametrize("method", ["erk", "layer_magnitude"])
def test_it_refuses_a_named_allocation_before_running_that_method(
  method, monkeypatch
):
  asked = []

  def get(name):
    asked.append(name)
    return registry_get(name)

  registry_get = pruning.get
  monkeypatch.setattr(pruning, "get", get)
  ctx = _ctx(layer_densities="imp", scope="layerwise")
  with pytest.raises(ConfigError, match=f"does not apply to method '{method}'"):
    pruning.find(method, ctx, jax.random.PRNGKey(0))
  assert asked == [method]


def test_a_sweep_variant_carries_an_allocation():
  name, options = compare_tickets.parse_method(f"awt:layer_densities={SPEC}")
  assert (name, options) == ("awt", {"layer_densities": SPEC})
  label = compare_tickets._dirname(f"awt:layer_densities={SPEC}", "none")
  assert all(ch.isalnum() or ch in "-_." for ch in label)


def test_no_allocation_is_the_uniform_layerwise_target():
  ctx = _ctx(layer_densities="")
  target = allocation.target(ctx, masks.prunable_paths(ctx.params), SIZES)
  assert target == pytest.approx(1 - SPARSITY)
  assert math.isclose(allocation.overall(target, SIZES), 1 - SPARSITY)


def test_a_ticket_inside_another_methods_allocation_is_saved_and_reloaded(
  tmp_path,
):
  config = _tiny.smoke_config(
    method="random", sparsity=0.9, scope="layerwise", layer_densities="snip"
  )
  lines = []
  ticket = tickets.find(
    config, workdir=str(tmp_path), measure_ntk=False, log=lines.append
  )
  assert any("inside snip's layer densities" in line for line in lines)
  config.pruning.update(method="snip", scope="global", layer_densities="")
  snip = tickets.find(config, measure_ntk=False, log=lines.append)
  assert ticket.info["layer_densities"] == snip.info["layer_densities"]
  saved = json.loads((tmp_path / "ticket.json").read_text())
  assert saved["allocation_from"]["method"] == "snip"
  again = tickets.find(
    _tiny.smoke_config(
      method="random", sparsity=0.9, scope="layerwise", layer_densities="snip"
    ),
    workdir=str(tmp_path),
    measure_ntk=False,
    log=lines.append,
  )
  assert again.info["allocation_from"] == ticket.info["allocation_from"]
  assert any("reusing" in line for line in lines)
