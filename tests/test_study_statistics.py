"""Statistics of the ticket studies: paired intervals, summaries, choices.

In-process checks on fabricated rows (no training): the numbers a README
table rests on are computed from these functions.
"""

import itertools
import json
import re

import numpy as np
import pytest
from scipy import stats

from awt import config as config_lib
from awt import curves
from awt.studies import _sweep, compare_tickets, lr_selection


def test_paired_difference_matches_scipys_paired_t_interval():
  rng = np.random.default_rng(0)
  a = rng.normal(0.8, 0.02, size=5)
  b = a - rng.normal(0.03, 0.01, size=5)
  got = _sweep.paired_difference(a, b)
  ref = stats.ttest_rel(a, b).confidence_interval(0.95)
  assert got["mean"] == pytest.approx(np.mean(a - b))
  assert got["lo"] == pytest.approx(ref.low)
  assert got["hi"] == pytest.approx(ref.high)
  assert got["n"] == 5 and got["std"] == pytest.approx(np.std(a - b, ddof=1))


def test_paired_difference_drops_incomplete_pairs_and_single_pairs():
  got = _sweep.paired_difference([0.5, None, 0.7], [0.4, 0.3, None])
  assert got["n"] == 1 and got["mean"] == pytest.approx(0.1)
  assert got["lo"] is None and got["hi"] is None
  assert _sweep.paired_difference([None], [0.1]) is None


def _rows():
  """Two seeds of dense, snip and awt at 0.9 (seed order shuffled)."""
  acc = {
    ("dense", 0): 0.80,
    ("dense", 1): 0.84,
    ("snip", 0): 0.75,
    ("snip", 1): 0.80,
    ("awt", 0): 0.70,
    ("awt", 1): 0.77,
  }
  rows = []
  for (method, seed), a in acc.items():
    history = [
      {"epoch": e, "train_loss": 1.0 / (1 + e), "function_distance_adv": e}
      for e in range(1, 9)
    ]
    rows.append(
      {
        "method": method,
        "ablation": "none",
        "target_sparsity": 0.0 if method == "dense" else 0.9,
        "seed": seed,
        "clean_accuracy": a + 0.1,
        "robust/pgd40+apgd-t": a,
        "robust/pgd40": a + 0.01,
        "train_loss_drop_last_quarter": curves.loss_drop(history, 0.75),
        "layer_densities": {"fc1": 0.1},
        "history": history,
      }
    )
  return rows[::-1]


def test_summary_pairs_by_seed_against_dense_and_snip():
  out = compare_tickets.summarize(_rows(), ["pgd40+apgd-t", "pgd40"])
  assert out["headline"] == "pgd40+apgd-t"
  awt = next(e for e in out["summary"] if e["method"] == "awt")
  d = awt["vs_dense"]["robust/pgd40+apgd-t"]
  assert sorted(d["values"]) == pytest.approx([-0.10, -0.07])
  assert d["mean"] == pytest.approx(-0.085)
  assert awt["vs_snip"]["robust/pgd40+apgd-t"]["mean"] == pytest.approx(-0.04)
  # Sample standard deviation (ddof 1) of the two seeds.
  assert awt["robust/pgd40"]["std"] == pytest.approx(
    np.std([0.71, 0.78], ddof=1)
  )
  snip = next(e for e in out["summary"] if e["method"] == "snip")
  assert "vs_snip" not in snip
  table = compare_tickets.markdown_table(out)
  assert "sample std" in table and "95% t-interval" in table
  assert "| awt | 0.9 |" in table and "-8.5 [" in table


