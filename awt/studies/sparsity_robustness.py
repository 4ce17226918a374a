r"""Sparsity vs adversarial robustness: the sweep of Guo et al. (2018).

For each model of ``config.sweep.models`` (a DNN and, as the paper's
contrast, the linear classifier) and each seed of ``config.sweep.seeds``:

1. **dense** — train the dense network (``config.num_epochs``, the config's
   objective; Guo et al. train naturally). All seeds are members of one
   vectorized ``train_members`` program. These are the sparsity-0 points.
2. **magnitude_retrain** (Han et al. 2015; Guo et al. Sec. 4) — keep the
   largest trained weights, ``|w|`` ranked by ``awt.masks.topk`` with
   ``config.pruning.scope``, at every sparsity of ``config.sweep.sparsities``,
   and retrain (fine-tune) the pruned nets ``sweep.retrain_epochs`` with the
   mask fixed: every (sparsity, seed) of the model in one ``train_members``
   program.
3. **dns** (dynamic network surgery, Guo, Yao & Chen 2016) — from the same
   trained dense net, ``awt.pruning.find("dns", ...)`` prunes and splices
   for ``config.pruning.dns_epochs`` per (sparsity, seed), then all tickets
   are fine-tuned together like step 2.

Every trained network is evaluated on the test set: clean accuracy, FGSM and
BIM (``evaluation.parse_attack``'s ``bim<steps>``: PGD without random start)
robust accuracy at each l_inf budget of ``sweep.linf_eps``, and the DeepFool
and C&W-l2 minimal-perturbation ratio

.. math::
  \rho_2 = \frac{1}{|\mathcal{D}|} \sum_{x \in \mathcal{D}}
    \frac{\|r(x)\|_2}{\|x\|_2}

(Guo et al. Eq. (1); Moosavi-Dezfooli et al. 2016 Eq. (15)) over the
correctly classified test points the attack fooled
(``evaluation.minimal_perturbation_stats``). The members of one cell are
evaluated in one vectorized program too.

Each step of each model is a resumable cell of ``awt.studies._sweep``
(``WORKDIR/cells/<model>-<step>/``). The table (per-seed rows and mean ± std
over seeds per (model, method, sparsity)) goes to
``WORKDIR/sparsity_robustness.{csv,json}`` and the figure to
``WORKDIR/plots/sparsity_robustness.png``. The sparsity-0 point of each
method's curve is the dense run.

References:
  Guo, Zhang, Zhang & Chen, *Sparse DNNs with Improved Adversarial
  Robustness*, NeurIPS 2018. Han, Pool, Tran & Dally, *Learning both
  Weights and Connections for Efficient Neural Networks*, NeurIPS 2015.
  Guo, Yao & Chen, *Dynamic Network Surgery for Efficient DNNs*, NeurIPS
  2016.
"""

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from awt import (
  checkpoints,
  evaluation,
  experiment,
  masks,
  models,
  pruning,
  training,
)
from awt import config as config_lib
from awt import data as data_lib
from awt.studies import _sweep

METHODS = ("magnitude_retrain", "dns")
KEYS = ("model", "method", "sparsity")
TABLE = "sparsity_robustness"
PyTree = Any


