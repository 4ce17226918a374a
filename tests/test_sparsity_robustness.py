"""The Guo et al. sparsity-robustness sweep and the sweep helpers it uses."""

import functools
import json
import os
import re
import shutil

import _binary  # tests/_binary.py: the one subprocess runner
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awt import checkpoints, data, evaluation, experiment, masks, models
from awt import config as config_lib
from awt.config import ConfigError
from awt.pruning import layer_magnitude
from awt.studies import _sweep
from awt.studies import sparsity_robustness as sr
from experiments.configs import sparsity_robustness as sr_config

# ---------------------------------------------------------------- _sweep


def test_run_cells_skips_finished_cells_and_passes_results_on(tmp_path):
  calls, lines = [], []

  def cell(name, value):
    def run(path, done):
      calls.append(name)
      assert os.path.isdir(path) and path == _sweep.cell_dir(tmp_path, name)
      return {"value": value, "before": sorted(done)}

    return _sweep.Cell(name, run)

  cells = [cell("a", 1), cell("b", 2), cell("c", 3)]
  out = _sweep.run_cells(str(tmp_path), cells, log=lines.append)
  assert calls == ["a", "b", "c"]
  assert out["c"] == {"value": 3, "before": ["a", "b"]}
  assert any("cells/min, ETA" in line for line in lines)
  # A sweep killed during "c": its results.json is missing, the rest skip.
  os.remove(os.path.join(_sweep.cell_dir(tmp_path, "c"), "results.json"))
  calls.clear()
  again = _sweep.run_cells(str(tmp_path), cells, log=lines.append)
  assert calls == ["c"]
  assert again == out


def test_run_cells_keeps_a_failed_cell_unfinished(tmp_path):
  def boom(path, done):
    raise RuntimeError("killed")

  with pytest.raises(RuntimeError):
    _sweep.run_cells(
      str(tmp_path),
      [_sweep.Cell("ok", lambda p, d: {"x": 1}), _sweep.Cell("bad", boom)],
      log=lambda s: None,
    )
  assert os.path.exists(os.path.join(tmp_path, "cells", "ok", "results.json"))
  assert not os.path.exists(
    os.path.join(tmp_path, "cells", "bad", "results.json")
  )


@pytest.mark.parametrize("names", [["a", "a"], ["a/b"], [""], [".."]])
def test_run_cells_rejects_bad_names(tmp_path, names):
  cells = [_sweep.Cell(n, lambda p, d: {}) for n in names]
  with pytest.raises(ValueError, match="cell name"):
    _sweep.run_cells(str(tmp_path), cells, log=lambda s: None)


def test_check_config_refuses_a_different_sweep(tmp_path):
  config = {"sweep": {"seeds": (0, 1), "eps": 0.1}, "seed": 0}
  _sweep.check_config(str(tmp_path), config)
  _sweep.check_config(str(tmp_path), config)  # the same sweep restarted
  config["sweep"]["seeds"] = (0, 1, 2)
  with pytest.raises(ValueError, match=r"another config \(sweep.seeds: "):
    _sweep.check_config(str(tmp_path), config)


def test_aggregate_matches_numpy():
  rng = np.random.default_rng(0)
  rows = []
  for model in ("mlp", "linear"):
    for sp in (0.0, 0.9):
      for seed in range(3):
        rows.append(
          {
            "model": model,
            "sparsity": sp,
            "seed": seed,
            "acc": float(rng.uniform()),
            "rho": None if (model, seed) == ("linear", 1) else float(seed),
            "name": f"{model}-{seed}",
          }
        )
  summary = _sweep.aggregate(rows, ["model", "sparsity"])
  assert [(g["model"], g["sparsity"]) for g in summary] == [
    ("mlp", 0.0),
    ("mlp", 0.9),
    ("linear", 0.0),
    ("linear", 0.9),
  ]
  for g in summary:
    mine = [
      r
      for r in rows
      if (r["model"], r["sparsity"]) == (g["model"], g["sparsity"])
    ]
    acc = np.array([r["acc"] for r in mine])
    assert g["seeds"] == [0, 1, 2]
    assert g["acc"]["values"] == list(acc)
    np.testing.assert_allclose(g["acc"]["mean"], np.mean(acc))
    np.testing.assert_allclose(g["acc"]["std"], np.std(acc, ddof=1))
    assert "name" not in g  # strings are not metrics
    rho = [r["rho"] for r in mine if r["rho"] is not None]
    assert g["rho"]["n"] == len(rho)
    np.testing.assert_allclose(g["rho"]["mean"], np.mean(rho))
  single = _sweep.aggregate(rows[:1], ["model"])[0]
  assert single["acc"]["std"] == 0.0