def test_an_ablated_ticket_pairs_with_the_ticket_it_was_made_from():
  rows = _rows()
  unablated = compare_tickets.markdown_table(
    compare_tickets.summarize(rows, ["pgd40+apgd-t", "pgd40"])
  )
  assert "vs unablated" not in unablated  # no ablations, no column
  for seed, a in ((0, 0.76), (1, 0.79)):  # awt: 0.70 and 0.77
    base = next(r for r in rows if r["method"] == "awt" and r["seed"] == seed)
    rows.append(
      dict(base, ablation="init_weights", **{"robust/pgd40+apgd-t": a})
    )
  out = compare_tickets.summarize(rows, ["pgd40+apgd-t", "pgd40"])
  by = {(e["method"], e["ablation"]): e for e in out["summary"]}
  d = by["awt", "init_weights"]["vs_unablated"]["robust/pgd40+apgd-t"]
  assert sorted(d["values"]) == pytest.approx([0.02, 0.06])
  assert d["mean"] == pytest.approx(0.04)
  assert d["lo"] == pytest.approx(0.04 - stats.t.ppf(0.975, 1) * 0.02)
  unablated = [e for e in out["summary"] if e["ablation"] == "none"]
  assert all("vs_unablated" not in e for e in unablated)
  lines = compare_tickets.markdown_table(out).splitlines()
  header = next(line for line in lines if line.startswith("| method"))
  row = next(line for line in lines if line.startswith("| awt/init_weights"))
  cells = dict(zip(header.split(" | "), row.split(" | "), strict=True))
  assert cells["Δ pgd40+apgd-t vs unablated"].startswith("+4.0 [")
  awt = next(line for line in lines if line.startswith("| awt |"))
  cells = dict(zip(header.split(" | "), awt.split(" | "), strict=True))
  assert cells["Δ pgd40+apgd-t vs unablated"] == "–"


def test_table_gives_each_tickets_kept_fraction_per_layer():
  rows = _rows()
  for r in rows:
    fc1 = 1.0 if r["method"] == "dense" else 0.05 + 0.01 * r["seed"]
    r["layer_densities"] = {"fc1": fc1, "head": 1.0}
  out = compare_tickets.summarize(rows, ["pgd40+apgd-t", "pgd40"])
  lines = compare_tickets.markdown_table(out).splitlines()
  i = lines.index("| method | sparsity | fc1 | head |")
  kept = lines[i + 2 : i + 4]
  spread = 100 * np.std([0.05, 0.06], ddof=1)
  assert f"| awt | 0.9 | 5.5 ± {spread:.1f} | 100.0 ± 0.0 |" in kept
  assert not [line for line in lines[i:] if line.startswith("| dense |")]
  # A summary saved before the per-layer fields existed has no such table.
  for e in out["summary"]:
    for k in [k for k in e if k.startswith(compare_tickets.KEPT)]:
      del e[k]
  assert "| method | sparsity | fc1" not in compare_tickets.markdown_table(out)


def test_rows_say_where_training_started_and_ended():
  rows = []
  for method, start in (("dense", 0.11), ("awt", 0.01)):
    history = [
      {"epoch": 0, "clean_accuracy": start},
      {"epoch": 1, "clean_accuracy": 0.6, "train_loss": 2.0},
      {"epoch": 2, "clean_accuracy": 0.7, "train_loss": 1.25},
    ]
    r = {
      "history": history,
      "sparsity": 0.9,
      "clean_accuracy": 0.7,
      "robust_accuracy": {"pgd40": 0.5},
      "layer_densities": {"fc1": 0.1},
    }
    rows.append(compare_tickets._row(r, method, "none", 0.9, 0, None))
  assert rows[1]["clean_accuracy_at_start"] == 0.01
  assert rows[1]["train_loss_final"] == 1.25
  table = compare_tickets.markdown_table(
    compare_tickets.summarize(rows, ["pgd40"])
  )
  lines = table.splitlines()
  header = next(line for line in lines if line.startswith("| method"))
  awt = next(line for line in lines if line.startswith("| awt"))
  cells = dict(zip(header.split(" | "), awt.split(" | "), strict=True))
  assert cells["clean % at start"] == "1.0 ± 0.0"
  assert cells["final loss"] == "1.250 ± 0.000"
  # A history without the evaluation before training has no start.
  assert compare_tickets._at_start(history[1:], "clean_accuracy") is None


