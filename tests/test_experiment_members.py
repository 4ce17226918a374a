"""``train_members``: S runs in one program equal S separate runs."""

import json
import types

import jax
import numpy as np
import pytest

from awt import config as config_lib
from awt import curves, experiment, masks, tickets
from awt.config import ConfigError
from experiments.configs import digits_mlp


def _config(**overrides):
  c = digits_mlp.get_config("smoke")
  c.num_epochs = 2
  c.eval.attacks = ("fgsm",)
  c.model.widths = (32, 16)
  return config_lib.replaced(c, overrides)


def _close(a, b, tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


@pytest.mark.slow
def test_vectorized_seeds_equal_separate_runs(tmp_path):
  config = _config()
  seeds = (0, 1, 2)
  members = [experiment.Member(f"s{s}", s) for s in seeds]
  together = experiment.train_members(config, str(tmp_path / "vmap"), members)
  for s, got in zip(seeds, together, strict=True):
    c = _config(seed=s)
    alone = experiment.train_and_evaluate(c, str(tmp_path / f"run{s}"))
    from awt import checkpoints  # noqa: PLC0415

    ref = checkpoints.restore(str(tmp_path / f"run{s}"))
    _close(got.params, ref["variables"]["params"], 1e-5)
    assert got.results["clean_accuracy"] == pytest.approx(
      alone["clean_accuracy"], abs=1e-9
    )
    assert got.results["seed"] == s
    assert len(got.results["history"]) == config.num_epochs + 1
  # Different seeds really are different runs.
  assert not np.allclose(
    jax.tree.leaves(together[0].params)[0],
    jax.tree.leaves(together[1].params)[0],
  )


@pytest.mark.slow
def test_function_distance_to_a_reference(tmp_path):
  config = _config(num_epochs=1)
  members = [
    experiment.Member("dense", 0),
    experiment.Member("copy", 0, reference="dense"),
    experiment.Member("other", 1, reference="dense"),
  ]
  out = experiment.train_members(config, str(tmp_path), members)
  copy, other = out[1].results["history"], out[2].results["history"]
  assert [r["epoch"] for r in copy] == [0, 1]
  for r in copy:  # same seed, same data and attacks: the same function
    assert r["function_distance_clean"] == 0.0
    assert r["function_distance_adv"] == 0.0
  for r in other:
    assert r["function_distance_clean"] > 0.0
    assert r["function_distance_adv"] > 0.0
  assert "function_distance_clean" not in out[0].results["history"][0]
  assert (tmp_path / "members" / "other" / "results.json").exists()
  assert (tmp_path / "plots" / "members.png").stat().st_size > 0


@pytest.mark.parametrize("seeds", [(0, 1), (0, 0)], ids=["own", "shared"])
def test_members_one_after_another_equal_vectorized(tmp_path, seeds):
  """``member_map="loop"`` (``lax.map``) trains what ``"vmap"`` trains, with
  each member's own data stream and with one shared by all."""
  members = [experiment.Member(f"m{i}", s) for i, s in enumerate(seeds)]
  logs = {}
  out = {}
  for how in ("vmap", "loop"):
    logs[how] = []
    out[how] = experiment.train_members(
      _config(num_epochs=1, member_map=how),
      str(tmp_path / how),
      members,
      log=logs[how].append,
    )
  for a, b in zip(out["vmap"], out["loop"], strict=True):
    _close(a.params, b.params, 1e-5)
    assert a.results["clean_accuracy"] == pytest.approx(
      b.results["clean_accuracy"], abs=1e-9
    )
  assert any("2 members (one after another)" in line for line in logs["loop"])
  assert any("2 members (vectorized)" in line for line in logs["vmap"])


def test_a_looped_member_does_not_depend_on_the_others(tmp_path):
  """Under ``member_map="loop"`` each member runs the same one-member
  program body, so adding or changing other arms of a study leaves a
  member's result bit for bit as it was (vmap promises 1e-5 only)."""
  trained = []
  for other in (1, 2):
    members = [experiment.Member("a", 0), experiment.Member("b", other)]
    trained.append(
      experiment.train_members(
        _config(num_epochs=1, member_map="loop"),
        str(tmp_path / f"with{other}"),
        members,
      )
    )
  first, second = trained
  for x, y in zip(
    jax.tree.leaves(first[0].params),
    jax.tree.leaves(second[0].params),
    strict=True,
  ):
    np.testing.assert_array_equal(x, y)
  assert (
    first[0].results["clean_accuracy"] == second[0].results["clean_accuracy"]
  )
  assert not np.array_equal(
    jax.tree.leaves(first[1].params)[0], jax.tree.leaves(second[1].params)[0]
  )


def test_a_member_that_never_leaves_chance_is_named_and_marked_stalled(
  tmp_path,
):
  """A member whose output layer is pruned whole outputs its bias alone,
  the same for every image: its training loss stays at ln 10 (the label
  entropy of digits' training split, 2.3025). Training names it at every
  epoch once the budget is full and its results say ``stalled``; the
  dense member beside it learns and is not named."""
  config = _config(
    num_epochs=3,
    **{"optimizer.warmup_steps": 0, "adversarial.eps_warmup_epochs": 2},
  )
  dense = tickets.dense(config)
  mask = {**dense.mask, "head": {**dense.mask["head"]}}
  mask["head"]["kernel"] = np.zeros_like(mask["head"]["kernel"])
  headless = dense.replace(mask=mask, params=masks.apply(dense.params, mask))
  members = [
    experiment.Member("dense", 0, dense),
    experiment.Member("headless", 0, headless),
  ]
  lines = []
  out = experiment.train_members(
    config, str(tmp_path), members, log=lines.append
  )
  named = [line for line in lines if "still at the constant classifier" in line]
  bound = f"{curves.ESCAPE_FRACTION * np.log(10):.3f}"
  assert [line.split(":")[0] for line in named] == ["epoch 2", "epoch 3"]
  for line in named:
    assert line.endswith(
      "1 of 2 members' training losses are still at the constant "
      f"classifier's (every epoch >= 0.95 ln 10 = {bound}, full attack "
      "budget since epoch 2): headless"
    ), line
  dense_result, headless_result = (r.results for r in out)
  assert headless_result["stalled"] == 1.0
  assert headless_result["epochs_at_chance"] == 3.0
  assert dense_result["stalled"] == 0.0
  assert dense_result["epochs_at_chance"] < 2.0  # left within the ramp
  assert any("headless: done" in x and "; stalled: " in x for x in lines)
  saved = json.loads((tmp_path / "members/headless/results.json").read_text())
  assert saved["stalled"] == 1.0


def test_member_map_auto_loops_over_conv_nets_on_the_cpu():
  conv = {"conv": {"kernel": np.zeros((3, 5, 5, 1, 6))}, "b": np.zeros((3, 6))}
  dense = {"fc": {"kernel": np.zeros((3, 64, 10))}, "b": np.zeros((3, 10))}
  on_cpu = jax.default_backend() == "cpu"
  assert experiment.member_map("auto", conv) == ("loop" if on_cpu else "vmap")
  assert experiment.member_map("auto", dense) == "vmap"
  assert experiment.member_map("vmap", conv) == "vmap"
  assert experiment.member_map("loop", dense) == "loop"


def test_an_unknown_member_map_is_refused(tmp_path):
  with pytest.raises(ConfigError, match="member_map 'pmap'"):
    experiment.train_members(
      _config(member_map="pmap"), str(tmp_path), [experiment.Member("a", 0)]
    )


def test_function_distance_matches_numpy():
  a = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
  b = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
  want = np.mean(np.sqrt(np.sum((a - b) ** 2, axis=1)))
  got = experiment.function_distance(a, b)
  np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize(
  "members",
  [
    [experiment.Member("a", 0), experiment.Member("a", 1)],
    [experiment.Member("a", 0, reference="b")],
    [],
  ],
)
def test_bad_members(tmp_path, members):
  with pytest.raises(ConfigError):
    experiment.train_members(_config(), str(tmp_path), members)


def test_a_pruned_config_without_a_ticket_is_refused_before_any_work(tmp_path):
  """Training does not prune: a non-dense method needs its ticket."""
  config = _config()
  config.pruning.method = "random"
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match="has no ticket") as e:
    experiment.train_and_evaluate(config, str(workdir))
  assert "\n" not in str(e.value)
  assert not workdir.exists()


