r"""The adversarial winning ticket search (``awt``) and its ablation ``ntt``.

A sparse student is fitted at initialization to the dense teacher's
adversarial training dynamics, in the NTK view of training (Jacot et al.
2018; Lee et al. 2019): two networks whose outputs and empirical NTKs agree
on the training points follow the same gradient-descent trajectory to first
order. Neural Tangent Transfer (NTT; Liu & Zenke, ICML 2020) fits them on
clean points; the adversarial winning ticket (Shi et al., AISTATS 2022) on
adversarial ones. The search minimizes, over the student's weights
:math:`\theta` with a binary mask :math:`m` at density :math:`d`,

.. math::
  L(\theta, m) = \frac{\|f(\tilde X; \theta \odot m)
    - f(\tilde X; \theta_0)\|^2}{n C}
    + \lambda_K \frac{\|\Theta_s(\tilde X_1, \tilde X_2)
    - \Theta(\tilde X_1, \tilde X_2; \theta_0)\|_F^2}{Z}
    + \frac{\lambda_2}{d} \|w \odot m\|^2

on a batch :math:`\tilde X = X + \delta` of ``n`` points: PGD points of
``config.adversarial`` against the teacher
(``pruning.awt_attack_against="teacher"``, default) or the student,
recomputed for every batch (``awt``), or the clean points (``ntt``).
:math:`\theta_0` are the teacher's (dense) weights at initialization,
:math:`C` the number of logits, :math:`\Theta` the empirical NTK
(neural-tangents). The terms are ``output``, ``ntk`` and ``l2`` of
:func:`loss_terms`. Every option below is one key of ``config.pruning``,
declared once in ``OPTIONS`` (default, check, doc) and read with
``awt.pruning.option``; NTT's choice is the default unless marked as our
deviation:

* ``awt_kernel``: ``"cross_full"`` (NTT): :math:`\Theta` is the full
  ``[n/2, n/2, C, C]`` cross-kernel between the first half
  :math:`\tilde X_1` and the second half :math:`\tilde X_2` of the batch,
  not traced over logits (neural-tangents ``trace_axes=()``);
  ``"trace"``: the ``[n, n]`` kernel of the whole batch with itself
  (diagonal included), mean over the logits.
* ``awt_student_kernel``: ``"all"`` (NTT): :math:`\Theta_s` is the kernel
  over all weights at :math:`\theta \odot m`; ``"masked"`` (our deviation):
  :math:`J \operatorname{diag}(m) J^\top`, the kernel of
  :math:`\theta \mapsto f(\theta \odot m)`, which the sparse network's
  training follows (only the kept weights move).
* ``awt_ntk_norm``: ``"relative"`` (our deviation, default):
  :math:`Z = \|\Theta(\tilde X_1, \tilde X_2; \theta_0)\|_F^2`, so
  :math:`\lambda_K` does not depend on the kernel's scale (network width,
  input size); ``"mean"`` (NTT): :math:`Z` = the number of kernel entries.
* ``awt_lambda_ntk`` [3.0]: :math:`\lambda_K`, chosen so that the logged
  :math:`\lambda_K \cdot` ntk : output ratio at the start of the search is
  in NTT's range (~1-10; NTT's MLP notebook logs ~6) on the digits and the
  mnist5k MLPs (the measurements at its declaration in ``OPTIONS``); our
  deviation from NTT's 1e-3, which goes with ``"mean"``.
* ``awt_l2_on``: ``"weights"`` (NTT): :math:`w` are the prunable kernels
  (``awt.pruning.scores.prunable``); ``"all"``: every parameter, biases
  included. ``awt_lambda_l2`` [1e-4, NTT]: :math:`\lambda_2`.
* ``awt_lr`` [5e-4], ``awt_batch`` [64], ``awt_epochs`` [20] (NTT's MLP
  notebook; Adam): the search runs ``round(awt_epochs * N / awt_batch)``
  steps on the ``N`` training examples, or ``awt_steps`` if positive.
* ``awt_mask_every`` [100] (NTT): the mask is reset to the top-d scores of
  :math:`\theta` after every multiple of ``awt_mask_every`` steps before
  the last step, never after it: the final period optimizes the weights
  under a fixed mask, and that mask is returned (NTT's code stops resetting
  one multiple earlier, below ``steps - awt_mask_every``). A search
  shorter than one period keeps its initial mask. ``awt_final_update``
  [False]; True (our earlier deviation): reset also after the last step.
* ``awt_init``: the initial mask, ``"magnitude"`` (NTT: the teacher's
  magnitude mask, the same score as the resets) or ``"snip"``
  (``awt.pruning.scores.snip``).
* ``awt_global_score`` (``pruning.scope="global"`` only):
  ``"normalized"`` (our deviation, default): the magnitude score of a
  weight is :math:`|\theta| / \sigma_l`, :math:`\sigma_l` the standard
  deviation of its layer's weights at initialization (1 where that is 0),
  so layers with different initialization scales compete on equal terms
  and none is emptied (a pruned weight gets no gradient through
  :math:`\theta \odot m` and never comes back); ``"raw"`` (NTT):
  :math:`|\theta|`. A layerwise ranking is unaffected by a per-layer
  constant and uses :math:`|\theta|`. Raw magnitudes at initialization
  allocate by each layer's initialization scale,
  :math:`1/\sqrt{\text{fan-in}}`, so which is better depends on the
  layer widths (docs/results/awt.md, 95%, 5 seeds,
  clean output term, ensemble): on mnist5k raw lands near SNIP's
  allocation and is better, by 5.2 points on LeNet-300-100 with the head
  pruned, 2.1 with it whole, 4.7 on LeNet-5 (head whole); on the 8×8
  digits MLP (fc1's fan-in 64) it takes budget from ``fc2`` and is 7.8
  points worse. With the output term on the search points raw is 3.1–5.0
  points better on LeNet-300-100 (90–98%; 4.8 with the head whole, where
  it matches dense at 95%) but leaves 3 of 5 LeNet-5
  tickets at the constant classifier. The connections it picks decide
  that, not the weights' values: the clean-point search's raw masks train
  from the same initializations, and with the PGD budget ramped over 10
  epochs instead of 5, 1 of the 5 stalls (docs/results/awt.md, "Why raw
  ranking stalls LeNet-5 under the paper's output term"). So the
  ``mnist5k_mlp`` config sets ``"raw"`` and the others keep this default.
  ``pruning.layer_densities`` fixes the allocation instead.
* ``awt_start``: the ticket's starting weights, ``"searched"`` (NTT):
  :math:`\theta \odot m` from the search; ``"init"``: the found mask on the
  network's original initialization, :math:`\theta_0 \odot m`. Recorded in
  ``info["start"]``.
* ``awt_output_points``: ``"search"`` (Shi et al., NTT): the output term
  is taken on the same points as the kernel term, :math:`\tilde X`;
  ``"clean"`` (our deviation, ``awt`` only): on the clean batch :math:`X`,
  the kernel term staying on the PGD points. PGD points against the
  teacher lower its true-class logit, so fitting the teacher's outputs
  there teaches the student to predict against the label: on mnist5k the
  default search's tickets start at 1% clean accuracy (docs/results/awt.md,
  "Why the searched values train worse").
* ``awt_checkpoint_every`` [0: ``awt_mask_every``]: steps between search
  checkpoints when ``PruningContext.checkpoint_dir`` is set.

The search starts at the teacher's weights with the initial mask and
optimizes :math:`\theta` with Adam. The ticket is then trained with
PGD-AT from its starting weights like any other ticket. The NTK argument
is about gradient descent; a kernel match at initialization says nothing
about Adam's trajectory, which is checked, not assumed (the distances
below, ``awt.studies.ntk_spectra``).

A killed search resumes bit-identically: step ``t`` draws its batch from
``(key, t)`` (``batch_indices``) and its attack starts from ``(key, t, i)``,
so the saved state is only the student, the mask and its scores, Adam's
state, the step and the history.

References:
  Liu & Zenke, "Finding trainable sparse networks through Neural Tangent
  Transfer", ICML 2020 (reference code: fmi-basel/neural-tangent-transfer).
  Shi, Zheng, Ding, Gao & Zhang, "Finding Dynamics Preserving Adversarial
  Winning Tickets", AISTATS 2022.
  Jacot, Gabriel & Hongler, "Neural Tangent Kernel", NeurIPS 2018; Lee et
  al., "Wide Neural Networks of Any Depth Evolve as Linear Models Under
  Gradient Descent", NeurIPS 2019.
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
from awt.pruning import allocation, scores
from awt.pruning._options import Flag, Integer, Number, OneOf, Option, option
from awt.pruning._ticket import (
  PruningContext,
  SearchCheckpoints,
  Ticket,
  key_words,
)

PyTree = Any
Path = tuple[str, ...]

INITS = ("magnitude", "snip")
AGAINST = ("teacher", "student")
OUTPUT_POINTS = ("search", "clean")
KERNELS = ("cross_full", "trace")
STUDENT_KERNELS = ("all", "masked")
NTK_NORMS = ("relative", "mean")
L2_ON = ("weights", "all")
STARTS = ("searched", "init")
GLOBAL_SCORES = ("normalized", "raw")
_TRACE_AXES = {"cross_full": (), "trace": (-1,)}
# The search's options (module docstring), NTT's recipe unless marked.
OPTIONS = (
  Option("awt_epochs", 20.0, Number(lo=0.0), "search length in epochs (NTT)"),
  Option("awt_steps", 0, Integer(lo=0), "search steps; > 0 overrides epochs"),
  Option(
    "awt_mask_every", 100, Integer(lo=1), "steps between mask resets (NTT)"
  ),
  Option(
    "awt_checkpoint_every",
    0,
    Integer(lo=0),
    "steps between search checkpoints (0: at mask resets)",
  ),
  Option("awt_batch", 64, Integer(lo=1), "points per search step (NTT)"),
  Option("awt_lr", 5e-4, Number(lo=0.0), "Adam's learning rate (NTT)"),
  # lambda_K of the relative kernel distance, set so that lambda_K*ntk :
  # output at the start of the search is in NTT's range (~1-10; its MLP
  # notebook logs ~6). Measured at 90% sparsity (seed 0): on its first
  # batches 7.2 on digits and 2.2 on mnist5k (784-300-100-10; PGD points);
  # the first logged period (steps 1-100) 4.8 on digits, 1.4 on mnist5k
  # (awt) and 5.9 / 5.2 (ntt, clean points).
  Option(
    "awt_lambda_ntk",
    3.0,
    Number(lo=0.0),
    "lambda_K of the relative kernel distance (ours; NTT 1e-3 with mean)",
  ),
  Option(
    "awt_lambda_l2",
    1e-4,
    Number(lo=0.0),
    "lambda_2, divided by the density (NTT)",
  ),
  Option(
    "awt_kernel",
    "cross_full",
    OneOf(KERNELS),
    "NTT's [n/2, n/2, C, C] cross-kernel, or the logit-traced [n, n] one",
  ),
  Option(
    "awt_student_kernel",
    "all",
    OneOf(STUDENT_KERNELS),
    "student kernel over all weights (NTT), or J diag(m) J^T (ours)",
  ),
  Option(
    "awt_ntk_norm",
    "relative",
    OneOf(NTK_NORMS),
    "kernel distance over ||teacher kernel||^2 (ours), or the mean (NTT)",
  ),
  Option(
    "awt_l2_on",
    "weights",
    OneOf(L2_ON),
    "the L2 term on the prunable kernels (NTT), or every parameter",
  ),
  Option(
    "awt_final_update",
    False,
    Flag(),
    "also reset the mask after the last step (our earlier deviation)",
  ),
  Option(
    "awt_start",
    "searched",
    OneOf(STARTS),
    "ticket weights: searched theta*m (NTT), or theta0*m",
  ),
  Option(
    "awt_global_score",
    "normalized",
    OneOf(GLOBAL_SCORES),
    "global score |theta| / layer init std (ours), or |theta| (NTT)",
  ),
  Option(
    "awt_init",
    "magnitude",
    OneOf(INITS),
    "initial mask: the teacher's magnitudes (NTT), or SNIP's",
  ),
  Option(
    "awt_attack_against",
    "teacher",
    OneOf(AGAINST),
    "awt: PGD points against the teacher, or the student",
  ),
  Option(
    "awt_output_points",
    "search",
    OneOf(OUTPUT_POINTS),
    "output term on the kernel's points (Shi et al.), or clean ones (ours)",
  ),
) + scores.SCORE_OPTIONS  # awt_init="snip" runs scores.snip.
# The empirical-NTK implementation of the search: ``awt.ntk``'s cost model
# picks one from the shapes (NTK-vector products for Dense MLPs, Jacobian
# contraction for conv nets). Measured per search step (PGD-10 points,
# batch 64, the gradient through the student's kernel included; 2 CPU
# cores shared with other jobs, best of 4-8 chunks): NTK-vector products
# take 0.11 s against 0.26 s on the digits MLP (cross_full), 0.26 s
# against 1.6 s on the mnist5k MLP (cross_full), 0.76 s against 2.4 s
# (trace); on LeNet-5 (mnist5k, cross_full) both take ~4 s, and the
# NTK-vector products of the trace form needed over 12 GB.
IMPLEMENTATION = "auto"
# With the student kernel over all weights, networks whose weights are
# mostly in Dense layers (at least STRUCTURED_MIN_FRACTION: LeNet-300-100,
# LeNet-5, Conv-4's 89%) get both kernels from ``awt.ntk.structured_fn``
# (the Dense layers factored, no Jacobian of their weights) instead. On
# mnist5k, 64 PGD points, cross_full (``benchmarks/README.md``, "Cost of
# finding a ticket"): a search step of LeNet-300-100 takes 1.41 instead of
# 21.07 GFLOP and 0.012 instead of 0.25 s, of LeNet-5 7.1 instead of 60.6
# GFLOP and 0.20 instead of 2.3 s, the same losses to 1.4e-7. In
# conv-dominated networks (VGG, ResNets) the rest's Jacobian is nearly the
# whole one: "auto" stays.
STRUCTURED_MIN_FRACTION = 0.5
# The adversarial-NTK distances reported for every ticket.
DISTANCE_IMPLEMENTATION = "jacobian_contraction"


# ---------------------------------------------------------------------------
# The loss.


def eval_logits_fn(model, batch_stats):
  """``f(params, x) -> [B, C]`` in eval mode (BatchNorm: running stats)."""

  def f(params, x):
    return model.apply(
      training.model_variables(params, batch_stats), x, train=False
    )

  return f


def ntk_fn(f, trace_axes=(-1,), implementation=DISTANCE_IMPLEMENTATION):
  """Empirical NTK ``(x1, x2, params)``, in neural-tangents' argument order.

  ``awt.ntk.empirical_fn``: ``[N1, N2]`` (mean over logits,
  ``trace_axes=(-1,)``) or ``[N1, N2, C, C]`` (``trace_axes=()``).
  """
  kernel = ntk.empirical_fn(
    f, trace_axes=trace_axes, implementation=implementation
  )
  return lambda x1, x2, params: kernel(params, x1, x2)


def halves(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(x[:n // 2], x[n // 2:])``: the two sides of the cross-kernel."""
  n = x.shape[0] // 2
  return x[:n], x[n:]