def test_csv_and_json_round_trip(tmp_path):
  rows = [
    {"m": "a", "seed": 0, "x": 0.5, "y": None},
    {"m": "a", "seed": 1, "x": 0.7, "y": 2.0},
  ]
  summary = _sweep.aggregate(rows, ["m"])
  _sweep.write_csv(str(tmp_path / "t.csv"), summary, ["m"], first=["y"])
  (line,) = _sweep.read_csv(str(tmp_path / "t.csv"))
  assert list(line) == [
    "m",
    "n_seeds",
    "y_mean",
    "y_sample_std",
    "x_mean",
    "x_sample_std",
  ]
  assert line["n_seeds"] == "2" and float(line["x_mean"]) == pytest.approx(0.6)
  assert float(line["y_mean"]) == 2.0 and float(line["y_sample_std"]) == 0.0
  _sweep.write_table_json(str(tmp_path / "t.json"), rows, summary, note="n")
  back = json.loads((tmp_path / "t.json").read_text())
  assert back["rows"] == rows and back["note"] == "n"
  assert back["summary"][0]["x"]["values"] == [0.5, 0.7]


# ------------------------------------------------------- library pieces


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_magnitude_mask_keeps_the_largest_trained_weights(scope):
  rng = np.random.default_rng(1)
  params = {
    "fc1": {"kernel": rng.normal(size=(6, 5)), "bias": rng.normal(size=5)},
    "head": {"kernel": 3 * rng.normal(size=(5, 3)), "bias": np.zeros(3)},
  }
  sparsity = 0.6  # keeps 12 of 30, 6 of 15, 18 of 45: no rounding ties
  mask = layer_magnitude.magnitude_mask(params, sparsity, scope=scope)
  layers = [params["fc1"]["kernel"], params["head"]["kernel"]]
  got = [np.asarray(mask["fc1"]["kernel"]), np.asarray(mask["head"]["kernel"])]
  if scope == "global":
    flat = np.abs(np.concatenate([w.ravel() for w in layers]))
    k = int(round(0.4 * flat.size))
    want_flat = np.zeros(flat.size)
    want_flat[np.argsort(-flat, kind="stable")[:k]] = 1
    want = [want_flat[:30].reshape(6, 5), want_flat[30:].reshape(5, 3)]
  else:
    want = []
    for w in layers:
      a = np.abs(w).ravel()
      keep = np.zeros(a.size)
      keep[np.argsort(-a, kind="stable")[: int(round(0.4 * a.size))]] = 1
      want.append(keep.reshape(w.shape))
  for g, w in zip(got, want, strict=True):
    np.testing.assert_array_equal(g, w)
  np.testing.assert_array_equal(mask["fc1"]["bias"], np.ones(5))


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.99])
def test_layer_plan_keeps_the_output_layer_denser(sparsity):
  paths = [("fc1", "kernel"), ("fc2", "kernel"), ("head", "kernel")]
  plan = layer_magnitude.layer_plan(paths, sparsity, 0.1)
  d = 1.0 - sparsity
  assert plan[paths[0]] == plan[paths[1]] == pytest.approx(d)
  assert plan[paths[2]] == pytest.approx(max(d, 0.1))
  # The linear model's only layer is its output layer: no floor.
  assert layer_magnitude.layer_plan(paths[2:], sparsity, 0.1) == {
    paths[2]: pytest.approx(d)
  }


def _brute_force_reachable(mask, paths):
  """Class reachability by following kept weights unit by unit (Dense)."""
  reached = set(range(np.asarray(masks._get(mask, paths[0])).shape[0]))
  for p in paths:
    m = np.asarray(masks._get(mask, p))
    reached = {j for i in reached for j in np.flatnonzero(m[i])}
  return np.isin(np.arange(m.shape[1]), sorted(reached))


def test_class_reachability_follows_kept_weights():
  rng = np.random.default_rng(0)
  paths = [("a", "kernel"), ("b", "kernel"), ("c", "kernel")]
  for _ in range(20):
    mask = {
      "a": {"kernel": (rng.uniform(size=(6, 5)) < 0.2).astype(np.float32)},
      "b": {"kernel": (rng.uniform(size=(5, 4)) < 0.3).astype(np.float32)},
      "c": {"kernel": (rng.uniform(size=(4, 3)) < 0.4).astype(np.float32)},
    }
    np.testing.assert_array_equal(
      layer_magnitude.class_reachability(mask, paths),
      _brute_force_reachable(mask, paths),
    )


