"""Smoke tests of experiments/find_ticket.py (subprocess).

The smoke run trains a ticket and its dense reference, so the tests that
read it are slow; an unknown method ending the binary in one line is not.
"""

import json
import shutil

import _binary  # tests/_binary.py: the one subprocess runner
import jax
import numpy as np
import pytest

from awt import checkpoints, masks, tickets
from awt import config as config_lib
from experiments.configs import digits_mlp

# One xdist worker runs this module, so its trained fixture is built once.
pytestmark = pytest.mark.xdist_group("snip_run")
SMOKE = "experiments/configs/digits_mlp.py:smoke"


def _run(workdir, *extra):
  return _binary.run(
    "experiments.find_ticket",
    f"--config={SMOKE}",
    f"--workdir={workdir}",
    "--config.pruning.method=snip",
    "--config.pruning.sparsity=0.9",
    *extra,
  )


@pytest.fixture(scope="module")
def snip_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("snip")
  proc = _run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


@pytest.mark.slow
def test_ticket_is_saved_trained_and_reported(snip_run):
  workdir, proc = snip_run
  info = json.loads((workdir / "ticket.json").read_text())
  assert info["method"] == "snip" and info["sparsity"] == pytest.approx(0.9)
  results = json.loads((workdir / "results.json").read_text())
  assert results["method"] == "snip"
  assert results["sparsity"] == pytest.approx(0.9, abs=1e-6)
  assert results["find_cost"]["passes"] == 1
  assert results["find_cost"]["wall_time_s"] > 0
  assert 0 < results["ntk_distance_at_init"] < 10
  # The dense run with the same seed trained alongside, as the reference.
  dense = results["dense_reference"]
  assert 0 <= dense["clean_accuracy"] <= 1
  history = results["history"]
  assert [r["epoch"] for r in history] == [0, 1, 2]
  assert all(r["function_distance_adv"] > 0 for r in history)
  run = checkpoints.restore(str(workdir))
  assert run["meta"]["members"] == ["ticket", "dense"]
  ticket = {
    k: jax.tree.map(lambda v: v[0], run[k]) for k in ("mask", "variables")
  }
  assert masks.sparsity(ticket["mask"]) == pytest.approx(0.9, abs=1e-6)
  assert masks.sparsity(jax.tree.map(lambda v: v[1], run["mask"])) == 0
  # Pruned weights are still exactly zero after training.
  for path in masks.prunable_paths(ticket["mask"]):
    w = np.asarray(masks._get(ticket["variables"]["params"], path))
    m = np.asarray(masks._get(ticket["mask"], path))
    assert np.all(w[m == 0] == 0)
  assert "snip ticket: sparsity 0.9000" in proc.stderr


@pytest.mark.slow
def test_rerun_reuses_the_ticket(snip_run):
  workdir, _ = snip_run
  proc = _run(workdir, "--notrain")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "reusing the snip ticket" in proc.stderr


@pytest.mark.slow
def test_evaluate_reads_each_member(snip_run, tmp_path):
  """experiments.evaluate on a ticket + dense workdir: one report each."""
  workdir = tmp_path / "run"
  shutil.copytree(snip_run[0], workdir)
  small = ("--attacks=pgd3", "--eps_sweep=0,0.1", "--minimal=")
  proc = _binary.run(
    "experiments.evaluate", f"--workdir={workdir}", "--members=nope", *small
  )
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  last = [x for x in proc.stderr.splitlines() if x.strip()][-1]
  assert "no member 'nope'" in last and "ticket, dense" in last, last
  proc = _binary.run("experiments.evaluate", f"--workdir={workdir}", *small)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not (workdir / "robustness.json").exists()
  for name in ("ticket", "dense"):
    member = workdir / "members" / name
    report = json.loads((member / "robustness.json").read_text())
    trained = json.loads((member / "results.json").read_text())
    # The member's own weights: its clean test accuracy as training saw it
    # (up to one of the 360 digits: training evaluated the members
    # vectorized, a float rounding apart).
    assert report["member"] == name
    assert report["num_examples"] == 360
    assert report["clean_accuracy"] == pytest.approx(
      trained["clean_accuracy"], abs=1.01 / 360
    )
    assert (member / "plots" / "robustness_vs_eps.png").stat().st_size
  assert "ticket, sparsity 0.9 " in proc.stderr
  assert "dense, sparsity 0 " in proc.stderr


@pytest.mark.slow
def test_a_ticket_found_with_other_settings_is_not_reused(snip_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(snip_run[0], workdir)
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  for override, expected in [
    ("--config.pruning.method=synflow", "(method: 'snip' there, 'synflow'"),
    ("--config.pruning.sparsity=0.5", "(options.sparsity: 0.9 there, 0.5 now)"),
    ("--config.seed=3", "(seed: 0 there, 3 now)"),
  ]:
    proc = _binary.run(
      "experiments.find_ticket",
      f"--config={SMOKE}",
      f"--workdir={workdir}",
      "--config.pruning.method=snip",
      "--config.pruning.sparsity=0.9",
      override,
      "--notrain",
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = [x for x in proc.stderr.splitlines() if x.strip()][-1]
    assert "holds a ticket found with other settings" in last, last
    assert expected in last, last
  after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  assert after == before


def test_unknown_method_is_one_line(tmp_path):
  proc = _run(tmp_path / "x", "--config.pruning.method=snipp")
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: unknown pruning.method 'snipp'; known: ")


def test_a_sparsity_without_a_method_is_one_line_and_writes_nothing(tmp_path):
  # In process: the check sits in tickets.find, which find_ticket runs first.
  config = digits_mlp.get_config("smoke")
  config.pruning.sparsity = 0.9  # pruning.method stays "dense"
  with pytest.raises(config_lib.ConfigError) as e:
    tickets.find_and_train(config, str(tmp_path / "run"))
  assert str(e.value) == (
    "pruning.sparsity=0.9 has no effect with pruning.method='dense'; "
    "choose a method too, e.g. --config.pruning.method=snip"
  )
  assert not (tmp_path / "run").exists()
