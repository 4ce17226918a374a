r"""The adversarial winning ticket search (``awt``) and its ablation ``ntt``.

A sparse student is fitted at initialization to the dense teacher's
adversarial training dynamics, in the NTK view of training (Jacot et al.
2018; Lee et al. 2019): two networks whose outputs and empirical NTKs agree
on the training points follow the same gradient-descent trajectory to first
order. Carried to adversarial training, the points are adversarial ones.
Following Neural Tangent Transfer (Liu & Zenke, ICML 2020, Eq. 3–5) and
Shi et al. (AISTATS 2022), with DESIGN.md's formulation:

.. math::
  L(\theta, m) = \frac{\|f(\tilde X; \theta \odot m)
    - f(\tilde X; \theta_0)\|^2}{n C}
    + \lambda_K \frac{\|\Theta_m(\tilde X; \theta \odot m)
    - \Theta(\tilde X; \theta_0)\|_F^2}{n^2}
    + \frac{\lambda_2}{d} \|\theta \odot m\|^2

where :math:`\tilde X = X + \delta` are PGD points of ``config.adversarial``
against the teacher (``pruning.awt_attack_against="teacher"``, default) or
the student, recomputed for every batch; :math:`\Theta` is the empirical NTK
(neural-tangents, mean over the C logits) and :math:`\Theta_m` the sparse
student's, over the weights it keeps (``masked_ntk``: the kernel its
training follows); :math:`d` the target density.
:math:`\theta` is optimized with Adam; every ``awt_mask_every`` steps the
mask is reset to the top-d magnitudes of :math:`\theta` (global or
layerwise). The ticket is :math:`(\theta \odot m, m)`, trained afterwards
with PGD-AT from scratch like any other ticket. ``ntt`` is the same search on
clean points.

Config (``config.pruning``, defaults in brackets): ``awt_steps`` [100],
``awt_mask_every`` [10], ``awt_batch`` [32] points per step,
``awt_lr`` [1e-3], ``awt_lambda_ntk`` [1.0], ``awt_lambda_l2`` [1e-5],
``awt_init`` ["magnitude" | "snip"], ``awt_attack_against``
["teacher" | "student"], ``awt_checkpoint_every`` [0: ``awt_mask_every``]
steps between checkpoints when ``PruningContext.checkpoint_dir`` is set.

A killed search resumes bit-identically: step ``t`` draws its batch from
``(key, t)`` (``batch_indices``) and its attack starts from ``(key, t, i)``,
so the saved state is only the student, the mask, Adam's state, the step
and the history.
"""

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from awt import attacks, checkpoints, masks, ntk, training
from awt.pruning import scores
from awt.pruning._ticket import (
  PruningContext,
  SearchCheckpoints,
  Ticket,
  key_words,
)

PyTree = Any
INITS = ("magnitude", "snip")
AGAINST = ("teacher", "student")


def eval_logits_fn(model, batch_stats):
  """``f(params, x) -> [B, C]`` in eval mode (BatchNorm: running stats)."""

  def f(params, x):
    return model.apply(
      training.model_variables(params, batch_stats), x, train=False
    )

  return f


def ntk_fn(f):
  """Empirical NTK ``(x1, x2, params) -> [N1, N2]``, mean over logits.

  ``awt.ntk.empirical_fn`` with the Jacobian-contraction implementation,
  in neural-tangents' argument order.
  """
  kernel = ntk.empirical_fn(
    f, trace_axes=(-1,), implementation="jacobian_contraction"
  )
  return lambda x1, x2, params: kernel(params, x1, x2)


def _masked(tree, mask):
  return jax.tree.map(lambda t, m: t * m, tree, mask)


def masked_ntk(f, theta, mask, x) -> jax.Array:
  """NTK of the sparse network ``θ ↦ f(θ ⊙ m)``: ``J diag(m) Jᵀ``, ``[n, n]``.

  The empirical NTK over the weights a masked network trains (mean over
  logits), at ``θ ⊙ m``: the chain rule through ``θ ⊙ m`` multiplies each
  Jacobian column by its mask entry (``m² = m`` for a binary mask).
  """
  kernel = ntk_fn(lambda th, z: f(_masked(th, mask), z))
  return kernel(x, None, theta)