def validate(config) -> None:
  """Checks the run config of every model and the ``sweep`` block.

  Raises:
    ConfigError: one line naming the first bad key and its value.
  """
  ConfigError = config_lib.ConfigError
  if "sweep" not in config:
    raise ConfigError("config is missing 'sweep'")
  sw = config.sweep
  for key in ("models", "methods", "sparsities", "seeds", "linf_eps"):
    if key not in sw:
      raise ConfigError(f"config is missing 'sweep.{key}'")
  for m, lr in (sw.get("learning_rates") or {}).items():
    if m not in models.names():
      raise ConfigError(
        f"unknown model {m!r} in sweep.learning_rates; known: "
        f"{', '.join(models.names())}"
      )
    if isinstance(lr, bool) or not isinstance(lr, int | float) or lr <= 0:
      raise ConfigError(f"sweep.learning_rates.{m}={lr!r} must be > 0")
  if not sw.models:
    raise ConfigError("sweep.models is empty")
  for m in sw.models:
    if m not in models.names():
      raise ConfigError(
        f"unknown sweep.models entry {m!r}; known: {', '.join(models.names())}"
      )
    config_lib.validate(
      model_config(config, m), pruning_methods=pruning.names()
    )
  for m in sw.methods:
    if m not in METHODS:
      raise ConfigError(
        f"unknown sweep.methods entry {m!r}; known: {', '.join(METHODS)}"
      )
  _unique_numbers(sw.sparsities, "sweep.sparsities", lo=0.0, hi=1.0)
  _unique_numbers(sw.seeds, "sweep.seeds", integer=True)
  if not sw.seeds:
    raise ConfigError("sweep.seeds is empty")
  _unique_numbers(sw.linf_eps, "sweep.linf_eps", lo=0.0, lo_open=True)
  for key in ("retrain_epochs",):
    v = sw.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
      raise ConfigError(f"sweep.{key}={v!r} must be an integer >= 0")
  v = config.pruning.get("dns_epochs")
  if isinstance(v, bool) or not isinstance(v, int) or v < 0:
    raise ConfigError(f"pruning.dns_epochs={v!r} must be an integer >= 0")
  bim = sw.get("bim", "bim10")
  if not bim.startswith("bim"):
    raise ConfigError(f"sweep.bim={bim!r} must be a bim<steps> attack")
  try:
    evaluation.parse_attack(bim)
    evaluation.parse_minimal_attack(sw.get("deepfool", "deepfool"))
    evaluation.parse_minimal_attack(sw.get("cw", "cw_l2"))
  except ValueError as e:
    raise ConfigError(f"sweep: {e}") from None


def _unique_numbers(values, key, *, lo=None, hi=None, lo_open=False, **kw):
  for v in values:
    ok_type = isinstance(v, int if kw.get("integer") else int | float)
    if isinstance(v, bool) or not ok_type:
      what = "integers" if kw.get("integer") else "numbers"
      raise config_lib.ConfigError(f"{key}={tuple(values)!r} must be {what}")
    if lo is not None and (v <= lo if lo_open else v < lo):
      raise config_lib.ConfigError(
        f"{key} entry {v} must be {'>' if lo_open else '>='} {lo}"
      )
    if hi is not None and v >= hi:
      raise config_lib.ConfigError(f"{key} entry {v} must be < {hi}")
  if len(set(values)) != len(values):
    raise config_lib.ConfigError(f"{key}={tuple(values)!r} has duplicates")


def model_config(config, model: str, **changes) -> ml_collections.ConfigDict:
  """An unlocked copy of ``config`` for ``model``, with dotted ``changes``.

  ``sweep.learning_rates[model]``, where given, replaces
  ``optimizer.learning_rate``.
  """
  c = ml_collections.ConfigDict(config.to_dict())
  c.model.name = model
  rates = c.get("sweep", {}).get("learning_rates") or {}
  if model in rates:
    c.optimizer.learning_rate = rates[model]
  for k, v in changes.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def magnitude_mask(
  params: PyTree, sparsity: float, *, scope: str, paths=None
) -> PyTree:
  """Mask keeping the largest-magnitude weights (Han et al. 2015).

  Args:
    params: trained parameters.
    sparsity: fraction of the prunable weights to remove, in [0, 1).
    scope: ``"global"`` (one ranking) or ``"layerwise"``.
    paths: prunable paths (default: every kernel).

  Returns:
    ``masks.topk(|params|, 1 - sparsity)``: exactly ``round((1 - s) n)``
    weights kept over all layers or in each.

  Examples:
    >>> w = {"fc": {"kernel": jnp.array([[0.1, -3.0], [2.0, 0.5]])}}
    >>> magnitude_mask(w, 0.5, scope="global")["fc"]["kernel"].tolist()
    [[0.0, 1.0], [1.0, 0.0]]

  References:
    Han, Pool, Tran & Dally, NeurIPS 2015, Sec. 3; Guo et al. NeurIPS 2018,
    Sec. 4.
  """
  scores = jax.tree.map(jnp.abs, params)
  return masks.topk(scores, 1.0 - sparsity, scope=scope, paths=paths)