def ntk_of(
  f,
  params,
  x,
  *,
  kernel: str = "cross_full",
  implementation: str = IMPLEMENTATION,
) -> jax.Array:
  r"""The kernel over all weights of ``f`` at ``params`` on the batch ``x``.

  Args:
    f: ``f(params, x) -> [n, C]``.
    params: the weights the kernel is evaluated at.
    x: ``[n, ...]`` points.
    kernel: ``"cross_full"``: ``[n/2, n - n/2, C, C]`` between
      ``halves(x)``; ``"trace"``: ``[n, n]`` of ``x`` with itself, mean
      over the logits.
    implementation: of ``awt.ntk.empirical_fn`` (``"auto"``: the cheaper).

  Returns:
    The kernel, :math:`\Theta_{ij(cd)} = \sum_p J_{icp} J_{jdp}` (trace:
    :math:`\frac1C \sum_{c,p} J_{icp} J_{jcp}`).
  """
  kfn = ntk_fn(f, _TRACE_AXES[kernel], implementation)
  if kernel == "trace":
    return kfn(x, None, params)
  return kfn(*halves(x), params)


def _masked(tree, mask):
  return jax.tree.map(lambda t, m: t * m, tree, mask)


def masked_ntk(
  f,
  theta,
  mask,
  x,
  *,
  kernel: str = "trace",
  implementation: str = IMPLEMENTATION,
) -> jax.Array:
  """NTK of the sparse network ``θ ↦ f(θ ⊙ m)``: ``J diag(m) Jᵀ``.

  The empirical NTK over the weights a masked network trains, at
  ``θ ⊙ m``: the chain rule through ``θ ⊙ m`` multiplies each Jacobian
  column by its mask entry (``m² = m`` for a binary mask). ``kernel`` as
  in :func:`ntk_of`: ``"trace"`` (default) gives ``[n, n]`` (mean over
  logits), ``"cross_full"`` ``[n/2, n - n/2, C, C]``.
  """
  return ntk_of(
    lambda th, z: f(_masked(th, mask), z),
    theta,
    x,
    kernel=kernel,
    implementation=implementation,
  )


