r"""Evaluates the robustness of a trained run, with sanity checks.

  python -m experiments.evaluate --workdir=/tmp/awt/digits_mlp

Restores the run in --workdir (``awt.checkpoints.restore``) and evaluates it
on the test split: clean accuracy; robust accuracy for each attack and for
the AutoAttack-style ensemble (APGD-CE, APGD-T, Square; per example the
first attack that succeeds); minimal-perturbation statistics (DeepFool,
Carlini-Wagner L2); robust accuracy of the reference PGD over an eps sweep;
and the sanity checks (monotone in eps, ~0 at a huge eps, no gradient
masking, converged PGD). Writes ``robustness.json`` and
``plots/robustness_vs_eps.png`` to --workdir and prints a table.

A workdir of several members (``find_ticket``'s ticket and dense
reference, a study's ``train/<sparsity>`` program) evaluates each member
in turn, or those named by ``--members``, and writes the same files under
``members/<name>/``.

eps and norm default to the run's ``config.eval``; the attacks to APGD-CE,
APGD-T and Square1000 plus the run's ``config.eval.attacks``. Example with
small budgets:

  python -m experiments.evaluate --workdir=W --attacks=apgd-ce,pgd40 \
    --eps=0.1 --eps_sweep=0,0.05,0.1,0.2 --minimal=deepfool --max_examples=100
"""

import os

from absl import flags

from experiments import _main

flags.DEFINE_string("workdir", None, "A run directory written by train.py.")
flags.DEFINE_list(
  "attacks",
  None,
  "Attack names (awt.attacks.name_forms() lists the forms); default: "
  "apgd-ce, apgd-t, square1000 and the run's config.eval.attacks.",
)
flags.DEFINE_list(
  "ensemble",
  None,
  "Ensemble members; default: the first apgd-ce, apgd-t and square attack "
  "of --attacks (AutoAttack's members).",
)
flags.DEFINE_float(
  "eps", None, "Budget in pixel units; default config.eval.eps."
)
flags.DEFINE_enum(
  "norm", None, ["linf", "l2"], "Threat model; default config.eval.norm."
)
flags.DEFINE_list(
  "eps_sweep", None, "Budgets of the robustness curve; default 0..2 eps."
)
flags.DEFINE_float(
  "large_eps", None, "Budget of the large-eps check; default: covers [0,1]^d."
)
flags.DEFINE_list(
  "minimal",
  ["deepfool", "cw_l2"],
  "Minimal-perturbation attacks (awt.attacks.name_forms(minimal=True)); "
  "empty to skip.",
)
flags.DEFINE_integer("max_examples", 0, "Evaluate the first N test examples.")
flags.DEFINE_integer(
  "batch_size", None, "Examples per compiled call; default config.eval."
)
flags.DEFINE_integer("seed", 0, "Seed of the attacks' random starts.")
flags.DEFINE_list(
  "members",
  None,
  "Members of a several-member workdir to evaluate (names as in its "
  "members/ folder); default: every member.",
)
flags.mark_flags_as_required(["workdir"])


def _floats(values, flag):
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise ValueError(f"--{flag} must be numbers, got {values!r}") from None


def format_report(report: dict, title: str) -> str:
  """The report as a plain-text table (what the binary prints)."""
  lines = [
    title,
    f"{report['num_examples']} examples, {report['norm']} "
    f"eps={report['eps']:g}",
    f"  {'clean':<34} {report['clean_accuracy']:.4f}",
  ]
  for name, acc in report["robust_accuracy"].items():
    lines.append(f"  {name:<34} {acc:.4f}")
  ens = report["ensemble"]
  firsts = ", ".join(f"{m} {v:.4f}" for m, v in ens["first_success"].items())
  lines.append(f"  ensemble first successes: {firsts}")
  if report["minimal_perturbation"]:
    lines.append(
      f"  {'minimal perturbation':<22} {'mean l2':>9} {'med l2':>9} "
      f"{'mean rho2':>9} {'med rho2':>9} {'failed':>7}"
    )
    for name, s in report["minimal_perturbation"].items():
      cells = [
        f"{s[k]:9.4f}" if s[k] is not None else f"{'-':>9}"
        for k in ("mean_l2", "median_l2", "mean_rho2", "median_rho2")
      ]
      fail = s["failure_rate"]
      fail = f"{fail:7.4f}" if fail is not None else f"{'-':>7}"
      lines.append(f"  {name:<22} {' '.join(cells)} {fail}")
  curve = report["eps_curve"]
  lines.append(f"  robust accuracy vs eps ({curve['attack']}):")
  for e, a in zip(curve["eps"], curve["robust_accuracy"], strict=True):
    lines.append(f"    eps {e:<10g} {a:.4f}")
  lines.append("  sanity checks:")
  for name, c in report["sanity_checks"].items():
    numbers = ", ".join(
      f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
      for k, v in c.items()
      if k != "passed" and not isinstance(v, list)
    )
    verdict = "PASS" if c["passed"] else "FAIL"
    lines.append(f"    {verdict} {name}: {numbers}")
  return "\n".join(lines)