def _plain_topk(params, sparsity):
  """Per-layer top-|w| of every kernel, in numpy (no connection fix)."""

  def leaf(path, w):
    if path[-1] != "kernel":
      return np.ones_like(w)
    a = np.abs(w).ravel()
    keep = np.zeros(a.size, np.float32)
    k = masks.num_to_keep(a.size, 1.0 - sparsity)
    keep[np.argsort(-a, kind="stable")[:k]] = 1.0
    return keep.reshape(w.shape)

  return masks._map_with_path(leaf, params)


def _starved_params(name, rng):
  """Params of a tiny model whose plain per-layer top-k kills classes.

  The head columns of classes 0-4 are scaled down 1000x, so the largest
  output weights all belong to classes 5-9.
  """
  info = data.info("digits")
  kw = {"widths": (32, 16)} if name == "mlp" else {}
  model = models.get(name, 10, mean=info.mean, std=info.std, **kw)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  params = jax.tree.map(np.asarray, params["params"])
  scale = np.where(np.arange(10) < 5, 1e-3, 1.0).astype(np.float32)
  params["head"]["kernel"] = params["head"]["kernel"] * scale
  return params


@pytest.mark.parametrize("name", ["mlp", "linear"])
def test_99_percent_masks_keep_every_layer_and_class(name):
  """No empty layer and no class without a path at 99% sparsity.

  Plain per-layer magnitude pruning of these weights leaves classes 0-4
  with no kept weight into them; ``prune_mask`` keeps the layer counts of
  ``layer_plan`` (up to the path weights a too-small layer needs) and
  connects every class.
  """
  rng = np.random.default_rng(0)
  params = _starved_params(name, rng)
  paths = masks.prunable_paths(params)
  plain = _plain_topk(params, 0.99)
  assert not layer_magnitude.class_reachability(plain, paths)[
    :5
  ].any()  # it has bite
  mask = layer_magnitude.prune_mask(params, 0.99, output_density=0.1)
  assert layer_magnitude.class_reachability(mask, paths).all()
  np.testing.assert_array_equal(
    layer_magnitude.class_reachability(mask, paths),
    _brute_force_reachable(mask, paths),
  )
  assert layer_magnitude.empty_layers(mask, paths) == []
  report = layer_magnitude.mask_report(mask)
  assert report["dead_classes"] == 0 and report["empty_layers"] == 0
  plan = layer_magnitude.layer_plan(paths, 0.99, 0.1)
  for p in paths:
    m = np.asarray(masks._get(mask, p))
    want = masks.num_to_keep(m.size, plan[p])
    assert want <= np.count_nonzero(m) <= max(want, 10), p  # <= K paths
    assert report[f"density/{masks.layer_name(p)}"] == pytest.approx(
      np.mean(m != 0)
    )
  np.testing.assert_array_equal(mask["head"]["bias"], np.ones(10))


def test_connect_classes_leaves_a_connected_mask_alone_and_keeps_counts():
  params = _starved_params("mlp", np.random.default_rng(1))
  paths = masks.prunable_paths(params)
  dense = masks.ones(params)
  assert layer_magnitude.connect_classes(params, dense, paths) is dense
  plain = _plain_topk(params, 0.9)
  assert not layer_magnitude.class_reachability(plain, paths).all()
  fixed = layer_magnitude.connect_classes(params, plain, paths)
  assert layer_magnitude.class_reachability(fixed, paths).all()
  for p in paths:  # 10% of every layer holds more than the 10 path weights
    assert np.count_nonzero(masks._get(fixed, p)) == np.count_nonzero(
      masks._get(plain, p)
    )


@pytest.mark.slow
def test_connect_classes_on_a_conv_net():
  """LeNet-5: conv kernels and the flattened feature map, channel-level."""
  model = models.get("lenet5", 10)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  params = jax.tree.map(np.asarray, params["params"])
  scale = np.where(np.arange(10) < 5, 1e-3, 1.0).astype(np.float32)
  params["head"]["kernel"] = params["head"]["kernel"] * scale
  paths = masks.prunable_paths(params)
  mask = layer_magnitude.prune_mask(params, 0.99, output_density=0.02)
  assert layer_magnitude.class_reachability(mask, paths).all()
  assert layer_magnitude.empty_layers(mask, paths) == []