def student_ntk(
  f,
  theta,
  mask,
  x,
  *,
  kernel: str,
  student: str,
  implementation: str = IMPLEMENTATION,
):
  r"""The student's kernel :math:`\Theta_s` (``awt_student_kernel``).

  ``"all"``: :func:`ntk_of` at ``θ ⊙ m`` (all weights); ``"masked"``:
  :func:`masked_ntk` (``J diag(m) Jᵀ``).
  """
  kw = {"kernel": kernel, "implementation": implementation}
  if student == "masked":
    return masked_ntk(f, theta, mask, x, **kw)
  return ntk_of(f, _masked(theta, mask), x, **kw)


def kernel_distance(k: jax.Array, k0: jax.Array, norm: str) -> jax.Array:
  """``||k − k0||²_F / Z``: ``Z = ||k0||²_F`` (``"relative"``) or ``k0.size``.

  ``relative · ||k0||²_F`` and ``mean · k0.size`` are the same sum.
  """
  squared = jnp.sum((k - k0) ** 2)
  if norm == "relative":
    return squared / jnp.sum(k0**2)
  return squared / k0.size


def l2_norm(theta, mask, paths: tuple[Path, ...] | None) -> jax.Array:
  """``||θ ⊙ m||²`` over the leaves at ``paths`` (None: every leaf)."""
  eff = _masked(theta, mask)
  if paths is None:
    leaves = jax.tree.leaves(eff)
  else:
    leaves = [scores._get(eff, p) for p in paths]
  return sum(jnp.sum(leaf**2) for leaf in leaves)


