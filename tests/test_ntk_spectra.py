"""Tests for awt.studies.ntk_spectra and experiments/ntk_spectra.py."""

import json

import _binary  # tests/_binary.py: the one subprocess runner
import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from awt import config as config_lib
from awt import data as data_lib
from awt import tickets
from awt.studies import ntk_spectra
from experiments.configs import digits_mlp

SMOKE = "experiments/configs/digits_mlp.py:smoke"


def _traced_kernel(model, params, mask, x):
  """Plain-JAX ``(1/C) Σ_c J_c diag(m) J_cᵀ``: J of f(θ ⊙ m) w.r.t. θ."""
  flat, unravel = ravel_pytree(params)
  m = ravel_pytree(mask)[0]

  def f(t):
    return model.apply({"params": unravel(t * m)}, x).ravel()

  jac = np.asarray(jax.jacobian(f)(flat), np.float64)
  n = x.shape[0]
  jac = jac.reshape(n, -1, flat.size)  # [N, C, P]
  return np.einsum("ncp,mcp->nm", jac, jac) / jac.shape[1]


def _relative(k, ref):
  return np.linalg.norm(k - ref) / np.linalg.norm(ref)


@pytest.mark.slow
def test_spectra_match_a_jacobian_reference_and_find_ticket(tmp_path):
  config = digits_mlp.get_config("smoke")
  config.model.widths = (32, 16)
  num = tickets.NTK_PROBE
  report = ntk_spectra.spectra(config, ["snip"], [0.9], num_points=num)
  assert [r["name"] for r in report["tickets"]] == ["dense", "snip@0.9"]
  row = report["tickets"][1]

  # The ticket tickets.find saves for the same config.
  config.pruning.method = "snip"
  config.pruning.sparsity = 0.9
  ticket = tickets.find(config, workdir=str(tmp_path))
  tree, info = ticket.arrays(), ticket.info
  assert row["sparsity"] == pytest.approx(info["sparsity"])
  assert row["layer_densities"] == info["layer_densities"]
  # tickets.find's adversarial-NTK distances, on the same 64 points attacked
  # with the same key: the sparse network's kernel and all weights'.
  assert row["adversarial"]["distance"] == pytest.approx(
    info["ntk_distance_at_init"], rel=1e-5
  )
  assert row["adversarial"]["distance_all_weights"] == pytest.approx(
    info["ntk_distance_at_init_all_weights"], rel=1e-5
  )

  dataset = data_lib.load("digits")
  model = config_lib.build_model(config, dataset.info)
  init_key = jax.random.split(jax.random.PRNGKey(config.seed), 4)[0]
  dense = model.init(init_key, np.zeros((1, 8, 8, 1), np.float32))["params"]
  x = dataset.train.images[:num].astype(np.float32) / 255.0
  ones = jax.tree.map(np.ones_like, dense)
  k_dense = _traced_kernel(model, dense, ones, x)
  k_ticket = _traced_kernel(model, tree["params"], tree["mask"], x)
  k_all = _traced_kernel(model, tree["params"], ones, x)

  expected = np.linalg.eigvalsh(k_ticket)[::-1]
  got = np.asarray(row["clean"]["eigenvalues"])
  np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5 * expected[0])
  dense_ev = np.asarray(report["tickets"][0]["clean"]["eigenvalues"])
  expected_dense = np.linalg.eigvalsh(k_dense)[::-1]
  np.testing.assert_allclose(
    dense_ev, expected_dense, rtol=1e-3, atol=1e-5 * expected_dense[0]
  )
  # The ticket's kernel is over the weights it trains, not all weights.
  assert row["clean"]["distance"] == pytest.approx(
    _relative(k_ticket, k_dense), rel=1e-4
  )
  assert row["clean"]["distance_all_weights"] == pytest.approx(
    _relative(k_all, k_dense), rel=1e-4
  )
  assert _relative(k_all, k_ticket) > 0.1

  # Where its training starts: the ticket's own logits on the probe.
  logits = model.apply(
    {"params": jax.tree.map(np.multiply, tree["params"], tree["mask"])}, x
  )
  y = dataset.train.labels[:num]
  assert row["clean"]["start"]["accuracy"] == pytest.approx(
    np.mean(np.argmax(logits, 1) == y)
  )
  assert (
    row["adversarial"]["start"]["margin"] < (row["clean"]["start"]["margin"])
  )  # PGD points lower the dense net's true class, and the ticket's


def test_ablation_applies_to_tickets_not_to_the_dense_reference():
  config = digits_mlp.get_config("smoke")
  config.model.widths = (16, 8)
  config.pruning.ablation = "init_weights"
  report = ntk_spectra.spectra(config, ["random"], [0.9], num_points=8)
  dense, ticket = report["tickets"]
  assert (dense["name"], ticket["name"]) == ("dense", "random@0.9/init_weights")
  assert dense["clean"]["distance"] == pytest.approx(0.0, abs=1e-6)
  assert ticket["clean"]["distance"] > 0


def test_start_function_is_accuracy_and_true_class_margin():
  logits = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 4.0]])
  labels = np.array([0, 2, 2])
  got = ntk_spectra.start_function(logits, labels)
  assert got["accuracy"] == pytest.approx(2 / 3)
  # 2 - (0 + 1)/2, 0 - (0 + 3)/2, 4 - (1 + 1)/2.
  assert got["margin"] == pytest.approx((1.5 - 1.5 + 3.0) / 3)
  blind = ntk_spectra.start_function(np.ones((4, 10)), np.arange(4))
  assert blind["margin"] == 0.0


def _run(workdir, *extra):
  return _binary.run(
    "experiments.ntk_spectra",
    f"--config={SMOKE}",
    f"--workdir={workdir}",
    *extra,
  )


@pytest.mark.slow
def test_binary_writes_json_and_plot(tmp_path):
  proc = _run(
    tmp_path,
    "--methods=dense,random,snip",
    "--sparsities=0.9",
    "--num_points=16",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "ntk_spectra.json").read_text())
  rows = {r["name"]: r for r in report["tickets"]}
  assert set(rows) == {"dense", "random@0.9", "snip@0.9"}
  for kind in ("clean", "adversarial"):
    assert rows["dense"][kind]["distance"] == pytest.approx(0.0, abs=1e-6)
    assert rows["dense"][kind]["topk_overlap"] == pytest.approx(1.0, abs=1e-5)
    assert rows["random@0.9"][kind]["distance"] > 0
    assert len(rows["snip@0.9"][kind]["eigenvalues"]) == 16
  assert rows["random@0.9"]["sparsity"] == pytest.approx(0.9, abs=1e-6)
  png = (tmp_path / "plots" / "ntk_spectra.png").read_bytes()
  assert len(png) > 1000 and png[:4] == b"\x89PNG"
  assert "random@0.9: starts at " in proc.stderr
  assert "; sparsity 0.9000" in proc.stderr


@pytest.mark.parametrize(
  "flag,message",
  [
    ("--methods=dense,snipp", "error: unknown pruning method 'snipp'; known: "),
    ("--sparsities=1.0", "error: sparsity must be in [0, 1), got 1.0"),
  ],
)
def test_bad_input_is_one_line(tmp_path, flag, message):
  proc = _run(tmp_path, flag)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith(message)


def test_a_config_without_a_pruning_block_is_one_line():
  config = digits_mlp.get_config("smoke")
  del config["pruning"]
  with pytest.raises(
    config_lib.ConfigError, match="config is missing 'pruning'"
  ):
    ntk_spectra.spectra(config, ["snip"], [0.9], num_points=8)
