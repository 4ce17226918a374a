"""``robustness_report``: every attack, the ensemble, the curve, the checks."""

import time
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from awt import attacks
from awt import data as data_lib
from awt.evaluation._checks import (
  check_convergence,
  check_gradient_masking,
  check_large_eps,
  check_monotone,
  large_eps,
)
from awt.evaluation._names import AttackFn, is_black_box, stronger_pgd
from awt.evaluation._robust import (
  _summarize,
  evaluate,
  make_evaluator,
  per_example,
  robustness_curve,
)


def _first(names: Sequence[str], default: str) -> str:
  """The first of ``names`` of the same registered form as ``default``."""
  spec = attacks.lookup(default)[0]
  return next(
    (n for n in names if (attacks.match(n) or (None,))[0] is spec), default
  )


def plan_attacks(
  attack_names: Sequence[str], ensemble: Sequence[str] | None = None
) -> dict:
  """The attacks a ``robustness_report`` runs: the given ones plus checks'.

  Adds, unless present: the reference PGD (the first ``pgd...`` given, else
  ``pgd40``) and its ``stronger_pgd``; the ensemble, by default AutoAttack's
  members at the given budgets (the first ``apgd-ce...``, ``apgd-t...`` and
  ``square...`` given, else ``apgd-ce``, ``apgd-t``, ``square1000``); and
  ``square1000`` if no black-box attack is left (the masking check's).

  Args:
    attack_names: attack names for ``parse_attack`` (no ensembles).
    ensemble: ensemble member names (at least one), or None for the
      default.

  Returns:
    ``{"attacks": tuple, "ensemble": "a+b+c", "pgd": name,
    "stronger_pgd": name}``.
  """
  names = list(attack_names)
  pgd = _first(names, "pgd40")
  if ensemble is None:
    ensemble = (
      _first(names, "apgd-ce"),
      _first(names, "apgd-t"),
      _first(names, "square1000"),
    )
  if not ensemble:
    raise ValueError("an ensemble needs at least one member; got none")
  for n in (*ensemble, pgd, stronger_pgd(pgd)):
    if n not in names:
      names.append(n)
  if not any(is_black_box(n) for n in names):
    names.append("square1000")
  return {
    "attacks": tuple(names),
    "ensemble": "+".join(ensemble),
    "pgd": pgd,
    "stronger_pgd": stronger_pgd(pgd),
  }


def default_eps_sweep(eps: float) -> tuple[float, ...]:
  """0 to 2 eps: ``eps * (0, 1/4, 1/2, 3/4, 1, 3/2, 2)``."""
  return tuple(round(eps * f, 10) for f in (0, 0.25, 0.5, 0.75, 1, 1.5, 2))


