r"""Sparsity vs adversarial robustness: the sweep of Guo et al. (2018).

Guo et al.'s predictions, as their abstract states them: nonlinear DNNs
"behave differently under l_2 attacks from some linear ones", and "an
appropriately higher sparsity implies better robustness of nonlinear DNNs,
whereas over-sparsified models can be more difficult to resist". For a
linear classifier the smallest l_inf and l_2 perturbations are the margin
over ``||w||_1`` and over ``||w||_2``; their linear analysis reads this as
sparsity helping a linear model under l_inf, not under l_2. The sweep
measures both kinds of model (``config.sweep.models``: a DNN and the
linear classifier) under both norms.

Schedule, per model and seed of ``config.sweep.seeds`` (every network of a
method, its sparsity-0 control included, trains the same number of steps):

1. **dense** — train the dense network ``config.num_epochs`` (``E``; the
   config's objective, natural for Guo et al.). All seeds are members of
   one ``train_members`` program. Reported as method ``dense``:
   the starting point, *not* a control.
2. **magnitude_retrain** (Han et al. 2015) — at every sparsity ``s`` of
   ``sweep.sparsities``, 0 included, keep the largest trained weights of
   each layer (``prune_mask``) and retrain ``sweep.retrain_epochs`` (``R``)
   with the mask fixed. ``s = 0`` keeps every weight and goes through the
   same retraining: the matched control (``E + R`` epochs, like every
   pruned net). Every (sparsity, seed) is one member of one program.
3. **dns** (dynamic network surgery, Guo, Yao & Chen 2016) — from the same
   trained dense net, ``awt.tickets.find`` (method ``dns``, ``start`` the
   trained net) prunes and splices
   the hidden layers for ``pruning.dns_epochs`` (``D``) per (sparsity,
   seed) with per-layer thresholds; ``s = 0`` runs the same ``D`` epochs
   of surgery with nothing pruned. Then the output layer is pruned by
   magnitude (below), and all nets are fine-tuned ``R`` epochs together
   (``E + D + R`` epochs each).

**Per-layer rates** (``prune_mask``, ``layer_plan``): every hidden layer
keeps ``1 - s`` of its weights (its own magnitude threshold); the output
layer of a multi-layer net keeps ``max(1 - s, sweep.output_density)``, so
at 95-99% the net is over-sparsified, not collapsed. This floor is our
choice (it keeps the classifier denser, as the per-layer results of Han et
al. 2015 and DNS do, not a value taken from Guo et al.). The linear model's
only layer is its output layer and keeps ``1 - s``. Then ``connect_classes``
makes sure every class logit still depends on the input: if some class has
no path of kept weights from the input, every class's path of largest
weights is kept, each displacing the smallest kept weight of its layer
(the per-layer counts stay the same unless a layer keeps fewer weights
than it needs for the paths). Each row reports the per-layer densities
(``density/<layer>``), ``dead_classes`` and ``empty_layers``.

**Attacks**, on every trained network:

- clean accuracy and, at each l_inf budget of ``sweep.linf_eps`` (pixel
  units), robust accuracy (correct both clean and attacked) on the whole
  test set under FGSM (``fgsm@<eps>``), BIM (``bim@<eps>``: Kurakin et al.
  2017's basic iterative method, steps of one grey level ``1/255`` from
  ``x`` itself, ``min(255 eps + 4, 1.25 * 255 eps)`` of them rounded up,
  the last iterate; ``bim_schedule``) and the PGD variant ``sweep.pgd``
  (``awt.evaluation`` name: ``bim<k>`` is PGD from ``x`` with step
  ``2.5 eps / k`` and the best iterate, reported as ``pgd<k>_nrs@<eps>``;
  ``pgd<k>`` is Madry et al.'s PGD with a random start);
- DeepFool and C&W-l2 (``sweep.cw`` with ``sweep.cw_c_init``,
  ``sweep.cw_learning_rate`` and ``sweep.cw_towards``; its convergence is
  checked by the ``<model>-cw_check`` cell, which reruns it at twice the
  steps and twice the binary-search steps on the first seed's dense net)
  on the first ``sweep.l2_points`` test points, summarized by

  .. math::
    \rho_2 = \frac{1}{|F|} \sum_{x \in F} \frac{\|r(x)\|_2}{\|x\|_2}

  (Guo et al.'s rho_2, Moosavi-Dezfooli et al. 2016's rho_adv) over a fixed
  set ``F`` per (model, seed): the points every network of that model and
  seed (dense, both methods, every sparsity) classifies correctly, so every
  curve point averages over the same images. An attack that fails on a point
  of ``F`` is never dropped silently: ``<m>_failure_rate`` reports the
  failures, ``<m>_median_rho2`` counts them as ``rho_2 = inf`` (the median
  is finite while fewer than half fail) and ``<m>_rho2`` (mean) is over the
  fooled points of ``F``. ``l2_points`` is ``|F|``.

**Statistic and trend test (fixed before looking at the results).** The
statistic is the paired difference against the matched control: for a
(model, method, sparsity ``s``) and a metric, ``d_i = v_i(s) - v_i(0)``
over the seeds ``i``, the two nets of a seed sharing their dense training
(``_sweep.paired_difference``: mean and Student-t interval over seeds). Per
(model, method) and robustness metric (FGSM, BIM and the PGD variant at
each eps, DeepFool and C&W median rho_2; clean accuracy is reported the
same way), two tests:

  (a) **moderate sparsity**: ``s*`` is the sparsity in
      ``sweep.moderate_range`` (inclusive; default [0.5, 0.9]) with the
      largest mean difference; its interval has confidence ``1 - 0.05 /
      m`` for the ``m`` candidates (Bonferroni), so it stays a 95% interval
      after choosing ``s*``. "Higher than the control" iff its lower end is
      above 0.
  (b) **over-sparsified**: the largest swept sparsity (0.99) against the
      control, 95% interval. "Lower than the control" iff its upper end is
      below 0.

The tests are per metric; nothing corrects across the metrics. Accuracies
count ``N_test`` test points (``num_test_points``), rho_2 the ``|F|``
points of each (model, seed) (``l2_points``).

Each step of each model is a resumable cell of ``awt.studies._sweep``
(``WORKDIR/cells/<model>-<step>/``). Outputs: ``sparsity_robustness.csv``
(mean ± sample std over seeds per (model, method, sparsity), ``_sweep``),
``sparsity_robustness.json`` (per-seed rows, the summary, the paired
differences, the trend tests, the C&W check),
``sparsity_robustness_paired.csv``, ``table.md``, and the figures
``plots/sparsity_robustness.png`` (means ± sample std; the matched controls are
the hollow sparsity-0 points, the dense nets the dotted lines) and
``plots/sparsity_robustness_paired.png`` (paired differences, 95% CIs).

References:
  Guo, Zhang, Zhang & Chen, *Sparse DNNs with Improved Adversarial
  Robustness*, NeurIPS 2018. Han, Pool, Tran & Dally, *Learning both
  Weights and Connections for Efficient Neural Networks*, NeurIPS 2015.
  Guo, Yao & Chen, *Dynamic Network Surgery for Efficient DNNs*, NeurIPS
  2016. Kurakin, Goodfellow & Bengio, *Adversarial Examples in the
  Physical World*, ICLR workshop 2017, Sec. 2.2 (BIM). Carlini & Wagner,
  *Towards Evaluating the Robustness of Neural Networks*, S&P 2017.
  Moosavi-Dezfooli, Fawzi & Frossard, *DeepFool*, CVPR 2016, Eq. (15).
"""