def test_a_run_that_ends_at_the_constant_classifiers_loss_is_stalled():
  chance = curves.chance_loss(10)
  assert chance == pytest.approx(2.302585)

  def history(final):
    return [
      {"epoch": 0, "clean_accuracy": 0.1},
      {"epoch": 1, "train_loss": 2.35},
      {"epoch": 2, "train_loss": final},
    ]

  assert curves.stalled(history(2.2930), chance) == 1.0  # measured
  assert curves.stalled(history(1.31), chance) == 0.0  # late escape
  assert curves.stalled(history(2.2), chance) == 0.0
  assert curves.stalled(history(2.3)[:1], chance) is None
  assert curves.stalled(history(2.3), None) is None
  rows = []
  for seed, final in enumerate((0.4, 2.30, 2.29)):
    r = {
      "history": history(final),
      "sparsity": 0.95,
      "clean_accuracy": 0.1 if final > 2 else 0.8,
      "robust_accuracy": {"pgd40": 0.5},
      "layer_densities": {"fc1": 0.1},
    }
    rows.append(
      compare_tickets._row(r, "awt", "none", 0.95, seed, None, chance)
    )
    rows.append(dict(rows[-1], method="snip", stalled=None))
  table = compare_tickets.markdown_table(
    compare_tickets.summarize(rows, ["pgd40"])
  )
  lines = table.splitlines()
  header = lines.index(next(x for x in lines if x.startswith("| method")))
  names = lines[header].split(" | ")
  cells = {  # the main table's rows (the kept-fraction table follows)
    line.split(" | ")[0]: dict(zip(names, line.split(" | "), strict=True))
    for line in lines[header + 2 : header + 4]
  }
  assert cells["| awt"]["stalled"] == "2 of 3 (seeds 1, 2)"
  assert cells["| snip"]["stalled"] == "–"  # rows saved without the field


def test_epochs_at_chance_counts_the_epochs_before_the_loss_leaves_ln_k():
  chance = curves.chance_loss(10)  # leaving: below 0.95 ln 10 = 2.187

  def history(*losses):
    return [{"epoch": 0, "clean_accuracy": 0.1}] + [
      {"epoch": e, "train_loss": loss} for e, loss in enumerate(losses, 1)
    ]

  count = curves.epochs_at_chance
  # Measured epoch losses (LeNet-5, mnist5k, 95%): permuted searched
  # values (seed 0), a dense net (seed 4), a stall (seed 1).
  assert count(history(2.36, 2.31, 2.01, 1.26), chance) == 2.0
  assert count(history(1.94, 0.66), chance) == 0.0
  assert count(history(2.53, 2.35, 2.32, 2.31), chance) == 4.0
  assert count(history(2.35, 2.20, 2.19), chance) == 3.0  # above 2.187
  assert count(history(2.35, 2.18, 2.40), chance) == 1.0  # the first fall
  assert count(history(), chance) is None
  assert count(history(2.3), None) is None
  # TRADES' loss adds beta KL to the cross-entropy: ln K marks nothing.
  assert curves.objective_chance("pgd_at", 10) == chance
  assert curves.objective_chance("trades", 10) is None
  assert not curves.still_at_chance(history(2.53, 2.35), None)
  # What training logs while it runs: still at chance after every epoch.
  assert curves.still_at_chance(history(2.53, 2.35, 2.32), chance)
  assert not curves.still_at_chance(history(2.36, 2.31, 2.01, 2.31), chance)
  assert not curves.still_at_chance(history(), chance)
  r = {
    "sparsity": 0.95,
    "clean_accuracy": 0.1,
    "robust_accuracy": {"pgd40": 0.1},
    "layer_densities": {"fc1": 0.1},
  }
  rows = [
    compare_tickets._row(
      dict(r, history=history(*losses)), "awt", "none", 0.95, seed, None, chance
    )
    for seed, losses in enumerate([(2.4, 2.3, 2.0), (2.4, 2.3, 2.3)])
  ]
  rows += [dict(row, method="snip", epochs_at_chance=None) for row in rows]
  table = compare_tickets.markdown_table(
    compare_tickets.summarize(rows, ["pgd40"])
  )
  lines = table.splitlines()
  header = lines.index(next(x for x in lines if x.startswith("| method")))
  column = lines[header].split(" | ").index("epochs at chance, per seed")
  cells = {  # the main table's rows (the kept-fraction table follows)
    line.split(" | ")[0]: line.split(" | ")[column]
    for line in lines[header + 2 : header + 4]
  }
  assert cells == {"| awt": "2, 3", "| snip": "–"}