def make_members_evaluator(
  apply_fn: Callable[[dict, jax.Array], jax.Array],
  *,
  eps_values: Sequence[float],
  bim: str = "bim10",
  deepfool: str = "deepfool",
  cw: str = "cw_l2",
) -> Callable[..., dict]:
  """One jitted program evaluating S networks of one architecture at once.

  ``fn(variables, x, y, keys) -> {name: [B, S]}`` with ``variables`` stacked
  on a leading member axis ``S``: ``evaluation.make_evaluator`` with FGSM
  and ``bim`` at every l_inf eps (outputs ``"fgsm@<eps>"``,
  ``"<bim>@<eps>"``: correct both clean and attacked) and the minimal
  attacks ``"deepfool"``/``"cw_l2"`` (``"<m>/l2"``, ``"<m>/fooled"``,
  ``"x_l2"``), ``jax.vmap``-ed over the members. Use with
  ``evaluation.per_example`` (batch axis first).

  Args:
    apply_fn: ``(variables, x [B, H, W, C]) -> logits [B, K]`` (eval mode).
    eps_values: l_inf budgets in pixel units.
    bim: a ``bim<steps>`` name (``evaluation.parse_attack``).
    deepfool: a ``deepfool[<iters>]`` name.
    cw: a ``cw_l2[-<binary>x<steps>]`` name.

  Returns:
    The jitted function, with ``attack_names`` and ``minimal_names``.
  """
  attack_fns = {}
  for e in eps_values:
    attack_fns[f"fgsm@{e:g}"] = evaluation.parse_attack("fgsm")(e, "linf")
    attack_fns[f"{bim}@{e:g}"] = evaluation.parse_attack(bim)(e, "linf")
  single = evaluation.make_evaluator(
    apply_fn,
    attack_fns=attack_fns,
    minimal_attacks={
      "deepfool": evaluation.parse_minimal_attack(deepfool),
      "cw_l2": evaluation.parse_minimal_attack(cw),
    },
  )
  batched = jax.vmap(single, in_axes=(0, None, None, None))

  @jax.jit
  def fn(variables, x, y, keys):
    return {
      k: jnp.swapaxes(v, 0, 1)
      for k, v in batched(variables, x, y, keys).items()
    }

  fn.attack_names = single.attack_names
  fn.minimal_names = single.minimal_names
  return fn


def evaluate_members(
  apply_fn: Callable[[dict, jax.Array], jax.Array],
  trained: Sequence[experiment.MemberResult],
  split: data_lib.Split,
  sweep: Mapping,
  *,
  batch_size: int = 500,
  key: jax.Array | None = None,
  log: Callable[[str], None] | None = None,
  evaluator: Callable[..., dict] | None = None,
) -> list[dict]:
  """Clean/FGSM/BIM accuracies and rho_2 of trained networks, vectorized.

  Args:
    apply_fn: the eval-mode apply of their (shared) architecture.
    trained: ``train_members`` results.
    split: the test data.
    sweep: ``config.sweep`` (``linf_eps``, ``bim``, ``deepfool``, ``cw``).
    batch_size: test examples per compiled call.
    key: PRNG key of the attacks (example ``i`` uses ``fold_in(key, i)``).
    log: progress callback.
    evaluator: a ``make_members_evaluator`` result for ``sweep`` to reuse
      (it compiles once per number of networks); built if None.

  Returns:
    One flat row per network: ``name``, ``seed``, ``sparsity_actual``,
    ``clean_accuracy``, ``fgsm@<eps>`` and ``<bim>@<eps>`` robust
    accuracies, and for ``deepfool`` and ``cw_l2``: ``<m>_rho2`` (mean
    rho_2), ``<m>_median_rho2``, ``<m>_mean_l2``, ``<m>_failure_rate``.
  """
  fn = evaluator or make_members_evaluator(
    apply_fn,
    eps_values=sweep["linf_eps"],
    bim=sweep.get("bim", "bim10"),
    deepfool=sweep.get("deepfool", "deepfool"),
    cw=sweep.get("cw", "cw_l2"),
  )
  variables = jax.tree.map(
    lambda *xs: np.stack(xs),
    *[training.model_variables(t.params, t.batch_stats) for t in trained],
  )
  out = evaluation.per_example(
    fn,
    variables,
    split,
    batch_size=batch_size,
    key=jax.random.PRNGKey(0) if key is None else key,
    log=log,
    label=f"evaluating {len(trained)} networks:",
  )
  n = split.num_examples
  rows = []
  for i, t in enumerate(trained):
    clean = out["clean"][:, i]
    row = {
      "name": t.name,
      "seed": t.results.get("seed"),
      "sparsity_actual": masks.sparsity(t.mask),
      "clean_accuracy": float(np.mean(clean)),
    }
    for a in fn.attack_names:
      row[a] = float(np.sum(out[a][:, i]) / n)
    for m in fn.minimal_names:
      s = evaluation.minimal_perturbation_stats(
        out[f"{m}/l2"][:, i], out["x_l2"][:, i], clean, out[f"{m}/fooled"][:, i]
      )
      row[f"{m}_rho2"] = s["mean_rho2"]
      row[f"{m}_median_rho2"] = s["median_rho2"]
      row[f"{m}_mean_l2"] = s["mean_l2"]
      row[f"{m}_failure_rate"] = s["failure_rate"]
    rows.append(row)
  return rows


