r"""Every way to get a sparse network, trained adversarially side by side.

Shi et al. (AISTATS 2022), Sec. 5: tickets of each pruning method at each
sparsity, trained with PGD-AT from scratch exactly like the dense network,
compared on clean, PGD-40 and ensemble robust accuracy, the cost of finding
them, their adversarial-NTK distance to the dense net at initialization,
and the function-space distance of their training run to the dense run's.

Two phases, both resumable (a restarted study skips finished work):

1. **Tickets.** For every (sparsity, method, ablation, seed) cell,
   ``awt.experiment.find_ticket`` in ``WORKDIR/cells/<cell>/`` (a saved
   ticket is reused).
2. **Training.** For every sparsity, one ``train_members`` program trains
   the dense net of each seed and every ticket together (vectorized over
   members), each ticket with the dense run of its seed as reference, so
   they see the same batches and attack randomness. A finished
   ``WORKDIR/train/<sparsity>/results.json`` is loaded instead of rerun.

Outputs: ``compare_tickets.json`` (per-seed rows and mean ± std),
``compare_tickets.csv``, ``table.md`` and ``plots/``: robust accuracy vs
sparsity, training curves against dense, function-space distance to the
dense run, adversarial-NTK distance at init, per-layer densities.

Config (``config.sweep``): ``methods``, ``sparsities``, ``seeds`` (ints),
``ablations`` (``"none"`` and any of ``awt.pruning.ablations.ABLATIONS``).
"""

import copy
import csv
import json
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from awt import config as config_lib
from awt import experiment
from awt import workdir as workdir_lib

DENSE = "dense"


def _cell_config(config, *, seed, method, sparsity, ablation):
  c = copy.deepcopy(config)
  with c.unlocked():
    c.seed = int(seed)
    c.pruning.method = method
    c.pruning.sparsity = float(sparsity)
    c.pruning.ablation = ablation
  return c


def _label(method: str, ablation: str) -> str:
  return method if ablation == "none" else f"{method}/{ablation}"


def _sparsity_name(s: float) -> str:
  return f"{round(100 * s, 4):g}"


def _final(history: list[dict], key: str):
  vals = [r[key] for r in history if r.get(key) is not None]
  return vals[-1] if vals else None


def _mean_over_training(history: list[dict], key: str):
  vals = [r[key] for r in history if r.get(key) is not None and r["epoch"] > 0]
  return float(np.mean(vals)) if vals else None