@pytest.mark.slow
def test_a_restarted_run_reads_the_evaluations_it_kept(tmp_path, monkeypatch):
  """A run killed while evaluating resumes without attacking the same
  weights again; stale or re-configured evaluations are redone."""
  config = _config(num_epochs=1)
  members = [experiment.Member("a", 0), experiment.Member("b", 1)]
  first = experiment.train_members(config, str(tmp_path), members)
  kept = {
    m.name: tmp_path / "members" / m.name / "evaluation.json" for m in members
  }
  assert all(p.exists() for p in kept.values())

  calls = []
  real = experiment.evaluation.evaluate_cascade

  def counting(*args, **kwargs):
    calls.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(experiment.evaluation, "evaluate_cascade", counting)

  def rerun(c):
    out = experiment.train_members(c, str(tmp_path), members)
    return {
      r.name: (r.results["clean_accuracy"], r.results["robust_accuracy"])
      for r in out
    }

  want = {
    r.name: (r.results["clean_accuracy"], r.results["robust_accuracy"])
    for r in first
  }
  assert rerun(config) == want and not calls  # both read back

  # Weights that are not the ones evaluated (here: a doctored hash) and an
  # unreadable file are evaluated again, to the same numbers.
  record = json.loads(kept["a"].read_text())
  record["identity"]["variables_sha256"] = "0" * 64
  kept["a"].write_text(json.dumps(record))
  kept["b"].write_text("{not json")
  assert rerun(config) == want and len(calls) == 2
  assert json.loads(kept["b"].read_text())["clean_accuracy"] == want["b"][0]

  # Another threat model is another evaluation.
  config.eval.eps = config.eval.eps / 2
  rerun(config)
  assert len(calls) == 4