def loss_terms(f, kfn, theta, mask, x, f0, k0):
  r"""The output, NTK and L2 terms of the AWT loss (before weighting).

  Args:
    f: ``f(params, x) -> [n, C]``.
    kfn: ``kfn(x1, x2, params) -> [n, n]`` (``ntk_fn(f)``).
    theta: student weights (full tree); the network uses ``theta * mask``.
    mask: the current mask.
    x: ``[n, H, W, C]`` points (adversarial for awt, clean for ntt).
    f0: ``[n, C]`` teacher outputs at ``x``.
    k0: ``[n, n]`` teacher NTK at ``x``.

  The student's kernel is the NTK of the *sparse* network, the kernel its
  training follows: only the kept weights move, so it is
  :math:`J \operatorname{diag}(m) J^\top` with :math:`J` the Jacobian at
  :math:`\theta \odot m` (``masked_ntk``), not the kernel over all weights
  (``kfn`` at ``θ ⊙ m``), which also counts the directions of pruned weights
  that the ticket can never use. ``kfn`` is unused and kept for callers.

  Returns:
    ``(output, ntk, l2)``: ``||f - f0||² / (n C)``, ``||Θ_m - Θ0||²_F / n²``
    and ``||θ ⊙ m||²``.
  """
  del kfn
  eff = _masked(theta, mask)
  out = f(eff, x)
  n, c = out.shape
  output = jnp.sum((out - f0) ** 2) / (n * c)
  ntk = jnp.sum((masked_ntk(f, theta, mask, x) - k0) ** 2) / (n * n)
  l2 = sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(eff))
  return output, ntk, l2


def _option(ctx, name, default, kind=float, choices=None):
  value = kind(ctx.config["pruning"].get(name, default))
  if choices is not None and value not in choices:
    raise ValueError(
      f"unknown pruning.{name} {value!r}; known: {', '.join(choices)}"
    )
  if kind in (int, float) and value < 0:
    raise ValueError(f"pruning.{name}={value} must be >= 0")
  return value


class _Hyper(NamedTuple):
  """The static settings of the compiled search steps (hashable)."""

  model: Any
  adversarial: bool
  against: str
  attack: tuple | None  # (eps, step_size, steps, norm) of the PGD points.


@functools.partial(jax.jit, static_argnames=("hyper",))
def _chunk(
  theta, opt_state, mask, teacher, batch_stats, coefs, stacked, *, hyper
):
  """``S`` search steps with a fixed mask as one compiled ``lax.scan``.

  Module-level and keyed by the hashable ``hyper``, so searches of the same
  network and attack (a resumed one, a sweep over the coefficients)
  compile once.

  Args:
    theta: the student's weights; ``opt_state`` its Adam state.
    mask: the mask of this period.
    teacher: the dense weights at initialization.
    batch_stats: the model's BatchNorm statistics (eval mode).
    coefs: ``{"lr", "lambda_ntk", "lambda_l2"}`` float32 scalars, the last
      already divided by the density.
    stacked: ``{"image": [S, n, H, W, C], "label": [S, n], "keys": [S, n]}``.
    hyper: the static settings.

  Returns:
    ``((theta, opt_state), metrics)`` with ``[S]`` ``loss``, ``output``,
    ``ntk`` and ``l2``.
  """
  f = eval_logits_fn(hyper.model, batch_stats)
  kfn = ntk_fn(f)
  tx = optax.adam(coefs["lr"])

  def points(th, x, y, keys):
    if not hyper.adversarial:
      return x
    target = teacher if hyper.against == "teacher" else _masked(th, mask)
    eps, step_size, steps, norm = hyper.attack
    return attacks.pgd(
      lambda z: f(target, z),
      x,
      y,
      keys,
      eps=eps,
      step_size=step_size,
      steps=steps,
      norm=norm,
      select="last",
    )

  def step(carry, batch):
    th, opt = carry
    x = jax.lax.stop_gradient(
      points(th, batch["image"], batch["label"], batch["keys"])
    )
    f0, k0 = f(teacher, x), kfn(x, None, teacher)

    def total(w):
      output, ntk, l2 = loss_terms(f, kfn, w, mask, x, f0, k0)
      loss = output + coefs["lambda_ntk"] * ntk + coefs["lambda_l2"] * l2
      return loss, (output, ntk, l2)

    (loss, (output, ntk, l2)), grads = jax.value_and_grad(total, has_aux=True)(
      th
    )
    updates, opt = tx.update(grads, opt, th)
    th = optax.apply_updates(th, updates)
    return (th, opt), {"loss": loss, "output": output, "ntk": ntk, "l2": l2}

  return jax.lax.scan(step, (theta, opt_state), stacked)


