"""The Guo et al. sparsity-robustness sweep and the sweep helpers it uses."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from awt import checkpoints, data, evaluation, experiment, masks, models
from awt.config import ConfigError
from awt.studies import _sweep
from awt.studies import sparsity_robustness as sr
from experiments.configs import sparsity_robustness as sr_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
  assert list(line) == ["m", "n_seeds", "y_mean", "y_std", "x_mean", "x_std"]
  assert line["n_seeds"] == "2" and float(line["x_mean"]) == pytest.approx(0.6)
  assert float(line["y_mean"]) == 2.0 and float(line["y_std"]) == 0.0
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
  mask = sr.magnitude_mask(params, sparsity, scope=scope)
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


@pytest.mark.slow
def test_vectorized_evaluation_equals_one_network_at_a_time():
  """The vmapped evaluator against ``evaluation.evaluate`` per network."""
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
    "bim": "bim3",
    "deepfool": "deepfool5",
    "cw": "cw_l2-5x10",
  }
  key = jax.random.PRNGKey(7)
  rows = sr.evaluate_members(apply_fn, nets, split, sweep, key=key)
  # References: one network at a time, one compiled evaluator each.
  bounded = {
    eps: evaluation.make_evaluator(
      apply_fn, attack_names=("fgsm", "bim3"), eps=eps
    )
    for eps in sweep["linf_eps"]
  }
  minimal = evaluation.make_evaluator(
    apply_fn, minimal_attacks=("deepfool5", "cw_l2-5x10")
  )
  for net, row in zip(nets, rows, strict=True):
    variables = {"params": net.params}
    for eps, ev in bounded.items():
      ref = evaluation.evaluate(
        apply_fn, variables, split, key=key, evaluator=ev
      )
      assert row["clean_accuracy"] == ref["clean_accuracy"]
      assert row[f"fgsm@{eps:g}"] == ref["robust_accuracy"]["fgsm"]
      assert row[f"bim3@{eps:g}"] == ref["robust_accuracy"]["bim3"]
    ref = evaluation.evaluate(
      apply_fn, variables, split, key=key, evaluator=minimal
    )
    for name, ref_name in (("deepfool", "deepfool5"), ("cw_l2", "cw_l2-5x10")):
      stats = ref["minimal_perturbation"][ref_name]
      assert row[f"{name}_failure_rate"] == pytest.approx(
        stats["failure_rate"], abs=1e-9
      )
      assert stats["mean_rho2"] is not None
      assert row[f"{name}_rho2"] == pytest.approx(stats["mean_rho2"], rel=1e-4)
    assert row["sparsity_actual"] == 0.0
  # The networks really differ, so the per-member split matters.
  assert len({r["clean_accuracy"] for r in rows}) > 1


def _smoke(**overrides):
  c = sr_config.get_config("smoke")
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("sweep.methods", ("magnitude", "dns"), "sweep.methods entry 'magnitude'"),
    ("sweep.models", ("mpl",), "sweep.models entry 'mpl'"),
    ("sweep.sparsities", (0.0, 1.0), "sweep.sparsities entry 1.0"),
    ("sweep.seeds", (0, 0), "sweep.seeds=(0, 0) has duplicates"),
    ("sweep.linf_eps", (0.0,), "sweep.linf_eps entry 0.0"),
    ("sweep.bim", "pgd10", "sweep.bim='pgd10'"),
    ("sweep.cw", "cw_l3", "unknown minimal-perturbation attack 'cw_l3'"),
    ("sweep.retrain_epochs", -1, "sweep.retrain_epochs=-1"),
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
def test_sweep_outputs(smoke_sweep):
  config, workdir, out, _ = smoke_sweep
  seeds, sweep = config.sweep.seeds, config.sweep
  # 2 methods x 2 sparsities (0 is the shared dense run) x 2 seeds.
  assert len(out["rows"]) == 2 * 2 * len(seeds)
  for r in out["rows"]:
    assert r["sparsity_actual"] == pytest.approx(r["sparsity"], abs=1e-6)
    for m, _ in sr.panels(sweep):
      if m != "cw_l2_rho2" or r[m] is not None:
        assert r[m] is not None and np.isfinite(r[m]), (m, r)
    for e in sweep.linf_eps:
      assert r[f"fgsm@{e:g}"] <= r["clean_accuracy"]
      assert r[f"{sweep.bim}@{e:g}"] <= r["clean_accuracy"]
  dense = [r for r in out["rows"] if r["sparsity"] == 0]
  by_method = {}
  for r in dense:
    by_method.setdefault(r["method"], []).append(r["clean_accuracy"])
  assert by_method["dns"] == by_method["magnitude_retrain"]  # same runs
  assert {(g["model"], g["method"], g["sparsity"]) for g in out["summary"]} == {
    ("mlp", m, s) for m in sweep.methods for s in sweep.sparsities
  }
  assert os.path.getsize(out["plot"]) > 0
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
  md = sr.format_table(out["summary"], sweep)
  assert md.count("\n") == len(out["summary"]) + 1


@pytest.mark.slow
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
    seed = int(name.split("seed")[1])
    j = dense["meta"]["members"].index(f"seed{seed}")
    w = jax.tree.map(lambda x, j=j: np.asarray(x[j]), dense["variables"])
    m = jax.tree.map(lambda x, i=i: np.asarray(x[i]), pruned["mask"])
    # The mask is the top-|w| of the TRAINED dense weights, per layer.
    for path in masks.prunable_paths(m):
      layer = np.abs(np.asarray(masks._get(w["params"], path))).ravel()
      kept = np.asarray(masks._get(m, path)).ravel()
      k = int(kept.sum())
      assert k == int(round(0.1 * layer.size))
      assert layer[kept == 1].min() >= layer[kept == 0].max()
      p = np.asarray(masks._get(pruned["variables"]["params"], path))[i]
      assert np.all(p.ravel()[kept == 0] == 0)  # pruned stay zero


@pytest.mark.slow
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
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.sparsity_robustness",
      "--config=experiments/configs/sparsity_robustness.py:smoke",
      "--config.sweep.methods=('magnitude_retrain','imp')",
      f"--workdir={tmp_path / 'w'}",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last == (
    "error: unknown sweep.methods entry 'imp'; known: magnitude_retrain, dns"
  )
  assert not (tmp_path / "w").exists()  # validated before anything
