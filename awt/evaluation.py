"""Clean and robust accuracy, attack ensembles, minimal perturbations, checks.

Attacks are named as in the papers' tables: ``fgsm``; ``pgd40`` (PGD, 40
steps, random start, step size 2.5·eps/steps as Madry et al. 2018 advise);
``pgd40r5`` (5 restarts); ``bim10`` (PGD started at ``x`` instead of a
random point, PGD's step and best iterate: BIM-like, not Kurakin et al.
2017's exact schedule, which ``awt.studies.sparsity_robustness`` runs);
``apgd-ce`` / ``apgd-dlr`` (Croce & Hein 2020, 100 steps); ``apgd-t``
(APGD on the targeted DLR loss against each of the top ``min(9, K - 1)``
other classes); ``square1000`` (Square attack with 1000 queries). ``a+b+c``
is the ensemble of attacks ``a``, ``b``, ``c`` that keeps, per example, the
point of the first attack that succeeds; ``autoattack`` is AutoAttack's
standard ensemble without FAB, ``apgd-ce+apgd-t+square5000``.
``parse_attack`` turns a name into a function ``(logits_fn, x, y, keys) ->
x_adv`` at a given eps.

Robust accuracy counts an example as robust when it is classified correctly
both clean and at the attack's point (the AutoAttack convention), so an
ensemble's robust accuracy is at most each member's.

Minimal-perturbation attacks (``deepfool``, ``cw_l2``; see
``parse_minimal_attack``) have no eps; ``minimal_perturbation_stats``
summarizes the l_2 norms of their perturbations. ``robustness_report``
combines all of it with a robust-accuracy-vs-eps curve and the sanity checks
of Carlini et al. 2019 (``check_*``), each with a pass/fail flag and the
numbers behind it.
"""

import functools
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from awt import attacks
from awt import data as data_lib
from awt.attacks import _common

AttackFn = Callable[..., jax.Array]
_PGD = re.compile(r"pgd(\d+)(?:r(\d+))?")
_PATTERNS = (
  (re.compile(r"fgsm"), "fgsm"),
  (_PGD, "pgd"),
  (re.compile(r"bim(\d+)"), "bim"),
  (re.compile(r"apgd-(ce|dlr)(?:(\d+))?"), "apgd"),
  (re.compile(r"apgd-t(\d+)?"), "apgd-t"),
  (re.compile(r"square(\d+)?"), "square"),
)
ATTACK_NAME_FORMS = "fgsm, pgd<steps>[r<restarts>], bim<steps>, "
ATTACK_NAME_FORMS += "apgd-ce[<steps>], apgd-dlr[<steps>], apgd-t[<steps>], "
ATTACK_NAME_FORMS += "square<queries>, autoattack, <name>+<name>+..."
# AutoAttack's "standard" version (Croce & Hein 2020) without FAB-T, which
# awt does not implement.
AUTOATTACK = ("apgd-ce", "apgd-t", "square5000")
# Targets of APGD-T: the top-9 classes of AutoAttack, at most K - 1.
APGD_T_TARGETS = 9

_MINIMAL_PATTERNS = (
  (re.compile(r"deepfool(\d+)?"), "deepfool"),
  (re.compile(r"cw_l2(?:-(\d+)x(\d+))?"), "cw_l2"),
)
MINIMAL_NAME_FORMS = "deepfool[<max_iter>], cw_l2[-<binary_steps>x<steps>]"