def _member_name(sparsity: float, seed: int) -> str:
  return f"s{sparsity:g}-seed{seed}"


def _dense_members(seeds) -> list[experiment.Member]:
  return [experiment.Member(f"seed{s}", int(s)) for s in seeds]


class _Model:
  """The cells of one model: dense, magnitude_retrain, dns."""

  def __init__(self, config, name: str, dataset, workdir: str, log):
    self.config = config
    self.workdir = workdir
    self.name = name
    self.sweep = config.sweep
    self.dataset = dataset
    self.log = log
    self.seeds = [int(s) for s in self.sweep.seeds]
    self.sparsities = [float(s) for s in self.sweep.sparsities if s > 0]
    # Training calls evaluate clean accuracy only; the attacks run here.
    self.dense_config = model_config(
      config, name, **{"pruning.method": "dense", "pruning.sparsity": 0.0}
    )
    self.dense_config.eval.attacks = ()
    self.eval_model = config_lib.build_model(self.dense_config, dataset.info)
    self.eval_apply = lambda v, x: self.eval_model.apply(v, x, train=False)
    # One evaluator for all cells: cells with as many networks share its
    # compilation (the method cells of a model have the same count).
    self.evaluator = make_members_evaluator(
      self.eval_apply,
      eps_values=self.sweep.linf_eps,
      bim=self.sweep.get("bim", "bim10"),
      deepfool=self.sweep.get("deepfool", "deepfool"),
      cw=self.sweep.get("cw", "cw_l2"),
    )

  def cells(self) -> list[_sweep.Cell]:
    cells = [_sweep.Cell(f"{self.name}-dense", self.dense)]
    for method in self.sweep.methods:
      if self.sparsities:
        cells.append(
          _sweep.Cell(f"{self.name}-{method}", getattr(self, method))
        )
    return cells

  def _rows(self, trained, method, sparsity_of) -> list[dict]:
    rows = evaluate_members(
      self.eval_apply,
      trained,
      self.dataset.test,
      self.sweep,
      batch_size=self.config.eval.batch_size,
      log=self.log,
      evaluator=self.evaluator,
    )
    for t, r in zip(trained, rows, strict=True):
      r.update(model=self.name, method=method, sparsity=sparsity_of(t.name))
      r["epochs"] = len(t.results["history"]) - 1
    return rows

  def _dense_dir(self) -> str:
    return os.path.join(
      _sweep.cell_dir(self.workdir, f"{self.name}-dense"), "train"
    )

  def _trained_dense(self) -> dict[int, experiment.MemberResult]:
    """The finished dense runs, by seed, from their final checkpoint."""
    run = checkpoints.restore(self._dense_dir())
    names = run["meta"]["members"]
    out = {}
    for m in _dense_members(self.seeds):
      i = names.index(m.name)
      take = lambda tree, i=i: jax.tree.map(lambda x: np.asarray(x[i]), tree)
      out[m.seed] = experiment.MemberResult(
        m.name,
        {"seed": m.seed},
        take(run["variables"]["params"]),
        take(run["variables"].get("batch_stats", {})),
        take(run["mask"]),
      )
    return out

  def dense(self, path, done) -> dict:
    del done
    trained = experiment.train_members(
      self.dense_config,
      self._dense_dir(),
      _dense_members(self.seeds),
      log=self.log,
    )
    return {"rows": self._rows(trained, "dense", lambda _: 0.0)}

  def _retrain(self, path, method, members, sparsity_of) -> dict:
    retrain_config = model_config(
      self.dense_config,
      self.name,
      num_epochs=int(self.sweep.retrain_epochs),
      **{"pruning.method": "magnitude" if method != "dns" else "dns"},
    )
    trained = experiment.train_members(
      retrain_config, os.path.join(path, "train"), members, log=self.log
    )
    return {"rows": self._rows(trained, method, sparsity_of)}

  def _prune_paths(self, params):
    p = self.config.pruning
    return masks.prunable_paths(
      params,
      keep_first=bool(p.get("keep_first", False)),
      keep_last=bool(p.get("keep_last", False)),
    )

  def magnitude_retrain(self, path, done) -> dict:
    del done  # the dense runs are reloaded from their checkpoints
    dense = self._trained_dense()
    members, sparsity_of = [], {}
    for sp in self.sparsities:
      for seed in self.seeds:
        d = dense[seed]
        mask = jax.device_get(
          magnitude_mask(
            d.params,
            sp,
            scope=self.config.pruning.scope,
            paths=self._prune_paths(d.params),
          )
        )
        initial = {
          "params": jax.tree.map(lambda w, m: w * m, d.params, mask),
          "batch_stats": d.batch_stats,
          "mask": mask,
        }
        name = _member_name(sp, seed)
        sparsity_of[name] = sp
        members.append(experiment.Member(name, seed, initial))
    return self._retrain(
      path, "magnitude_retrain", members, sparsity_of.__getitem__
    )

  def dns(self, path, done) -> dict:
    del done  # the dense runs are reloaded from their checkpoints
    dense = self._trained_dense()
    members, sparsity_of, tickets = [], {}, {}
    todo = len(self.sparsities) * len(self.seeds)
    t0, found = time.perf_counter(), 0
    for sp in self.sparsities:
      for seed in self.seeds:
        name = _member_name(sp, seed)
        tree, info = self._dns_ticket(
          os.path.join(path, "tickets", name), dense[seed], sp, seed
        )
        found += 1
        rate = found / max(time.perf_counter() - t0, 1e-9)
        self.log(
          f"dns ticket {found}/{todo} ({name}): sparsity "
          f"{info['sparsity']:.4f}; {rate * 60:.1f}/min, ETA "
          f"{_sweep.fmt_duration((todo - found) / rate)}"
        )
        tickets[name] = {
          k: info[k]
          for k in ("passes", "wall_time_s", "mask_updates", "spliced")
        }
        sparsity_of[name] = sp
        members.append(experiment.Member(name, seed, tree))
    out = self._retrain(path, "dns", members, sparsity_of.__getitem__)
    for r in out["rows"]:
      r["find_passes"] = tickets[r["name"]]["passes"]
      r["find_wall_time_s"] = tickets[r["name"]]["wall_time_s"]
    return out

  def _dns_ticket(self, ticket_dir, dense, sparsity, seed):
    """DNS from the trained dense net, saved so a restart reuses it."""
    template = {
      "params": dense.params,
      "batch_stats": dense.batch_stats,
      "mask": dense.params,
    }
    saved = checkpoints.restore_ticket(ticket_dir, template)
    if saved is not None:
      return jax.device_get(saved[0]), saved[1]
    c = model_config(
      self.dense_config,
      self.name,
      seed=seed,
      **{
        "pruning.method": "dns",
        "pruning.sparsity": sparsity,
        "pruning.pretrain_epochs": 0,
      },
    )
    ctx = pruning.PruningContext(
      model=self.eval_model,
      params=dense.params,
      batch_stats=dense.batch_stats,
      split=self.dataset.train,
      config=c,
      image_shape=self.dataset.info.image_shape,
    )
    # The key find_ticket uses for the seed's mask search.
    ticket = pruning.find("dns", ctx, experiment.run_keys(seed).mask)
    tree = jax.device_get(
      {
        "params": ticket.params,
        "batch_stats": ticket.batch_stats,
        "mask": ticket.mask,
      }
    )
    info = dict(ticket.info)
    info["sparsity"] = masks.sparsity(tree["mask"])
    os.makedirs(ticket_dir, exist_ok=True)
    checkpoints.save_ticket(ticket_dir, tree, info)
    return tree, info