@pytest.mark.parametrize("eps, steps", [(0.02, 7), (0.05, 16), (0.3, 81)])
def test_bim_is_kurakins_schedule_and_returns_the_last_iterate(eps, steps):
  """Steps of 1/255 from x, min(255 eps + 4, 1.25 * 255 eps) of them.

  On a linear logit margin the CE gradient's sign is constant, so BIM
  walks straight to the corner ``x - eps sign(w)``, clipped to [0, 1]; the
  points it passes on the way fool the model long before, so a best-iterate
  attack would stop earlier, but BIM returns the last iterate.
  """
  assert sr.bim_schedule(eps) == (steps, 1.0 / 255.0)
  rng = np.random.default_rng(0)
  w = rng.normal(size=64)
  f = lambda v: v.reshape(v.shape[0], -1) @ jnp.stack([w, -w], 1)
  x = rng.uniform(0.0, 1.0, size=(4, 8, 8, 1)).astype(np.float32)
  y = jnp.zeros(4, jnp.int32)
  got = jax.jit(functools.partial(sr.bim(eps), f))(
    jnp.asarray(x), y, jax.random.PRNGKey(0)
  )
  want = x.reshape(4, 64)
  for _ in range(steps):  # the iteration itself, in numpy
    want = want - np.sign(w) / 255.0
    want = np.clip(
      np.clip(want, x.reshape(4, 64) - eps, x.reshape(4, 64) + eps), 0, 1
    )
  np.testing.assert_allclose(np.asarray(got).reshape(4, 64), want, atol=1e-6)
  corner = np.clip(x.reshape(4, 64) - eps * np.sign(w), 0, 1)
  np.testing.assert_allclose(want, corner, atol=1e-6)


def test_linf_attack_columns_name_what_they_are():
  sweep = {"linf_eps": (0.1, 0.3), "pgd": "bim10"}
  assert list(sr.linf_attacks(sweep)) == [
    "fgsm@0.1",
    "bim@0.1",
    "pgd10_nrs@0.1",
    "fgsm@0.3",
    "bim@0.3",
    "pgd10_nrs@0.3",
  ]
  titles = dict(sr.panels(sweep))
  assert titles["bim@0.3"].startswith("BIM (81x1/255, last)")
  assert titles["pgd10_nrs@0.1"].startswith("PGD-10 from x, best iterate")
  assert sr.pgd_column("pgd40") == "pgd40"


def test_rho2_counts_failures_on_the_fixed_set():
  per = {
    "x_l2": [2.0, 2.0, 2.0, 2.0],
    "deepfool/l2": [1.0, 2.0, 0.0, 0.0],
    "deepfool/fooled": [True, True, False, False],
    "cw_l2/l2": [0.2, 0.4, 0.6, 5.0],
    "cw_l2/fooled": [True, True, True, True],
  }
  s = sr.rho2_stats(per, np.array([True, True, True, False]))
  assert s["l2_points"] == 3
  assert s["deepfool_failure_rate"] == pytest.approx(1 / 3)
  assert s["deepfool_rho2"] == pytest.approx(0.75)  # the fooled points
  assert s["deepfool_median_rho2"] == pytest.approx(1.0)  # [0.5, 1, inf]
  assert s["cw_l2_median_rho2"] == pytest.approx(0.2)
  assert s["cw_l2_rho2"] == pytest.approx(0.2)
  half = sr.rho2_stats(per, np.array([False, True, True, True]))
  assert half["deepfool_median_rho2"] is None  # 2 of 3 failed


def test_fixed_set_is_what_every_network_of_a_seed_gets_right():
  per = lambda clean, l2: {
    "clean": clean,
    "x_l2": [1.0] * 3,
    "deepfool/l2": l2,
    "deepfool/fooled": [True] * 3,
    "cw_l2/l2": l2,
    "cw_l2/fooled": [True] * 3,
  }
  # Names repeat across the methods' cells: a network is (model, method,
  # name).
  rows = [
    {"model": "m", "method": "a", "name": "s0-seed0", "seed": 0},
    {"model": "m", "method": "b", "name": "s0-seed0", "seed": 0},
    {"model": "m", "method": "a", "name": "s0-seed1", "seed": 1},
    {"model": "k", "method": "a", "name": "s0-seed0", "seed": 0},
  ]
  outputs = {
    ("m", "a", "s0-seed0"): per([True, True, False], [0.1, 0.2, 0.3]),
    ("m", "b", "s0-seed0"): per([True, False, True], [0.4, 0.5, 0.6]),
    ("m", "a", "s0-seed1"): per([False, True, True], [1.0, 1.0, 1.0]),
    ("k", "a", "s0-seed0"): per([True, True, True], [0.7, 0.8, 0.9]),
  }
  got = sr.fixed_set_rows(rows, outputs)
  assert [r["l2_points"] for r in got] == [1, 1, 2, 3]
  assert got[0]["deepfool_rho2"] == pytest.approx(0.1)  # point 0 only
  assert got[1]["deepfool_rho2"] == pytest.approx(0.4)  # its own outputs
  assert got[3]["deepfool_rho2"] == pytest.approx(0.8)