def test_the_registered_small_datasets_are_balanced_enough_for_ln_k():
  # ``chance_loss`` is ln K; the best constant prediction's loss is the
  # label entropy, which must be within a tenth of the stall margin of it.
  from awt import data

  for name in ("digits", "mnist5k"):
    ds = data.load(name)
    p = np.bincount(ds.train.labels) / len(ds.train.labels)
    entropy = -np.sum(p * np.log(p))
    k = ds.info.num_classes
    gap = curves.chance_loss(k) - entropy
    assert 0 <= gap < curves.STALL_MARGIN / 10 * np.log(k), name


def test_tickets_pair_with_the_dense_nets_of_their_own_program():
  # Two programs (0.9 and 0.95), each training its own dense nets; the
  # 0.95 program's dense nets ran elsewhere and score 0.02 lower.
  rows = []
  for program, shift in ((0.9, 0.0), (0.95, -0.02)):
    for r in _rows():
      if r["method"] == "snip" or (r["method"] == "awt" and program == 0.9):
        continue
      r = dict(r, trained_at=program)
      if r["method"] == "dense":
        r["robust/pgd40+apgd-t"] += shift
      else:
        r["target_sparsity"] = program
      rows.append(r)
  out = compare_tickets.summarize(rows, ["pgd40+apgd-t"])
  dense = [e for e in out["summary"] if e["method"] == "dense"]
  assert len(dense) == 1  # the table shows the first program's
  assert dense[0]["robust/pgd40+apgd-t"]["mean"] == pytest.approx(0.82)
  awt = next(e for e in out["summary"] if e["method"] == "awt")
  d = awt["vs_dense"]["robust/pgd40+apgd-t"]
  assert d["mean"] == pytest.approx(-0.085 + 0.02)


def test_loss_drop_is_zero_on_a_flat_curve_and_large_on_a_falling_one():
  flat = [{"epoch": e, "train_loss": 0.3} for e in range(1, 21)]
  falling = [{"epoch": e, "train_loss": 2.0 - 0.09 * e} for e in range(1, 21)]
  assert curves.loss_drop(flat, 0.75) == 0.0
  assert curves.loss_drop(falling, 0.75) == pytest.approx((0.65 - 0.2) / 0.65)
  assert curves.loss_drop(flat[:1], 0.75) is None


def test_lr_choice_maximizes_the_worst_arm():
  def study(dense, ticket):
    return {
      "headline": "pgd40",
      "summary": [
        {
          "method": "dense",
          "ablation": "none",
          "target_sparsity": 0.0,
          "robust/pgd40": {"mean": dense},
        },
        {
          "method": "random",
          "ablation": "none",
          "target_sparsity": 0.95,
          "robust/pgd40": {"mean": ticket},
        },
      ],
    }

  # 0.1 is best for dense but leaves the random ticket untrained.
  choice = lr_selection.choose(
    {0.02: study(0.78, 0.60), 0.05: study(0.80, 0.65), 0.1: study(0.82, 0.1)}
  )
  assert choice["rate"] == 0.05
  assert choice["mean"][0.05] == pytest.approx(0.725)
  assert choice["best_per_arm"] == {"dense": 0.1, "random @ 0.95": 0.05}
  assert choice["worst"][0.1] == pytest.approx(0.1)
  assert "**0.05**" in lr_selection.markdown(choice)
  # A noisy arm that fails everywhere does not decide the rate.
  choice = lr_selection.choose({0.1: study(0.77, 0.21), 0.2: study(0.79, 0.20)})
  assert choice["rate"] == 0.2 and choice["worst"][0.2] < choice["worst"][0.1]