def run_sweep(
  config, workdir: str, *, log: Callable[[str], None] = logging.info
) -> dict:
  """Runs (or resumes) the sweep and writes its table and figure.

  Args:
    config: a ``ConfigDict`` like ``experiments/configs/sparsity_robustness``:
      the run schema plus ``sweep.{models, methods, sparsities, seeds,
      retrain_epochs, linf_eps, bim, deepfool, cw}`` and
      ``pruning.dns_epochs``.
    workdir: output directory; finished cells in it are reused.
    log: receives progress lines.

  Returns:
    ``{"rows": per-seed rows, "summary": aggregate over seeds (mean, std,
    values per metric) per (model, method, sparsity), "csv", "json",
    "plot": paths}``.

  Raises:
    ConfigError: a bad config value, before any compute.
  """
  validate(config)
  start = time.perf_counter()
  workdir = os.path.abspath(workdir)
  from awt import workdir as workdir_lib  # noqa: PLC0415

  workdir_lib.prepare(workdir)
  _sweep.check_config(workdir, config.to_dict())
  dataset = config_lib.load_data(config)
  cells = []
  for m in config.sweep.models:
    cells += _Model(config, m, dataset, workdir, log).cells()
  done = _sweep.run_cells(workdir, cells, log=log)
  rows = [r for results in done.values() for r in results["rows"]]
  table_rows = []
  for r in rows:
    if r["method"] != "dense":
      table_rows.append(r)
      continue
    for method in config.sweep.methods or ("dense",):
      table_rows.append({**r, "method": method})
  order = {m: i for i, m in enumerate(config.sweep.models)}
  table_rows.sort(
    key=lambda r: (order[r["model"]], r["method"], r["sparsity"], r["seed"])
  )
  summary = _sweep.aggregate(table_rows, KEYS)
  paths = {
    "csv": os.path.join(workdir, f"{TABLE}.csv"),
    "json": os.path.join(workdir, f"{TABLE}.json"),
    "plot": os.path.join(workdir, "plots", f"{TABLE}.png"),
  }
  _sweep.write_csv(
    paths["csv"],
    summary,
    KEYS,
    first=[m for m, _ in panels(config.sweep)],
  )
  _sweep.write_table_json(
    paths["json"],
    table_rows,
    summary,
    note="the sparsity-0 rows of every method are the dense runs",
  )
  plot(summary, paths["plot"], config.sweep, title=_title(config))
  log(
    f"sweep done in {time.perf_counter() - start:.1f}s: "
    f"{paths['csv']}, {paths['plot']}"
  )
  return {"rows": table_rows, "summary": summary, **paths}