import functools
import math
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
  attacks,
  checkpoints,
  evaluation,
  experiment,
  masks,
  models,
  plots,
  pruning,
  tickets,
  training,
)
from awt import config as config_lib
from awt import data as data_lib
from awt import workdir as workdir_lib
from awt.attacks import cw as cw_lib
from awt.pruning import layer_magnitude
from awt.studies import _sweep

METHODS = ("magnitude_retrain", "dns")
KEYS = ("model", "method", "sparsity")
TABLE = "sparsity_robustness"
MINIMAL = ("deepfool", "cw_l2")
# Reference settings of cw_l2 (Carlini & Wagner's code) where the config
# gives none.
CW_C_INIT = 1e-3
CW_LEARNING_RATE = 1e-2
PyTree = Any
Path = tuple[str, ...]


# ------------------------------------------------------------------ config


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
    pruning.validate(model_config(config, m))
  for m in sw.methods:
    if m not in METHODS:
      raise ConfigError(
        f"unknown sweep.methods entry {m!r}; known: {', '.join(METHODS)}"
      )
  check = functools.partial(_sweep.check_numbers, error=ConfigError)
  check(sw.sparsities, "sweep.sparsities", lo=0.0, hi=1.0)
  if 0.0 not in [float(s) for s in sw.sparsities]:
    raise ConfigError(
      f"sweep.sparsities={tuple(sw.sparsities)!r} must include 0.0 (the "
      "matched control)"
    )
  check(sw.seeds, "sweep.seeds", integer=True)
  check(sw.linf_eps, "sweep.linf_eps", lo=0.0, lo_open=True, nonempty=False)
  for key in ("retrain_epochs", "l2_points"):
    v = sw.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
      raise ConfigError(f"sweep.{key}={v!r} must be an integer >= 0")
  v = config.pruning.get("dns_epochs")
  if isinstance(v, bool) or not isinstance(v, int) or v < 0:
    raise ConfigError(f"pruning.dns_epochs={v!r} must be an integer >= 0")
  if config.pruning.get("scope") != "layerwise":
    raise ConfigError(
      f"pruning.scope={config.pruning.get('scope')!r} must be 'layerwise': "
      "the sweep sets a density per layer"
    )
  for key in ("cw_c_init", "cw_learning_rate"):
    v = sw.get(key, 1.0)
    if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
      raise ConfigError(f"sweep.{key}={v!r} must be > 0")
  v = sw.get("output_density", 0.0)
  if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
    raise ConfigError(f"sweep.output_density={v!r} must be in [0, 1]")
  lo, hi = _moderate_range(sw)
  if not 0.0 < lo <= hi < 1.0:
    raise ConfigError(
      f"sweep.moderate_range={(lo, hi)!r} must be 0 < lo <= hi < 1"
    )
  if not [s for s in sw.sparsities if lo <= s <= hi]:
    raise ConfigError(
      f"no entry of sweep.sparsities={tuple(sw.sparsities)!r} is inside "
      f"sweep.moderate_range={(lo, hi)!r}"
    )
  pgd = sw.get("pgd", "bim10")
  if not (pgd.startswith("bim") or pgd.startswith("pgd")) or "+" in pgd:
    raise ConfigError(f"sweep.pgd={pgd!r} must be a pgd<k> or bim<k> attack")
  try:
    evaluation.parse_attack(pgd)
    evaluation.parse_minimal_attack(sw.get("deepfool", "deepfool"))
    cw = evaluation.parse_minimal_attack(sw.get("cw", "cw_l2"))
  except ValueError as e:
    raise ConfigError(f"sweep: {e}") from None
  if not str(sw.get("cw", "cw_l2")).startswith("cw_l2") or not hasattr(
    cw, "keywords"
  ):
    raise ConfigError(f"sweep.cw={sw.get('cw')!r} must be a cw_l2 attack")
  towards = sw.get("cw_towards", "max")
  if towards not in cw_lib.TOWARDS:
    raise ConfigError(
      f"sweep.cw_towards={towards!r}; known: {', '.join(cw_lib.TOWARDS)}"
    )


def _moderate_range(sweep: Mapping) -> tuple[float, float]:
  lo, hi = sweep.get("moderate_range", (0.5, 0.9))
  return float(lo), float(hi)


def model_config(config, model: str, **changes) -> ml_collections.ConfigDict:
  """An unlocked copy of ``config`` for ``model``, with dotted ``changes``.

  ``sweep.learning_rates[model]``, where given, replaces
  ``optimizer.learning_rate``. Model options the model does not take
  (``widths`` for ``linear``) are dropped.
  """
  c = ml_collections.ConfigDict(config.to_dict())
  c.model.name = model
  known = set(models.options(model)) | {"name"}
  for k in [k for k in c.model if k not in known]:
    del c.model[k]
  rates = c.get("sweep", {}).get("learning_rates") or {}
  if model in rates:
    c.optimizer.learning_rate = rates[model]
  return config_lib.replaced(c, changes)


# ----------------------------------------------------------------- attacks


def bim_schedule(eps: float) -> tuple[int, float]:
  """Kurakin et al.'s BIM steps and step size at an l_inf budget.

  Steps of one grey level, ``alpha = 1/255``, ``min(E + 4, 1.25 E)`` of
  them for ``E = 255 eps`` (Kurakin et al. 2017, Sec. 2.2), rounded up.

  Examples:
    >>> [bim_schedule(e)[0] for e in (0.02, 0.1, 0.3)]
    [7, 30, 81]
  """
  levels = 255.0 * float(eps)
  steps = math.ceil(round(min(levels + 4.0, 1.25 * levels), 9))
  return max(steps, 1), 1.0 / 255.0


def bim(eps: float) -> evaluation.AttackFn:
  """Kurakin et al.'s BIM at ``eps``: ``attack(logits_fn, x, y, keys)``.

  ``x_{t+1} = clip_{x, eps}(x_t + alpha sign(grad_x CE(x_t, y)))`` from
  ``x_0 = x`` with ``bim_schedule(eps)``, returning the last iterate
  (``attacks.pgd`` with ``random_start=False, select="last"``).
  """
  steps, alpha = bim_schedule(eps)
  return functools.partial(
    attacks.pgd,
    eps=eps,
    step_size=alpha,
    steps=steps,
    norm="linf",
    random_start=False,
    select="last",
  )


def pgd_column(name: str) -> str:
  """Column of the PGD variant: ``bim<k>`` -> ``pgd<k>_nrs``, else itself."""
  return f"pgd{name[3:]}_nrs" if name.startswith("bim") else name


def cw_attack(sweep: Mapping, **budget) -> evaluation.AttackFn:
  """``sweep.cw`` with ``sweep.cw_{c_init, learning_rate, towards}``.

  Args:
    sweep: the ``sweep`` block.
    **budget: ``binary_steps`` / ``steps`` overriding the name's.
  """
  parsed = evaluation.parse_minimal_attack(sweep.get("cw", "cw_l2"))
  return functools.partial(
    attacks.cw_l2,
    **{**parsed.keywords, **budget},
    c_init=float(sweep.get("cw_c_init", CW_C_INIT)),
    learning_rate=float(sweep.get("cw_learning_rate", CW_LEARNING_RATE)),
    towards=str(sweep.get("cw_towards", "max")),
  )