def apgd_t(
  logits_fn: _common.LogitsFn,
  x: jax.Array,
  y: jax.Array,
  key: jax.Array,
  *,
  eps: float,
  norm: str = "linf",
  steps: int = 100,
  num_targets: int = APGD_T_TARGETS,
) -> jax.Array:
  r"""APGD-T: targeted-DLR APGD against each of the most likely other classes.

  Run ``j`` (``j = 0 .. T-1``, ``T = min(num_targets, K - 1)``) attacks the
  target ``t_j``, the class with the ``(j+1)``-th largest clean logit among
  the classes ``!= y``, maximizing the targeted DLR loss

  .. math::
    \mathrm{DLR}_t(z, y, t_j) = -\frac{z_y - z_{t_j}}
      {z_{\pi_1} - (z_{\pi_3} + z_{\pi_4}) / 2}

  from its own random start (keys ``fold_in(keys[i], j + 1)``). Per example
  the result is the point of the first run that makes the model misclassify
  it; an example is robust only if every run fails. Runs are one
  ``lax.fori_loop``; every run attacks the whole batch (fixed shapes).

  Args:
    logits_fn: pure ``x [B, H, W, C] -> logits [B, K]``, ``K >= 4``.
    x: ``[B, H, W, C]`` float32 in [0, 1].
    y: ``[B]`` int32 true labels.
    key: one PRNG key or per-example keys ``[B, 2]``.
    eps: perturbation budget in pixel units.
    norm: ``"linf"`` or ``"l2"``.
    steps: APGD iterations per target.
    num_targets: at most this many targets (AutoAttack: 9).

  Returns:
    ``x_adv: [B, H, W, C]`` float32 in [0, 1], ``||x_adv - x|| <= eps``;
    ``x`` itself for examples no run fools.

  Raises:
    ValueError: for ``K < 4`` classes (the targeted DLR loss needs four).

  References:
    Croce & Hein, *Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks*, ICML 2020, Eq. (7) and
    Sec. 5 ("APGD-T ... top-9 classes"); AutoAttack code
    (``APGDTargetedAttack``, ``n_target_classes=9``).
  """
  keys = _common.per_example_keys(key, x.shape[0])
  z = logits_fn(x)
  k = z.shape[-1]
  if k < 4:
    raise ValueError(f"apgd-t needs >= 4 classes (targeted DLR), got {k}")
  n = min(num_targets, k - 1)
  others = jnp.where(jax.nn.one_hot(y, k, dtype=bool), -jnp.inf, z)
  targets = jax.lax.top_k(others, n)[1]  # [B, n]

  def run(j, carry):
    x_best, fooled = carry
    target = jax.lax.dynamic_index_in_dim(targets, j, axis=1, keepdims=False)
    x_j = attacks.apgd(
      logits_fn,
      x,
      y,
      _common.restart_keys(keys, j + 1),
      eps=eps,
      norm=norm,
      steps=steps,
      loss="dlr",
      targeted=True,
      target=target,
    )
    fooled_j = jnp.argmax(logits_fn(x_j), axis=-1) != y
    take = ~fooled & fooled_j
    return jnp.where(_common._bcast(take, x), x_j, x_best), fooled | fooled_j

  clean_fooled = jnp.argmax(z, axis=-1) != y
  return jax.lax.fori_loop(0, n, run, (x, clean_fooled))[0]


def first_success(fooled: jax.Array) -> jax.Array:
  """Index of the first attack that fools each example, or -1 if none.

  Args:
    fooled: ``[A, B]`` bool, ``fooled[a, i]``: attack ``a`` fools example
      ``i``, attacks in the ensemble's order.

  Returns:
    ``[B]`` int32 in ``[-1, A)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> first_success(jnp.array([[0, 1, 0], [0, 1, 1]], bool))
    Array([-1,  0,  1], dtype=int32)
  """
  fooled = jnp.asarray(fooled, bool)
  first = jnp.argmax(fooled, axis=0).astype(jnp.int32)
  return jnp.where(jnp.any(fooled, axis=0), first, -1)