def run(
  config,
  workdir: str,
  *,
  methods: Sequence[str],
  sparsities: Sequence[float],
  seeds: Sequence[int],
  ablations: Sequence[str] = ("none",),
  log: Callable[[str], None] = logging.info,
) -> dict:
  """Runs (or resumes) the study; see the module docstring.

  Args:
    config: a run config (DESIGN.md schema) with ``eval.attacks`` naming
      the accuracies to report (e.g. ``("pgd40", "pgd40+apgd-ce+apgd-t")``).
    workdir: the study's directory.
    methods: pruning method names; ``"dense"`` is always trained.
    sparsities: target sparsities in (0, 1).
    seeds: seeds; each seed's tickets start from that seed's init.
    ablations: ``"none"`` and/or ablation names applied to every ticket.
    log: progress lines.

  Returns:
    ``{"rows": [...per member...], "summary": [...mean/std per (method,
    ablation, sparsity)...]}``, also written to ``compare_tickets.json``.
  """
  start = time.perf_counter()
  methods = [m for m in methods if m != DENSE]
  validate(config, methods, sparsities, seeds, ablations)
  workdir = workdir_lib.prepare(workdir)
  # "none" first: the other ablations start from its ticket.
  ablations = ["none"] + [a for a in ablations if a != "none"]
  cells = [
    (s, m, a, seed)
    for s in sparsities
    for m in methods
    for a in ablations
    for seed in seeds
  ]
  tickets = {}
  t0 = time.perf_counter()
  for i, (s, m, a, seed) in enumerate(cells):
    name = f"{_label(m, a).replace('/', '-')}_s{_sparsity_name(s)}_seed{seed}"
    c = _cell_config(config, seed=seed, method=m, sparsity=s, ablation=a)
    tickets[(s, m, a, seed)] = experiment.find_ticket(
      c,
      os.path.join(workdir, "cells", name),
      base=tickets.get((s, m, "none", seed)),
      log=lambda _: None,
    )
    done = i + 1
    eta = (time.perf_counter() - t0) / done * (len(cells) - done)
    info = tickets[(s, m, a, seed)][1]
    log(
      f"ticket {done}/{len(cells)} {name}: ntk distance "
      f"{info['ntk_distance_at_init']:.3f}, found in "
      f"{info['find_cost']['wall_time_s']:.1f}s; ETA {eta:.0f}s"
    )

  rows = []
  for s in sparsities:
    # member name -> (method, ablation, ticket info or None for dense)
    described = {}
    members = []
    for seed in seeds:
      name = f"{DENSE}_seed{seed}"
      dense_config = _cell_config(
        config, seed=seed, method=DENSE, sparsity=0.0, ablation="none"
      )
      members.append(
        experiment.Member(
          name, int(seed), experiment.dense_initial(dense_config)
        )
      )
      described[name] = (DENSE, "none", None)
    for m in methods:
      for a in ablations:
        for seed in seeds:
          name = f"{_label(m, a).replace('/', '-')}_seed{seed}"
          tree, info = tickets[(s, m, a, seed)]
          members.append(
            experiment.Member(
              name, int(seed), tree, reference=f"{DENSE}_seed{seed}"
            )
          )
          described[name] = (m, a, info)
    train_dir = os.path.join(workdir, "train", _sparsity_name(s))
    results = _load_finished(train_dir, list(described))
    if results is None:
      log(f"training {len(members)} members at sparsity {s} (vectorized)")
      out = experiment.train_members(config, train_dir, members, log=log)
      results = {r.name: r.results for r in out}
    else:
      log(f"sparsity {s}: training finished earlier, loaded {train_dir}")
    for mem in members:
      method, ablation, info = described[mem.name]
      rows.append(_row(results[mem.name], method, ablation, s, mem.seed, info))
  summary = _summarize(rows)
  out = {
    "rows": rows,
    "summary": summary,
    "attacks": list(config.eval.attacks),
    "eval_eps": config.eval.eps,
    "wall_time_s": time.perf_counter() - start,
  }
  workdir_lib.write_json(os.path.join(workdir, "compare_tickets.json"), out)
  _write_csv(os.path.join(workdir, "compare_tickets.csv"), rows)
  with open(os.path.join(workdir, "table.md"), "w") as f:
    f.write(markdown_table(summary, list(config.eval.attacks)))
  plot_all(out, os.path.join(workdir, "plots"))
  log(
    f"compare_tickets done in {out['wall_time_s']:.0f}s; table:\n"
    + markdown_table(summary, list(config.eval.attacks))
  )
  return out


def validate(config, methods, sparsities, seeds, ablations) -> None:
  """Checks the grid before any compute; one-line ``ConfigError``."""
  from awt import pruning  # noqa: PLC0415
  from awt.pruning import ablations as ablations_lib  # noqa: PLC0415

  for m in methods:
    if m not in pruning.names():
      raise config_lib.ConfigError(
        f"unknown sweep.methods entry {m!r}; known: "
        f"{', '.join(pruning.names())}"
      )
  for a in ablations:
    if a not in ablations_lib.ABLATIONS:
      raise config_lib.ConfigError(
        f"unknown sweep.ablations entry {a!r}; known: "
        f"{', '.join(ablations_lib.ABLATIONS)}"
      )
  if not sparsities or not all(0 < float(s) < 1 for s in sparsities):
    raise config_lib.ConfigError(
      f"sweep.sparsities={tuple(sparsities)} must be non-empty, each in (0, 1)"
    )
  if not seeds or any(
    isinstance(x, bool) or not isinstance(x, int) for x in seeds
  ):
    raise config_lib.ConfigError(
      f"sweep.seeds={tuple(seeds)} must be a non-empty tuple of integers"
    )
  if len(set(seeds)) != len(seeds):
    raise config_lib.ConfigError(f"sweep.seeds={tuple(seeds)} has repeats")
  for m in methods or [DENSE]:
    config_lib.validate(
      _cell_config(
        config,
        seed=seeds[0],
        method=m,
        sparsity=sparsities[0],
        ablation=ablations[0],
      ),
      pruning_methods=pruning.names(),
    )