def cw_budget(sweep: Mapping) -> tuple[int, int]:
  """``(binary_steps, steps)`` of ``sweep.cw``."""
  kw = evaluation.parse_minimal_attack(sweep.get("cw", "cw_l2")).keywords
  return int(kw["binary_steps"]), int(kw["steps"])


def linf_attacks(sweep: Mapping) -> dict[str, evaluation.AttackFn]:
  """``{column: attack}``: FGSM, BIM and the PGD variant at every eps."""
  pgd = sweep.get("pgd", "bim10")
  out = {}
  for e in sweep["linf_eps"]:
    out[f"fgsm@{e:g}"] = evaluation.parse_attack("fgsm")(e, "linf")
    out[f"bim@{e:g}"] = bim(e)
    out[f"{pgd_column(pgd)}@{e:g}"] = evaluation.parse_attack(pgd)(e, "linf")
  return out


def _stack_members(variables: Sequence[dict]) -> dict:
  return jax.tree.map(lambda *xs: np.stack(xs), *variables)


def make_members_evaluator(
  apply_fn: Callable[[dict, jax.Array], jax.Array],
  *,
  attack_fns: Mapping[str, evaluation.AttackFn] | None = None,
  minimal_attacks: Mapping[str, evaluation.AttackFn] | None = None,
) -> Callable[..., dict]:
  """One jitted program evaluating S networks of one architecture at once.

  ``fn(variables, x, y, keys) -> {name: [B, S]}`` with ``variables`` stacked
  on a leading member axis ``S``: ``evaluation.make_evaluator``'s outputs
  (``"clean"``, each bounded attack, ``"<m>/l2"``, ``"<m>/fooled"``,
  ``"x_l2"``). Bounded attacks (fixed-length loops) are ``jax.vmap``-ed over
  the members; minimal attacks (``lax.while_loop`` until every example
  stops) run member after member in a ``lax.map``, so one slow member does
  not keep the others' loops going. Use with ``evaluation.per_example``.

  Args:
    apply_fn: ``(variables, x [B, H, W, C]) -> logits [B, K]`` (eval mode).
    attack_fns: ``{name: attack(logits_fn, x, y, keys)}`` bounded attacks.
    minimal_attacks: ``{name: attack}`` minimal-perturbation attacks.

  Returns:
    The jitted function, with ``attack_names`` and ``minimal_names``.
  """
  bounded = evaluation.make_evaluator(apply_fn, attack_fns=attack_fns or {})
  minimal = evaluation.make_evaluator(
    apply_fn, minimal_attacks=dict(minimal_attacks or {})
  )

  @jax.jit
  def fn(variables, x, y, keys):
    out = jax.vmap(bounded, in_axes=(0, None, None, None))(
      variables, x, y, keys
    )
    if minimal_attacks:
      more = jax.lax.map(lambda v: minimal(v, x, y, keys), variables)
      out.update({k: v for k, v in more.items() if k != "clean"})
    return {k: jnp.swapaxes(v, 0, 1) for k, v in out.items()}

  fn.attack_names = bounded.attack_names
  fn.minimal_names = minimal.minimal_names
  return fn


class Evaluators:
  """The two evaluators of a sweep: l_inf on the test set, l_2 on a subset."""

  def __init__(self, apply_fn, sweep: Mapping):
    self.linf = make_members_evaluator(apply_fn, attack_fns=linf_attacks(sweep))
    self.l2 = make_members_evaluator(
      apply_fn,
      minimal_attacks={
        "deepfool": evaluation.parse_minimal_attack(
          sweep.get("deepfool", "deepfool")
        ),
        "cw_l2": cw_attack(sweep),
      },
    )


def l2_split(split: data_lib.Split, points: int) -> data_lib.Split:
  """The first ``points`` examples of ``split`` (all of them for 0)."""
  if not points or points >= split.num_examples:
    return split
  return data_lib.Split(split.images[:points], split.labels[:points])


def evaluate_members(
  apply_fn: Callable[[dict, jax.Array], jax.Array],
  trained: Sequence[experiment.MemberResult],
  split: data_lib.Split,
  sweep: Mapping,
  *,
  batch_size: int = 500,
  key: jax.Array | None = None,
  log: Callable[[str], None] | None = None,
  evaluators: Evaluators | None = None,
) -> tuple[list[dict], dict[str, dict]]:
  """Clean/FGSM/BIM/PGD accuracies and DeepFool/C&W distances, vectorized.

  Args:
    apply_fn: the eval-mode apply of their (shared) architecture.
    trained: ``train_members`` results.
    split: the test data.
    sweep: ``config.sweep`` (``linf_eps``, ``pgd``, ``deepfool``, ``cw``,
      ``cw_c_init``, ``cw_learning_rate``, ``l2_points``).
    batch_size: test examples per compiled call.
    key: PRNG key of the attacks (example ``i`` uses ``fold_in(key, i)``).
    log: progress callback.
    evaluators: ``Evaluators(apply_fn, sweep)`` to reuse (they compile once
      per number of networks); built if None.

  Returns:
    ``(rows, per_example)``: one flat row per network (``name``, ``seed``,
    ``sparsity_actual``, ``mask_report``'s fields, ``clean_accuracy``, one
    robust accuracy per ``linf_attacks`` column, ``num_test_points``) and,
    per network name, the per-example l_2 outputs on the first
    ``sweep.l2_points`` test points as lists: ``clean`` (bool), ``x_l2``,
    ``<m>/l2`` and ``<m>/fooled`` for ``deepfool`` and ``cw_l2``.
  """
  ev = evaluators or Evaluators(apply_fn, sweep)
  key = jax.random.PRNGKey(0) if key is None else key
  variables = _stack_members(
    [training.model_variables(t.params, t.batch_stats) for t in trained]
  )
  label = f"evaluating {len(trained)} networks"
  out = evaluation.per_example(
    ev.linf,
    variables,
    split,
    batch_size=batch_size,
    key=key,
    log=log,
    label=f"{label} (l_inf):",
  )
  small = l2_split(split, int(sweep.get("l2_points", 0)))
  out_l2 = evaluation.per_example(
    ev.l2,
    variables,
    small,
    batch_size=batch_size,
    key=key,
    log=log,
    label=f"{label} (l_2):",
  )
  n = split.num_examples
  rows, per_example = [], {}
  for i, t in enumerate(trained):
    row = {
      "name": t.name,
      "seed": t.results.get("seed"),
      "sparsity_actual": masks.sparsity(t.mask),
      **layer_magnitude.mask_report(t.mask),
      "clean_accuracy": float(np.mean(out["clean"][:, i])),
      "num_test_points": n,
    }
    for a in ev.linf.attack_names:
      row[a] = float(np.sum(out[a][:, i]) / n)
    rows.append(row)
    per = {"clean": out_l2["clean"][:, i], "x_l2": out_l2["x_l2"][:, i]}
    for m in ev.l2.minimal_names:
      per[f"{m}/l2"] = out_l2[f"{m}/l2"][:, i]
      per[f"{m}/fooled"] = out_l2[f"{m}/fooled"][:, i]
    per_example[t.name] = {k: np.asarray(v).tolist() for k, v in per.items()}
  return rows, per_example


