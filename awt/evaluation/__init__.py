"""Clean and robust accuracy, attack ensembles, minimal perturbations, checks.

Attacks are named as in the papers' tables: ``fgsm``; ``pgd40`` (PGD, 40
steps, random start, step size 2.5·eps/steps as Madry et al. 2018 advise);
``pgd40r5`` (5 restarts); ``bim10`` (PGD started at ``x`` instead of a
random point, PGD's step and best iterate: BIM-like, not Kurakin et al.
2017's exact schedule, which ``awt.studies.sparsity_robustness`` runs);
``apgd-ce`` / ``apgd-dlr`` (Croce & Hein 2020, 100 steps); ``apgd-t``
(APGD on the targeted DLR loss against each of the top ``min(9, K - 1)``
other classes); ``square1000`` (Square attack with 1000 queries, the
default). ``a+b+c`` is the ensemble of attacks ``a``, ``b``, ``c`` that
keeps, per example, the point of the first attack that succeeds;
``autoattack`` is AutoAttack's standard ensemble without FAB,
``apgd-ce+apgd-t+square5000``.
``parse_attack`` turns a name into a function ``(logits_fn, x, y, keys) ->
x_adv`` at a given eps. Every name comes from ``awt.attacks``' registry
(``attacks.register``; ``attacks.name_forms()`` lists the forms), so a newly
registered attack is accepted here, in ``eval.attacks`` and by the binaries.

Robust accuracy counts an example as robust when it is classified correctly
both clean and at the attack's point (the AutoAttack convention), so an
ensemble's robust accuracy is at most each member's.

Minimal-perturbation attacks (``deepfool``, ``cw_l2``; see
``parse_minimal_attack``) have no eps; ``minimal_perturbation_stats``
summarizes the l_2 norms of their perturbations. ``robustness_report``
combines all of it with a robust-accuracy-vs-eps curve and the sanity checks
of Carlini et al. 2019 (``check_*``), each with a pass/fail flag and the
numbers behind it.

Modules: ``_names`` (names to attacks, ensembles), ``_robust`` (evaluators,
``evaluate``, ``evaluate_cascade``, curves), ``_checks`` (sanity checks),
``_report`` (``robustness_report``).
"""

from awt.evaluation._checks import (
  check_convergence,
  check_gradient_masking,
  check_large_eps,
  check_monotone,
  large_eps,
)
from awt.evaluation._names import (
  AUTOATTACK,
  AttackFn,
  ensemble_attack,
  ensemble_members,
  first_success,
  is_black_box,
  parse_attack,
  parse_minimal_attack,
  stronger_pgd,
)
from awt.evaluation._report import (
  default_eps_sweep,
  plan_attacks,
  robustness_report,
)
from awt.evaluation._robust import (
  evaluate,
  evaluate_cascade,
  make_curve_evaluator,
  make_evaluator,
  minimal_perturbation_stats,
  per_example,
  robustness_curve,
)

__all__ = [
  "AUTOATTACK",
  "AttackFn",
  "check_convergence",
  "check_gradient_masking",
  "check_large_eps",
  "check_monotone",
  "default_eps_sweep",
  "ensemble_attack",
  "ensemble_members",
  "evaluate",
  "evaluate_cascade",
  "first_success",
  "is_black_box",
  "large_eps",
  "make_curve_evaluator",
  "make_evaluator",
  "minimal_perturbation_stats",
  "parse_attack",
  "parse_minimal_attack",
  "per_example",
  "plan_attacks",
  "robustness_curve",
  "robustness_report",
  "stronger_pgd",
]
