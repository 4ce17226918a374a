"""Smoke test of experiments/compare_tickets.py (subprocess) and its table."""

import csv
import json

import _binary  # tests/_binary.py: the one subprocess runner
import pytest

SMOKE = "experiments/configs/compare_tickets.py:smoke"


def _run(workdir, *extra):
  return _binary.run(
    "experiments.compare_tickets",
    f"--config={SMOKE}",
    f"--workdir={workdir}",
    *extra,
  )


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("compare")
  proc = _run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


@pytest.mark.slow
@pytest.mark.xdist_group("compare_study")
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
@pytest.mark.xdist_group("compare_study")
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
    ("--config.sweep.sparsities=(0.9,1.0)", "sweep.sparsities entry 1.0 must"),
    ("--config.sweep.seeds=(0,0)", "sweep.seeds=(0, 0) has duplicates"),
    ("--config.sweep.ablations=('shuffel',)", "unknown sweep.ablations"),
    # The smoke grid ablates awt, snip and one_shot; a sweep of a variant
    # of awt alone would otherwise lose its ablations without a word.
    (
      "--config.sweep.methods=('awt:awt_epochs=2',)",
      "sweep.ablations ('shuffle',) would apply to no method",
    ),
  ],
)
def test_bad_grid_is_one_line(tmp_path, flag, message):
  proc = _run(tmp_path / "x", flag)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last


def test_method_entries_carry_option_overrides():
  from awt import config as config_lib
  from awt.studies import compare_tickets
  from experiments.configs import compare_tickets as configs

  config = configs.get_config("smoke")
  spec = "awt:awt_kernel=trace,awt_epochs=5,awt_final_update=true"
  assert compare_tickets.parse_method(spec) == (
    "awt",
    {"awt_kernel": "trace", "awt_epochs": "5", "awt_final_update": "true"},
  )
  c = compare_tickets._cell_config(
    config, seed=1, method=spec, sparsity=0.9, ablation="none"
  )
  assert c.pruning.method == "awt" and c.pruning.awt_kernel == "trace"
  assert c.pruning.awt_epochs == 5.0 and c.pruning.awt_final_update is True
  assert config.pruning.awt_kernel == "cross_full"  # the base is untouched
  for bad, message in (
    ("awt:awt_kernl=trace", "unknown option pruning.awt_kernl"),
    ("awt:awt_epochs=many", "is not a float"),
    ("awt:awt_epochs", "is not <option>=<value>"),
  ):
    with pytest.raises(config_lib.ConfigError, match=message):
      compare_tickets._cell_config(
        config, seed=0, method=bad, sparsity=0.9, ablation="none"
      )
  with pytest.raises(config_lib.ConfigError, match="unknown sweep.methods"):
    compare_tickets.validate(config, ["snipp:x=1"], [0.9], [0], ["none"])


@pytest.mark.parametrize(
  "variant", ["options", "options,mnist5k", "options,lenet5"]
)
def test_an_override_equal_to_the_config_is_refused_and_options_have_none(
  variant,
):
  """The options grid lists the ranking the config does not use (the
  mnist5k MLP's config ranks raw, the others normalized), so no arm
  repeats another."""
  from awt import config as config_lib
  from awt.studies import compare_tickets
  from experiments.configs import compare_tickets as configs

  config = configs.get_config(variant)
  s = config.sweep
  compare_tickets.validate(
    config, s.methods, s.sparsities, s.seeds, s.ablations
  )
  own = config.pruning.awt_global_score
  same = f"awt:awt_global_score={own}"
  assert same not in s.methods
  with pytest.raises(config_lib.ConfigError, match="are the same ticket"):
    compare_tickets.validate(config, ["awt", same], [0.95], [0], ["none"])


@pytest.mark.slow
def test_train_seed_offset_retrains_the_same_tickets_under_other_noise(
  tmp_path,
):
  """With ``train_seed_offset`` k and the cells of an earlier workdir, the
  study trains the same tickets (not searched again) with seed s + k's
  batches and attacks: its dense member equals ``train_members`` of seed
  s's dense net under seed s + k, and differs from the run under s."""
  import shutil

  import numpy as np

  from awt import config as config_lib
  from awt import experiment, tickets
  from awt.studies import compare_tickets
  from experiments.configs import compare_tickets as configs

  config = config_lib.replaced(
    configs.get_config("smoke"), {"eval.attacks": ("fgsm",)}
  )
  grid = dict(methods=["snip"], sparsities=[0.9], seeds=[1], ablations=["none"])
  first = compare_tickets.run(config, str(tmp_path / "k0"), **grid)
  shutil.copytree(tmp_path / "k0" / "cells", tmp_path / "k5" / "cells")
  again = compare_tickets.run(
    config_lib.replaced(config, {"train_seed_offset": 5}),
    str(tmp_path / "k5"),
    **grid,
  )
  rows = {(r["method"], r["train_seed"]): r for r in first["rows"]}
  rows.update({(r["method"], r["train_seed"]): r for r in again["rows"]})
  assert set(rows) == {("dense", 1), ("snip", 1), ("dense", 6), ("snip", 6)}
  assert {r["seed"] for r in rows.values()} == {1}
  assert (
    rows["snip", 6]["layer_densities"] == rows["snip", 1]["layer_densities"]
  )
  # Reused, not searched again: the saved ticket's own search time.
  assert (
    rows["snip", 6]["find_wall_time_s"] == rows["snip", 1]["find_wall_time_s"]
  )

  def losses(row):
    return [h["train_loss"] for h in row["history"] if "train_loss" in h]

  dense = tickets.dense(config_lib.replaced(config, {"seed": 1}))
  (alone,) = experiment.train_members(
    config, str(tmp_path / "alone"), [experiment.Member("d", 6, dense)]
  )
  np.testing.assert_allclose(
    losses(rows["dense", 6]), losses(alone.results), rtol=1e-5
  )
  assert losses(rows["dense", 6]) != pytest.approx(losses(rows["dense", 1]))
  saved = json.loads((tmp_path / "k5" / "config.json").read_text())
  assert saved["train_seed_offset"] == 5
  assert "train_seed_offset" not in json.loads(
    (tmp_path / "k0" / "config.json").read_text()
  )
  for bad in (-1, True):
    with pytest.raises(config_lib.ConfigError, match="train_seed_offset"):
      compare_tickets.validate(
        config_lib.replaced(config, {"train_seed_offset": bad}),
        ["snip"],
        [0.9],
        [0],
        ["none"],
      )