def rho2_stats(per: Mapping[str, Sequence], points: np.ndarray) -> dict:
  """rho_2 of each minimal attack over a fixed set of points.

  Args:
    per: one network's ``evaluate_members`` per-example outputs.
    points: ``[N]`` bool, the fixed set ``F`` (points every compared
      network classifies correctly).

  Returns:
    For ``m`` in ``deepfool``, ``cw_l2``: ``<m>_rho2`` (mean over the points
    of ``F`` the attack fooled), ``<m>_median_rho2`` (median over ``F``,
    a failure counted as ``inf``; None if half or more failed),
    ``<m>_failure_rate`` and ``<m>_mean_l2``; ``l2_points`` (``|F|``).

  Examples:
    >>> per = {"x_l2": [2.0, 2.0, 2.0], "deepfool/l2": [1.0, 2.0, 9.0],
    ...        "deepfool/fooled": [True, True, False],
    ...        "cw_l2/l2": [0.5, 1.0, 0.0], "cw_l2/fooled": [True] * 3}
    >>> s = rho2_stats(per, np.array([True, True, True]))
    >>> s["deepfool_rho2"], s["deepfool_median_rho2"], s["cw_l2_rho2"]
    (0.75, 1.0, 0.25)
    >>> round(s["deepfool_failure_rate"], 4)
    0.3333
  """
  points = np.asarray(points, bool)
  x_l2 = np.asarray(per["x_l2"], np.float64)[points]
  out = {"l2_points": int(points.sum())}
  for m in MINIMAL:
    l2 = np.asarray(per[f"{m}/l2"], np.float64)[points]
    fooled = np.asarray(per[f"{m}/fooled"], bool)[points]
    rho = np.where(fooled, l2 / np.maximum(x_l2, 1e-12), np.inf)
    n = rho.size
    median = float(np.median(rho)) if n else None
    out[f"{m}_rho2"] = float(np.mean(rho[fooled])) if fooled.any() else None
    out[f"{m}_median_rho2"] = median if median != np.inf else None
    out[f"{m}_failure_rate"] = float(1.0 - fooled.mean()) if n else None
    out[f"{m}_mean_l2"] = float(np.mean(l2[fooled])) if fooled.any() else None
  return out


# ------------------------------------------------------------------- cells


def _member_name(sparsity: float, seed: int) -> str:
  return f"s{sparsity:g}-seed{seed}"


def _dense_members(seeds) -> list[experiment.Member]:
  return [experiment.Member(f"seed{s}", int(s)) for s in seeds]


def _epochs(results: Mapping, steps_per_epoch: int) -> int:
  return int(results["steps"]) // steps_per_epoch