def _title(config) -> str:
  method = config.adversarial.method
  training_name = "natural" if method == "none" else method
  return (
    f"{config.data.name}, {training_name} training, "
    f"{len(config.sweep.seeds)} seeds (error bars: std over seeds)"
  )


def panels(sweep: Mapping) -> list[tuple[str, str]]:
  """``(metric, panel title)`` of the figure, in order."""
  bim = sweep.get("bim", "bim10")
  out = [("clean_accuracy", "clean accuracy")]
  for e in sweep["linf_eps"]:
    out.append((f"fgsm@{e:g}", f"FGSM accuracy, l_inf eps {e:g}"))
    out.append((f"{bim}@{e:g}", f"{bim.upper()} accuracy, l_inf eps {e:g}"))
  out.append(("deepfool_rho2", "DeepFool rho_2 (higher: more robust)"))
  out.append(("cw_l2_rho2", "C&W-l2 rho_2 (higher: more robust)"))
  return out


def trend(summary: Sequence[Mapping], metric: str) -> list[dict]:
  r"""Where a metric peaks along sparsity, per (model, method).

  Guo et al.'s claim for DNNs is that robustness first rises with sparsity
  and then falls. A curve is called ``rises_then_falls`` here when its
  highest mean is at an interior sparsity (neither dense nor the sparsest)
  and exceeds both the dense and the sparsest point by more than two
  standard errors of the difference of the means,

  .. math:: \bar v_k - \bar v_j > 2 \sqrt{(s_k^2 + s_j^2) / n}

  (``n`` seeds each). This is a rough filter against calling seed noise a
  rise, not a significance test: the peak is the maximum over several
  sparsities, and with 3 seeds the standard deviations are themselves
  noisy.

  Args:
    summary: ``aggregate``'s groups (``model``, ``method``, ``sparsity``).
    metric: a metric of the groups, e.g. ``"bim10@0.05"``.

  Returns:
    One dict per (model, method): ``model``, ``method``, ``metric``,
    ``sparsities``, ``means``, ``stds`` (by increasing sparsity),
    ``peak_sparsity``, ``rise`` (peak minus dense), ``fall`` (peak minus
    sparsest) and ``rises_then_falls``.
  """
  curves: dict[tuple, list] = {}
  for g in summary:
    s = g.get(metric)
    if s and s["mean"] is not None:
      key = (g["model"], g["method"])
      point = (g["sparsity"], s["mean"], s["std"], s["n"])
      curves.setdefault(key, []).append(point)
  out = []
  for (model, method), pts in curves.items():
    pts.sort()
    sp, mean, std, n = (list(v) for v in zip(*pts, strict=True))
    k = int(np.argmax(mean))

    def above(j, k=k, mean=mean, std=std, n=n):
      margin = 2.0 * np.sqrt((std[k] ** 2 + std[j] ** 2) / min(n[k], n[j]))
      return mean[k] - mean[j] > margin

    out.append(
      {
        "model": model,
        "method": method,
        "metric": metric,
        "sparsities": sp,
        "means": mean,
        "stds": std,
        "peak_sparsity": sp[k],
        "rise": mean[k] - mean[0],
        "fall": mean[k] - mean[-1],
        "rises_then_falls": bool(
          0 < k < len(sp) - 1 and above(0) and above(len(sp) - 1)
        ),
      }
    )
  return out


