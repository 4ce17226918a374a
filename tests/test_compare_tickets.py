"""Smoke test of experiments/compare_tickets.py (subprocess) and its table."""

import csv
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "experiments/configs/compare_tickets.py:smoke"


def _run(workdir, *extra):
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  env["PYTHONPATH"] = ROOT
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.compare_tickets",
      f"--config={SMOKE}",
      f"--workdir={workdir}",
      *extra,
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("compare")
  proc = _run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


@pytest.mark.slow
def test_study_writes_table_figures_and_rows(study):
  workdir, _ = study
  out = json.loads((workdir / "compare_tickets.json").read_text())
  # smoke grid: 3 methods x 2 ablations x 2 seeds + 2 dense members.
  assert len(out["rows"]) == 3 * 2 * 2 + 2
  labels = {(e["method"], e["ablation"]) for e in out["summary"]}
  assert ("dense", "none") in labels and ("awt", "shuffle") in labels
  for r in out["rows"]:
    if r["method"] == "dense":
      assert r["sparsity"] == 0 and r["function_distance_adv_final"] is None
    else:
      assert r["sparsity"] == pytest.approx(0.9, abs=1e-6)
      assert r["function_distance_adv_final"] > 0
      assert r["ntk_distance_at_init"] > 0
  e = next(e for e in out["summary"] if e["method"] == "snip")
  vals = e["robust/fgsm"]["values"]
  assert len(vals) == 2 and e["robust/fgsm"]["mean"] == pytest.approx(
    sum(vals) / 2
  )
  assert out["headline"] == "fgsm+pgd5"
  dense = {
    r["seed"]: r["robust/fgsm+pgd5"]
    for r in out["rows"]
    if r["method"] == "dense"
  }
  diff = e["vs_dense"]["robust/fgsm+pgd5"]
  want = [
    r["robust/fgsm+pgd5"] - dense[r["seed"]]
    for r in out["rows"]
    if r["method"] == "snip" and r["ablation"] == "none"
  ]
  assert diff["values"] == pytest.approx(want) and diff["lo"] <= diff["hi"]
  with open(workdir / "compare_tickets.csv") as f:
    assert len(list(csv.DictReader(f))) == len(out["summary"])
  table = (workdir / "table.md").read_text()
  assert "| awt/shuffle | 0.9 |" in table and "sample std" in table
  for name in (
    "accuracy_vs_sparsity.png",
    "dynamics_s90.png",
    "layer_densities_s90.png",
    "ntk_distance_at_init.png",
  ):
    assert (workdir / "plots" / name).stat().st_size > 0


@pytest.mark.slow
def test_rerun_skips_finished_work(study):
  workdir, _ = study
  proc = _run(workdir)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "training finished earlier, loaded" in proc.stderr
  assert "training 14 members" not in proc.stderr


@pytest.mark.parametrize(
  "flag, message",
  [
    ("--config.sweep.methods=('awt','snipp')", "unknown sweep.methods entry"),
    ("--config.sweep.sparsities=(0.9,1.0)", "sweep.sparsities="),
    ("--config.sweep.ablations=('shuffel',)", "unknown sweep.ablations"),
  ],
)
def test_bad_grid_is_one_line(tmp_path, flag, message):
  proc = _run(tmp_path / "x", flag)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last