class _Model:
  """The cells of one model: dense, cw_check, magnitude_retrain, dns."""

  def __init__(self, config, name: str, dataset, workdir: str, log):
    self.config = config
    self.workdir = workdir
    self.name = name
    self.sweep = config.sweep
    self.dataset = dataset
    self.log = log
    self.seeds = [int(s) for s in self.sweep.seeds]
    self.sparsities = sorted(float(s) for s in self.sweep.sparsities)
    self.output_density = float(self.sweep.get("output_density", 0.0))
    # Training calls evaluate clean accuracy only; the attacks run here.
    self.dense_config = model_config(
      config, name, **{"pruning.method": "dense", "pruning.sparsity": 0.0}
    )
    self.dense_config.eval.attacks = ()
    self.eval_model = config_lib.build_model(self.dense_config, dataset.info)
    self.eval_apply = lambda v, x: self.eval_model.apply(v, x, train=False)
    self.steps_per_epoch = data_lib.steps_per_epoch(
      dataset.train.num_examples, int(config.batch_size)
    )
    self._evaluators = None

  @property
  def evaluators(self) -> Evaluators:
    # One pair for all cells: cells with as many networks share the
    # compilation (the two method cells of a model have the same count).
    if self._evaluators is None:
      self._evaluators = Evaluators(self.eval_apply, self.sweep)
    return self._evaluators

  def cells(self) -> list[_sweep.Cell]:
    cells = [_sweep.Cell(f"{self.name}-dense", self.dense)]
    if self.sweep.get("cw_check", False):
      cells.append(_sweep.Cell(f"{self.name}-cw_check", self.cw_check))
    for method in self.sweep.methods:
      cells.append(_sweep.Cell(f"{self.name}-{method}", getattr(self, method)))
    return cells

  def _evaluate(self, trained, method, sparsity_of, epochs) -> dict:
    rows, per_example = evaluate_members(
      self.eval_apply,
      trained,
      self.dataset.test,
      self.sweep,
      batch_size=self.config.eval.batch_size,
      log=self.log,
      evaluators=self.evaluators,
    )
    for t, r in zip(trained, rows, strict=True):
      r.update(model=self.name, method=method, sparsity=sparsity_of(t.name))
      r.update(epochs[t.name])
      r["epochs_total"] = sum(
        v for k, v in epochs[t.name].items() if k.startswith("epochs_")
      )
      r["steps_total"] = r["epochs_total"] * self.steps_per_epoch
    return {"rows": rows, "per_example": per_example}

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
        {"seed": m.seed, "steps": int(np.asarray(run["step"]))},
        take(run["variables"]["params"]),
        take(run["variables"].get("batch_stats", {})),
        take(run["mask"]),
      )
    return out

  def dense(self, path, done) -> dict:
    del path, done
    trained = experiment.train_members(
      self.dense_config,
      self._dense_dir(),
      _dense_members(self.seeds),
      log=self.log,
    )
    epochs = {
      t.name: {
        "epochs_dense": _epochs(t.results, self.steps_per_epoch),
        "epochs_surgery": 0,
        "epochs_retrain": 0,
      }
      for t in trained
    }
    return self._evaluate(trained, "dense", lambda _: 0.0, epochs)

  def cw_check(self, path, done) -> dict:
    """C&W at its budget, twice the steps and twice the binary steps."""
    del path, done
    dense = self._trained_dense()[self.seeds[0]]
    variables = _stack_members(
      [training.model_variables(dense.params, dense.batch_stats)]
    )
    small = l2_split(self.dataset.test, int(self.sweep.get("l2_points", 0)))
    b, s = cw_budget(self.sweep)
    out = {"seed": self.seeds[0], "budgets": []}
    for scale in ((1, 1), (1, 2), (2, 1)):
      t0 = time.perf_counter()
      fn = make_members_evaluator(
        self.eval_apply,
        minimal_attacks={
          "cw_l2": cw_attack(
            self.sweep, binary_steps=b * scale[0], steps=s * scale[1]
          )
        },
      )
      got = evaluation.per_example(
        fn,
        variables,
        small,
        batch_size=self.config.eval.batch_size,
        key=jax.random.PRNGKey(0),
      )
      clean = got["clean"][:, 0]
      fooled = got["cw_l2/fooled"][:, 0]
      rho = np.where(fooled, got["cw_l2/l2"][:, 0] / got["x_l2"][:, 0], np.inf)
      median = float(np.median(rho[clean])) if clean.any() else np.inf
      out["budgets"].append(
        {
          "cw": f"cw_l2-{b * scale[0]}x{s * scale[1]}",
          "median_rho2": median if np.isfinite(median) else None,
          "failure_rate": float(1.0 - fooled[clean].mean())
          if clean.any()
          else None,
          "points": int(clean.sum()),
          "seconds": time.perf_counter() - t0,
        }
      )
    base = out["budgets"][0]["median_rho2"]
    for entry in out["budgets"][1:]:
      m = entry["median_rho2"]
      entry["relative_change"] = m / base - 1.0 if m and base else None
    changes = [e["relative_change"] for e in out["budgets"][1:]]
    worst = None if None in changes else max(abs(c) for c in changes)
    out["max_relative_change"] = worst
    out["converged"] = worst is not None and worst < 0.01
    self.log(f"C&W check: {format_cw_check({self.name: out})}")
    return out

  def _retrain(self, path, method, members, sparsity_of, epochs) -> dict:
    retrain_config = model_config(
      self.dense_config,
      self.name,
      num_epochs=int(self.sweep.retrain_epochs),
      **{"pruning.method": "magnitude" if method != "dns" else "dns"},
    )
    trained = experiment.train_members(
      retrain_config, os.path.join(path, "train"), members, log=self.log
    )
    for t in trained:
      epochs[t.name]["epochs_retrain"] = _epochs(
        t.results, self.steps_per_epoch
      )
    return self._evaluate(trained, method, sparsity_of, epochs)

  def _paths(self, params) -> tuple[Path, ...]:
    return masks.prunable_paths(params)

  def magnitude_retrain(self, path, done) -> dict:
    del done  # the dense runs are reloaded from their checkpoints
    dense = self._trained_dense()
    members, sparsity_of, epochs = [], {}, {}
    for sp in self.sparsities:
      for seed in self.seeds:
        d = dense[seed]
        initial = self._prune(
          d,
          seed,
          method="layer_magnitude",
          sparsity=sp,
          scope="layerwise",
          output_density=self.output_density,
        )
        name = _member_name(sp, seed)
        sparsity_of[name] = sp
        epochs[name] = {
          "epochs_dense": _epochs(d.results, self.steps_per_epoch),
          "epochs_surgery": 0,
        }
        members.append(experiment.Member(name, seed, initial))
    return self._retrain(
      path, "magnitude_retrain", members, sparsity_of.__getitem__, epochs
    )

  def dns(self, path, done) -> dict:
    del done  # the dense runs are reloaded from their checkpoints
    dense = self._trained_dense()
    members, sparsity_of, costs, epochs = [], {}, {}, {}
    todo = len(self.sparsities) * len(self.seeds)
    t0, found = time.perf_counter(), 0
    for sp in self.sparsities:
      for seed in self.seeds:
        name = _member_name(sp, seed)
        ticket = self._dns_ticket(
          os.path.join(path, "tickets", name), dense[seed], sp, seed
        )
        found += 1
        rate = found / max(time.perf_counter() - t0, 1e-9)
        self.log(
          f"dns ticket {found}/{todo} ({name}): sparsity "
          f"{ticket.info['sparsity']:.4f}; {rate * 60:.1f}/min, ETA "
          f"{workdir_lib.fmt_duration((todo - found) / rate)}"
        )
        costs[name] = {
          k: ticket.info[k]
          for k in ("passes", "wall_time_s", "mask_updates", "spliced")
        }
        sparsity_of[name] = sp
        epochs[name] = {
          "epochs_dense": _epochs(dense[seed].results, self.steps_per_epoch),
          "epochs_surgery": int(ticket.info["dns_epochs"]),
        }
        members.append(experiment.Member(name, seed, ticket))
    out = self._retrain(path, "dns", members, sparsity_of.__getitem__, epochs)
    for r in out["rows"]:
      r["find_passes"] = costs[r["name"]]["passes"]
      r["find_wall_time_s"] = costs[r["name"]]["wall_time_s"]
    return out

  def _prune(self, trained, seed, *, workdir=None, **options) -> masks.Ticket:
    """``tickets.find`` of ``pruning.<options>`` from a trained dense run."""
    config = model_config(
      self.dense_config,
      self.name,
      seed=seed,
      **{f"pruning.{k}": v for k, v in options.items()},
    )
    start = masks.Ticket(
      mask=masks.ones(trained.params),
      params=trained.params,
      batch_stats=trained.batch_stats,
    )
    return tickets.find(
      config,
      workdir=workdir,
      setup=tickets.Setup(self.dataset, self.eval_model),
      start=start,
      measure_ntk=False,
      log=_sweep.every(self.log, 60, f"{options['method']} seed {seed}: "),
    )

  def _dns_ticket(self, ticket_dir, dense, sparsity, seed) -> masks.Ticket:
    """DNS from the trained dense net, saved so a restart reuses it.

    Surgery prunes the hidden layers (``keep_last`` for a multi-layer net);
    the output layer is then pruned by magnitude to its ``layer_plan``
    density and ``connect_classes`` runs, as for magnitude pruning.
    """
    paths = self._paths(dense.params)
    ticket = self._prune(
      dense,
      seed,
      workdir=ticket_dir,
      method="dns",
      sparsity=sparsity,
      pretrain_epochs=0,
      keep_last=len(paths) > 1,
    )
    mask = jax.device_get(self._finish_dns_mask(ticket.arrays(), sparsity))
    return ticket.replace(
      mask=mask,
      params=jax.tree.map(lambda w, m: w * m, ticket.params, mask),
      info={
        **ticket.info,
        "surgery_sparsity": masks.sparsity(ticket.mask),
        "sparsity": masks.sparsity(mask),
      },
    )

  def _finish_dns_mask(self, tree, sparsity) -> PyTree:
    """The output layer to its planned density, then connected classes."""
    params, mask = tree["params"], tree["mask"]
    paths = self._paths(params)
    plan = layer_magnitude.layer_plan(paths, sparsity, self.output_density)
    head = paths[-1]
    if len(paths) > 1 and plan[head] < 1.0:
      w = jnp.abs(jnp.asarray(masks._get(params, head)))
      kept = layer_magnitude.keep_top(w, masks.num_to_keep(w.size, plan[head]))
      mask = layer_magnitude.replace_layer(mask, head, kept)
    return layer_magnitude.connect_classes(params, mask, paths)


# ---------------------------------------------------------------- the run