def format_trends(summary: Sequence[Mapping], sweep: Mapping) -> str:
  """One line per (model, method, robustness metric): where it peaks."""
  lines = []
  for metric, _ in panels(sweep)[1:]:
    for t in trend(summary, metric):
      lines.append(
        f"{t['model']}/{t['method']} {metric}: peak at sparsity "
        f"{t['peak_sparsity']:g} ({t['rise']:+.3f} over dense, "
        f"{t['fall']:+.3f} over the sparsest); rises then falls beyond "
        f"the seed noise: {'yes' if t['rises_then_falls'] else 'no'}"
      )
  return "\n".join(lines)


def format_table(summary: Sequence[Mapping], sweep: Mapping) -> str:
  """Markdown table of the means ± std (percent for accuracies)."""
  cols = panels(sweep)
  head = ["model", "method", "sparsity", *(m for m, _ in cols)]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for g in summary:
    cells = [g["model"], g["method"], f"{g['sparsity']:g}"]
    for m, _ in cols:
      s = g.get(m)
      if not s or s["mean"] is None:
        cells.append("—")
      elif m.endswith("rho2"):
        cells.append(f"{s['mean']:.3f} ± {s['std']:.3f}")
      else:
        cells.append(f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(
  summary: Sequence[Mapping], path: str, sweep: Mapping, title: str = ""
) -> None:
  """One figure: every metric vs sparsity, a line per (model, method).

  Sparsities are placed at equal spacing (labelled; not to scale) so the
  high-sparsity end, where the trend turns, is readable. Error bars are the
  standard deviation over seeds.
  """
  import matplotlib  # noqa: PLC0415 (lazy: only binaries plot)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  cols = panels(sweep)
  sparsities = sorted({float(g["sparsity"]) for g in summary})
  pos = {s: i for i, s in enumerate(sparsities)}
  ncol = 3
  nrow = -(-len(cols) // ncol)
  fig, axes = plt.subplots(
    nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False
  )
  lines = {}
  for g in summary:
    lines.setdefault((g["model"], g["method"]), []).append(g)
  for ax, (metric, name) in zip(axes.ravel(), cols, strict=False):
    for (model, method), groups in lines.items():
      pts = [
        (pos[float(g["sparsity"])], g[metric]["mean"], g[metric]["std"])
        for g in groups
        if g.get(metric) and g[metric]["mean"] is not None
      ]
      if not pts:
        continue
      x, y, e = zip(*sorted(pts), strict=True)
      ax.errorbar(
        x,
        y,
        yerr=e,
        marker="o" if model != "linear" else "s",
        ls="-" if method != "dns" else "--",
        ms=3.5,
        lw=1.2,
        capsize=2,
        label=f"{model} / {method}",
      )
    ax.set_title(name, fontsize=9)
    ax.set_xticks(range(len(sparsities)))
    ax.set_xticklabels([f"{100 * s:g}" for s in sparsities], fontsize=7)
    ax.set_xlabel("sparsity % (not to scale)", fontsize=8)
    ax.grid(alpha=0.3)
  for ax in axes.ravel()[len(cols) :]:
    ax.axis("off")
  if axes.ravel()[0].has_data():
    axes.ravel()[0].legend(fontsize=7, loc="lower left")
  fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