def ensemble_attack(members: Sequence[AttackFn]) -> AttackFn:
  """The AutoAttack ensemble: per example, the first member that succeeds.

  Every member attacks the clean batch with the same per-example keys; the
  returned point of example ``i`` is that of the first member whose point
  ``i`` is misclassified, or ``x[i]`` if none is (AutoAttack's rule; it runs
  later members only on the still-robust points, which gives the same
  result for attacks that treat examples independently).

  Args:
    members: attacks ``(logits_fn, x, y, keys) -> x_adv`` in order.

  Returns:
    An attack ``(logits_fn, x, y, keys) -> x_adv [B, H, W, C]``.

  References:
    Croce & Hein, ICML 2020, Sec. 5 (AutoAttack).
  """
  members = tuple(members)

  def attack(logits_fn, x, y, key):
    points = jnp.stack([m(logits_fn, x, y, key) for m in members])
    preds = jax.vmap(lambda p: jnp.argmax(logits_fn(p), axis=-1))(points)
    first = first_success(preds != y[None, :])
    chosen = points[jnp.maximum(first, 0), jnp.arange(x.shape[0])]
    return jnp.where(_common._bcast(first >= 0, x), chosen, x)

  return attack


def ensemble_members(name: str) -> tuple[str, ...] | None:
  """The member names of an ensemble name (``a+b``, ``autoattack``), or None."""
  if name == "autoattack":
    return AUTOATTACK
  if "+" in name:
    return tuple(name.split("+"))
  return None


def parse_attack(name: str) -> Callable[[float, str], AttackFn]:
  """Turns an attack name into ``make(eps, norm) -> attack(f, x, y, keys)``.

  ``eps`` may be a traced scalar (``robustness_curve`` sweeps it inside one
  compiled function).

  Raises:
    ValueError: for a name that is none of the known forms.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> attack = parse_attack("pgd10")(0.1, "linf")
    >>> f = lambda v: v.reshape(v.shape[0], -1) @ jnp.array([[1.0, -1.0]])
    >>> x = jnp.full((1, 1, 1, 1), 0.5)
    >>> attack(f, x, jnp.array([0]), jax.random.PRNGKey(0)).ravel()
    Array([0.4], dtype=float32)
  """
  members = ensemble_members(name)
  if members is not None:
    makes = [parse_attack(m) for m in members]
    return lambda eps, norm: ensemble_attack([mk(eps, norm) for mk in makes])
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
      if steps < 1:
        break
      return lambda eps, norm: functools.partial(
        attacks.apgd, eps=eps, norm=norm, loss=m.group(1), steps=steps
      )
    if kind == "apgd-t":
      steps = int(m.group(1) or 100)
      if steps < 1:
        break
      return lambda eps, norm: functools.partial(
        apgd_t, eps=eps, norm=norm, steps=steps
      )
    if kind == "square":
      queries = int(m.group(1) or 1000)
      if queries < 1:
        break
      return lambda eps, norm: functools.partial(
        attacks.square, eps=eps, norm=norm, queries=queries
      )
  raise ValueError(f"unknown attack {name!r}; known forms: {ATTACK_NAME_FORMS}")