def run_sweep(
  config, workdir: str, *, log: Callable[[str], None] = logging.info
) -> dict:
  """Runs (or resumes) the sweep and writes its tables and figures.

  Args:
    config: a ``ConfigDict`` like ``experiments/configs/sparsity_robustness``:
      the run schema plus ``sweep.{models, methods, sparsities, seeds,
      retrain_epochs, output_density, linf_eps, pgd, deepfool, cw,
      cw_c_init, cw_learning_rate, cw_towards, cw_check, l2_points,
      moderate_range}``
      and ``pruning.dns_epochs``.
    workdir: output directory; finished cells in it are reused.
    log: receives progress lines.

  Returns:
    ``{"rows": per-seed rows, "summary": aggregate over seeds (mean, std,
    values per metric) per (model, method, sparsity), "paired": paired
    differences against the matched control, "trend_tests", "cw_check",
    "csv", "json", "paired_csv", "table", "plot", "paired_plot": paths}``.

  Raises:
    ConfigError: a bad config value, before any compute.
  """
  validate(config)
  start = time.perf_counter()
  workdir = os.path.abspath(workdir)
  workdir_lib.prepare(workdir)
  _sweep.check_config(workdir, config.to_dict())
  dataset = config_lib.load_data(config)
  cells = []
  for m in config.sweep.models:
    cells += _Model(config, m, dataset, workdir, log).cells()
  done = _sweep.run_cells(workdir, cells, log=log)
  rows = fixed_set_rows(
    [r for res in done.values() for r in res.get("rows", [])],
    _per_example_by_model(done),
  )
  order = {m: i for i, m in enumerate(config.sweep.models)}
  methods = {"dense": -1, **{m: i for i, m in enumerate(METHODS)}}
  rows.sort(
    key=lambda r: (
      order[r["model"]],
      methods[r["method"]],
      r["sparsity"],
      r["seed"],
    )
  )
  summary = _sweep.aggregate(rows, KEYS)
  paired = paired_differences(rows, metrics(config.sweep))
  tests = trend_tests(paired, config.sweep)
  cw_check = {
    m: done[f"{m}-cw_check"]
    for m in config.sweep.models
    if f"{m}-cw_check" in done
  }
  paths = {
    "csv": os.path.join(workdir, f"{TABLE}.csv"),
    "json": os.path.join(workdir, f"{TABLE}.json"),
    "paired_csv": os.path.join(workdir, f"{TABLE}_paired.csv"),
    "table": os.path.join(workdir, "table.md"),
    "plot": os.path.join(workdir, "plots", f"{TABLE}.png"),
    "paired_plot": os.path.join(workdir, "plots", f"{TABLE}_paired.png"),
  }
  _sweep.write_csv(
    paths["csv"],
    summary,
    KEYS,
    first=[m for m, _ in panels(config.sweep)],
  )
  _write_paired_csv(paths["paired_csv"], paired)
  _sweep.write_table_json(
    paths["json"],
    rows,
    summary,
    paired=paired,
    trend_tests=tests,
    cw_check=cw_check,
    note=(
      "sparsity 0 of magnitude_retrain and dns is each method's matched "
      "control (same epochs, nothing pruned); method dense is the trained "
      "starting point, not a control"
    ),
  )
  out = {
    "rows": rows,
    "summary": summary,
    "paired": paired,
    "trend_tests": tests,
    "cw_check": cw_check,
    **paths,
  }
  workdir_lib.write_text(paths["table"], format_report(out, config) + "\n")
  title = _title(config, dataset)
  plot(summary, paths["plot"], config.sweep, title=title)
  plot_paired(paired, paths["paired_plot"], config.sweep, title=title)
  log(
    f"sweep done in {time.perf_counter() - start:.1f}s: "
    f"{paths['csv']}, {paths['table']}, {paths['plot']}"
  )
  return out


def _network(row: Mapping) -> tuple[str, str, str]:
  """``(model, method, name)``: a network of the sweep (names repeat
  across the method cells)."""
  return row["model"], row["method"], row["name"]


def _per_example_by_model(done: Mapping[str, dict]) -> dict:
  """``{(model, method, name): per_example}`` over the cells with nets."""
  out = {}
  for res in done.values():
    nets = {r["name"]: _network(r) for r in res.get("rows", [])}
    for name, per in res.get("per_example", {}).items():
      out[nets[name]] = per
  return out


def fixed_set_rows(
  rows: Sequence[Mapping], per_example: Mapping[tuple, Mapping]
) -> list[dict]:
  """Rows with ``rho2_stats`` over each (model, seed)'s fixed set.

  The fixed set of a (model, seed) is the l_2 test points every network of
  that model and seed classifies correctly.

  Args:
    rows: ``evaluate_members`` rows with ``model``, ``method``, ``name``
      and ``seed``.
    per_example: ``{(model, method, name): per-example outputs}``.

  Returns:
    New rows, each with its ``rho2_stats``.
  """
  fixed: dict[tuple, np.ndarray] = {}
  for r in rows:
    clean = np.asarray(per_example[_network(r)]["clean"], bool)
    key = (r["model"], r["seed"])
    fixed[key] = fixed[key] & clean if key in fixed else clean
  return [
    {
      **r,
      **rho2_stats(per_example[_network(r)], fixed[(r["model"], r["seed"])]),
    }
    for r in rows
  ]


# ------------------------------------------------------------- statistics


def metrics(sweep: Mapping) -> list[str]:
  """The compared metrics: clean accuracy, then the robustness metrics."""
  return [m for m, _ in panels(sweep)]


def robustness_metrics(sweep: Mapping) -> list[str]:
  """The metrics the trend test reads (all but clean accuracy)."""
  return metrics(sweep)[1:]


def paired_differences(
  rows: Sequence[Mapping], metric_names: Sequence[str], *, confidence=0.95
) -> list[dict]:
  """Per-seed differences against the matched control (same method, s=0).

  Args:
    rows: per-seed rows (``model``, ``method``, ``sparsity``, ``seed``).
    metric_names: the fields to compare.
    confidence: the intervals' coverage.

  Returns:
    One dict per (model, method, sparsity > 0, metric) of the methods that
    have a sparsity-0 row: ``model``, ``method``, ``sparsity``, ``metric``
    and ``_sweep.paired_by_seed``'s ``mean``, ``lo``, ``hi``, ``std`` (the
    sample std of the differences), ``n``, ``values``, plus ``control`` (the
    control's mean) and ``seeds``.

  Examples:
    >>> rows = [{"model": "m", "method": "a", "sparsity": s, "seed": i,
    ...          "acc": 0.5 + s * 0.1 + 0.01 * i}
    ...         for s in (0.0, 0.5) for i in range(3)]
    >>> [round(d["mean"], 6) for d in paired_differences(rows, ["acc"])]
    [0.05]
  """
  by_key: dict[tuple, dict] = {}
  for r in rows:
    key = (r["model"], r["method"], float(r["sparsity"]))
    by_key.setdefault(key, {})[r["seed"]] = r
  out = []
  for (model, method, sp), group in by_key.items():
    control = by_key.get((model, method, 0.0))
    if sp == 0.0 or control is None or method == "dense":
      continue
    seeds = [s for s in group if s in control]
    for m in metric_names:
      a = {s: group[s].get(m) for s in seeds}
      b = {s: control[s].get(m) for s in seeds}
      d = _sweep.paired_by_seed(a, b, confidence=confidence)
      if d is None:
        continue
      ctrl = [float(v) for v in b.values() if v is not None]
      out.append(
        {
          "model": model,
          "method": method,
          "sparsity": sp,
          "metric": m,
          "control": float(np.mean(ctrl)) if ctrl else None,
          "seeds": seeds,
          **d,
        }
      )
  return out