def loss_terms(
  f,
  theta,
  mask,
  x,
  f0,
  k0,
  *,
  kernel: str = "cross_full",
  student: str = "all",
  ntk_norm: str = "relative",
  l2_paths: tuple[Path, ...] | None = None,
  implementation: str = IMPLEMENTATION,
  x_output: jax.Array | None = None,
):
  r"""The output, NTK and L2 terms of the search loss (before weighting).

  Args:
    f: ``f(params, x) -> [n, C]``.
    theta: student weights (full tree); the network uses ``theta * mask``.
    mask: the current mask.
    x: ``[n, ...]`` points (adversarial for awt, clean for ntt).
    f0: ``[n', C]`` teacher outputs at ``x_output``.
    k0: the teacher's kernel, ``ntk_of(f, θ0, x, kernel=kernel)``.
    kernel: ``"cross_full"`` or ``"trace"`` (``awt_kernel``).
    student: ``"all"`` or ``"masked"`` (``awt_student_kernel``).
    ntk_norm: ``"relative"`` or ``"mean"`` (``awt_ntk_norm``).
    l2_paths: the leaves of the L2 term (``awt_l2_on="weights"``: the
      prunable kernels); None: every leaf.
    implementation: of the kernels (``awt.ntk.empirical_fn``).
    x_output: ``[n', ...]`` points of the output term
      (``awt_output_points="clean"``: the clean batch); None: ``x``.

  Returns:
    ``(output, ntk, l2)``: ``||f(θ⊙m) − f0||² / (n' C)``,
    ``kernel_distance(Θ_s, k0, ntk_norm)`` and ``||θ ⊙ m||²`` on
    ``l2_paths``.
  """
  out = f(_masked(theta, mask), x if x_output is None else x_output)
  output = jnp.mean((out - f0) ** 2)
  k = student_ntk(
    f,
    theta,
    mask,
    x,
    kernel=kernel,
    student=student,
    implementation=implementation,
  )
  return (
    output,
    kernel_distance(k, k0, ntk_norm),
    l2_norm(theta, mask, l2_paths),
  )


# ---------------------------------------------------------------------------
# Options.


class _Hyper(NamedTuple):
  """The static settings of the compiled search steps (hashable)."""

  model: Any
  adversarial: bool
  against: str
  attack: tuple | None  # (eps, step_size, steps, norm) of the PGD points.
  output_points: str  # "search" or "clean" (awt_output_points).
  kernel: str
  student: str
  ntk_norm: str
  l2_paths: tuple[Path, ...] | None  # None: every leaf.
  implementation: str  # Of the empirical NTKs.