def test_a_study_workdir_refuses_another_config(tmp_path):
  from experiments.configs import compare_tickets as configs

  config = configs.get_config("smoke")
  kw = dict(methods=("snip",), sparsities=(0.9,), seeds=(0,))
  _sweep.check_config(
    str(tmp_path), {k: v for k, v in config.to_dict().items() if k != "sweep"}
  )
  before = config.optimizer.learning_rate
  with config.unlocked():
    config.optimizer.learning_rate = before / 2
  message = f"optimizer.learning_rate: {before} there, {before / 2} now"
  with pytest.raises(ValueError, match=re.escape(message)):
    compare_tickets.run(config, str(tmp_path), **kw)


def test_kernel_correlations_rank_tickets_by_ntk_distance():
  rows = []
  for i in range(6):
    rows.append(
      {
        "method": "snip",
        "ablation": "none",
        "target_sparsity": 0.9,
        "seed": i,
        "ntk_distance_at_init": 0.1 * i,
        "ntk_distance_at_init_all_weights": None,
        "function_distance_adv_early": 1.0 + i,  # same order: rho = +1
        "function_distance_adv_final": 5.0 - i,  # reversed: rho = -1
        "robust/pgd40": 0.5,
      }
    )
  corr = compare_tickets.kernel_correlations(rows, "pgd40")
  by_target = {c["target"]: c for c in corr}
  assert by_target["function_distance_adv_early"]["rho"] == pytest.approx(1.0)
  assert by_target["function_distance_adv_final"]["rho"] == pytest.approx(-1.0)
  assert all(c["kernel"] == "ntk_distance_at_init" for c in corr)
  assert by_target["function_distance_adv_early"]["n"] == 6
  # Exact: 2 of the 6! pairings order the ranks perfectly (either way).
  assert by_target["function_distance_adv_early"]["p"] == pytest.approx(2 / 720)
  assert "robust/pgd40" not in by_target  # constant accuracy: undefined


def _enumerated_p(a, b):
  """Two-sided permutation p of Spearman's rho, by listing every pairing."""
  ra, rb = stats.rankdata(a), stats.rankdata(b)
  rho = np.corrcoef(ra, rb)[0, 1]
  perms = [np.corrcoef(ra, rb[list(q)])[0, 1] for q in
           itertools.permutations(range(len(b)))]  # fmt: skip
  return rho, np.mean(np.abs(perms) >= abs(rho) - 1e-12)


@pytest.mark.parametrize("n", [4, 6, 7])
def test_spearman_p_is_exact_for_few_tickets(n):
  rng = np.random.default_rng(n)
  a = rng.normal(size=n)
  b = a + rng.normal(size=n)
  b[0] = b[1]  # a tie: average ranks
  rho, p = compare_tickets.spearman(a, b)
  want_rho, want_p = _enumerated_p(a, b)
  assert rho == pytest.approx(want_rho)
  assert p == pytest.approx(want_p)
  assert rho == pytest.approx(stats.spearmanr(a, b)[0])


def test_spearman_uses_the_t_approximation_above_the_exact_limit():
  rng = np.random.default_rng(0)
  a = rng.normal(size=compare_tickets.EXACT_MAX_N + 1)
  b = a + rng.normal(size=a.size)
  assert compare_tickets.spearman(a, b) == pytest.approx(
    tuple(stats.spearmanr(a, b))
  )


# ------------------------------------------------------- the study skeleton