def trend_tests(paired: Sequence[Mapping], sweep: Mapping) -> list[dict]:
  """The module docstring's tests (a) and (b) per (model, method, metric).

  Args:
    paired: ``paired_differences`` at 95%; (a) is recomputed from its
      ``values`` at the Bonferroni level.
    sweep: the ``sweep`` block (``moderate_range``, ``sparsities``).

  Returns:
    One dict per (model, method, robustness metric): ``model``,
    ``method``, ``metric``, ``moderate`` (``sparsity``, ``candidates``,
    ``confidence``, ``mean``, ``lo``, ``hi``, ``n``, ``verdict``) and
    ``sparsest`` (``sparsity``, ``mean``, ``lo``, ``hi``, ``n``,
    ``verdict``); a verdict is ``"higher"``/``"lower"`` when the interval
    excludes 0 on that side, else ``"no difference detected"``.
  """
  lo_m, hi_m = _moderate_range(sweep)
  sparsest = max(float(s) for s in sweep["sparsities"])
  wanted = set(robustness_metrics(sweep))
  curves: dict[tuple, dict[float, Mapping]] = {}
  for d in paired:
    if d["metric"] in wanted:
      key = (d["model"], d["method"], d["metric"])
      curves.setdefault(key, {})[d["sparsity"]] = d
  out = []
  for (model, method, metric), by_sp in curves.items():
    cand = {s: d for s, d in by_sp.items() if lo_m <= s <= hi_m}
    test = {"model": model, "method": method, "metric": metric}
    if cand:
      best = max(cand, key=lambda s: cand[s]["mean"])
      conf = 1.0 - 0.05 / len(cand)
      d = cand[best]
      ci = _sweep.paired_difference(
        d["values"], [0.0] * len(d["values"]), confidence=conf
      )
      test["moderate"] = {
        "sparsity": best,
        "candidates": sorted(cand),
        "confidence": conf,
        **{k: ci[k] for k in ("mean", "lo", "hi", "n")},
        "verdict": _verdict(ci),
      }
    if sparsest in by_sp:
      d = by_sp[sparsest]
      test["sparsest"] = {
        "sparsity": sparsest,
        "confidence": 0.95,
        **{k: d[k] for k in ("mean", "lo", "hi", "n")},
        "verdict": _verdict(d),
      }
    out.append(test)
  return out


def _verdict(ci: Mapping) -> str:
  if ci.get("lo") is not None and ci["lo"] > 0:
    return "higher"
  if ci.get("hi") is not None and ci["hi"] < 0:
    return "lower"
  return "no difference detected"


def _write_paired_csv(path: str, paired: Sequence[Mapping]) -> None:
  """One line per paired difference; ``sample_std``: of the differences."""
  cols = ["model", "method", "sparsity", "metric", "control", "mean", "lo"]
  cols += ["hi", "std", "n"]
  _sweep.write_rows_csv(
    path,
    [c if c != "std" else "sample_std" for c in cols],
    [["" if d.get(c) is None else d[c] for c in cols] for d in paired],
  )


# ----------------------------------------------------------------- reports


def _title(config, dataset) -> str:
  method = config.adversarial.method
  training_name = "natural" if method == "none" else method
  return (
    f"{config.data.name} ({dataset.test.num_examples} test points), "
    f"{training_name} training, {len(config.sweep.seeds)} seeds"
  )


def panels(sweep: Mapping) -> list[tuple[str, str]]:
  """``(metric, panel title)`` of the figures and tables, in order."""
  pgd = sweep.get("pgd", "bim10")
  col = pgd_column(pgd)
  k = "".join(ch for ch in pgd if ch.isdigit())
  what = (
    f"PGD-{k} from x, best iterate"
    if pgd.startswith("bim")
    else f"PGD-{k}, random start, best iterate"
  )
  out = [("clean_accuracy", "clean accuracy")]
  for e in sweep["linf_eps"]:
    out.append((f"fgsm@{e:g}", f"FGSM accuracy, l_inf {e:g}"))
    steps = bim_schedule(e)[0]
    out.append((f"bim@{e:g}", f"BIM ({steps}x1/255, last) accuracy, {e:g}"))
    out.append((f"{col}@{e:g}", f"{what} accuracy, {e:g}"))
  out.append(("deepfool_median_rho2", "DeepFool median rho_2 (fixed set)"))
  out.append(("cw_l2_median_rho2", "C&W-l2 median rho_2 (fixed set)"))
  return out


def _fmt(metric: str, v) -> str:
  if v is None:
    return "—"
  if "rho2" in metric:
    return f"{v:.4f}"
  return f"{100 * v:.1f}"


def format_table(summary: Sequence[Mapping], sweep: Mapping) -> str:
  """Markdown table of the means ± sample std over seeds (``_sweep.aggregate``;
  percent for accuracies)."""
  cols = panels(sweep)
  head = ["model", "method", "sparsity", *(m for m, _ in cols)]
  head += ["deepfool_failure_rate", "cw_l2_failure_rate", "l2_points"]
  rows = []
  for g in summary:
    label = g["method"]
    if g["method"] != "dense" and g["sparsity"] == 0:
      label += " (control)"
    cells = [g["model"], label, f"{g['sparsity']:g}"]
    for m in head[3:]:
      s = g.get(m)
      if not s or s["mean"] is None:
        cells.append("—")
      elif m == "l2_points":
        cells.append(f"{s['mean']:.0f}")
      else:
        cells.append(_sweep.fmt_mean_std(s, functools.partial(_fmt, m)))
    rows.append(cells)
  return "\n".join(_sweep.table_lines(head, rows))


def format_densities(summary: Sequence[Mapping]) -> str:
  """Markdown table of every model's per-layer densities (mean over seeds)."""
  layers = [m for m in _sweep.metric_names(summary) if m.startswith("density/")]
  by_model: dict[str, list[str]] = {}
  for g in summary:
    by_model.setdefault(g["model"], [])
    for m in layers:
      if m in g and m not in by_model[g["model"]]:
        by_model[g["model"]].append(m)
  lines = []
  for model, cols in by_model.items():
    head = ["model", "method", "sparsity", "actual", *cols]
    head += ["dead_classes", "empty_layers"]
    rows = []
    for g in summary:
      if g["model"] != model:
        continue
      cells = [model, g["method"], f"{g['sparsity']:g}"]
      cells.append(f"{g['sparsity_actual']['mean']:.4f}")
      cells += [f"{g[m]['mean']:.4f}" if m in g else "—" for m in cols]
      cells += [f"{g[m]['mean']:g}" for m in ("dead_classes", "empty_layers")]
      rows.append(cells)
    lines += [*_sweep.table_lines(head, rows), ""]
  return "\n".join(lines).rstrip()


def format_trend_tests(tests: Sequence[Mapping]) -> str:
  """Markdown table of the trend tests (differences in points / rho_2)."""
  head = ["model", "method", "metric", "(a) s*", "(a) diff [CI]", "(a)"]
  head += ["(b) s", "(b) diff [95% CI]", "(b)"]
  rows = []

  def ci(metric, d):
    scale = 1.0 if "rho2" in metric else 100.0
    text = _sweep.fmt_interval(d, lambda v: f"{scale * v:+.2f}")
    return text if d.get("lo") is not None else f"{text} (n={d['n']})"

  for t in tests:
    cells = [t["model"], t["method"], t["metric"]]
    a, b = t.get("moderate"), t.get("sparsest")
    if a:
      cells += [
        f"{a['sparsity']:g}",
        f"{ci(t['metric'], a)} ({100 * a['confidence']:.1f}%)",
        a["verdict"],
      ]
    else:
      cells += ["—"] * 3
    if b:
      cells += [f"{b['sparsity']:g}", ci(t["metric"], b), b["verdict"]]
    else:
      cells += ["—"] * 3
    rows.append(cells)
  return "\n".join(_sweep.table_lines(head, rows))


