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
    + \lambda_K \frac{\|\Theta(\tilde X; \theta \odot m)
    - \Theta(\tilde X; \theta_0)\|_F^2}{n^2}
    + \frac{\lambda_2}{d} \|\theta \odot m\|^2

where :math:`\tilde X = X + \delta` are PGD points of ``config.adversarial``
against the teacher (``pruning.awt_attack_against="teacher"``, default) or
the student, recomputed for every batch; :math:`\Theta` is the empirical NTK
(neural-tangents, mean over the C logits); :math:`d` the target density.
:math:`\theta` is optimized with Adam; every ``awt_mask_every`` steps the
mask is reset to the top-d magnitudes of :math:`\theta` (global or
layerwise). The ticket is :math:`(\theta \odot m, m)`, trained afterwards
with PGD-AT from scratch like any other ticket. ``ntt`` is the same search on
clean points.

Config (``config.pruning``, defaults in brackets): ``awt_steps`` [100],
``awt_mask_every`` [10], ``awt_batch`` [32] points per step,
``awt_lr`` [1e-3], ``awt_lambda_ntk`` [1.0], ``awt_lambda_l2`` [1e-5],
``awt_init`` ["magnitude" | "snip"], ``awt_attack_against``
["teacher" | "student"].
"""

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from awt import attacks, masks, ntk, training
from awt.pruning import scores
from awt.pruning._ticket import PruningContext, Ticket

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


def loss_terms(f, kfn, theta, mask, x, f0, k0):
  """The output, NTK and L2 terms of the AWT loss (before weighting).

  Args:
    f: ``f(params, x) -> [n, C]``.
    kfn: ``kfn(x1, x2, params) -> [n, n]`` (``ntk_fn(f)``).
    theta: student weights (full tree); the network uses ``theta * mask``.
    mask: the current mask.
    x: ``[n, H, W, C]`` points (adversarial for awt, clean for ntt).
    f0: ``[n, C]`` teacher outputs at ``x``.
    k0: ``[n, n]`` teacher NTK at ``x``.

  Returns:
    ``(output, ntk, l2)``: ``||f - f0||² / (n C)``, ``||Θ - Θ0||²_F / n²``
    and ``||θ ⊙ m||²``.
  """
  eff = _masked(theta, mask)
  out = f(eff, x)
  n, c = out.shape
  output = jnp.sum((out - f0) ** 2) / (n * c)
  ntk = jnp.sum((kfn(x, None, eff) - k0) ** 2) / (n * n)
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


def search(ctx: PruningContext, key: jax.Array, *, adversarial: bool) -> Ticket:
  """Runs the AWT (``adversarial=True``) or NTT search; see the module doc."""
  start = time.perf_counter()
  steps = _option(ctx, "awt_steps", 100, int)
  every = max(1, _option(ctx, "awt_mask_every", 10, int))
  n = _option(ctx, "awt_batch", 32, int)
  lr = _option(ctx, "awt_lr", 1e-3)
  lam_k = _option(ctx, "awt_lambda_ntk", 1.0)
  lam_2 = _option(ctx, "awt_lambda_l2", 1e-5)
  init = _option(ctx, "awt_init", "magnitude", str, INITS)
  against = _option(ctx, "awt_attack_against", "teacher", str, AGAINST)
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
  kfn = ntk_fn(f)
  adv = ctx.config["adversarial"]
  attack_steps = int(adv.get("steps", 1)) if adversarial else 0
  init_key, data_key, attack_key = jax.random.split(key, 3)

  if init == "snip":
    first = scores.snip(ctx, init_key)
    mask, passes = first.mask, first.info["passes"]
  else:
    mask = masks.topk(
      jax.tree.map(jnp.abs, teacher), density, scope=scope, paths=paths
    )
    passes = 0

  tx = optax.adam(lr)

  def points(theta, m, x, y, keys):
    if not adversarial:
      return x
    target = teacher if against == "teacher" else _masked(theta, m)
    return attacks.pgd(
      lambda z: f(target, z),
      x,
      y,
      keys,
      eps=adv["eps"],
      step_size=adv["step_size"],
      steps=attack_steps,
      norm=adv.get("norm", "linf"),
      select="last",
    )

  def step(m, carry, batch):
    theta, opt_state = carry
    x = jax.lax.stop_gradient(
      points(theta, m, batch["image"], batch["label"], batch["keys"])
    )
    f0, k0 = f(teacher, x), kfn(x, None, teacher)

    def total(th):
      output, ntk, l2 = loss_terms(f, kfn, th, m, x, f0, k0)
      return output + lam_k * ntk + lam_2 / density * l2, (output, ntk, l2)

    (loss, (output, ntk, l2)), grads = jax.value_and_grad(total, has_aux=True)(
      theta
    )
    updates, opt_state = tx.update(grads, opt_state, theta)
    theta = optax.apply_updates(theta, updates)
    metrics = {"loss": loss, "output": output, "ntk": ntk, "l2": l2}
    return (theta, opt_state), metrics

  @jax.jit
  def chunk(theta, opt_state, m, stacked):
    return jax.lax.scan(functools.partial(step, m), (theta, opt_state), stacked)

  rng = np.random.default_rng(
    int(jax.random.randint(data_key, (), 0, np.iinfo(np.int32).max))
  )
  images = ctx.split.images
  labels = ctx.split.labels
  theta, opt_state = teacher, tx.init(teacher)
  history = []
  done = 0
  while done < steps:
    length = min(every, steps - done)
    idx = np.stack(
      [rng.choice(len(labels), n, replace=False) for _ in range(length)]
    )
    ids = done * n + np.arange(length * n).reshape(length, n)
    stacked = {
      "image": jnp.asarray(images[idx], jnp.float32) / 255.0,
      "label": jnp.asarray(labels[idx]),
      "keys": jax.vmap(jax.vmap(lambda i: jax.random.fold_in(attack_key, i)))(
        jnp.asarray(ids)
      ),
    }
    (theta, opt_state), metrics = chunk(theta, opt_state, mask, stacked)
    done += length
    mask = masks.topk(
      jax.tree.map(jnp.abs, theta), density, scope=scope, paths=paths
    )
    history.append(
      {
        "step": done,
        "kept": masks.counts(mask, paths)[0],
        **{k: float(jnp.mean(v)) for k, v in metrics.items()},
      }
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
      "method": "awt" if adversarial else "ntt",
      "passes": int(passes),
      "wall_time_s": time.perf_counter() - start,
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


def adversarial_ntk_distance(
  model, batch_stats, dense_params, params, x, y, key, adversarial
) -> float:
  """Relative Frobenius distance of a ticket's adversarial NTK to the dense.

  ``||Θ(X̃; params) − Θ(X̃; dense)||_F / ||Θ(X̃; dense)||_F`` with ``X̃`` PGD
  points of ``adversarial`` (a config block) against the dense network, so
  every ticket is compared on the same points.
  """
  f = eval_logits_fn(model, batch_stats)
  kfn = ntk_fn(f)
  x_adv = attacks.pgd(
    lambda z: f(dense_params, z),
    x,
    y,
    key,
    eps=adversarial["eps"],
    step_size=adversarial["step_size"],
    steps=int(adversarial["steps"]),
    norm=adversarial.get("norm", "linf"),
    select="last",
  )
  k_dense = kfn(x_adv, None, dense_params)
  k = kfn(x_adv, None, params)
  return float(ntk.relative_distance(k, k_dense))


METHODS = {"awt": awt, "ntt": ntt}