class _Settings(NamedTuple):
  """Everything ``search`` reads from the context, checked."""

  method: str
  steps: int
  every: int
  ckpt_every: int
  batch: int
  lr: float
  lambda_ntk: float
  lambda_l2: float
  init: str
  l2_on: str
  final_update: bool
  start: str
  global_score: str
  density: float
  target: allocation.Target
  scope: str
  paths: tuple[Path, ...]
  hyper: _Hyper


def _attack(ctx, adversarial: bool) -> tuple | None:
  """``(eps, step_size, steps, norm)`` of ``config.adversarial``, or None."""
  if not adversarial:
    return None
  adv = ctx.config["adversarial"]
  return (
    float(adv["eps"]),
    float(adv["step_size"]),
    int(adv.get("steps", 1)),
    str(adv.get("norm", "linf")),
  )


def _num_steps(ctx, batch: int) -> int:
  """``awt_steps`` if positive, else ``round(awt_epochs · N / batch)``."""
  steps = option(ctx, "awt_steps")
  epochs = option(ctx, "awt_epochs")
  if steps == 0 and epochs > 0:
    steps = max(1, round(epochs * ctx.split.num_examples / batch))
  return steps


def _settings(ctx: PruningContext, adversarial: bool) -> _Settings:
  """Parses and checks ``config.pruning``'s search options.

  Raises:
    ValueError: a bad option (one line: key, value, known choices).
  """
  every = option(ctx, "awt_mask_every")
  # 0 (the default) means: at every mask reset.
  ckpt_every = option(ctx, "awt_checkpoint_every") or every
  batch = option(ctx, "awt_batch")
  kernel = option(ctx, "awt_kernel")
  if batch > ctx.split.num_examples or (kernel == "cross_full" and batch < 2):
    raise ValueError(
      f"pruning.awt_batch={batch} must be between "
      f"{2 if kernel == 'cross_full' else 1} and the "
      f"{ctx.split.num_examples} training examples"
    )
  steps = _num_steps(ctx, batch)
  paths = scores.prunable(ctx)
  l2_on = option(ctx, "awt_l2_on")
  against = option(ctx, "awt_attack_against")
  student = option(ctx, "awt_student_kernel")
  return _Settings(
    method="awt" if adversarial else "ntt",
    steps=steps,
    every=every,
    ckpt_every=ckpt_every,
    batch=batch,
    lr=option(ctx, "awt_lr"),
    lambda_ntk=option(ctx, "awt_lambda_ntk"),
    lambda_l2=option(ctx, "awt_lambda_l2"),
    init=option(ctx, "awt_init"),
    l2_on=l2_on,
    final_update=option(ctx, "awt_final_update"),
    start=option(ctx, "awt_start"),
    global_score=option(ctx, "awt_global_score"),
    density=1.0 - option(ctx, "sparsity"),
    target=allocation.target(ctx, paths, scores._sizes(ctx.params, paths)),
    scope=option(ctx, "scope"),
    paths=paths,
    hyper=_Hyper(
      model=ctx.model,
      adversarial=adversarial,
      against=against if adversarial else "teacher",
      attack=_attack(ctx, adversarial),
      output_points=option(ctx, "awt_output_points")
      if adversarial
      else "search",
      kernel=kernel,
      student=student,
      ntk_norm=option(ctx, "awt_ntk_norm"),
      l2_paths=paths if l2_on == "weights" else None,
      implementation=_implementation(ctx, student),
    ),
  )


def _implementation(ctx: PruningContext, student: str) -> str:
  """The search's empirical-NTK implementation (``IMPLEMENTATION`` note).

  ``J diag(m) Jᵀ`` (``student="masked"``) does not factor by layers.
  """
  if student != "all":
    return IMPLEMENTATION
  f = eval_logits_fn(ctx.model, ctx.batch_stats)
  x = jnp.zeros((1, *ctx.image_shape), jnp.float32)
  fraction = ntk.structured_fraction(f, ctx.params, x)
  return (
    ntk.STRUCTURED if fraction >= STRUCTURED_MIN_FRACTION else IMPLEMENTATION
  )


def _fingerprint(s: _Settings, ctx: PruningContext, key) -> dict:
  """What a checkpoint must match to be resumed (JSON-able)."""
  h = s.hyper
  return {
    "method": s.method,
    "key": key_words(key),
    "steps": s.steps,
    "num_examples": int(ctx.split.num_examples),
    "density": s.density,
    "scope": s.scope,
    "paths": [list(p) for p in s.paths],
    "mask_every": s.every,
    "checkpoint_every": s.ckpt_every,
    "batch": s.batch,
    "lr": s.lr,
    "lambda_ntk": s.lambda_ntk,
    "lambda_l2": s.lambda_l2,
    "init": s.init,
    "kernel": h.kernel,
    "student_kernel": h.student,
    "ntk_norm": h.ntk_norm,
    "l2_on": s.l2_on,
    "final_update": s.final_update,
    "global_score": s.global_score,
    "against": h.against if h.adversarial else None,
    "attack": list(h.attack) if h.adversarial else None,
    "output_points": h.output_points,
    **allocation.fingerprint(s.target),
  }


# ---------------------------------------------------------------------------
# The mask.