def plot_curve(report: dict, path: str, title: str) -> None:
  """Robust accuracy against eps, the ensemble at eps, to a PNG."""
  import matplotlib  # noqa: PLC0415 (lazy: only the binary plots)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  curve = report["eps_curve"]
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  ax.plot(
    curve["eps"], curve["robust_accuracy"], marker="o", label=curve["attack"]
  )
  ens = report["ensemble"]
  ax.plot(
    [report["eps"]],
    [ens["robust_accuracy"]],
    marker="*",
    markersize=12,
    linestyle="",
    label=f"ensemble ({ens['name']})",
  )
  ax.axvline(report["eps"], color="gray", linestyle=":", linewidth=1)
  ax.set_xlabel(f"eps ({report['norm']})")
  ax.set_ylabel("robust accuracy")
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _targets(workdir: str, members: list[str] | None, selected) -> list:
  """``[(name, index, outdir)]``: what to evaluate and where to write it.

  A single run is ``[(None, None, workdir)]``; a run of several members
  (``meta["members"]``) gives each selected member its index on the
  leading axis and ``workdir/members/<name>``.
  """
  if members is None:
    if selected:
      raise ValueError(
        f"--members given, but {workdir} holds a single run (no members)"
      )
    return [(None, None, workdir)]
  unknown = [m for m in selected or () if m not in members]
  if unknown:
    raise ValueError(
      f"--members: no member {unknown[0]!r} in {workdir}; its members: "
      f"{', '.join(members)}"
    )
  chosen = selected or members
  return [
    (m, members.index(m), os.path.join(workdir, "members", m)) for m in chosen
  ]


def main(argv):
  del argv
  import jax  # noqa: PLC0415 (after TF/JAX device setup)

  from awt import checkpoints, evaluation, masks  # noqa: PLC0415
  from awt import config as config_lib  # noqa: PLC0415
  from awt import data as data_lib  # noqa: PLC0415
  from awt import workdir as workdir_lib  # noqa: PLC0415

  f = flags.FLAGS
  for name in (*(f.attacks or ()), *(f.ensemble or ())):
    evaluation.parse_attack(name)
  for name in f.minimal:
    evaluation.parse_minimal_attack(name)
  if f.ensemble == []:
    raise ValueError(
      "--ensemble= names no attack; leave the flag out for AutoAttack's "
      "members or list at least one"
    )
  sweep = None if f.eps_sweep is None else _floats(f.eps_sweep, "eps_sweep")
  if f.max_examples < 0:
    raise ValueError(f"--max_examples={f.max_examples} must be >= 0")
  if f.eps is not None and f.eps < 0:
    raise ValueError(f"--eps={f.eps} must be >= 0")

  run = checkpoints.restore(f.workdir)
  workdir = workdir_lib.prepare(f.workdir)
  targets = _targets(workdir, run["meta"].get("members"), f.members)
  config, model = run["config"], run["model"]
  eps = config.eval.eps if f.eps is None else f.eps
  norm = f.norm or config.eval.norm
  attack_names = f.attacks
  if attack_names is None:
    attack_names = ["apgd-ce", "apgd-t", "square1000"]
    attack_names += [a for a in config.eval.attacks if a not in attack_names]
  outside = [a for a in f.ensemble or () if a not in attack_names]
  if outside:
    raise ValueError(
      f"--ensemble member {outside[0]!r} is not among the attacks "
      f"({', '.join(attack_names)}); add it to --attacks"
    )
  dataset = config_lib.load_data(config)
  test = dataset.test
  if f.max_examples:
    n = min(f.max_examples, test.num_examples)
    test = data_lib.Split(test.images[:n], test.labels[:n])

  def apply_fn(variables, x):
    return model.apply(variables, x, train=False)

  for name, index, out in targets:
    variables, kind = run["variables"], f"sparsity {config.pruning.sparsity:g}"
    if index is not None:
      variables = jax.tree.map(lambda v, i=index: v[i], variables)
      mask = jax.tree.map(lambda v, i=index: v[i], run["mask"])
      kind = f"{name}, sparsity {masks.sparsity(mask):.4g}"
      workdir_lib.prepare(out)
    title = (
      f"{config.model.name} / {dataset.info.name} / "
      f"{config.adversarial.method} / {kind}"
    )
    _main.log(
      f"evaluating {title} (step {run['step']}) on {test.num_examples} test "
      f"examples, {norm} eps={eps:g}"
    )
    report = evaluation.robustness_report(
      apply_fn,
      variables,
      test,
      eps=eps,
      norm=norm,
      attack_names=tuple(attack_names),
      ensemble=None if f.ensemble is None else tuple(f.ensemble),
      minimal_attacks=tuple(f.minimal),
      eps_sweep=sweep,
      large=f.large_eps,
      batch_size=f.batch_size or config.eval.batch_size,
      key=jax.random.PRNGKey(f.seed),
      log=_main.log,
    )
    report["step"] = run["step"]
    if name is not None:
      report["member"] = name
    workdir_lib.write_json(os.path.join(out, "robustness.json"), report)
    plot_curve(
      report, os.path.join(out, "plots", "robustness_vs_eps.png"), title
    )
    print(format_report(report, title), flush=True)
    verdict = "all passed" if report["all_sanity_checks_passed"] else "FAILED"
    _main.log(
      f"wrote {out}/robustness.json in {report['wall_time_s']:.1f}s; "
      f"sanity checks {verdict}"
    )


if __name__ == "__main__":
  _main.run(main)
