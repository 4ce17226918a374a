"""Robust accuracy over a split: evaluators, ensembles, cascades, curves.

Robust accuracy counts an example as robust when it is classified correctly
both clean and at the attack's point (the AutoAttack convention), so an
ensemble's robust accuracy is at most each member's. Example ``i`` of a
split is attacked with the key ``fold_in(key, i)`` everywhere, so results do
not depend on batching.
"""

import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from awt import data as data_lib
from awt.attacks import _common
from awt.evaluation._names import (
  AttackFn,
  ensemble_members,
  first_success,
  parse_attack,
  parse_minimal_attack,
)


def _predict(logits_fn, x):
  return jnp.argmax(logits_fn(x), axis=-1)


def make_evaluator(
  apply_fn: Callable[[dict, jax.Array], jax.Array],
  *,
  attack_names: tuple[str, ...] = (),
  eps: float = 0.0,
  norm: str = "linf",
  minimal_attacks: Sequence[str] | Mapping[str, AttackFn] = (),
  attack_fns: Mapping[str, AttackFn] | None = None,
) -> Callable[..., dict]:
  """A jitted ``fn(variables, x, y, keys) -> {"clean"|name|...: [B]}``.

  Outputs, each ``[B]``:

  - ``"clean"`` and each attack name: bool, ``True`` when the example is
    classified correctly clean (``"clean"``) or correctly both clean and at
    the attack's point.
  - each ensemble name (``a+b+...``, ``autoattack``): bool, robust to every
    member; its members run once, as attacks of their own (and are reported
    too), and ``"<ensemble>/first"`` (int32) is the index of the first member
    that fools a correctly classified example, -1 for robust or
    misclassified examples (see ``first_success``).
  - for each minimal-perturbation attack ``m``: ``"m/l2"`` (float32,
    ``||x_adv - x||_2``) and ``"m/fooled"`` (bool, ``x_adv`` misclassified),
    plus ``"x_l2"`` (float32, ``||x||_2``).

  Build it once and reuse it: it compiles once per batch shape.

  Args:
    apply_fn: ``(variables, x) -> logits [B, K]`` (eval mode).
    attack_names: names accepted by ``parse_attack`` (or keys of
      ``attack_fns``, also as ensemble members).
    eps: perturbation budget in pixel units ([0, 1] scale).
    norm: ``"linf"`` or ``"l2"``.
    minimal_attacks: names accepted by ``parse_minimal_attack``, or a map
      from name to attack.
    attack_fns: extra named attacks ``(logits_fn, x, y, keys) -> x_adv``,
      already bound to their budget; reported like the named ones.

  Returns:
    The jitted function, with attributes ``attack_names`` (the robust
    accuracy keys: single attacks, then ensembles), ``ensembles`` (ensemble
    name -> member names) and ``minimal_names``.

  Raises:
    ValueError: for an unknown attack name.
  """
  attack_fns = dict(attack_fns or {})
  singles: dict[str, AttackFn] = {}
  ensembles: dict[str, tuple[str, ...]] = {}
  for name in (*attack_names, *attack_fns):
    members = None if name in attack_fns else ensemble_members(name)
    if members is not None:
      ensembles[name] = members
    for m in members or (name,):
      if m not in singles:
        singles[m] = attack_fns.get(m) or parse_attack(m)(eps, norm)
  if isinstance(minimal_attacks, Mapping):
    minimal = dict(minimal_attacks)
  else:
    minimal = {n: parse_minimal_attack(n) for n in minimal_attacks}

  @jax.jit
  def correct(variables, x, y, keys):
    logits_fn = lambda inputs: apply_fn(variables, inputs)
    clean = _predict(logits_fn, x) == y
    out = {"clean": clean}
    for n, attack in singles.items():
      x_adv = attack(logits_fn, x, y, keys)
      out[n] = clean & (_predict(logits_fn, x_adv) == y)
    for n, members in ensembles.items():
      first = first_success(jnp.stack([clean & ~out[m] for m in members]))
      out[n] = clean & (first < 0)
      out[f"{n}/first"] = first
    for n, attack in minimal.items():
      x_adv = attack(logits_fn, x, y, keys)
      out[f"{n}/l2"] = _common.flat_norm(x_adv - x, "l2")
      out[f"{n}/fooled"] = _predict(logits_fn, x_adv) != y
    if minimal:
      out["x_l2"] = _common.flat_norm(x, "l2")
    return out

  correct.attack_names = (*singles, *ensembles)
  correct.ensembles = ensembles
  correct.minimal_names = tuple(minimal)
  return correct