def test_aggregate_is_the_sample_std_and_says_so():
  values = [0.61, 0.70, 0.64, 0.83]
  rows = [{"arm": "a", "seed": i, "acc": v} for i, v in enumerate(values)]
  (g,) = _sweep.aggregate(rows, ["arm"])
  assert g["acc"]["std"] == pytest.approx(np.std(values, ddof=1))
  assert g["acc"]["std"] == pytest.approx(stats.tstd(values))
  assert g["acc"]["std"] != pytest.approx(np.std(values))  # not ddof 0
  assert "sample std (ddof 1)" in _sweep.STATISTIC
  assert _sweep.statistic_note([g]) == f"{_sweep.STATISTIC} over 4 seeds"
  assert _sweep.statistic_note([g, {"seeds": [0, 1]}]).endswith("2–4 seeds")
  assert _sweep.fmt_mean_std(g["acc"], "{:.3f}".format) == (
    f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
  )


def test_every_table_states_its_statistic(tmp_path):
  out = compare_tickets.summarize(_rows(), ["pgd40+apgd-t", "pgd40"])
  header = compare_tickets.markdown_table(out).splitlines()[0]
  assert "mean ± sample std (ddof 1) over 2 seeds" in header
  _sweep.write_csv(
    str(tmp_path / "t.csv"), out["summary"], compare_tickets.GROUP
  )
  columns = list(_sweep.read_csv(str(tmp_path / "t.csv"))[0])
  assert "robust/pgd40_sample_std" in columns
  assert not [c for c in columns if c.endswith("_std") and "sample" not in c]
  _sweep.write_table_json(str(tmp_path / "t.json"), out["rows"], [])
  saved = json.loads((tmp_path / "t.json").read_text())
  assert saved["statistic"] == _sweep.STATISTIC


def test_paired_by_seed_pairs_the_same_seeds_whatever_their_order():
  rng = np.random.default_rng(1)
  a = dict(enumerate(rng.normal(0.8, 0.02, size=6)))
  b = {s: a[s] - rng.normal(0.03, 0.01) for s in (5, 3, 1, 0, 2)}  # no 4
  got = _sweep.paired_by_seed(a, b)
  seeds = [0, 1, 2, 3, 5]
  ref = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
  ci = ref.confidence_interval(0.95)
  assert got["n"] == 5
  assert got["values"] == pytest.approx([a[s] - b[s] for s in seeds])
  assert (got["lo"], got["hi"]) == (
    pytest.approx(ci.low),
    pytest.approx(ci.high),
  )
  assert _sweep.paired_by_seed({0: 0.5}, {1: 0.4}) is None


def test_a_finished_cell_is_loaded_not_run_again(tmp_path):
  calls = []

  def cell(name):
    return _sweep.Cell(name, lambda path, done: calls.append(name) or {"n": 1})

  cells = [cell("a"), cell("b")]
  first = _sweep.run_cells(str(tmp_path), cells, log=lambda s: None)
  assert calls == ["a", "b"]
  assert _sweep.load_results(_sweep.cell_dir(str(tmp_path), "a")) == {"n": 1}
  assert _sweep.load_results(str(tmp_path / "nowhere")) is None
  lines = []
  again = _sweep.run_cells(str(tmp_path), cells, log=lines.append)
  assert calls == ["a", "b"] and again == first  # nothing recomputed
  assert all("finished earlier, loaded" in line for line in lines)


def test_a_changed_config_is_refused_in_one_line(tmp_path):
  config = {"optimizer": {"learning_rate": 0.2, "momentum": 0.9}, "seed": 0}
  _sweep.check_config(str(tmp_path), config)
  _sweep.run_cells(
    str(tmp_path), [_sweep.Cell("a", lambda p, d: {"x": 1})], log=print
  )
  changed = {"optimizer": {"learning_rate": 0.4, "momentum": 0.9}, "seed": 0}
  with pytest.raises(ValueError) as err:
    _sweep.check_config(str(tmp_path), changed)
  message = str(err.value)
  assert "\n" not in message
  assert "(optimizer.learning_rate: 0.2 there, 0.4 now)" in message
  # The refused study wrote nothing: the recorded config stays the first.
  saved = json.loads((tmp_path / _sweep.CONFIG).read_text())
  assert saved["optimizer"]["learning_rate"] == 0.2