def layer_scales(params, paths, normalized: bool) -> tuple[jax.Array, ...]:
  """Per-layer factors of the magnitude score: ``1 / std`` of each layer.

  Args:
    params: the weights at initialization.
    paths: the prunable layers.
    normalized: False gives ones (the raw ``|θ|`` score).

  Returns:
    One float32 scalar per path: ``1 / std(params[path])``, 1 where the
    standard deviation is 0 (or ``normalized`` is False).
  """
  stds = [float(np.std(np.asarray(scores._get(params, p)))) for p in paths]
  return tuple(
    jnp.float32(1.0 / std if normalized and std > 0 else 1.0) for std in stds
  )


def magnitude_scores(theta, paths, scales) -> PyTree:
  """``|θ|``, times ``scales[i]`` on the layer at ``paths[i]``."""
  layers = {
    p: jnp.abs(scores._get(theta, p)) * s
    for p, s in zip(paths, scales, strict=True)
  }
  return scores._with_layers(theta, layers, jnp.abs)


@functools.partial(jax.jit, static_argnames=("paths", "scope"))
def _magnitude_mask(theta, scales, counts, *, paths, scope):
  """``(mask, scores)``: the top ``counts`` of ``magnitude_scores``."""
  score = magnitude_scores(theta, paths, scales)
  return scores._mask_from_counts(score, paths, counts, scope), score


def _reset(theta, s: _Settings, scales):
  """``(mask, scores)`` of ``theta``: the top-d (scaled) magnitudes."""
  counts = scores.keep_counts(scores._sizes(theta, s.paths), s.target, s.scope)
  return _magnitude_mask(theta, scales, counts, paths=s.paths, scope=s.scope)


def _scales(ctx: PruningContext, s: _Settings):
  """The score's layer factors: ``1/σ_l`` for a normalized global score."""
  normalized = s.scope == "global" and s.global_score == "normalized"
  return layer_scales(ctx.params, s.paths, normalized)


def _initial_mask(ctx: PruningContext, s: _Settings, key, scales):
  """``(mask, scores, passes)`` the search starts from (``awt_init``)."""
  if s.init == "snip":
    first = scores.snip(ctx, key)
    return first.mask, first.scores, int(first.info["passes"])
  mask, score = _reset(ctx.params, s, scales)
  return mask, score, 0


# ---------------------------------------------------------------------------
# The compiled steps.


def _points(f, hyper: _Hyper, teacher, student, batch):
  """The batch's points: clean (ntt) or PGD against teacher/student."""
  x = batch["image"]
  if not hyper.adversarial:
    return x
  target = teacher if hyper.against == "teacher" else student
  eps, step_size, steps, norm = hyper.attack
  x = attacks.pgd(
    lambda z: f(target, z),
    x,
    batch["label"],
    batch["keys"],
    eps=eps,
    step_size=step_size,
    steps=steps,
    norm=norm,
    select="last",
  )
  return jax.lax.stop_gradient(x)


@functools.partial(jax.jit, static_argnames=("hyper",))
def _chunk(
  theta, opt_state, mask, teacher, batch_stats, coefs, stacked, *, hyper
):
  """``S`` search steps with a fixed mask as one compiled ``lax.scan``.

  Module-level and keyed by the hashable ``hyper``, so searches of the same
  network, attack and loss options (a resumed one, a sweep over the
  coefficients) compile once.

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
  tx = optax.adam(coefs["lr"])
  options = {
    "kernel": hyper.kernel,
    "student": hyper.student,
    "ntk_norm": hyper.ntk_norm,
    "l2_paths": hyper.l2_paths,
    "implementation": hyper.implementation,
  }

  def step(carry, batch):
    th, opt = carry
    x = _points(f, hyper, teacher, _masked(th, mask), batch)
    k0 = ntk_of(
      f,
      teacher,
      x,
      kernel=hyper.kernel,
      implementation=hyper.implementation,
    )
    x_out = batch["image"] if hyper.output_points == "clean" else x
    f0 = f(teacher, x_out)

    def total(w):
      terms = loss_terms(f, w, mask, x, f0, k0, x_output=x_out, **options)
      output, ntk_term, l2 = terms
      loss = output + coefs["lambda_ntk"] * ntk_term
      return loss + coefs["lambda_l2"] * l2, terms

    (loss, terms), grads = jax.value_and_grad(total, has_aux=True)(th)
    updates, opt = tx.update(grads, opt, th)
    th = optax.apply_updates(th, updates)
    metrics = dict(zip(("output", "ntk", "l2"), terms, strict=True))
    return (th, opt), {"loss": loss, **metrics}

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


def _stacked(ctx, n: int, done: int, length: int, data_seed, attack_key):
  """Steps ``done + 1 .. done + length``'s batches and attack keys."""
  images, labels = ctx.split.images, ctx.split.labels
  idx = np.stack(
    [
      batch_indices(data_seed, t, len(labels), n)
      for t in range(done, done + length)
    ]
  )
  ids = done * n + np.arange(length * n).reshape(length, n)
  fold = jax.vmap(jax.vmap(lambda i: jax.random.fold_in(attack_key, i)))
  return {
    "image": jnp.asarray(images[idx], jnp.float32) / 255.0,
    "label": jnp.asarray(labels[idx]),
    "keys": fold(jnp.asarray(ids)),
  }