def _trend_rows(effect):
  """Rows of one (model, method): 5 seeds, metric = seed noise + effect."""
  rng = np.random.default_rng(0)
  noise = rng.normal(scale=0.01, size=5)
  rows = []
  for sp, e in effect.items():
    for i in range(5):
      value = 0.5 + noise[i] + e + 0.002 * rng.normal()
      rows.append(
        {
          "model": "mlp",
          "method": "dns",
          "sparsity": sp,
          "seed": i,
          "clean_accuracy": 0.9,
          "bim@0.1": value,
        }
      )
  return rows


def test_paired_differences_are_against_the_same_seeds_control():
  rows = _trend_rows({0.0: 0.0, 0.5: 0.01, 0.8: 0.05, 0.9: 0.02, 0.99: -0.1})
  paired = sr.paired_differences(rows, ["bim@0.1"])
  by_sp = {d["sparsity"]: d for d in paired}
  assert sorted(by_sp) == [0.5, 0.8, 0.9, 0.99]
  for sp, d in by_sp.items():
    a = [r["bim@0.1"] for r in rows if r["sparsity"] == sp]
    b = [r["bim@0.1"] for r in rows if r["sparsity"] == 0.0]
    ref = _sweep.paired_difference(a, b)
    assert d["mean"] == pytest.approx(ref["mean"])
    assert (d["lo"], d["hi"]) == pytest.approx((ref["lo"], ref["hi"]))
    assert d["n"] == 5 and d["control"] == pytest.approx(np.mean(b))
  # Pairing removes the seed noise (std 0.01) shared with the control.
  assert by_sp[0.8]["hi"] - by_sp[0.8]["lo"] < 0.02


def test_trend_tests_correct_for_choosing_the_moderate_sparsity():
  sweep = {
    "linf_eps": (0.1,),
    "pgd": "bim10",
    "sparsities": (0.0, 0.5, 0.8, 0.9, 0.99),
    "moderate_range": (0.5, 0.9),
  }
  rows = _trend_rows({0.0: 0.0, 0.5: 0.01, 0.8: 0.05, 0.9: 0.02, 0.99: -0.1})
  paired = sr.paired_differences(rows, sr.metrics({**sweep}) + ["bim@0.1"])
  (test,) = [
    t for t in sr.trend_tests(paired, sweep) if t["metric"] == "bim@0.1"
  ]
  a, b = test["moderate"], test["sparsest"]
  assert a["sparsity"] == 0.8 and a["candidates"] == [0.5, 0.8, 0.9]
  assert a["confidence"] == pytest.approx(1 - 0.05 / 3)
  d = next(
    d for d in paired if d["sparsity"] == 0.8 and d["metric"] == "bim@0.1"
  )
  wider = _sweep.paired_difference(
    d["values"], [0.0] * 5, confidence=1 - 0.05 / 3
  )
  assert (a["lo"], a["hi"]) == pytest.approx((wider["lo"], wider["hi"]))
  assert a["hi"] - a["lo"] > d["hi"] - d["lo"]  # Bonferroni: wider
  assert a["verdict"] == "higher"
  assert b["sparsity"] == 0.99 and b["verdict"] == "lower"
  flat = _trend_rows({0.0: 0.0, 0.5: 0.0, 0.8: 0.0, 0.9: 0.0, 0.99: 0.0})
  paired = sr.paired_differences(flat, ["bim@0.1"])
  (test,) = sr.trend_tests(paired, sweep)
  assert test["moderate"]["verdict"] == "no difference detected"
  assert "| mlp | dns | bim@0.1 | " in sr.format_trend_tests([test])