def _data_seed(key: jax.Array) -> int:
  """A numpy seed drawn from ``key`` (the search's data order)."""
  return int(jax.random.randint(key, (), 0, np.iinfo(np.int32).max))


def batch_indices(seed: int, step: int, num_examples: int, n: int):
  """The ``n`` distinct training examples of search step ``step``.

  Drawn from ``(seed, step)`` alone, so a resumed search sees the batches an
  uninterrupted one does without saving any generator state.

  Returns:
    ``[n]`` int64 indices into the training split.
  """
  rng = np.random.default_rng([seed, step])
  return rng.choice(num_examples, n, replace=False)


def _boundary(done: int, steps: int, *periods: int) -> int:
  """The first step after ``done`` that ends a period (or ``steps``)."""
  return min([steps] + [(done // p + 1) * p for p in periods])


def search(ctx: PruningContext, key: jax.Array, *, adversarial: bool) -> Ticket:
  """Runs the AWT (``adversarial=True``) or NTT search; see the module doc.

  With ``ctx.checkpoint_dir`` set, the search state (student weights, mask,
  Adam state, step, history) is saved there every
  ``pruning.awt_checkpoint_every`` steps and at the end, and a search
  started again with the same settings continues from the newest complete
  checkpoint: its ticket and history are bit-identical to an uninterrupted
  run's. Steps between two mask updates or checkpoints run as one compiled
  ``lax.scan``; progress (loss terms, rate, ETA) goes to ``ctx.log`` once
  per mask period.

  Raises:
    ValueError: a bad option; ``awt.checkpoints.CheckpointError`` for a
      checkpoint of another search; FloatingPointError when the loss stops
      being finite (the last good checkpoint is kept).
  """
  start = time.perf_counter()
  method = "awt" if adversarial else "ntt"
  log = ctx.log or logging.info
  steps = _option(ctx, "awt_steps", 100, int)
  every = max(1, _option(ctx, "awt_mask_every", 10, int))
  # 0 (the configs' default) means: at every mask reset.
  ckpt_every = _option(ctx, "awt_checkpoint_every", every, int) or every
  n = _option(ctx, "awt_batch", 32, int)
  lr = _option(ctx, "awt_lr", 1e-3)
  lam_k = _option(ctx, "awt_lambda_ntk", 1.0)
  lam_2 = _option(ctx, "awt_lambda_l2", 1e-5)
  init = _option(ctx, "awt_init", "magnitude", str, INITS)
  against = _option(ctx, "awt_attack_against", "teacher", str, AGAINST)
  if ckpt_every < 1:
    raise ValueError(f"pruning.awt_checkpoint_every={ckpt_every} must be >= 1")
  if n > ctx.split.num_examples:
    raise ValueError(
      f"pruning.awt_batch={n} is larger than the {ctx.split.num_examples} "
      "training examples"
    )
  density = scores.target_density(ctx)
  paths = scores.prunable(ctx)
  scope = ctx.config["pruning"].get("scope", "global")
  teacher = ctx.params
  f = eval_logits_fn(ctx.model, ctx.batch_stats)
  adv = ctx.config["adversarial"]
  attack_steps = int(adv.get("steps", 1)) if adversarial else 0
  adv_norm = str(adv.get("norm", "linf"))
  init_key, data_key, attack_key = jax.random.split(key, 3)
  tx = optax.adam(lr)
  hyper = _Hyper(
    model=ctx.model,
    adversarial=adversarial,
    against=against,
    attack=(
      (float(adv["eps"]), float(adv["step_size"]), attack_steps, adv_norm)
      if adversarial
      else None
    ),
  )
  coefs = {
    "lr": jnp.float32(lr),
    "lambda_ntk": jnp.float32(lam_k),
    "lambda_l2": jnp.float32(lam_2 / density),
  }

  data_seed = _data_seed(data_key)
  settings = {
    "method": method,
    "key": key_words(key),
    "steps": steps,
    "num_examples": int(ctx.split.num_examples),
    "density": density,
    "scope": scope,
    "paths": [list(p) for p in paths],
    "mask_every": every,
    "checkpoint_every": ckpt_every,
    "batch": n,
    "lr": lr,
    "lambda_ntk": lam_k,
    "lambda_l2": lam_2,
    "init": init,
    "against": against if adversarial else None,
    "attack": (
      {k: adv.get(k) for k in ("norm", "eps", "step_size", "steps")}
      if adversarial
      else None
    ),
  }
  images, labels = ctx.split.images, ctx.split.labels
  with SearchCheckpoints(ctx.checkpoint_dir, settings) as ckpt:
    template = {
      "theta": teacher,
      "opt_state": tx.init(teacher),
      "mask": masks.ones(teacher),
    }
    restored = ckpt.restore(template)
    if restored is None:
      if init == "snip":
        first = scores.snip(ctx, init_key)
        mask, passes = first.mask, first.info["passes"]
      else:
        mask = masks.topk(
          jax.tree.map(jnp.abs, teacher), density, scope=scope, paths=paths
        )
        passes = 0
      theta, opt_state = teacher, tx.init(teacher)
      done, history, earlier_s = 0, [], 0.0
      pending = {}
    else:
      done, state, meta = restored
      if done > steps:
        raise checkpoints.CheckpointError(
          f"search checkpoint in {ctx.checkpoint_dir} is at step {done}, "
          f"past pruning.awt_steps={steps}"
        )
      theta, opt_state, mask = state["theta"], state["opt_state"], state["mask"]
      passes, history = meta["init_passes"], meta["history"]
      earlier_s = meta["wall_time_s"]
      pending = {
        k: np.asarray(v, np.float32) for k, v in meta["pending"].items()
      }
      log(
        f"{method} search: resuming at step {done} of {steps} from "
        f"{ckpt.directory}"
      )
    t_last, done_last = time.perf_counter(), done
    while done < steps:
      length = _boundary(done, steps, every, ckpt_every) - done
      idx = np.stack(
        [
          batch_indices(data_seed, t, len(labels), n)
          for t in range(done, done + length)
        ]
      )
      ids = done * n + np.arange(length * n).reshape(length, n)
      stacked = {
        "image": jnp.asarray(images[idx], jnp.float32) / 255.0,
        "label": jnp.asarray(labels[idx]),
        "keys": jax.vmap(jax.vmap(lambda i: jax.random.fold_in(attack_key, i)))(
          jnp.asarray(ids)
        ),
      }
      (theta, opt_state), metrics = _chunk(
        theta,
        opt_state,
        mask,
        teacher,
        ctx.batch_stats,
        coefs,
        stacked,
        hyper=hyper,
      )
      metrics = jax.device_get(metrics)
      bad = np.flatnonzero(~np.isfinite(metrics["loss"]))
      if bad.size:
        raise FloatingPointError(
          f"{method} search loss is {metrics['loss'][bad[0]]} at step "
          f"{done + bad[0] + 1}; stopping, last good checkpoint kept"
        )
      done += length
      pending = {
        k: np.concatenate([pending.get(k, np.zeros(0, np.float32)), v])
        for k, v in metrics.items()
      }
      if done % every == 0 or done == steps:
        mask = masks.topk(
          jax.tree.map(jnp.abs, theta), density, scope=scope, paths=paths
        )
        row = {"step": done, "kept": masks.counts(mask, paths)[0]}
        row.update({k: float(np.mean(v)) for k, v in pending.items()})
        history.append(row)
        pending = {}
        now = time.perf_counter()
        rate = (done - done_last) / max(now - t_last, 1e-9)
        log(
          f"{method} search step {done}/{steps}: loss {row['loss']:.4g} "
          f"(output {row['output']:.4g}, ntk {row['ntk']:.4g}, l2 "
          f"{row['l2']:.4g}), kept {row['kept']}, {rate:.2f} steps/s, "
          f"ETA {(steps - done) / max(rate, 1e-9):.0f}s"
        )
        t_last, done_last = now, done
      if done % ckpt_every == 0 or done == steps:
        ckpt.save(
          done,
          {"theta": theta, "opt_state": opt_state, "mask": mask},
          {
            "history": history,
            "pending": {k: v.tolist() for k, v in pending.items()},
            "init_passes": int(passes),
            "wall_time_s": earlier_s + time.perf_counter() - start,
          },
        )
  # Per step: PGD (attack_steps passes), the student's output (1), and the
  # NTK terms: Jacobians of teacher and student (C passes each) and the
  # gradient through the student's kernel (about 2C more) -- an estimate.
  num_classes = jax.eval_shape(
    f, teacher, jnp.zeros((1, *ctx.image_shape))
  ).shape[-1]
  passes += steps * (attack_steps + 1 + 4 * num_classes)
  params = _masked(theta, mask)
  jax.block_until_ready(params)
  return Ticket(
    mask=mask,
    params=params,
    batch_stats=ctx.batch_stats,
    scores=jax.tree.map(jnp.abs, theta),
    info={
      "method": method,
      "passes": int(passes),
      "wall_time_s": earlier_s + time.perf_counter() - start,
      "sparsity": float(ctx.config["pruning"]["sparsity"]),
      "start": "init",
      "mask_init": init,
      "attack_against": against if adversarial else None,
      "history": history,
    },
  )


def awt(ctx: PruningContext, key: jax.Array) -> Ticket:
  """Adversarial winning ticket: the search on PGD points (Shi et al. 2022)."""
  return search(ctx, key, adversarial=True)


def ntt(ctx: PruningContext, key: jax.Array) -> Ticket:
  """Neural Tangent Transfer (Liu & Zenke 2020): the search on clean points."""
  return search(ctx, key, adversarial=False)


@functools.partial(jax.jit, static_argnames=("model", "attack"))
def _ntk_distances(model, batch_stats, dense, params, mask, x, y, key, attack):
  """``(masked, all-weights)`` relative adversarial-NTK distances; jitted.

  Module level with the hashable ``model`` and ``attack`` static, so every
  ticket of a sweep reuses one compilation.
  """
  f = eval_logits_fn(model, batch_stats)
  kfn = ntk_fn(f)
  eps, step_size, steps, norm = attack
  x_adv = attacks.pgd(
    lambda z: f(dense, z),
    x,
    y,
    key,
    eps=eps,
    step_size=step_size,
    steps=steps,
    norm=norm,
    select="last",
  )
  k_dense = kfn(x_adv, None, dense)
  return (
    ntk.relative_distance(masked_ntk(f, params, mask, x_adv), k_dense),
    ntk.relative_distance(kfn(x_adv, None, params), k_dense),
  )


def adversarial_ntk_distances(
  model, batch_stats, dense_params, params, mask, x, y, key, adversarial
) -> tuple[float, float]:
  """Relative Frobenius distances of a ticket's adversarial NTK to the dense.

  ``||Θ(X̃) − Θ_dense(X̃)||_F / ||Θ_dense(X̃)||_F`` with ``X̃`` PGD points of
  ``adversarial`` (a config block) against the dense network, so every
  ticket is compared on the same points; ``Θ`` is first the sparse
  network's kernel ``J diag(m) Jᵀ`` (``masked_ntk``, the one its training
  follows), then the kernel over all weights at ``params``.

  Returns:
    ``(masked, all_weights)`` floats.
  """
  attack = (
    float(adversarial["eps"]),
    float(adversarial["step_size"]),
    int(adversarial["steps"]),
    adversarial.get("norm", "linf"),
  )
  d_masked, d_all = _ntk_distances(
    model, batch_stats, dense_params, params, mask, x, y, key, attack
  )
  return float(d_masked), float(d_all)


def adversarial_ntk_distance(
  model,
  batch_stats,
  dense_params,
  params,
  x,
  y,
  key,
  adversarial,
  mask=None,
) -> float:
  """One of ``adversarial_ntk_distances``: masked with ``mask``, else all.

  Without ``mask`` the all-weights kernel at ``params`` is compared (the
  masked one with an all-ones mask equals it).
  """
  ones = mask is None
  if ones:
    mask = masks.ones(params)
  d_masked, d_all = adversarial_ntk_distances(
    model, batch_stats, dense_params, params, mask, x, y, key, adversarial
  )
  return d_all if ones else d_masked


METHODS = {"awt": awt, "ntt": ntt}