# Example i's key is fold_in(key, i): independent of batching and devices.
_fold_keys = jax.jit(jax.vmap(jax.random.fold_in, (None, 0)))


def per_example(
  evaluator: Callable[..., dict],
  variables: dict,
  split: data_lib.Split,
  *,
  batch_size: int = 500,
  key: jax.Array | None = None,
  log: Callable[[str], None] | None = None,
  label: str = "eval",
  extra_args: tuple = (),
) -> dict[str, np.ndarray]:
  """Runs a jitted per-batch ``evaluator`` over a split; per-example outputs.

  Every call has the same shape: the last batch is padded with zeros and
  its padding dropped from the outputs, so the evaluator compiles once.

  Args:
    evaluator: ``fn(variables, x, y, keys, *extra_args) -> {name: [B, ...]}``
      (``make_evaluator``, ``make_curve_evaluator``), every output with the
      batch axis first.
    variables: the model variables.
    split: the data.
    batch_size: examples per compiled call.
    key: PRNG key; example ``i`` of the split uses ``fold_in(key, i)``.
    log: optional progress callback, one line per batch with rate and ETA.
    label: first word of the progress lines.
    extra_args: further arguments passed to every call.

  Returns:
    ``{name: [N, ...] numpy}`` in split order.
  """
  key = jax.random.PRNGKey(0) if key is None else key
  n_total = split.num_examples
  batch_size = min(batch_size, n_total)
  parts: dict[str, list[np.ndarray]] = {}
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
    out = jax.device_get(
      evaluator(variables, x, y, _fold_keys(key, idx), *extra_args)
    )
    for n, v in out.items():
      parts.setdefault(n, []).append(np.asarray(v)[:b])
    done += b
    if log is not None:
      rate = done / max(time.perf_counter() - start, 1e-9)
      eta = (n_total - done) / max(rate, 1e-9)
      log(f"{label} {done}/{n_total} examples, {rate:.1f} ex/s, ETA {eta:.0f}s")
  return {n: np.concatenate(v) for n, v in parts.items()}


def minimal_perturbation_stats(
  l2: np.ndarray, x_l2: np.ndarray, clean: np.ndarray, fooled: np.ndarray
) -> dict:
  r"""Statistics of a minimal-perturbation attack's ``||r||_2`` and ``rho_2``.

  Over the correctly classified points the attack fooled:

  .. math::
    \rho_2(x) = \frac{\|r(x)\|_2}{\|x\|_2}

  and the fraction of correctly classified points it failed to fool.

  Args:
    l2: ``[N]`` float ``||x_adv - x||_2``.
    x_l2: ``[N]`` float ``||x||_2``.
    clean: ``[N]`` bool, classified correctly at ``x``.
    fooled: ``[N]`` bool, misclassified at ``x_adv``.

  Returns:
    ``{"num_points", "num_fooled", "failure_rate", "mean_l2", "median_l2",
    "mean_rho2", "median_rho2"}`` (the means and medians None when no point
    was fooled; ``failure_rate`` None when no point is correct).

  Examples:
    >>> s = minimal_perturbation_stats(
    ...     l2=np.array([1.0, 3.0, 5.0]), x_l2=np.array([2.0, 2.0, 2.0]),
    ...     clean=np.array([True, True, False]),
    ...     fooled=np.array([True, False, True]))
    >>> s["num_fooled"], s["failure_rate"], s["mean_l2"], s["mean_rho2"]
    (1, 0.5, 1.0, 0.5)

  References:
    Guo, Zhang, Zhang & Chen, *Sparse DNNs with Improved Adversarial
    Robustness*, NeurIPS 2018, Sec. 5 (rho_2); Moosavi-Dezfooli et al.,
    *DeepFool*, CVPR 2016, Eq. (15) (rho_adv).
  """
  clean = np.asarray(clean, bool)
  ok = clean & np.asarray(fooled, bool)
  r = np.asarray(l2, np.float64)[ok]
  rho = r / np.maximum(np.asarray(x_l2, np.float64)[ok], 1e-12)
  n_points, n_fooled = int(clean.sum()), int(ok.sum())

  def stat(fn, v):
    return float(fn(v)) if v.size else None

  return {
    "num_points": n_points,
    "num_fooled": n_fooled,
    "failure_rate": 1.0 - n_fooled / n_points if n_points else None,
    "mean_l2": stat(np.mean, r),
    "median_l2": stat(np.median, r),
    "mean_rho2": stat(np.mean, rho),
    "median_rho2": stat(np.median, rho),
  }