def test_a_mid_epoch_resume_averages_the_epoch_over_all_its_steps():
  """The chunk records before a mid-epoch restart rebuild the epoch's
  per-step losses: their mean is the mean over every step of the epoch."""
  rng = np.random.default_rng(0)
  run = types.SimpleNamespace(  # the three fields the rebuild reads
    members=("a", "b"),
    steps_per_epoch=10,
    prefix=lambda i: f"members/{'ab'[i]}/",
  )
  per_step = rng.uniform(0.5, 2.5, size=(30, 2))  # steps 1..30, 2 members
  records, last = [], 0
  for end in (4, 8, 10, 13, 17, 20, 25, 27):  # chunks never cross epochs
    chunk = per_step[last:end]
    records.append(
      {
        "step": end,
        "train/loss": float(chunk.mean()),
        "train/members/a/loss": float(chunk[:, 0].mean()),
        "train/members/b/loss": float(chunk[:, 1].mean()),
      }
    )
    if end % 10 == 0:  # the epoch record, which has no chunk loss
      records.append({"step": end, "train/members/a/epoch_loss": 9.0})
    last = end
  got = experiment._epoch_losses_so_far(records, run, 27)
  rest = per_step[27:30]  # what the resumed run adds before the epoch ends
  mean = np.mean(np.concatenate([*got, rest]), axis=0)
  np.testing.assert_allclose(mean, per_step[20:30].mean(axis=0), rtol=1e-12)
  assert experiment._epoch_losses_so_far(records, run, 20) == []
  # Records that stop short of the restart step: nothing to rebuild from.
  assert experiment._epoch_losses_so_far(records[:-1], run, 27) == []