def parse_minimal_attack(name: str) -> AttackFn:
  """Turns a minimal-perturbation attack name into ``attack(f, x, y, keys)``.

  ``deepfool`` is l_2 DeepFool with 50 iterations (``deepfool<max_iter>``
  sets them) and overshoot 0.02; ``cw_l2`` is Carlini-Wagner L2 with the
  reference budget, 9 binary steps of 1000 Adam steps
  (``cw_l2-<binary_steps>x<steps>`` sets them).

  Raises:
    ValueError: for a name that is none of the known forms.
  """
  for pattern, kind in _MINIMAL_PATTERNS:
    m = pattern.fullmatch(name)
    if not m:
      continue
    if kind == "deepfool":
      max_iter = int(m.group(1) or 50)
      if max_iter >= 1:
        return functools.partial(attacks.deepfool, norm="l2", max_iter=max_iter)
    else:
      binary_steps, steps = int(m.group(1) or 9), int(m.group(2) or 1000)
      if binary_steps >= 1 and steps >= 1:
        return functools.partial(
          attacks.cw_l2, binary_steps=binary_steps, steps=steps
        )
  raise ValueError(
    f"unknown minimal-perturbation attack {name!r}; known forms: "
    f"{MINIMAL_NAME_FORMS}"
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


# Slack for comparing accuracies that are ratios of counts.
_FLOAT_SLACK = 1e-9


def check_monotone(
  eps: Sequence[float], accuracy: Sequence[float], *, tolerance: float = 0.01
) -> dict:
  """Sanity check: robust accuracy does not increase with eps.

  A larger ball contains the smaller one, so a working attack cannot do
  worse; an increase means the attack fails to find points it could reach.

  Args:
    eps: ``[E]`` budgets.
    accuracy: ``[E]`` robust accuracies at those budgets.
    tolerance: allowed increase between consecutive budgets (attack noise).

  Returns:
    ``{"passed", "max_increase", "at_eps" (where the largest increase
    ends, None without one), "tolerance", "eps", "robust_accuracy"}``
    (sorted by eps).

  Examples:
    >>> c = check_monotone([0.0, 0.1, 0.2], [0.9, 0.5, 0.6])
    >>> c["passed"], round(c["max_increase"], 6), c["at_eps"]
    (False, 0.1, 0.2)

  References:
    Carlini et al., *On Evaluating Adversarial Robustness*, arXiv:1902.06705,
    2019, Sec. 5.3 ("perform a sweep over eps").
  """
  order = np.argsort(np.asarray(eps, np.float64), kind="stable")
  e = np.asarray(eps, np.float64)[order]
  a = np.asarray(accuracy, np.float64)[order]
  rises = np.diff(a)
  max_increase = float(max(rises.max(), 0.0)) if rises.size else 0.0
  at_eps = float(e[int(np.argmax(rises)) + 1]) if max_increase > 0 else None
  return {
    "passed": bool(max_increase <= tolerance + _FLOAT_SLACK),
    "max_increase": max_increase,
    "at_eps": at_eps,
    "tolerance": tolerance,
    "eps": e.tolist(),
    "robust_accuracy": a.tolist(),
  }


def check_large_eps(
  eps: float, accuracy: float, *, max_accuracy: float = 0.02
) -> dict:
  """Sanity check: at a very large eps the attack brings accuracy near zero.

  With a ball that covers the whole image box any input is reachable, so
  only a constant classifier keeps accuracy; a model that does not drop to
  ~0 masks its gradients (or the attack is broken).

  Args:
    eps: the large budget.
    accuracy: robust accuracy there.
    max_accuracy: the largest accuracy that passes.

  Returns:
    ``{"passed", "eps", "robust_accuracy", "max_accuracy"}``.

  References:
    Carlini et al. 2019, Sec. 5.3 ("unbounded attacks should reach 100%
    success"); Athalye, Carlini & Wagner, ICML 2018, Sec. 3.1.
  """
  return {
    "passed": bool(accuracy <= max_accuracy + _FLOAT_SLACK),
    "eps": float(eps),
    "robust_accuracy": float(accuracy),
    "max_accuracy": max_accuracy,
  }


def check_gradient_masking(
  black_box: Mapping[str, float],
  white_box: Mapping[str, float],
  *,
  margin: float = 0.02,
) -> dict:
  """Sanity check: the black-box attack is not much stronger than white-box.

  Fails when the strongest black-box attack's robust accuracy is more than
  ``margin`` below the strongest white-box attack's: gradients that mislead
  the white-box attacks (masking) while the model is not robust.

  Args:
    black_box: attack name -> robust accuracy (score-based attacks).
    white_box: attack name -> robust accuracy (gradient-based attacks).
    margin: allowed advantage of the black-box attack (accuracy units).

  Returns:
    ``{"passed", "black_box_attack", "black_box_accuracy",
    "best_white_box_attack", "best_white_box_accuracy", "margin"}``.

  Raises:
    ValueError: if either map is empty.

  References:
    Athalye, Carlini & Wagner, *Obfuscated Gradients Give a False Sense of
    Security*, ICML 2018, Sec. 3.1 ("black-box attacks are better than
    white-box"); Carlini et al. 2019, Sec. 5.
  """
  if not black_box or not white_box:
    raise ValueError("check_gradient_masking needs black- and white-box")
  bb = min(black_box, key=black_box.get)
  wb = min(white_box, key=white_box.get)
  return {
    "passed": bool(black_box[bb] >= white_box[wb] - margin - _FLOAT_SLACK),
    "black_box_attack": bb,
    "black_box_accuracy": float(black_box[bb]),
    "best_white_box_attack": wb,
    "best_white_box_accuracy": float(white_box[wb]),
    "margin": margin,
  }


def check_convergence(
  attack: str,
  accuracy: float,
  stronger: str,
  stronger_accuracy: float,
  *,
  margin: float = 0.02,
) -> dict:
  """Sanity check: more steps and restarts do not lower accuracy much more.

  Fails when the stronger attack (``stronger_pgd``: 4x steps, 3x restarts)
  is more than ``margin`` below the configured one: the configured attack
  has not converged and overestimates robustness.

  Args:
    attack: the configured attack's name.
    accuracy: its robust accuracy.
    stronger: the stronger attack's name.
    stronger_accuracy: its robust accuracy.
    margin: allowed drop (accuracy units).

  Returns:
    ``{"passed", "attack", "robust_accuracy", "stronger_attack",
    "stronger_robust_accuracy", "margin"}``.

  References:
    Carlini et al. 2019, Sec. 5.2 ("verify that the attack has converged",
    "increase the number of iterations and random restarts").
  """
  return {
    "passed": bool(stronger_accuracy >= accuracy - margin - _FLOAT_SLACK),
    "attack": attack,
    "robust_accuracy": float(accuracy),
    "stronger_attack": stronger,
    "stronger_robust_accuracy": float(stronger_accuracy),
    "margin": margin,
  }


def stronger_pgd(name: str) -> str:
  """The convergence check's PGD: ``pgd<4 steps>r<3 restarts>``.

  Examples:
    >>> stronger_pgd("pgd40"), stronger_pgd("pgd10r2")
    ('pgd160r3', 'pgd40r6')

  Raises:
    ValueError: if ``name`` is not a ``pgd<steps>[r<restarts>]`` name.
  """
  m = _PGD.fullmatch(name)
  if not m:
    raise ValueError(f"not a pgd<steps>[r<restarts>] attack: {name!r}")
  return f"pgd{4 * int(m.group(1))}r{3 * int(m.group(2) or 1)}"


def is_black_box(name: str) -> bool:
  """Whether an attack only queries the model (Square), not its gradients."""
  return name.startswith("square")


def large_eps(norm: str, image_shape: Sequence[int]) -> float:
  """A budget whose ball covers the image box ``[0, 1]^d``.

  1 for l_inf; ``sqrt(d)``, the box's diameter, for l_2.
  """
  _common.check_norm(norm)
  return 1.0 if norm == "linf" else float(math.sqrt(np.prod(image_shape)))


def _first(names: Sequence[str], prefix: str, default: str) -> str:
  pattern = re.compile(re.escape(prefix) + r"\d*(?:r\d+)?")
  return next((n for n in names if pattern.fullmatch(n)), default)


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
    ensemble: ensemble member names, or None for the default.

  Returns:
    ``{"attacks": tuple, "ensemble": "a+b+c", "pgd": name,
    "stronger_pgd": name}``.
  """
  names = list(attack_names)
  pgd = _first(names, "pgd", "pgd40")
  if ensemble is None:
    ensemble = (
      _first(names, "apgd-ce", "apgd-ce"),
      _first(names, "apgd-t", "apgd-t"),
      _first(names, "square", "square1000"),
    )
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