def robustness_report(
  apply_fn: Callable[[dict, jax.Array], jax.Array],
  variables: dict,
  split: data_lib.Split,
  *,
  eps: float,
  norm: str = "linf",
  attack_names: Sequence[str] = ("apgd-ce", "apgd-t", "square1000", "pgd40"),
  ensemble: Sequence[str] | None = None,
  minimal_attacks: Sequence[str] | Mapping[str, AttackFn] = (
    "deepfool",
    "cw_l2",
  ),
  eps_sweep: Sequence[float] | None = None,
  large: float | None = None,
  batch_size: int = 500,
  key: jax.Array | None = None,
  log: Callable[[str], None] | None = None,
  monotone_tolerance: float = 0.01,
  large_eps_max_accuracy: float = 0.02,
  margin: float = 0.02,
) -> dict:
  """The full robustness evaluation of one model, with its sanity checks.

  Runs (see ``plan_attacks``) the given attacks, the AutoAttack-style
  ensemble, the reference PGD and its stronger version at ``eps``; the
  minimal-perturbation attacks; and the reference PGD over ``eps_sweep``
  and at the ``large`` budget. Two passes over the data, each one compiled
  function reused across batches.

  Args:
    apply_fn: ``(variables, x [B, H, W, C]) -> logits [B, K]`` (eval mode).
    variables: the model variables.
    split: the data to evaluate on.
    eps: perturbation budget in pixel units.
    norm: ``"linf"`` or ``"l2"``.
    attack_names: single attacks for ``parse_attack``.
    ensemble: the ensemble's member names; None: AutoAttack's members.
    minimal_attacks: names for ``parse_minimal_attack`` or a name -> attack
      map; empty to skip.
    eps_sweep: budgets of the curve; None: ``default_eps_sweep(eps)``.
    large: the large-eps check's budget; None: ``large_eps(norm, shape)``.
    batch_size: examples per compiled call.
    key: PRNG key; example ``i`` uses ``fold_in(key, i)`` in both passes.
    log: optional progress callback.
    monotone_tolerance: ``check_monotone``'s tolerance.
    large_eps_max_accuracy: ``check_large_eps``'s threshold.
    margin: ``check_gradient_masking``'s and ``check_convergence``'s margin.

  Returns:
    A JSON-able dict: ``num_examples``, ``eps``, ``norm``,
    ``clean_accuracy``, ``robust_accuracy`` (every attack and the ensemble),
    ``ensemble`` (``name``, ``members``, ``robust_accuracy``,
    ``first_success``: member -> fraction of examples it was the first to
    fool), ``eps_curve`` (``robustness_curve``), ``minimal_perturbation``
    (name -> ``minimal_perturbation_stats``), ``sanity_checks`` (name ->
    check dict with ``passed``), ``all_sanity_checks_passed``,
    ``wall_time_s``.
  """
  start = time.perf_counter()
  plan = plan_attacks(attack_names, ensemble)
  ens = plan["ensemble"]
  evaluator = make_evaluator(
    apply_fn,
    attack_names=(*plan["attacks"], ens),
    eps=eps,
    norm=norm,
    minimal_attacks=minimal_attacks,
  )
  outputs = per_example(
    evaluator, variables, split, batch_size=batch_size, key=key, log=log
  )
  summary = _summarize(outputs, evaluator)
  robust = summary["robust_accuracy"]
  members = evaluator.ensembles[ens]
  first = outputs[f"{ens}/first"]
  n = split.num_examples

  sweep = default_eps_sweep(eps) if eps_sweep is None else tuple(eps_sweep)
  if large is None:
    large = large_eps(norm, split.images.shape[1:])
  curve = robustness_curve(
    apply_fn,
    variables,
    split,
    attack_name=plan["pgd"],
    eps_values=(*sweep, large),
    norm=norm,
    batch_size=batch_size,
    key=key,
    log=log,
  )
  # At a ball covering the box any attack should win; CE-based PGD can
  # stall on saturated softmax outputs (a loss problem, not robustness), so
  # the check takes the better of it and scale-invariant APGD-DLR (Croce &
  # Hein 2020, Sec. 4), and records both.
  large_by = {plan["pgd"]: curve["robust_accuracy"].pop()}
  curve["eps"].pop()
  large_by["apgd-dlr"] = evaluate(
    apply_fn,
    variables,
    split,
    attack_names=("apgd-dlr",),
    eps=large,
    norm=norm,
    batch_size=batch_size,
    key=key,
  )["robust_accuracy"]["apgd-dlr"]
  large_acc = min(large_by.values())

  white = {
    a: v
    for a, v in robust.items()
    if a not in evaluator.ensembles and not is_black_box(a)
  }
  black = {a: v for a, v in robust.items() if is_black_box(a)}
  checks = {
    "monotone_in_eps": check_monotone(
      curve["eps"], curve["robust_accuracy"], tolerance=monotone_tolerance
    ),
    "large_eps": {
      **check_large_eps(large, large_acc, max_accuracy=large_eps_max_accuracy),
      "by_attack": large_by,
    },
    "no_gradient_masking": check_gradient_masking(black, white, margin=margin),
    "pgd_converged": check_convergence(
      plan["pgd"],
      robust[plan["pgd"]],
      plan["stronger_pgd"],
      robust[plan["stronger_pgd"]],
      margin=margin,
    ),
  }
  return {
    "num_examples": n,
    "eps": float(eps),
    "norm": norm,
    "clean_accuracy": summary["clean_accuracy"],
    "robust_accuracy": robust,
    "ensemble": {
      "name": ens,
      "members": list(members),
      "robust_accuracy": robust[ens],
      "first_success": {
        m: float(np.sum(first == i) / n) for i, m in enumerate(members)
      },
    },
    "eps_curve": curve,
    "minimal_perturbation": summary.get("minimal_perturbation", {}),
    "sanity_checks": checks,
    "all_sanity_checks_passed": all(c["passed"] for c in checks.values()),
    "wall_time_s": time.perf_counter() - start,
  }
