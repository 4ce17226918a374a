"""Smoke and failure tests of experiments/evaluate.py (run as a subprocess).

Evaluates a copy of conftest's trained smoke run (``smoke_run``, trained
once per worker) with small attack budgets. The suite's LLVM level 0
(tests/_binary.py) keeps the subprocesses' compilation short.
"""

import json
import os
import shutil

import _binary  # tests/_binary.py: the one subprocess runner
import pytest

pytestmark = pytest.mark.xdist_group("smoke_run")

SMALL = (
  "--attacks=pgd3,apgd-ce3,apgd-t3,square20",
  "--eps_sweep=0,0.05,0.1",
  "--minimal=deepfool5,cw_l2-2x20",
  "--max_examples=40",
  "--batch_size=16",
)


@pytest.fixture(scope="module")
def evaluated_run(smoke_run, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("evaluate") / "run")
  shutil.copytree(smoke_run[0], workdir)
  proc = _binary.run("experiments.evaluate", f"--workdir={workdir}", *SMALL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


@pytest.mark.slow
def test_evaluate_writes_report_and_plot(evaluated_run):
  workdir, proc = evaluated_run
  assert os.path.getsize(
    os.path.join(workdir, "plots", "robustness_vs_eps.png")
  )
  with open(os.path.join(workdir, "robustness.json")) as f:
    report = json.load(f)
  # eps and norm come from the run's config.eval (smoke: 0.1, linf).
  assert report["eps"] == 0.1 and report["norm"] == "linf"
  assert report["num_examples"] == 40
  acc = report["robust_accuracy"]
  # The given attacks, the convergence check's PGD, and the ensemble.
  ens = report["ensemble"]
  assert ens["name"] == "apgd-ce3+apgd-t3+square20"
  assert set(acc) == {
    "pgd3",
    "apgd-ce3",
    "apgd-t3",
    "square20",
    "pgd12r3",
    ens["name"],
  }
  for v in acc.values():
    assert 0.0 <= v <= report["clean_accuracy"]
  assert ens["robust_accuracy"] <= min(acc[m] for m in ens["members"])
  assert sum(ens["first_success"].values()) == pytest.approx(
    report["clean_accuracy"] - ens["robust_accuracy"]
  )
  curve = report["eps_curve"]
  assert curve["attack"] == "pgd3" and curve["eps"] == [0.0, 0.05, 0.1]
  assert curve["robust_accuracy"][0] == report["clean_accuracy"]
  assert set(report["minimal_perturbation"]) == {"deepfool5", "cw_l2-2x20"}
  checks = report["sanity_checks"]
  assert set(checks) == {
    "monotone_in_eps",
    "large_eps",
    "no_gradient_masking",
    "pgd_converged",
  }
  assert report["all_sanity_checks_passed"] == all(
    c["passed"] for c in checks.values()
  )
  assert "sanity checks:" in proc.stdout and "pgd_converged" in proc.stdout
  assert "ex/s" in proc.stderr and "ETA" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
  "args, expected",
  [
    (("--members=ticket",), "holds a single run"),
    (
      ("--attacks=fgsm", "--ensemble=pgd5"),
      "--ensemble member 'pgd5' is not among the attacks (fgsm); add it",
    ),
  ],
)
def test_flags_that_do_not_fit_the_run_are_one_line(
  evaluated_run, args, expected
):
  workdir = evaluated_run[0]
  proc = _binary.run("experiments.evaluate", f"--workdir={workdir}", *args)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  last = [x for x in proc.stderr.splitlines() if x.strip()][-1]
  assert expected in last, last
  assert "evaluating" not in proc.stderr  # refused before any attack ran


@pytest.mark.parametrize(
  "args, expected",
  [
    (("--workdir={missing}",), "no checkpoints in"),
    (("--workdir={missing}", "--attacks=pgdx"), "unknown attack 'pgdx'"),
    (("--workdir={missing}", "--eps_sweep=0,abc"), "--eps_sweep must be"),
    (("--workdir={missing}", "--ensemble="), "--ensemble= names no attack"),
  ],
)
def test_bad_input_is_one_line(tmp_path, args, expected):
  missing = str(tmp_path / "no_such_run")
  proc = _binary.run(
    "experiments.evaluate", *(a.format(missing=missing) for a in args)
  )
  assert proc.returncode != 0
  lines = [x for x in proc.stderr.splitlines() if x.strip()]
  assert lines[-1].startswith("error: ") and expected in lines[-1], lines
  assert "Traceback" not in proc.stderr