def _summarize(outputs: dict, evaluator) -> dict:
  """Accuracies and minimal-perturbation stats from per-example outputs."""
  n = outputs["clean"].shape[0]
  result = {
    "clean_accuracy": float(np.mean(outputs["clean"])),
    "robust_accuracy": {
      a: float(np.sum(outputs[a]) / n) for a in evaluator.attack_names
    },
    "num_examples": n,
  }
  if evaluator.minimal_names:
    result["minimal_perturbation"] = {
      m: minimal_perturbation_stats(
        outputs[f"{m}/l2"],
        outputs["x_l2"],
        outputs["clean"],
        outputs[f"{m}/fooled"],
      )
      for m in evaluator.minimal_names
    }
  return result


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
    "num_examples": int}``; ``robust_accuracy`` also holds the members of
    named ensembles, and ``"minimal_perturbation"`` (name ->
    ``minimal_perturbation_stats``) is added when the evaluator has
    minimal-perturbation attacks.
  """
  if evaluator is None:
    evaluator = make_evaluator(
      apply_fn, attack_names=attack_names, eps=eps, norm=norm
    )
  outputs = per_example(
    evaluator, variables, split, batch_size=batch_size, key=key, log=log
  )
  return _summarize(outputs, evaluator)


def evaluate_cascade(
  apply_fn: Callable[[dict, jax.Array], jax.Array],
  variables: dict,
  split: data_lib.Split,
  *,
  attack_names: tuple[str, ...],
  eps: float,
  norm: str = "linf",
  batch_size: int = 500,
  key: jax.Array | None = None,
  log: Callable[[str], None] | None = None,
  cache: dict | None = None,
) -> dict:
  """``evaluate`` for ensembles at AutoAttack's cost: members in cascade.

  AutoAttack runs each member of an ensemble only on the points that every
  earlier member failed to fool (Croce & Hein 2020, Sec. 5). The robust
  accuracy of the ensemble is the same as ``evaluate``'s, which runs every
  member on every point (each example is attacked on its own, with the
  per-example key ``fold_in(key, i)`` in both), but on a robust model the
  expensive members (APGD-T: 9 targets x 100 steps) see only the points
  that survive the cheap ones. A single attack named on its own (``pgd40``)
  runs on every correctly classified point, and an ensemble starting with
  it reuses that result. The members of an ensemble get no accuracy of
  their own (they never see every point).

  Args:
    apply_fn, variables, split, eps, norm, batch_size, key, log: as in
      ``evaluate``.
    attack_names: single attacks and ensembles (``a+b+c``).
    cache: a dict reused across calls to keep the jitted attack functions
      (one compilation per attack and batch size).

  Returns:
    ``{"clean_accuracy", "robust_accuracy": {name: float}, "num_examples"}``
    with one entry per name in ``attack_names``.
  """
  key = jax.random.PRNGKey(0) if key is None else key
  cache = {} if cache is None else cache
  n = split.num_examples

  def correct(attack, alive):
    idx = np.flatnonzero(alive)
    got = np.zeros(n, bool)
    got[idx] = _correct_on(
      apply_fn, variables, split, attack, idx, key, batch_size, cache, eps, norm
    )
    return got

  clean = correct(None, np.ones(n, bool))
  robust = {}  # attack -> [n] bool, for attacks run on every clean point
  for name in attack_names:
    alive = clean
    for m in ensemble_members(name) or (name,):
      if m in robust:
        got = robust[m]
      else:
        got = correct(m, alive)
        if alive is clean:
          robust[m] = got
      alive = alive & got
      if log is not None:
        log(f"{name}: {alive.mean():.4f} robust after {m}")
    robust[name] = alive
  return {
    "clean_accuracy": float(clean.mean()),
    "robust_accuracy": {a: float(robust[a].mean()) for a in attack_names},
    "num_examples": n,
  }


def _correct_on(
  apply_fn, variables, split, attack, idx, key, batch_size, cache, eps, norm
) -> np.ndarray:
  """``[len(idx)]`` bool: example ``idx[j]`` classified correctly at the
  point of ``attack`` (None: clean), in fixed-size padded batches."""
  fn = cache.get((attack, eps, norm))
  if fn is None:
    make = None if attack is None else parse_attack(attack)(eps, norm)

    @jax.jit
    def fn(variables, x, y, keys):
      logits_fn = lambda inputs: apply_fn(variables, inputs)
      x_at = x if make is None else make(logits_fn, x, y, keys)
      return _predict(logits_fn, x_at) == y

    cache[(attack, eps, norm)] = fn
  out = np.zeros(len(idx), bool)
  size = max(1, min(batch_size, split.num_examples))
  for start in range(0, len(idx), size):
    part = idx[start : start + size]
    pad = np.concatenate([part, np.zeros(size - len(part), part.dtype)])
    x = jnp.asarray(split.images[pad], jnp.float32) / 255.0
    y = jnp.asarray(split.labels[pad])
    keys = _fold_keys(key, jnp.asarray(pad, jnp.int32))
    out[start : start + len(part)] = np.asarray(fn(variables, x, y, keys))[
      : len(part)
    ]
  return out


def make_curve_evaluator(
  apply_fn: Callable[[dict, jax.Array], jax.Array],
  *,
  attack_name: str,
  norm: str = "linf",
) -> Callable[..., dict]:
  """A jitted ``fn(variables, x, y, keys, eps [E]) -> {"robust": [B, E]}``.

  ``robust[i, e]``: example ``i`` is classified correctly both clean and at
  the attack's point for budget ``eps[e]``. The budgets are a traced
  argument swept by ``lax.map`` inside one compiled function, so a new
  sweep does not recompile; the attack uses the same per-example keys at
  every budget.

  Args:
    apply_fn: ``(variables, x) -> logits [B, K]`` (eval mode).
    attack_name: a name accepted by ``parse_attack``.
    norm: ``"linf"`` or ``"l2"``.
  """
  make = parse_attack(attack_name)

  @jax.jit
  def robust(variables, x, y, keys, eps_values):
    logits_fn = lambda inputs: apply_fn(variables, inputs)
    clean = _predict(logits_fn, x) == y

    def at(eps):
      x_adv = make(eps, norm)(logits_fn, x, y, keys)
      return clean & (_predict(logits_fn, x_adv) == y)

    return {"robust": jax.lax.map(at, eps_values).T}

  return robust


def robustness_curve(
  apply_fn: Callable[[dict, jax.Array], jax.Array],
  variables: dict,
  split: data_lib.Split,
  *,
  attack_name: str,
  eps_values: Sequence[float],
  norm: str = "linf",
  batch_size: int = 500,
  key: jax.Array | None = None,
  log: Callable[[str], None] | None = None,
) -> dict:
  """Robust accuracy of one attack as a function of eps.

  With the same ``key`` the point at a given eps equals ``evaluate``'s for
  that attack (same per-example keys).

  Args:
    apply_fn: ``(variables, x [B, H, W, C]) -> logits [B, K]`` (eval mode).
    variables: the model variables.
    split: the data to evaluate on.
    attack_name: a name accepted by ``parse_attack``.
    eps_values: ``[E]`` budgets in pixel units, in the order reported.
    norm: ``"linf"`` or ``"l2"``.
    batch_size: examples per compiled call.
    key: PRNG key; example ``i`` uses ``fold_in(key, i)``.
    log: optional progress callback.

  Returns:
    ``{"attack": name, "eps": [E] list, "robust_accuracy": [E] list}``.
  """
  fn = make_curve_evaluator(apply_fn, attack_name=attack_name, norm=norm)
  eps_values = [float(e) for e in eps_values]
  out = per_example(
    fn,
    variables,
    split,
    batch_size=batch_size,
    key=key,
    log=log,
    label=f"eps sweep ({attack_name})",
    extra_args=(jnp.asarray(eps_values, jnp.float32),),
  )
  acc = out["robust"].sum(axis=0) / split.num_examples
  return {
    "attack": attack_name,
    "eps": eps_values,
    "robust_accuracy": [float(a) for a in acc],
  }