def _boundary(done: int, steps: int, *periods: int) -> int:
  """The first step after ``done`` that ends a period (or ``steps``)."""
  return min([steps] + [(done // p + 1) * p for p in periods])


# ---------------------------------------------------------------------------
# The search loop.


class _State(NamedTuple):
  """The search's progress: what a checkpoint holds."""

  done: int
  theta: PyTree
  opt_state: PyTree
  mask: PyTree
  scores: PyTree  # The scores that chose ``mask`` (the ticket's).
  history: list
  pending: dict  # Per-step metrics of the current mask period.
  passes: int  # Of the initial mask.
  earlier_s: float  # Wall time of earlier attempts.


def _arrays(state: _State) -> dict:
  return {
    "theta": state.theta,
    "opt_state": state.opt_state,
    "mask": state.mask,
    "scores": state.scores,
  }


def _fresh(ctx, s: _Settings, key, scales) -> _State:
  """The state at step 0: the teacher's weights and the initial mask."""
  mask, score, passes = _initial_mask(ctx, s, key, scales)
  opt_state = optax.adam(s.lr).init(ctx.params)
  return _State(0, ctx.params, opt_state, mask, score, [], {}, passes, 0.0)


def _restore(ckpt, ctx, s: _Settings, log) -> _State | None:
  """The newest complete checkpoint's state, or None.

  Raises:
    CheckpointError: a checkpoint past ``s.steps`` (or of another search,
      from ``SearchCheckpoints.restore``).
  """
  template = {
    "theta": ctx.params,
    "opt_state": optax.adam(s.lr).init(ctx.params),
    "mask": masks.ones(ctx.params),
    "scores": ctx.params,
  }
  restored = ckpt.restore(template)
  if restored is None:
    return None
  done, arrays, meta = restored
  if done > s.steps:
    raise checkpoints.CheckpointError(
      f"search checkpoint in {ctx.checkpoint_dir} is at step {done}, "
      f"past the search's {s.steps} steps"
    )
  log(
    f"{s.method} search: resuming at step {done} of {s.steps} from "
    f"{ckpt.directory}"
  )
  pending = {k: np.asarray(v, np.float32) for k, v in meta["pending"].items()}
  return _State(
    done=done,
    history=meta["history"],
    pending=pending,
    passes=meta["init_passes"],
    earlier_s=meta["wall_time_s"],
    **arrays,
  )


def _save(ckpt, state: _State, start: float) -> None:
  ckpt.save(
    state.done,
    _arrays(state),
    {
      "history": state.history,
      "pending": {k: v.tolist() for k, v in state.pending.items()},
      "init_passes": int(state.passes),
      "wall_time_s": state.earlier_s + time.perf_counter() - start,
    },
  )


def _advance(ctx, s: _Settings, state: _State, data_seed, attack_key):
  """Runs the steps up to the next mask period or checkpoint end.

  Raises:
    FloatingPointError: the loss stopped being finite.
  """
  end = _boundary(state.done, s.steps, s.every, s.ckpt_every)
  stacked = _stacked(
    ctx, s.batch, state.done, end - state.done, data_seed, attack_key
  )
  coefs = {
    "lr": jnp.float32(s.lr),
    "lambda_ntk": jnp.float32(s.lambda_ntk),
    "lambda_l2": jnp.float32(s.lambda_l2 / s.density),
  }
  (theta, opt_state), metrics = _chunk(
    state.theta,
    state.opt_state,
    state.mask,
    ctx.params,
    ctx.batch_stats,
    coefs,
    stacked,
    hyper=s.hyper,
  )
  metrics = jax.device_get(metrics)
  bad = np.flatnonzero(~np.isfinite(metrics["loss"]))
  if bad.size:
    raise FloatingPointError(
      f"{s.method} search loss is {metrics['loss'][bad[0]]} at step "
      f"{state.done + bad[0] + 1}; stopping, last good checkpoint kept"
    )
  pending = {
    k: np.concatenate([state.pending.get(k, np.zeros(0, np.float32)), v])
    for k, v in metrics.items()
  }
  return state._replace(
    done=end, theta=theta, opt_state=opt_state, pending=pending
  )


def _resets_at(s: _Settings, done: int) -> bool:
  """Whether the mask is reset after step ``done`` (``awt_mask_every``).

  At multiples of ``awt_mask_every`` strictly before the last step; with
  ``awt_final_update`` also after the last step.
  """
  period_end = done % s.every == 0 or done == s.steps
  return period_end and (done < s.steps or s.final_update)


def _history_row(s: _Settings, state: _State) -> dict:
  """The mask period's row: mean loss terms, the ratio, the kept count."""
  row = {"step": state.done, "kept": masks.counts(state.mask, s.paths)[0]}
  row.update({k: float(np.mean(v)) for k, v in state.pending.items()})
  weighted = s.lambda_ntk * row["ntk"]
  row["ntk_to_output"] = weighted / row["output"] if row["output"] else None
  return row


def _progress(s: _Settings, row: dict, rate: float) -> str:
  ratio = row["ntk_to_output"]
  ratio = "n/a" if ratio is None else f"{ratio:.3g}"
  return (
    f"{s.method} search step {row['step']}/{s.steps}: loss {row['loss']:.4g} "
    f"(output {row['output']:.4g}, ntk {row['ntk']:.4g}, l2 "
    f"{row['l2']:.4g}, lambda_K*ntk/output {ratio}), kept {row['kept']}, "
    f"{rate:.2f} steps/s, ETA {(s.steps - row['step']) / max(rate, 1e-9):.0f}s"
  )


def _end_period(s: _Settings, state: _State, scales, clock, log):
  """At a period's end: the mask reset (if due), the row, the progress line.

  Returns:
    ``(state, clock)``, ``clock = (time, step)`` of this period's end.
  """
  if _resets_at(s, state.done):
    mask, score = _reset(state.theta, s, scales)
    state = state._replace(mask=mask, scores=score)
  row = _history_row(s, state)
  now = time.perf_counter()
  rate = (state.done - clock[1]) / max(now - clock[0], 1e-9)
  log(_progress(s, row, rate))
  return state._replace(history=[*state.history, row], pending={}), (
    now,
    state.done,
  )


def _passes(ctx, s: _Settings, state: _State) -> int:
  """Forward+backward passes: the initial mask's and the search's.

  Per step: PGD (attack steps), the student's output (1) and the NTK
  terms: Jacobians of teacher and student (C passes each) and the
  gradient through the student's kernel (about 2C more) -- an estimate.
  """
  f = eval_logits_fn(ctx.model, ctx.batch_stats)
  x = jnp.zeros((1, *ctx.image_shape))
  num_classes = jax.eval_shape(f, ctx.params, x).shape[-1]
  attack_steps = s.hyper.attack[2] if s.hyper.adversarial else 0
  return int(state.passes + s.steps * (attack_steps + 1 + 4 * num_classes))


def _ticket(ctx, s: _Settings, state: _State, start: float) -> Ticket:
  """The ticket: the returned mask on the searched weights or on θ0."""
  origin = state.theta if s.start == "searched" else ctx.params
  params = _masked(origin, state.mask)
  jax.block_until_ready(params)
  h = s.hyper
  return Ticket(
    mask=state.mask,
    params=params,
    batch_stats=ctx.batch_stats,
    scores=state.scores,
    info={
      "method": s.method,
      "passes": _passes(ctx, s, state),
      "wall_time_s": state.earlier_s + time.perf_counter() - start,
      "sparsity": option(ctx, "sparsity"),
      "scope": s.scope,
      "start": s.start,
      "steps": s.steps,
      "mask_init": s.init,
      "attack_against": h.against if h.adversarial else None,
      "output_points": h.output_points,
      "history": state.history,
    },
  )


def search(ctx: PruningContext, key: jax.Array, *, adversarial: bool) -> Ticket:
  """Runs the AWT (``adversarial=True``) or NTT search; see the module doc.

  With ``ctx.checkpoint_dir`` set, the search state (student weights, mask,
  Adam state, step, history) is saved there every
  ``pruning.awt_checkpoint_every`` steps and at the end, and a search
  started again with the same settings continues from the newest complete
  checkpoint: its ticket and history are bit-identical to an uninterrupted
  run's. Steps between two mask updates or checkpoints run as one compiled
  ``lax.scan``; once per mask period the loss terms, the ratio
  ``lambda_K * ntk / output``, rate and ETA go to ``ctx.log`` and a row to
  ``info["history"]``.

  Raises:
    ValueError: a bad option; ``awt.checkpoints.CheckpointError`` for a
      checkpoint of another search; FloatingPointError when the loss stops
      being finite (the last good checkpoint is kept).
  """
  start = time.perf_counter()
  s = _settings(ctx, adversarial)
  log = ctx.log or logging.info
  init_key, data_key, attack_key = jax.random.split(key, 3)
  data_seed = _data_seed(data_key)
  scales = _scales(ctx, s)
  with SearchCheckpoints(ctx.checkpoint_dir, _fingerprint(s, ctx, key)) as ck:
    state = _restore(ck, ctx, s, log) or _fresh(ctx, s, init_key, scales)
    clock = (time.perf_counter(), state.done)
    while state.done < s.steps:
      state = _advance(ctx, s, state, data_seed, attack_key)
      if state.done % s.every == 0 or state.done == s.steps:
        state, clock = _end_period(s, state, scales, clock, log)
      if state.done % s.ckpt_every == 0 or state.done == s.steps:
        _save(ck, state, start)
  return _ticket(ctx, s, state, start)


def awt(ctx: PruningContext, key: jax.Array) -> Ticket:
  """Adversarial winning ticket: the search on PGD points (Shi et al. 2022)."""
  return search(ctx, key, adversarial=True)


def ntt(ctx: PruningContext, key: jax.Array) -> Ticket:
  """Neural Tangent Transfer (Liu & Zenke 2020): the search on clean points."""
  return search(ctx, key, adversarial=False)


# ---------------------------------------------------------------------------
# Adversarial-NTK distances of any ticket (trace-form kernels).


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
  sparse = masked_ntk(
    f, params, mask, x_adv, implementation=DISTANCE_IMPLEMENTATION
  )
  return (
    ntk.relative_distance(sparse, k_dense),
    ntk.relative_distance(kfn(x_adv, None, params), k_dense),
  )


def adversarial_ntk_distances(
  model, batch_stats, dense_params, params, mask, x, y, key, adversarial
) -> tuple[float, float]:
  """Relative Frobenius distances of a ticket's adversarial NTK to the dense.

  ``||Θ(X̃) − Θ_dense(X̃)||_F / ||Θ_dense(X̃)||_F`` with ``X̃`` PGD points of
  ``adversarial`` (a config block) against the dense network, so every
  ticket is compared on the same points; ``Θ`` is the ``[n, n]`` kernel
  (mean over logits), first the sparse network's ``J diag(m) Jᵀ``
  (``masked_ntk``, the one its training follows), then the kernel over all
  weights at ``params``.

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


# name -> (method, the options it reads besides the shared ones); the
# package registers them (``awt.pruning.register``).
METHODS = {"awt": (awt, OPTIONS), "ntt": (ntt, OPTIONS)}