@pytest.mark.slow
def test_vectorized_evaluation_equals_one_network_at_a_time():
  """The vectorized evaluator against ``evaluation.evaluate`` per network."""
  info = data.info("digits")
  model = models.get("mlp", 10, mean=info.mean, std=info.std, widths=(16,))
  apply_fn = lambda v, x: model.apply(v, x, train=False)
  split = data.load("digits").test
  split = data.Split(split.images[:48], split.labels[:48])
  nets = []
  for i in range(2):
    v = model.init(jax.random.PRNGKey(i), jnp.zeros((1, 8, 8, 1)))
    nets.append(
      experiment.MemberResult(
        f"n{i}", {"seed": i}, v["params"], {}, masks.ones(v["params"])
      )
    )
  sweep = {
    "linf_eps": (0.05, 0.2),
    "pgd": "bim3",
    "deepfool": "deepfool5",
    "cw": "cw_l2-5x10",
    "cw_c_init": 0.1,
    "cw_learning_rate": 0.05,
    "cw_towards": "nearest",
    "l2_points": 40,
  }
  key = jax.random.PRNGKey(7)
  rows, per = sr.evaluate_members(apply_fn, nets, split, sweep, key=key)
  # References: one network at a time, one compiled evaluator each.
  bounded = {
    eps: evaluation.make_evaluator(
      apply_fn,
      attack_fns={
        "fgsm": evaluation.parse_attack("fgsm")(eps, "linf"),
        "bim": sr.bim(eps),
        "bim3": evaluation.parse_attack("bim3")(eps, "linf"),
      },
    )
    for eps in sweep["linf_eps"]
  }
  minimal = evaluation.make_evaluator(
    apply_fn,
    minimal_attacks={
      "deepfool": evaluation.parse_minimal_attack("deepfool5"),
      "cw_l2": sr.cw_attack(sweep),
    },
  )
  small = data.Split(split.images[:40], split.labels[:40])
  for net, row in zip(nets, rows, strict=True):
    variables = {"params": net.params}
    for eps, ev in bounded.items():
      ref = evaluation.evaluate(
        apply_fn, variables, split, key=key, evaluator=ev
      )
      assert row["clean_accuracy"] == ref["clean_accuracy"]
      assert row[f"fgsm@{eps:g}"] == ref["robust_accuracy"]["fgsm"]
      assert row[f"bim@{eps:g}"] == ref["robust_accuracy"]["bim"]
      assert row[f"pgd3_nrs@{eps:g}"] == ref["robust_accuracy"]["bim3"]
    ref = evaluation.per_example(minimal, variables, small, key=key)
    mine = per[net.name]
    np.testing.assert_array_equal(mine["clean"], ref["clean"])
    for m in ("deepfool", "cw_l2"):
      np.testing.assert_array_equal(mine[f"{m}/fooled"], ref[f"{m}/fooled"])
      np.testing.assert_allclose(mine[f"{m}/l2"], ref[f"{m}/l2"], rtol=1e-4)
      assert np.any(ref[f"{m}/fooled"])
    assert len(mine["clean"]) == 40
    assert row["sparsity_actual"] == 0.0 and row["num_test_points"] == 48
  # The networks really differ, so the per-member split matters.
  assert len({r["clean_accuracy"] for r in rows}) > 1


