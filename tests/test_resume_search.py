"""Preemption of ticket searches: a killed search resumes bit-identically.

In process, a search is interrupted (an exception from its progress
callback, right after a checkpoint) and run again on the same checkpoint
directory; in a subprocess, ``experiments.find_ticket`` is SIGKILLed in the
middle of an AWT search (by itself, at a fixed point of its progress log:
conftest's run_until_killed) and restarted with the same workdir. Either
way the ticket, its history and (for the binary) the trained parameters
must equal an uninterrupted run's bit for bit. A checkpoint of another
search is refused with one line.
"""

import json
import os
import signal

import _binary
import _tiny
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from awt import checkpoints, models, pruning


def _ctx(
  checkpoint_dir=None, log=None, widths=(24, 16), objective="pgd_at", **kw
):
  config = ml_collections.ConfigDict(
    {
      "batch_size": 32,
      "seed": 0,
      "num_epochs": 1,
      "optimizer": {"name": "adam", "learning_rate": 1e-3},
      "adversarial": {
        "method": objective,
        "norm": "linf",
        "eps": 0.1,
        "step_size": 0.05,
        "steps": 1,
      },
      "pruning": {
        "sparsity": 0.8,
        "scope": "global",
        "awt_steps": 8,
        "awt_mask_every": 4,
        "awt_checkpoint_every": 2,
        "awt_batch": 8,
        "awt_lr": 3e-3,
        "imp_rounds": 2,
        "imp_epochs": 1,
        **kw,
      },
    }
  )
  return _tiny.context(
    models.get("mlp", 10, widths=widths),
    _tiny.digits(128),
    config,
    checkpoint_dir=checkpoint_dir,
    log=log,
  )


class _Preempted(Exception):
  pass


def _stop_at(marker, lines):
  """A progress callback that records lines and raises at ``marker``."""

  def log(line):
    lines.append(line)
    if marker in line:
      raise _Preempted(line)

  return log


def _assert_same_ticket(a, b):
  for name in ("mask", "params", "batch_stats"):
    x, y = jax.tree.leaves(getattr(a, name)), jax.tree.leaves(getattr(b, name))
    assert len(x) == len(y)
    for u, v in zip(x, y, strict=True):
      np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def _complete_steps(path):
  """Steps with a finished checkpoint (orbax renames a tmp dir when done)."""
  if not os.path.isdir(path):
    return []
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