def format_cw_check(cw_check: Mapping[str, Mapping]) -> str:
  """One line per model: C&W's median rho_2 at its budget and doubled."""
  lines = []
  for model, c in cw_check.items():
    parts = ", ".join(
      f"{e['cw']} "
      + ("—" if e["median_rho2"] is None else f"{e['median_rho2']:.5f}")
      + (
        f" ({100 * e['relative_change']:+.2f}%)"
        if e.get("relative_change") is not None
        else ""
      )
      for e in c["budgets"]
    )
    lines.append(
      f"{model}, seed {c['seed']} dense net, "
      f"{c['budgets'][0]['points']} points: median rho_2 {parts}; "
      f"converged (< 1%): {'yes' if c['converged'] else 'NO'}"
    )
  return "\n".join(lines)


def format_report(out: Mapping, config) -> str:
  """``table.md``: means, per-layer densities, trend tests, C&W check."""
  sw = config.sweep
  n_test = {r.get("num_test_points") for r in out["rows"]}
  parts = [
    f"{_sweep.statistic_note(out['summary']).capitalize()} (accuracies in "
    "%). Sparsity 0 of each method is its matched control; `dense` is the "
    "trained starting point.",
    "",
    format_table(out["summary"], sw),
    "",
    "Per-layer densities (fraction of weights kept):",
    "",
    format_densities(out["summary"]),
    "",
    "Trend tests against the matched control (paired over "
    f"{len(sw.seeds)} seeds; accuracy differences in points on "
    f"{', '.join(map(str, sorted(n_test)))} test points, rho_2 on each "
    "(model, seed)'s fixed set, `l2_points`):",
    "",
    format_trend_tests(out["trend_tests"]),
  ]
  if out.get("cw_check"):
    parts += ["", "C&W convergence:", "", format_cw_check(out["cw_check"])]
  return "\n".join(parts)


def _curves(summary: Sequence[Mapping]) -> dict[tuple, list]:
  lines: dict[tuple, list] = {}
  for g in summary:
    lines.setdefault((g["model"], g["method"]), []).append(g)
  return lines


def plot(
  summary: Sequence[Mapping], path: str, sweep: Mapping, title: str = ""
) -> None:
  """Every metric vs sparsity, a line per (model, method); error bars: the
  sample std over seeds.

  Sparsities are placed at equal spacing (labelled; not to scale). The
  sparsity-0 point of each method (hollow marker) is its matched control;
  the dotted line is the dense net before retraining or surgery.
  """
  fig, axes, cols, sparsities = _grid(summary, sweep)
  pos = {s: i for i, s in enumerate(sparsities)}
  curves = _curves(summary)
  colors = {}
  for ax, (metric, name) in zip(axes.ravel(), cols, strict=False):
    for (model, method), groups in curves.items():
      pts = [
        (pos[float(g["sparsity"])], g[metric]["mean"], g[metric]["std"])
        for g in groups
        if g.get(metric) and g[metric]["mean"] is not None
      ]
      if not pts:
        continue
      if method == "dense":
        ax.axhline(
          pts[0][1],
          ls=":",
          lw=1.0,
          color=colors.get(model, "0.4"),
          label=f"{model} / dense (before retraining)",
        )
        continue
      x, y, e = zip(*sorted(pts), strict=True)
      line = ax.errorbar(x, y, yerr=e, **_style(model, method))
      colors.setdefault(model, line[0].get_color())
      if x[0] == 0:
        ax.plot(
          x[0],
          y[0],
          marker="o",
          ms=8,
          mfc="none",
          color=line[0].get_color(),
        )
    ax.set_title(name, fontsize=8)
    _sparsity_axis(ax, sparsities, "0: matched control; not to scale")
  _finish(
    fig, axes, len(cols), f"{title} (error bars: sample std over seeds)", path
  )


def _style(model: str, method: str) -> dict:
  """``errorbar`` style of a (model, method) curve, the same in both plots."""
  return {
    "marker": "o" if model != "linear" else "s",
    "ls": "-" if method != "dns" else "--",
    "ms": 3.5,
    "lw": 1.2,
    "capsize": 2,
    "label": f"{model} / {method}",
  }


def _grid(rows: Sequence[Mapping], sweep: Mapping):
  """``(fig, axes [nrow, 4], panels(sweep), sorted sparsities of rows)``."""
  cols = panels(sweep)
  ncol = 4
  nrow = -(-len(cols) // ncol)
  fig, axes = plots.pyplot().subplots(
    nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False
  )
  return fig, axes, cols, sorted({float(r["sparsity"]) for r in rows})


def _sparsity_axis(ax, sparsities: Sequence[float], note: str) -> None:
  """Evenly spaced sparsity ticks (in %) on ``ax``'s x axis, and a grid."""
  ax.set_xticks(range(len(sparsities)))
  ax.set_xticklabels([f"{100 * s:g}" for s in sparsities], fontsize=7)
  ax.set_xlabel(f"sparsity % ({note})", fontsize=7)
  ax.grid(alpha=0.3)


def _finish(fig, axes, used: int, suptitle: str, path: str) -> None:
  """Hides the unused panels, adds the legend and title, saves ``path``."""
  for ax in axes.ravel()[used:]:
    ax.axis("off")
  if axes.ravel()[0].has_data():
    axes.ravel()[0].legend(fontsize=6, loc="lower left")
  fig.suptitle(suptitle)
  plots.save(fig, path)


def plot_paired(
  paired: Sequence[Mapping], path: str, sweep: Mapping, title: str = ""
) -> None:
  """Paired differences against the matched control, 95% t-intervals."""
  fig, axes, cols, sparsities = _grid(paired, sweep)
  pos = {s: i for i, s in enumerate(sparsities)}
  curves: dict[tuple, list] = {}
  for d in paired:
    curves.setdefault((d["model"], d["method"], d["metric"]), []).append(d)
  keys = sorted({(m, me) for m, me, _ in curves})
  for ax, (metric, name) in zip(axes.ravel(), cols, strict=False):
    scale = 1.0 if "rho2" in metric else 100.0
    for j, (model, method) in enumerate(keys):
      pts = sorted(
        curves.get((model, method, metric), []), key=lambda d: d["sparsity"]
      )
      if not pts:
        continue
      shift = (j - (len(keys) - 1) / 2) * 0.08
      x = [pos[d["sparsity"]] + shift for d in pts]
      y = [scale * d["mean"] for d in pts]
      lo = [scale * (d["mean"] - (d["lo"] or d["mean"])) for d in pts]
      hi = [scale * ((d["hi"] or d["mean"]) - d["mean"]) for d in pts]
      ax.errorbar(x, y, yerr=[lo, hi], **_style(model, method))
    ax.axhline(0.0, color="k", lw=0.8)
    unit = "" if "rho2" in metric else " (points)"
    ax.set_title(f"{name}: minus control{unit}", fontsize=8)
    _sparsity_axis(ax, sparsities, "not to scale")
  _finish(
    fig,
    axes,
    len(cols),
    f"{title}: paired differences vs matched control (95% CI)",
    path,
  )