def test_summarize_regenerates_a_study_table_from_its_saved_rows(
  tmp_path, capsys
):
  from experiments import summarize

  out = compare_tickets.summarize(_rows(), ["pgd40+apgd-t", "pgd40"])
  out["eval_split"] = "test"
  # A workdir written when "±" was the population std (ddof 0).
  stale = json.loads(json.dumps(out["summary"]))
  for g in stale:
    for v in g.values():
      if isinstance(v, dict) and v.get("values"):
        v["std"] = float(np.std([x for x in v["values"] if x is not None]))
  rest = {k: v for k, v in out.items() if k not in ("rows", "summary")}
  _sweep.write_table_json(
    str(tmp_path / "compare_tickets.json"), out["rows"], stale, **rest
  )
  table = summarize.compare_tickets_table(str(tmp_path))
  assert table == compare_tickets.markdown_table(out)
  awt = [line for line in table.splitlines() if line.startswith("| awt |")]
  want = 100 * np.std([0.71, 0.78], ddof=1)
  assert f"± {want:.1f} |" in awt[0]  # pgd40: the sample std again
  assert summarize.main(["summarize", str(tmp_path)]) == 0
  assert table in capsys.readouterr().out
  # With the study's config.json, rows saved without ``stalled`` get it
  # from their loss history (here 1/9 at the end: none stalled).
  (tmp_path / "config.json").write_text(
    json.dumps({"data": {"name": "digits"}})
  )
  table = summarize.compare_tickets_table(str(tmp_path))
  assert table.count("| 0 of 2 | 0, 0 |") == 3  # dense, snip, awt


def _study_workdir(path, rows, config):
  out = compare_tickets.summarize(rows, ["pgd40+apgd-t", "pgd40"])
  rest = {k: v for k, v in out.items() if k not in ("rows", "summary")}
  path.mkdir()
  _sweep.write_table_json(
    str(path / "compare_tickets.json"), out["rows"], out["summary"], **rest
  )
  (path / "config.json").write_text(json.dumps(config))
  return str(path)


def test_summarize_pools_the_seeds_of_one_protocol(
  tmp_path, capsys, monkeypatch
):
  """Seeds run in two workdirs give the table of one workdir with all of
  them; another protocol, a seed in both, or one workdir is refused."""
  from absl import flags

  from experiments import summarize

  config = {"data": {"name": "digits"}, "num_epochs": 3}
  rows = _rows()
  by_seed = [[r for r in rows if r["seed"] == s] for s in (0, 1)]
  one = _study_workdir(tmp_path / "all", rows, config)
  a = _study_workdir(tmp_path / "seed0", by_seed[0], config)
  b = _study_workdir(tmp_path / "seed1", by_seed[1], config)
  pooled = summarize.pooled_compare_tickets_table([a, b])
  assert pooled == summarize.compare_tickets_table(one)
  assert "| 0 of 2 |" in pooled  # two seeds per arm, not one
  monkeypatch.setattr(flags.FLAGS["pool"], "value", True)
  assert summarize.main(["summarize", a, b]) == 0
  assert pooled in capsys.readouterr().out
  other = _study_workdir(
    tmp_path / "other", by_seed[1], {**config, "num_epochs": 4}
  )
  for workdirs, expected in [
    (
      [a, other],
      f"{other} ran another protocol than {a} (config.num_epochs: "
      "3 there, 4 here)",
    ),
    ([a, one], f"seed 0 of awt (ablation none) is in both {a} and {one}"),
    ([a], "--pool wants two or more compare_tickets workdirs"),
    ([a, str(tmp_path)], f"--pool: {tmp_path} has no compare_tickets.json"),
  ]:
    with pytest.raises(ValueError, match=re.escape(expected)):
      summarize.main(["summarize", *workdirs])