@pytest.mark.slow  # compiling the search step takes ~15 s of CPU.
def test_interrupted_awt_search_resumes_bit_identically(tmp_path):
  key = jax.random.PRNGKey(3)
  ref = pruning.find("awt", _ctx(), key)

  where = str(tmp_path / "search")
  lines = []
  # The step-8 line comes before that step's checkpoint, so the newest one
  # is step 6: in the middle of the second mask period, with two steps of
  # that period's loss history pending.
  with pytest.raises(_Preempted):
    pruning.find("awt", _ctx(where, _stop_at("step 8/8", lines)), key)
  assert _complete_steps(where) == [4, 6]
  assert lines[0].startswith("awt search step 4/8: loss ")
  assert "steps/s, ETA" in lines[0]

  lines = []
  ticket = pruning.find("awt", _ctx(where, lines.append), key)
  assert lines[0].startswith("awt search: resuming at step 6 of 8")
  _assert_same_ticket(ticket, ref)
  for u, v in zip(
    jax.tree.leaves(ticket.scores), jax.tree.leaves(ref.scores), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
  assert ticket.info["history"] == ref.info["history"]
  assert [h["step"] for h in ref.info["history"]] == [4, 8]
  assert ticket.info["passes"] == ref.info["passes"]

  # A finished search is read back, not run again.
  lines = []
  again = pruning.find("awt", _ctx(where, lines.append), key)
  assert lines == [f"awt search: resuming at step 8 of 8 from {where}"]
  _assert_same_ticket(again, ref)

  # The same search of a wider model: refused before any compute.
  with pytest.raises(checkpoints.CheckpointError) as e:
    pruning.find("awt", _ctx(where, widths=(32, 16)), key)
  assert str(e.value) == (
    f"search checkpoint in {where} holds another model: mask/fc1/bias has "
    "shape (24,) there, (32,) here"
  )


@pytest.mark.slow  # shares the compiled step of the test above.
def test_non_finite_search_loss_stops_with_the_step_and_saves_nothing(
  tmp_path,
):
  where = str(tmp_path / "search")
  # Adam moves every weight by ~lr: step 1 leaves the network at ~1e30.
  with pytest.raises(FloatingPointError) as e:
    pruning.find("awt", _ctx(where, awt_lr=1e30), jax.random.PRNGKey(3))
  assert str(e.value) == (
    "awt search loss is nan at step 2; stopping, last good checkpoint kept"
  )
  assert _complete_steps(where) == []


def test_interrupted_imp_resumes_after_its_last_round(tmp_path):
  key = jax.random.PRNGKey(4)
  ref = pruning.find("imp", _ctx(objective="none"), key)
  where = str(tmp_path / "search")
  with pytest.raises(_Preempted):
    ctx = _ctx(where, _stop_at("round 1/2", []), objective="none")
    pruning.find("imp", ctx, key)
  assert _complete_steps(where) == [1]
  lines = []
  ticket = pruning.find("imp", _ctx(where, lines.append, objective="none"), key)
  assert lines[0] == f"imp: resuming after round 1 of 2 from {where}"
  _assert_same_ticket(ticket, ref)


def test_checkpoint_of_another_search_is_one_clear_line(tmp_path):
  where = str(tmp_path / "search")
  key = jax.random.PRNGKey(5)
  pruning.find("imp", _ctx(where, objective="none", imp_rounds=1), key)
  for method, widths, k, kw, what in [
    (
      "imp",
      (32, 16),
      key,
      {},
      "holds another model: mask/fc1/bias has shape (24,) there, (32,) here",
    ),
    ("awt", (24, 16), key, {}, "(method: 'imp' there, 'awt' here)"),
    ("imp", (24, 16), jax.random.PRNGKey(6), {}, "(key: [0, 5] there, [0, 6]"),
    (
      "imp",
      (24, 16),
      key,
      {"scope": "layerwise"},
      "(scope: 'global' there, 'layerwise' here)",
    ),
  ]:
    ctx = _ctx(where, None, widths, "none", imp_rounds=1, **kw)
    with pytest.raises(checkpoints.CheckpointError) as e:
      pruning.find(method, ctx, k)
    assert str(e.value).startswith(f"search checkpoint in {where} ")
    assert what in str(e.value) and "\n" not in str(e.value), str(e.value)


# The binary: the smoke config, an AWT search of 40 steps on 8 PGD points
# with a checkpoint every mask period (5 steps), then one epoch of natural
# training (one compiled chunk; PGD-AT resumes are test_resume.py's).
SEARCH = (
  "--config=experiments/configs/digits_mlp.py:smoke",
  "--config.pruning.method=awt",
  "--config.pruning.sparsity=0.9",
  "--config.pruning.awt_steps=40",
  "--config.pruning.awt_mask_every=5",
  "--config.pruning.awt_batch=8",
  "--config.num_epochs=1",
  "--config.log_every_steps=22",
  "--config.adversarial.method=none",
  "--config.eval.attacks=()",
  "--nodense_reference",
)


def _find_ticket(workdir):
  return _binary.run("experiments.find_ticket", *SEARCH, f"--workdir={workdir}")


def _ticket(workdir):
  with checkpoints.manager(str(workdir), subdir=checkpoints.TICKET_DIR) as m:
    state = m.restore(
      0, args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )["state"]
  return jax.tree.leaves(state)


@pytest.mark.slow
def test_sigkill_mid_search_then_resume_is_bit_identical(
  tmp_path, run_until_killed
):
  ref = tmp_path / "ref"
  proc = _find_ticket(ref)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "awt search step 40/40: loss " in proc.stderr

  # Killed when it logs search step 10, once a search checkpoint (step 5,
  # the first mask period's) is complete: in the middle of the search.
  killed = tmp_path / "killed"
  proc = run_until_killed(
    "experiments.find_ticket",
    [*SEARCH, f"--workdir={killed}"],
    r"^awt search step (\d+)/40:",
    10,
    killed / "search",
    5,
    cwd=_binary.ROOT,
    env=_binary.environment(2),
  )
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  assert not (killed / "ticket").exists()
  step = max(_complete_steps(killed / "search"))
  assert step % 5 == 0 and step < 40

  proc = _find_ticket(killed)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"awt search: resuming at step {step} of 40" in proc.stderr
  # Only the remaining steps ran again.
  assert f"awt search step {step}/40:" not in proc.stderr
  assert f"awt search step {step + 5}/40:" in proc.stderr
  for a, b in zip(_ticket(ref), _ticket(killed), strict=True):
    np.testing.assert_array_equal(a, b)
  info = [json.loads((d / "ticket.json").read_text()) for d in (ref, killed)]
  assert [h["step"] for h in info[0]["history"]] == list(range(5, 41, 5))
  assert info[0]["history"] == info[1]["history"]
  assert info[0]["passes"] == info[1]["passes"]
  trained = [
    jax.tree.leaves(checkpoints.restore(str(d))["variables"])
    for d in (ref, killed)
  ]
  for a, b in zip(*trained, strict=True):
    np.testing.assert_array_equal(a, b)