def _smoke(**overrides):
  c = sr_config.get_config("smoke")
  return config_lib.replaced(c, overrides)


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("sweep.methods", ("magnitude", "dns"), "sweep.methods entry 'magnitude'"),
    ("sweep.models", ("mpl",), "sweep.models entry 'mpl'"),
    ("sweep.sparsities", (0.0, 1.0), "sweep.sparsities entry 1.0"),
    ("sweep.seeds", (0, 0), "sweep.seeds=(0, 0) has duplicates"),
    ("sweep.linf_eps", (0.0,), "sweep.linf_eps entry 0.0"),
    ("sweep.pgd", "fgsm", "sweep.pgd='fgsm'"),
    ("sweep.cw", "cw_l3", "unknown minimal-perturbation attack 'cw_l3'"),
    ("sweep.cw", "deepfool", "sweep.cw='deepfool' must be a cw_l2 attack"),
    ("sweep.cw_towards", "far", "sweep.cw_towards='far'; known: max, nearest"),
    ("sweep.retrain_epochs", -1, "sweep.retrain_epochs=-1"),
    ("sweep.l2_points", -1, "sweep.l2_points=-1"),
    ("sweep.sparsities", (0.5, 0.9), "must include 0.0 (the matched control)"),
    ("sweep.moderate_range", (0.95, 0.97), "no entry of sweep.sparsities"),
    ("sweep.moderate_range", (0.9, 0.5), "must be 0 < lo <= hi < 1"),
    ("sweep.output_density", -0.1, "sweep.output_density=-0.1 must be in"),
    ("sweep.output_density", 1.5, "sweep.output_density=1.5 must be in"),
    ("pruning.scope", "global", "pruning.scope='global' must be 'layerwise'"),
    ("batch_size", 0, "batch_size=0"),
    ("sweep.learning_rates.linear", 0.0, "sweep.learning_rates.linear=0.0"),
  ],
)
def test_validate_names_the_bad_value(key, value, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    sr.validate(_smoke(**{key: value}))


# ------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
  """The smoke sweep of a small MLP (both methods), run once."""
  workdir = str(tmp_path_factory.mktemp("sweep"))
  config = _smoke(**{"sweep.models": ("mlp",)})
  config.model.widths = (32, 16)
  lines = []
  out = sr.run_sweep(config, workdir, log=lines.append)
  return config, workdir, out, lines


@pytest.mark.slow
@pytest.mark.xdist_group("smoke_sweep")
def test_sweep_outputs(smoke_sweep):
  config, workdir, out, _ = smoke_sweep
  seeds, sweep = config.sweep.seeds, config.sweep
  # The dense nets, then 2 methods x 2 sparsities (0: the control) x seeds.
  assert len(out["rows"]) == len(seeds) + 2 * 2 * len(seeds)
  for r in out["rows"]:
    assert abs(r["sparsity_actual"] - r["sparsity"]) < 0.01, r
    assert r["dead_classes"] == 0 and r["empty_layers"] == 0
    for m, _ in sr.panels(sweep):
      if "rho2" not in m or r[m] is not None:
        assert r[m] is not None and np.isfinite(r[m]), (m, r)
    for e in sweep.linf_eps:
      for a in ("fgsm", "bim", sr.pgd_column(sweep.pgd)):
        assert r[f"{a}@{e:g}"] <= r["clean_accuracy"]
    assert r["num_test_points"] == 360
    assert 0 < r["l2_points"] <= sweep.l2_points
    assert 0.0 <= r["cw_l2_failure_rate"] <= 1.0
  # rho_2 of one (model, seed) is over the same fixed set of points, and
  # each network's from its own cell's per-example outputs.
  for seed in seeds:
    assert len({r["l2_points"] for r in out["rows"] if r["seed"] == seed}) == 1
  cells = {
    m: json.load(
      open(os.path.join(_sweep.cell_dir(workdir, f"mlp-{m}"), "results.json"))
    )["per_example"]
    for m in ("dense", *sweep.methods)
  }
  for seed in seeds:
    mine = [r for r in out["rows"] if r["seed"] == seed]
    fixed = np.logical_and.reduce(
      [np.asarray(cells[r["method"]][r["name"]]["clean"]) for r in mine]
    )
    for r in mine:
      want = sr.rho2_stats(cells[r["method"]][r["name"]], fixed)
      for k, v in want.items():
        assert r[k] == (pytest.approx(v) if v is not None else None), k
  keys = {(g["model"], g["method"], g["sparsity"]) for g in out["summary"]}
  assert keys == {("mlp", "dense", 0.0)} | {
    ("mlp", m, s) for m in sweep.methods for s in sweep.sparsities
  }
  for path in ("plot", "paired_plot", "table", "paired_csv"):
    assert os.path.getsize(out[path]) > 0, path
  table = _sweep.read_csv(out["csv"])
  assert len(table) == len(out["summary"])
  assert list(table[0])[:5] == [
    "model",
    "method",
    "sparsity",
    "n_seeds",
    "clean_accuracy_mean",
  ]
  saved = json.loads(open(out["json"]).read())
  assert len(saved["rows"]) == len(out["rows"])
  assert saved["paired"] and saved["trend_tests"] and saved["cw_check"]
  # Paired differences: every method's sparsity 0.9 against its control,
  # for every metric of the figure.
  assert {(d["method"], d["sparsity"]) for d in out["paired"]} == {
    (m, 0.9) for m in sweep.methods
  }
  assert {d["metric"] for d in out["paired"]} <= set(sr.metrics(sweep))
  linf = [m for m in sr.robustness_metrics(sweep) if "rho2" not in m]
  tested = {(t["method"], t["metric"]) for t in out["trend_tests"]}
  assert tested >= {(m, a) for m in sweep.methods for a in linf}
  assert {a for _, a in tested} <= set(sr.robustness_metrics(sweep))
  check = out["cw_check"]["mlp"]
  assert [b["cw"] for b in check["budgets"]] == [
    "cw_l2-3x20",
    "cw_l2-3x40",
    "cw_l2-6x20",
  ]
  md = sr.format_table(out["summary"], sweep)
  assert md.count("\n") == len(out["summary"]) + 1
  assert "(control)" in md
  report = open(out["table"]).read()
  assert "Trend tests" in report and "density/head/kernel" in report


@pytest.mark.slow
@pytest.mark.xdist_group("smoke_sweep")
def test_every_network_of_a_method_trains_as_long_as_its_control(smoke_sweep):
  """Matched controls: same dense, surgery and retraining epochs and steps."""
  config, workdir, out, _ = smoke_sweep
  e, d = config.num_epochs, config.pruning.dns_epochs
  r = config.sweep.retrain_epochs
  want = {"dense": (e, 0, 0), "magnitude_retrain": (e, 0, r), "dns": (e, d, r)}
  spe = data.steps_per_epoch(1437, config.batch_size)
  for row in out["rows"]:
    got = tuple(row[f"epochs_{k}"] for k in ("dense", "surgery", "retrain"))
    assert got == want[row["method"]], row["name"]
    assert row["epochs_total"] == sum(want[row["method"]])
    assert row["steps_total"] == row["epochs_total"] * spe
  # The steps the trained members actually took, control and pruned alike.
  for method in config.sweep.methods:
    saved = json.loads(
      open(
        os.path.join(
          _sweep.cell_dir(workdir, f"mlp-{method}"), "train", "results.json"
        )
      ).read()
    )["members"]
    assert {m["name"].split("-")[0] for m in saved} == {"s0", "s0.9"}
    assert {m["steps"] for m in saved} == {r * spe}
  tickets = os.path.join(_sweep.cell_dir(workdir, "mlp-dns"), "tickets")
  assert sorted(os.listdir(tickets)) == sorted(
    f"s{s:g}-seed{i}"
    for s in config.sweep.sparsities
    for i in config.sweep.seeds
  )


@pytest.mark.slow
@pytest.mark.xdist_group("smoke_sweep")
def test_magnitude_cell_retrains_the_pruned_trained_dense_net(smoke_sweep):
  config, workdir, _, _ = smoke_sweep
  dense = checkpoints.restore(
    os.path.join(_sweep.cell_dir(workdir, "mlp-dense"), "train")
  )
  pruned = checkpoints.restore(
    os.path.join(_sweep.cell_dir(workdir, "mlp-magnitude_retrain"), "train")
  )
  names = pruned["meta"]["members"]
  for i, name in enumerate(names):
    sparsity = float(name.split("-")[0][1:])
    seed = int(name.split("seed")[1])
    j = dense["meta"]["members"].index(f"seed{seed}")
    w = jax.tree.map(lambda x, j=j: np.asarray(x[j]), dense["variables"])
    m = jax.tree.map(lambda x, i=i: np.asarray(x[i]), pruned["mask"])
    want = layer_magnitude.prune_mask(
      w["params"], sparsity, output_density=config.sweep.output_density
    )
    for a, b in zip(jax.tree.leaves(m), jax.tree.leaves(want), strict=True):
      np.testing.assert_array_equal(a, np.asarray(b))
    if sparsity == 0.0:  # the control keeps every weight
      assert all(np.all(x == 1) for x in jax.tree.leaves(m))
      continue
    plain = layer_magnitude.magnitude_mask(
      w["params"], sparsity, scope="layerwise"
    )
    connected = layer_magnitude.class_reachability(
      plain, masks.prunable_paths(m)
    ).all()
    # The mask is the top-|w| of the TRAINED dense weights, per layer.
    for path in masks.prunable_paths(m):
      layer = np.abs(np.asarray(masks._get(w["params"], path))).ravel()
      kept = np.asarray(masks._get(m, path)).ravel()
      if connected:
        assert int(kept.sum()) == int(round(0.1 * layer.size))
        assert layer[kept == 1].min() >= layer[kept == 0].max()
      p = np.asarray(masks._get(pruned["variables"]["params"], path))[i]
      assert np.all(p.ravel()[kept == 0] == 0)  # pruned stay zero


@pytest.mark.slow
@pytest.mark.xdist_group("smoke_sweep")
def test_restart_skips_finished_cells(smoke_sweep, tmp_path):
  config, workdir, out, _ = smoke_sweep
  copy = str(tmp_path / "again")
  shutil.copytree(workdir, copy)
  # Killed while the dns cell was evaluating: its results.json never landed.
  os.remove(os.path.join(_sweep.cell_dir(copy, "mlp-dns"), "results.json"))
  lines = []
  again = sr.run_sweep(config, copy, log=lines.append)
  text = "\n".join(lines)
  assert "mlp-dense: finished earlier" in text
  assert "mlp-cw_check: finished earlier" in text
  assert "mlp-magnitude_retrain: finished earlier" in text
  assert "mlp-dns: running" in text
  # The dns tickets were reused and its training resumed at its end.
  assert "dns ticket" in text and "resuming from checkpoint" in text
  for a, b in zip(out["rows"], again["rows"], strict=True):
    assert a.keys() == b.keys()
    for k in a:
      if isinstance(a[k], float):
        assert a[k] == pytest.approx(b[k], abs=1e-6), k
      else:
        assert a[k] == b[k], k


def test_binary_bad_input_is_one_line(tmp_path):
  proc = _binary.run(
    "experiments.sparsity_robustness",
    "--config=experiments/configs/sparsity_robustness.py:smoke",
    "--config.sweep.methods=('magnitude_retrain','imp')",
    f"--workdir={tmp_path / 'w'}",
  )
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last == (
    "error: unknown sweep.methods entry 'imp'; known: magnitude_retrain, dns"
  )
  assert not (tmp_path / "w").exists()  # validated before anything
