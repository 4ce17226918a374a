"""Tests for awt.training: pmap equivalence, masking, objectives."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import jax_utils

from awt import masks, models, training

ADV = {
  "method": "pgd_at",
  "norm": "linf",
  "eps": 0.1,
  "step_size": 0.04,
  "steps": 3,
}


@functools.cache
def _setup(density=1.0, axis_name="batch", opt="momentum"):
  """(model, tx, step-0 state), built once per argument set (all immutable:
  a test's steps return new states)."""
  model = models.get("mlp", 10, widths=(32, 16), axis_name=axis_name)
  params, bs = training.init_variables(model, jax.random.PRNGKey(0), (8, 8, 1))
  mask = (
    masks.ones(params)
    if density == 1.0
    else masks.random(jax.random.PRNGKey(3), params, density)
  )
  opt_cfg = {
    "name": opt,
    "learning_rate": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "cosine",
  }
  tx = training.make_optimizer(opt_cfg, total_steps=10)
  state = training.create_train_state(
    params, bs, mask, tx, jax.random.PRNGKey(1)
  )
  return model, tx, state


def _batches(n_steps, batch=16, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(n_steps):
    yield {
      "image": rng.uniform(size=(batch, 8, 8, 1)).astype(np.float32),
      "label": rng.integers(0, 10, size=(batch,)).astype(np.int32),
      "index": np.arange(batch, dtype=np.int32),
    }


def _run_pmap(n_devices, adversarial, n_steps=3):
  model, tx, state = _setup()
  devices = jax.local_devices()[:n_devices]
  step = jax.pmap(
    training.make_train_step(model, tx, adversarial, axis_name="batch"),
    axis_name="batch",
    devices=devices,
  )
  rstate = jax_utils.replicate(state, devices)
  for batch in _batches(n_steps):
    sharded = jax.tree.map(
      lambda v: v.reshape(n_devices, -1, *v.shape[1:]), batch
    )
    rstate, metrics = step(rstate, sharded)
  return jax.tree.map(lambda x: np.asarray(x[0]), rstate), metrics


@pytest.mark.parametrize("adversarial", [None, ADV], ids=["natural", "pgd_at"])
def test_four_devices_equal_one_device(adversarial):
  assert jax.local_device_count() == 4, "conftest forces 4 host devices"
  one, m1 = _run_pmap(1, adversarial)
  four, m4 = _run_pmap(4, adversarial)
  for a, b in zip(
    jax.tree.leaves(one.params), jax.tree.leaves(four.params), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m1["loss"][0], m4["loss"][0], rtol=1e-5)
  # The run must have moved the parameters (else equality is trivial).
  _, _, init = _setup()
  moved = [
    np.max(np.abs(a - np.asarray(b)))
    for a, b in zip(
      jax.tree.leaves(one.params), jax.tree.leaves(init.params), strict=True
    )
  ]
  assert max(moved) > 1e-3


@pytest.mark.parametrize("opt", ["momentum", "adam", "adamw"])
def test_pruned_weights_stay_exactly_zero(opt):
  model, tx, state = _setup(density=0.3, axis_name=None, opt=opt)
  step = jax.jit(training.make_train_step(model, tx, ADV, axis_name=None))
  for batch in _batches(4):
    state, _ = step(state, batch)
  for path in masks.prunable_paths(state.params):
    w = np.asarray(masks._get(state.params, path))
    m = np.asarray(masks._get(state.mask, path))
    assert np.all(w[m == 0] == 0.0)
    assert np.any(w[m == 1] != 0.0)
  # Optimizer moments of pruned weights are zero too (no regrowth later).
  for leaf, mleaf in zip(
    jax.tree.leaves(state.opt_state),
    jax.tree.leaves(state.mask),
    strict=False,
  ):
    if np.shape(leaf) == np.shape(mleaf) and np.ndim(leaf) == 2:
      assert np.all(np.asarray(leaf)[np.asarray(mleaf) == 0] == 0.0)
  assert masks.sparsity(state.mask) == pytest.approx(0.7, abs=1e-3)


def test_step_compiles_once():
  model, tx, state = _setup(axis_name=None)
  traces = []

  def counted(s, b):
    traces.append(1)
    return training.make_train_step(model, tx, ADV, axis_name=None)(s, b)

  step = jax.jit(counted)
  for batch in _batches(3):
    state, _ = step(state, batch)
  assert len(traces) == 1
  assert int(state.step) == 3


@pytest.mark.parametrize("method", ["none", "pgd_at", "fast_at", "trades"])
def test_objectives_reduce_their_loss_on_a_fixed_batch(method):
  model, _, state = _setup(axis_name=None, opt="adam")
  tx = optax.adam(1e-2)
  state = state.replace(opt_state=tx.init(state.params))
  adv = dict(ADV, method=method, beta=1.0)
  step = jax.jit(training.make_train_step(model, tx, adv, axis_name=None))
  batch = next(_batches(1, batch=32))
  # Learnable labels (a fixed linear rule of the input), so that the
  # adversarial objectives can fit them too.
  w = np.random.default_rng(5).normal(size=(64, 10))
  batch["label"] = np.argmax(batch["image"].reshape(32, 64) @ w, axis=1).astype(
    np.int32
  )
  losses = []
  for _ in range(80):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.5 * losses[0]


def test_pgd_at_trains_on_points_inside_the_ball():
  """The adversarial loss is at least the clean loss at the same params."""
  model, tx, state = _setup(axis_name=None)
  batch = next(_batches(1))
  nat = training.make_train_step(model, tx, None, axis_name=None)
  adv = training.make_train_step(model, tx, ADV, axis_name=None)
  _, m_nat = jax.jit(nat)(state, batch)
  _, m_adv = jax.jit(adv)(state, batch)
  assert float(m_adv["loss"]) > float(m_nat["loss"])


def test_schedules_and_bad_names():
  cfg = ml_collections.ConfigDict(
    {"name": "sgd", "learning_rate": 0.1, "schedule": "step"}
  )
  sched = training.make_schedule(cfg, 100)
  assert float(sched(0)) == pytest.approx(0.1)
  assert float(sched(60)) == pytest.approx(0.01)
  assert float(sched(90)) == pytest.approx(0.001)
  cfg.warmup_steps = 10
  assert float(training.make_schedule(cfg, 100)(5)) == pytest.approx(0.05)
  with pytest.raises(ValueError, match="unknown optimizer 'sdg'"):
    training.make_optimizer({"name": "sdg", "learning_rate": 0.1}, 10)
  with pytest.raises(ValueError, match="unknown adversarial method 'pgd'"):
    training.make_train_step(None, None, {"method": "pgd"})
  assert jnp.isfinite(sched(99))


def test_eps_warmup_ramps_the_budget_linearly():
  """Step t of a 4-step ramp attacks exactly like eps * (t + 1) / 4."""
  model, tx, state = _setup(axis_name=None)
  batch = next(_batches(1))
  ramped = training.make_train_step(
    model, tx, dict(ADV, eps_warmup_epochs=2), axis_name=None, steps_per_epoch=2
  )

  ramped = jax.jit(ramped)

  @functools.cache  # one compiled step per budget
  def fixed(scale):
    adv = dict(ADV, eps=ADV["eps"] * scale, step_size=ADV["step_size"] * scale)
    return jax.jit(training.make_train_step(model, tx, adv, axis_name=None))

  for t, scale in ((0, 0.25), (2, 0.75), (3, 1.0), (7, 1.0)):
    s = state.replace(step=jnp.asarray(t, state.step.dtype))
    _, got = ramped(s, batch)
    _, want = fixed(scale)(s, batch)
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-6)
  # The ramp changes what is trained on: the first step is not full eps.
  _, full = fixed(1.0)(state, batch)
  _, first = ramped(state, batch)
  assert float(first["loss"]) < float(full["loss"])
  with pytest.raises(ValueError, match="needs steps_per_epoch"):
    training.make_train_step(model, tx, dict(ADV, eps_warmup_epochs=1))
