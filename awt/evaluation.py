"""Clean and robust accuracy over a dataset split.

Attacks are named as in the papers' tables: ``fgsm``; ``pgd40`` (PGD, 40
steps, random start, step size 2.5·eps/steps as Madry et al. 2018 advise);
``pgd40r5`` (5 restarts); ``bim10`` (PGD without random start, Kurakin et al.
2017); ``apgd-ce`` / ``apgd-dlr`` (Croce & Hein 2020, 100 steps);
``square1000`` (Square attack with 1000 queries). ``parse_attack`` turns a
name into a function ``(logits_fn, x, y, keys) -> x_adv`` at a given eps.

Robust accuracy counts an example as robust when it is classified correctly
both clean and at the attack's point (the AutoAttack convention).
"""

import functools
import re
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from awt import attacks
from awt import data as data_lib

AttackFn = Callable[..., jax.Array]
_PATTERNS = (
  (re.compile(r"fgsm"), "fgsm"),
  (re.compile(r"pgd(\d+)(?:r(\d+))?"), "pgd"),
  (re.compile(r"bim(\d+)"), "bim"),
  (re.compile(r"apgd-(ce|dlr)(?:(\d+))?"), "apgd"),
  (re.compile(r"square(\d+)?"), "square"),
)
ATTACK_NAME_FORMS = "fgsm, pgd<steps>[r<restarts>], bim<steps>, apgd-ce, "
ATTACK_NAME_FORMS += "apgd-dlr, square<queries>"


def parse_attack(name: str) -> Callable[[float, str], AttackFn]:
  """Turns an attack name into ``make(eps, norm) -> attack(f, x, y, keys)``.

  Raises:
    ValueError: for a name that is none of the known forms.
  """
  for pattern, kind in _PATTERNS:
    m = pattern.fullmatch(name)
    if not m:
      continue
    if kind == "fgsm":
      return lambda eps, norm: functools.partial(
        attacks.fgsm, eps=eps, norm=norm
      )
    if kind in ("pgd", "bim"):
      steps = int(m.group(1))
      restarts = int(m.group(2) or 1) if kind == "pgd" else 1
      if steps < 1 or restarts < 1:
        break
      return lambda eps, norm: functools.partial(
        attacks.pgd,
        eps=eps,
        step_size=2.5 * eps / steps,
        steps=steps,
        norm=norm,
        restarts=restarts,
        random_start=kind == "pgd",
      )
    if kind == "apgd":
      steps = int(m.group(2) or 100)
      return lambda eps, norm: functools.partial(
        attacks.apgd, eps=eps, norm=norm, loss=m.group(1), steps=steps
      )
    if kind == "square":
      queries = int(m.group(1) or 1000)
      return lambda eps, norm: functools.partial(
        attacks.square, eps=eps, norm=norm, queries=queries
      )
  raise ValueError(f"unknown attack {name!r}; known forms: {ATTACK_NAME_FORMS}")


def make_evaluator(
  apply_fn: Callable[[dict, jax.Array], jax.Array],
  *,
  attack_names: tuple[str, ...] = (),
  eps: float = 0.0,
  norm: str = "linf",
) -> Callable[..., dict]:
  """A jitted ``fn(variables, x, y, keys) -> {"clean"|name: bool [B]}``.

  ``True`` marks an example classified correctly clean (``"clean"``) or
  correctly both clean and at the attack's point (each attack name). Build
  it once and reuse it: it compiles once per batch shape.

  Args:
    apply_fn: ``(variables, x) -> logits [B, K]`` (eval mode).
    attack_names: names accepted by ``parse_attack``.
    eps: perturbation budget in pixel units ([0, 1] scale).
    norm: ``"linf"`` or ``"l2"``.
  """
  made = {n: parse_attack(n)(eps, norm) for n in attack_names}

  @jax.jit
  def correct(variables, x, y, keys):
    logits_fn = lambda inputs: apply_fn(variables, inputs)
    clean = jnp.argmax(logits_fn(x), -1) == y
    out = {"clean": clean}
    for n, attack in made.items():
      x_adv = attack(logits_fn, x, y, keys)
      out[n] = clean & (jnp.argmax(logits_fn(x_adv), -1) == y)
    return out

  correct.attack_names = tuple(made)
  return correct


def evaluate(
  apply_fn: Callable[[dict, jax.Array], jax.Array],
  variables: dict,
  split: data_lib.Split,
  *,
  attack_names: tuple[str, ...] = (),
  eps: float = 0.0,
  norm: str = "linf",
  batch_size: int = 500,
  key: jax.Array | None = None,
  log: Callable[[str], None] | None = None,
  evaluator: Callable[..., dict] | None = None,
) -> dict:
  """Clean accuracy and robust accuracy for each named attack.

  Args:
    apply_fn: ``(variables, x [B, H, W, C]) -> logits [B, K]`` (eval mode).
    variables: the model variables.
    split: the data to evaluate on.
    attack_names: names accepted by ``parse_attack``.
    eps: perturbation budget in pixel units ([0, 1] scale).
    norm: ``"linf"`` or ``"l2"``.
    batch_size: examples per compiled call; the last batch is padded so
      every call has the same shape (one compilation).
    key: PRNG key; example ``i`` of the split uses ``fold_in(key, i)``.
    log: optional progress callback, given one line per batch.
    evaluator: a ``make_evaluator`` result to reuse (then ``attack_names``,
      ``eps`` and ``norm`` are the evaluator's).

  Returns:
    ``{"clean_accuracy": float, "robust_accuracy": {name: float},
    "num_examples": int}``.
  """
  key = jax.random.PRNGKey(0) if key is None else key
  if evaluator is None:
    evaluator = make_evaluator(
      apply_fn, attack_names=attack_names, eps=eps, norm=norm
    )
  names = evaluator.attack_names
  totals = {n: 0 for n in ("clean", *names)}
  n_total = split.num_examples
  start = time.perf_counter()
  done = 0
  for batch in data_lib.batches(
    split, batch_size, seed=0, shuffle=False, drop_remainder=False
  ):
    b = batch["label"].shape[0]
    idx = np.arange(done, done + b, dtype=np.int32)
    x, y = batch["image"], batch["label"]
    if b < batch_size:
      pad = batch_size - b
      x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
      y = np.concatenate([y, np.zeros((pad,), y.dtype)])
      idx = np.concatenate([idx, np.zeros((pad,), idx.dtype)])
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
    out = jax.device_get(evaluator(variables, x, y, keys))
    for n in totals:
      totals[n] += int(np.sum(out[n][:b]))
    done += b
    if log is not None:
      rate = done / max(time.perf_counter() - start, 1e-9)
      eta = (n_total - done) / max(rate, 1e-9)
      log(f"eval {done}/{n_total} examples, {rate:.0f} ex/s, ETA {eta:.0f}s")
  return {
    "clean_accuracy": totals["clean"] / n_total,
    "robust_accuracy": {n: totals[n] / n_total for n in names},
    "num_examples": n_total,
  }