def test_summarize_gives_each_member_of_a_program_a_row(tmp_path, capsys):
  from experiments import summarize

  def member(name, sparsity, clean):
    return {
      "name": name,
      "sparsity": sparsity,
      "clean_accuracy": clean,
      "robust_accuracy": {"pgd40": clean - 0.2},
    }

  program = {
    "members": [
      member("dense_seed0", 0.0, 0.9),
      member("snip_seed0", 0.95, 0.8),
      dict(member("awt_seed0", 0.95, 0.3), epochs_at_chance=30.0, stalled=1.0),
      dict(member("awt_seed1", 0.95, 0.7), epochs_at_chance=6.0, stalled=0.0),
    ]
  }
  (tmp_path / "results.json").write_text(json.dumps(program))
  assert summarize.main(["summarize", str(tmp_path)]) == 0
  rows = [x for x in capsys.readouterr().out.splitlines() if x.startswith("| ")]
  assert rows[0].startswith("| method | sparsity | clean | pgd40 |")
  assert rows[0].endswith("| cost to find | epochs at chance |")
  assert rows[1:] == [  # the first two saved before epochs_at_chance existed
    "| dense_seed0 | 0.00% | 90.00% | 70.00% | — | 0.0 s, 0 passes | — |",
    "| snip_seed0 | 95.00% | 80.00% | 60.00% | — | 0.0 s, 0 passes | — |",
    "| awt_seed0 | 95.00% | 30.00% | 10.00% | — | 0.0 s, 0 passes "
    "| 30 (stalled) |",
    "| awt_seed1 | 95.00% | 70.00% | 50.00% | — | 0.0 s, 0 passes | 6 |",
  ]


@pytest.mark.parametrize(
  "config, validation, expected",
  [
    ("compare_tickets", 0, "would select the rate on the test set"),
    ("digits_mlp", 200, "no `sweep` block"),
  ],
)
def test_lr_selection_refuses_the_test_set_and_a_run_config(
  tmp_path, config, validation, expected
):
  from experiments.configs import compare_tickets as ct
  from experiments.configs import digits_mlp

  c = {"compare_tickets": ct, "digits_mlp": digits_mlp}[config]
  with pytest.raises(config_lib.ConfigError, match=expected):
    lr_selection.run(
      c.get_config("smoke"),
      str(tmp_path / "w"),
      rates=[0.1],
      validation=validation,
    )
  assert not (tmp_path / "w").exists()


def test_summarize_names_what_it_cannot_read(tmp_path):
  from experiments import summarize

  (tmp_path / "truncated").mkdir()
  (tmp_path / "truncated" / "results.json").write_text('{"method": "sn')
  (tmp_path / "foreign").mkdir()
  (tmp_path / "foreign" / "results.json").write_text('{"method": "snip"}')
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "results.json").write_text('{"members": []}')
  for path, expected in [
    (tmp_path / "missing", "missing' does not exist"),
    (tmp_path / "truncated" / "results.json", "results.json' is a file"),
    (tmp_path / "truncated", "truncated/results.json is not valid JSON"),
    (tmp_path / "foreign", "snip has no 'sparsity'"),
    (tmp_path / "empty", "empty/results.json lists no members"),
  ]:
    with pytest.raises(ValueError, match=re.escape(expected)):
      summarize.main(["summarize", str(path)])


def test_every_passes_one_line_per_period_with_its_prefix():
  ticks = iter([0.0, 10.0, 59.9, 60.0, 61.0, 119.9, 125.0])  # made, then lines
  seen = []
  thin = _sweep.every(seen.append, 60, "cell a: ", clock=lambda: next(ticks))
  for line in ("1", "2", "3", "4", "5", "6"):
    thin(line)
  assert seen == ["cell a: 3", "cell a: 6"]