def _load_finished(train_dir: str, names: list[str]) -> dict | None:
  path = os.path.join(train_dir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    members = json.load(f).get("members", [])
  results = {r["name"]: r for r in members}
  return results if set(names) <= set(results) else None


def _row(r, method, ablation, sparsity, seed, find) -> dict:
  history = r["history"]
  row = {
    "method": method,
    "ablation": ablation,
    "target_sparsity": float(sparsity) if method != DENSE else 0.0,
    "sparsity": r["sparsity"],
    "seed": seed,
    "clean_accuracy": r["clean_accuracy"],
    **{f"robust/{k}": v for k, v in r["robust_accuracy"].items()},
    "find_wall_time_s": find["find_cost"]["wall_time_s"] if find else 0.0,
    "find_passes": find["find_cost"]["passes"] if find else 0,
    "ntk_distance_at_init": find["ntk_distance_at_init"] if find else 0.0,
    "function_distance_adv_final": _final(history, "function_distance_adv"),
    "function_distance_adv_mean": _mean_over_training(
      history, "function_distance_adv"
    ),
    "function_distance_clean_final": _final(history, "function_distance_clean"),
    "layer_densities": r["layer_densities"],
    "history": history,
  }
  return row


_NUMERIC_SKIP = ("seed", "layer_densities", "history", "method", "ablation")


def _summarize(rows: list[dict]) -> list[dict]:
  """Mean, std and per-seed values per (method, ablation, sparsity)."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    key = (r["method"], r["ablation"], r["target_sparsity"])
    groups.setdefault(key, [])
    if r["seed"] not in [g["seed"] for g in groups[key]]:
      groups[key].append(r)
  summary = []
  for (method, ablation, sparsity), rs in groups.items():
    entry = {
      "method": method,
      "ablation": ablation,
      "target_sparsity": sparsity,
      "seeds": [r["seed"] for r in rs],
    }
    for k in rs[0]:
      if k in _NUMERIC_SKIP or k == "target_sparsity":
        continue
      vals = [r[k] for r in rs if r.get(k) is not None]
      if vals:
        entry[k] = {
          "mean": float(np.mean(vals)),
          "std": float(np.std(vals)),
          "values": vals,
        }
    summary.append(entry)
  return summary


def _write_csv(path: str, rows: list[dict]) -> None:
  keys = [k for k in rows[0] if k not in ("layer_densities", "history")]
  for r in rows:
    keys += [
      k for k in r if k not in keys and k not in ("layer_densities", "history")
    ]
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    for r in rows:
      w.writerow({k: r.get(k) for k in keys})


def _fmt(entry, key, scale=100.0, digits=2):
  v = entry.get(key)
  if v is None:
    return "–"
  return f"{scale * v['mean']:.{digits}f} ± {scale * v['std']:.{digits}f}"


def markdown_table(summary: list[dict], attacks: list[str]) -> str:
  """The summary as a Markdown table (accuracies in %, mean ± std)."""
  head = (
    ["method", "sparsity", "clean %"]
    + [f"{a} %" for a in attacks]
    + ["NTK dist. at init", "fn. dist. (adv, final)", "find s", "seeds"]
  )
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for e in sorted(
    summary, key=lambda e: (e["target_sparsity"], e["method"] != DENSE)
  ):
    cells = [
      _label(e["method"], e["ablation"]),
      f"{e['target_sparsity']:g}",
      _fmt(e, "clean_accuracy"),
      *(_fmt(e, f"robust/{a}") for a in attacks),
      _fmt(e, "ntk_distance_at_init", 1.0, 3),
      _fmt(e, "function_distance_adv_final", 1.0, 3),
      _fmt(e, "find_wall_time_s", 1.0, 1),
      str(len(e["seeds"])),
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot_all(out: dict, plot_dir: str) -> None:
  """Robust accuracy vs sparsity, curves vs dense, distances, densities."""
  import matplotlib  # noqa: PLC0415 (lazy)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  from awt import plots  # noqa: PLC0415

  os.makedirs(plot_dir, exist_ok=True)
  summary, rows = out["summary"], out["rows"]
  attacks = out["attacks"]
  labels = sorted(
    {_label(e["method"], e["ablation"]) for e in summary}, key=lambda x: x
  )

  # Robust accuracy vs sparsity (dense as a horizontal band).
  fig, axes = plt.subplots(
    1, 1 + len(attacks), figsize=(4.2 * (1 + len(attacks)), 3.6)
  )
  for ax, key in zip(
    axes, ["clean_accuracy"] + [f"robust/{a}" for a in attacks], strict=True
  ):
    for label in labels:
      es = sorted(
        (e for e in summary if _label(e["method"], e["ablation"]) == label),
        key=lambda e: e["target_sparsity"],
      )
      es = [e for e in es if key in e]
      if not es:
        continue
      if label == DENSE:
        m, sd = es[0][key]["mean"], es[0][key]["std"]
        ax.axhspan(100 * (m - sd), 100 * (m + sd), color="k", alpha=0.15)
        ax.axhline(100 * m, color="k", lw=1.5, label="dense")
        continue
      ax.errorbar(
        [100 * e["target_sparsity"] for e in es],
        [100 * e[key]["mean"] for e in es],
        yerr=[100 * e[key]["std"] for e in es],
        marker="o",
        capsize=3,
        label=label,
      )
    ax.set_xlabel("sparsity %")
    ax.set_title(key.replace("robust/", "robust ") + " (%)", fontsize=9)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(plot_dir, "accuracy_vs_sparsity.png"), dpi=110)
  plt.close(fig)

  # Curves per method vs dense, and function-space distance, per sparsity.
  sparsities = sorted(
    {r["target_sparsity"] for r in rows if r["method"] != DENSE}
  )
  for s in sparsities:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for label in labels:
      rs = [
        r
        for r in rows
        if _label(r["method"], r["ablation"]) == label
        and (r["target_sparsity"] == s or r["method"] == DENSE)
      ]
      if not rs:
        continue
      for ax, key in zip(
        axes,
        ("clean_accuracy", "train_loss", "function_distance_adv"),
        strict=True,
      ):
        curves = [
          [(h["epoch"], h[key]) for h in r["history"] if h.get(key) is not None]
          for r in rs
        ]
        curves = [c for c in curves if c]
        if not curves:
          continue
        n = min(len(c) for c in curves)
        xs = [p[0] for p in curves[0][:n]]
        ys = np.mean([[p[1] for p in c[:n]] for c in curves], axis=0)
        style = {"color": "k", "lw": 2} if label == DENSE else {"lw": 1.2}
        ax.plot(xs, ys, label=label, **style)
    for ax, title in zip(
      axes,
      (
        "clean test accuracy",
        "training loss (PGD points)",
        "function-space distance to dense (adv. probe)",
      ),
      strict=True,
    ):
      ax.set_title(title, fontsize=9)
      ax.set_xlabel("epoch")
      ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"sparsity {s:g}, mean over seeds")
    fig.tight_layout()
    fig.savefig(
      os.path.join(plot_dir, f"dynamics_s{_sparsity_name(s)}.png"), dpi=110
    )
    plt.close(fig)

    densities = {}
    for r in rows:
      if r["target_sparsity"] == s and r["method"] != DENSE:
        densities.setdefault(
          _label(r["method"], r["ablation"]), r["layer_densities"]
        )
    plots.plot_layer_densities(
      densities,
      os.path.join(plot_dir, f"layer_densities_s{_sparsity_name(s)}.png"),
      title=f"kept fraction per layer, sparsity {s:g} (seed {rows[0]['seed']})",
    )

  # Adversarial-NTK distance at init.
  fig, ax = plt.subplots(figsize=(7, 3.6))
  width = 0.8 / max(1, len(sparsities))
  ticket_labels = [lb for lb in labels if lb != DENSE]
  for j, s in enumerate(sparsities):
    es = {
      _label(e["method"], e["ablation"]): e
      for e in summary
      if e["target_sparsity"] == s and e["method"] != DENSE
    }
    xs = np.arange(len(ticket_labels)) + j * width
    ax.bar(
      xs,
      [es[lb]["ntk_distance_at_init"]["mean"] for lb in ticket_labels],
      width,
      yerr=[es[lb]["ntk_distance_at_init"]["std"] for lb in ticket_labels],
      label=f"sparsity {s:g}",
      capsize=2,
    )
  ax.set_xticks(
    np.arange(len(ticket_labels)) + width * (len(sparsities) - 1) / 2
  )
  ax.set_xticklabels(ticket_labels, rotation=30, ha="right", fontsize=8)
  ax.set_ylabel("relative adv.-NTK distance to dense")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  fig.savefig(os.path.join(plot_dir, "ntk_distance_at_init.png"), dpi=110)
  plt.close(fig)
