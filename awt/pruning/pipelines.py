"""Three-stage pruning pipelines: train, prune, then fine-tune the ticket.

Each pipeline is a function ``fn(ctx: PruningContext, key) -> Ticket`` that
spends training on the way to its mask (unlike the pruning-at-initialization
scores), with the run's own objective ``config.adversarial`` (natural or
adversarial training) and optimizer ``config.optimizer`` in every training
phase. Every phase runs whole epochs as one compiled ``lax.scan``
(``awt.training.train_epochs``), its step function compiled once and reused.
The last stage, fine-tuning the ticket, is the caller's normal training.

Every ticket has the exact requested sparsity: ``masks.topk`` keeps
``round((1 - pruning.sparsity) * n)`` of the prunable weights, over all of
them (``pruning.scope = "global"``) or in each layer (``"layerwise"``); the
prunable kernels are ``masks.prunable_paths(params, keep_first=, keep_last=)``
from ``pruning.keep_first`` / ``pruning.keep_last``.

Options read from ``config.pruning``, declared once below (``IMP_OPTIONS``,
``HYDRA_OPTIONS``, ``DNS_OPTIONS``: default, check, doc) and read with
``awt.pruning.option``; an epochs option left at None means ``E =
config.num_epochs``:

=====================  ========================================================
``pretrain_epochs``    dense training before pruning; one_shot, hydra (None:
                       ``E``), dns (None: 0, surgery from initialization; the
                       DNS paper starts from a trained reference net).
``imp_rounds``         imp: prune-retrain rounds.
``imp_epochs``         imp: epochs of each round's training.
``rewind_epoch``       imp: epoch ``k`` of the first run to rewind to (0: the
                       initialization); a ``TrainState`` is saved once per
                       epoch, so rewinding is in whole epochs.
``score_epochs``       hydra: epochs of importance-score optimization.
``score_learning_rate``  hydra: learning rate of the scores (None:
                       ``optimizer.learning_rate``; HYDRA uses SGD at 0.1).
``dns_epochs``         dns: epochs of training with surgery.
``dns_interval``       dns: steps between mask-update opportunities.
``dns_gamma``,         dns: a step ``t`` updates the mask with probability
``dns_power``          ``(1 + gamma t)^-power``.
``dns_low``,           dns: hysteresis factors around the magnitude threshold
``dns_high``           (as in the DNS code), ``dns_low <= dns_high``.
=====================  ========================================================

Cost (``Ticket.info["passes"]``) counts forward+backward passes per batch:
every training step costs ``passes_per_step(config.adversarial)`` (1 for
natural training, ``k + 1`` for a ``k``-step attack) and the total is that
times the number of steps of all phases. Pruning by magnitude, the top-k of
the scores and DNS's mask updates read no data and cost no passes.
"""

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from awt import data as data_lib
from awt import masks, training
from awt.config import ConfigError
from awt.pruning import allocation
from awt.pruning import scores as scores_lib
from awt.pruning._options import Integer, Number, Option, option
from awt.pruning._ticket import (
  PruningContext,
  SearchCheckpoints,
  Ticket,
  key_words,
)

PyTree = Any

# The options of the pipelines (module docstring); None: derived by the
# method (``E = config.num_epochs``).
_EPOCHS = Integer(lo=0, optional=True)
PRETRAIN_EPOCHS = Option(
  "pretrain_epochs",
  None,
  _EPOCHS,
  "dense training before pruning (None: E for one_shot/hydra, 0 for dns)",
)
IMP_OPTIONS = (
  Option("imp_rounds", 5, Integer(lo=1), "imp: prune-retrain rounds"),
  Option("imp_epochs", None, _EPOCHS, "imp: epochs per round (None: E)"),
  Option(
    "rewind_epoch",
    0,
    Integer(lo=0),
    "imp: epoch of the first run to rewind to (0: the initialization)",
  ),
)
HYDRA_OPTIONS = (
  PRETRAIN_EPOCHS,
  Option("score_epochs", None, _EPOCHS, "hydra: score optimization (None: E)"),
  Option(
    "score_learning_rate",
    None,
    Number(lo=0.0, lo_open=True, optional=True),
    "hydra: the scores' learning rate (None: optimizer.learning_rate)",
  ),
)
DNS_OPTIONS = (
  PRETRAIN_EPOCHS,
  Option("dns_epochs", None, _EPOCHS, "dns: epochs of surgery (None: E)"),
  Option("dns_interval", 1, Integer(lo=1), "dns: steps between mask updates"),
  Option(
    "dns_gamma",
    1e-4,
    Number(lo=0.0),
    "dns: update probability (1 + gamma t)^-power (Guo et al. 2016)",
  ),
  Option("dns_power", 1.0, Number(lo=0.0), "dns: see dns_gamma"),
  Option(
    "dns_low",
    0.9,
    Number(lo=0.0, lo_open=True),
    "dns: prune below low * threshold (the DNS code's 0.9)",
  ),
  Option(
    "dns_high",
    1.1,
    Number(lo=0.0, lo_open=True),
    "dns: splice back above high * threshold (the DNS code's 1.1)",
  ),
)


def passes_per_step(adversarial: Mapping | None) -> int:
  """Forward+backward passes one training step spends per batch.

  Natural training costs 1; PGD-AT and TRADES with ``k`` attack steps cost
  ``k + 1`` (``k`` attack gradients, one weight gradient); fast-AT, one FGSM
  step, costs 2.

  Args:
    adversarial: the ``config.adversarial`` block, or None for natural.

  Returns:
    The number of passes, an int.

  Examples:
    >>> passes_per_step({"method": "pgd_at", "steps": 10})
    11
    >>> passes_per_step(None)
    1
  """
  method = (adversarial or {}).get("method", "none")
  if method == "none":
    return 1
  if method == "fast_at":
    return 2
  if method in ("pgd_at", "trades"):
    return int(adversarial["steps"]) + 1
  raise ValueError(
    f"unknown adversarial method {method!r}; known: "
    f"{', '.join(training.OBJECTIVES)}"
  )


@dataclasses.dataclass(frozen=True)
class _Setup:
  """What every pipeline reads from the context, parsed once."""

  model: nn.Module
  opt_cfg: dict
  adversarial: dict
  paths: tuple
  sizes: tuple[int, ...]
  density: float
  target: allocation.Target
  scope: str
  batch_size: int
  seed: int
  num_epochs: int
  steps_per_epoch: int
  passes_per_step: int


def _epochs(ctx: PruningContext, name: str, unset: int) -> int:
  """``pruning.<name>`` in epochs; ``unset`` where the config leaves None."""
  value = option(ctx, name)
  return unset if value is None else value


def _setup(ctx: PruningContext) -> _Setup:
  config = ctx.config
  model = ctx.model
  if getattr(model, "axis_name", None) is not None:
    # Pipelines train on one device: BatchNorm must not all-reduce.
    model = model.clone(axis_name=None)
  adversarial = dict(config["adversarial"])
  batch_size = int(config["batch_size"])
  paths = scores_lib.prunable(ctx)
  sizes = scores_lib._sizes(ctx.params, paths)
  return _Setup(
    model=model,
    opt_cfg=dict(config["optimizer"]),
    adversarial=adversarial,
    paths=paths,
    sizes=sizes,
    density=1.0 - option(ctx, "sparsity"),
    target=allocation.target(ctx, paths, sizes),
    scope=option(ctx, "scope"),
    batch_size=batch_size,
    seed=int(config["seed"]),
    num_epochs=int(config["num_epochs"]),
    steps_per_epoch=data_lib.steps_per_epoch(
      ctx.split.num_examples, batch_size
    ),
    passes_per_step=passes_per_step(adversarial),
  )


def _trainer(
  s: _Setup, model, opt_cfg: Mapping, epochs: int
) -> tuple[optax.GradientTransformation, Callable]:
  """``(tx, step)`` for ``epochs`` epochs of the run's objective."""
  tx = training.make_optimizer(opt_cfg, epochs * s.steps_per_epoch)
  step = training.make_train_step(
    model,
    tx,
    s.adversarial,
    axis_name=None,
    steps_per_epoch=s.steps_per_epoch,
  )
  return tx, step


def _train(
  s: _Setup,
  ctx: PruningContext,
  step: Callable,
  run: Callable,
  state: training.TrainState,
  epochs: int,
  first_epoch: int = 0,
) -> training.TrainState:
  """``epochs`` epochs with ``run = training.scan_steps(step)``."""
  state, _ = training.train_epochs(
    step,
    state,
    ctx.split,
    batch_size=s.batch_size,
    epochs=epochs,
    seed=s.seed,
    first_epoch=first_epoch,
    run=run,
  )
  return state


def _pretrain(
  s: _Setup, ctx: PruningContext, key: jax.Array, epochs: int
) -> training.TrainState:
  """Dense training from ``ctx.params`` (state key ``key``).

  With ``ctx.pretrain_dir`` set, the trained network is saved there under
  the fingerprint of ``_pretrain_settings`` and loaded instead of trained
  when a later search asks for the same one (the same function of the same
  inputs: loading gives the very arrays training would).
  """
  tx, step = _trainer(s, s.model, s.opt_cfg, epochs)
  state = training.create_train_state(
    ctx.params, ctx.batch_stats, masks.ones(ctx.params), tx, key
  )
  settings = _pretrain_settings(s, ctx, key, epochs)
  directory = None
  if ctx.pretrain_dir is not None:
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
    directory = os.path.join(ctx.pretrain_dir, digest.hexdigest()[:16])
  with SearchCheckpoints(directory, settings) as ckpt:
    template = {"params": state.params, "batch_stats": state.batch_stats}
    restored = ckpt.restore(template)
    if restored is not None:
      (ctx.log or logging.info)(f"dense pretraining loaded from {directory}")
      return state.replace(**restored[1])
    state = _train(s, ctx, step, training.scan_steps(step), state, epochs)
    ckpt.save(
      epochs, {"params": state.params, "batch_stats": state.batch_stats}, {}
    )
  return state


def _pretrain_settings(s: _Setup, ctx: PruningContext, key, epochs) -> dict:
  """Everything the dense pretraining's result depends on, JSON-able."""
  leaves = jax.tree.leaves((ctx.params, ctx.batch_stats))
  return {
    "what": "dense pretraining",
    "key": key_words(key),
    "epochs": epochs,
    "model": repr(s.model),
    "init_abs_sum": float(sum(jnp.sum(jnp.abs(x)) for x in leaves)),
    "num_examples": int(ctx.split.num_examples),
    "labels_sum": int(np.sum(ctx.split.labels)),
    "batch_size": s.batch_size,
    "seed": s.seed,
    "adversarial": {k: s.adversarial[k] for k in sorted(s.adversarial)},
    "optimizer": {k: s.opt_cfg[k] for k in sorted(s.opt_cfg)},
  }


_STATIC = ("density", "scope", "paths")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _prune_by_magnitude(
  params: PyTree, mask: PyTree, density: allocation.Target, scope: str, paths
) -> tuple[PyTree, PyTree]:
  """``(scores, mask)``: top-k of ``|θ|`` among kept weights (others -1)."""
  scores = jax.tree.map(
    lambda p, m: jnp.where(m > 0, jnp.abs(p), -1.0), params, mask
  )
  return scores, masks.topk(scores, density, scope=scope, paths=paths)


def _finish(
  s: _Setup,
  t0: float,
  method: str,
  mask: PyTree,
  params: PyTree,
  batch_stats: PyTree,
  scores: PyTree | None,
  steps: int,
  start: str,
  **extra,
) -> Ticket:
  """The Ticket (masked params) with its cost, once the device is done."""
  ticket = Ticket(
    mask=mask,
    params=jax.jit(masks.apply)(params, mask),
    batch_stats=batch_stats,
    scores=scores,
    info={},
  )
  jax.block_until_ready(ticket)
  info = {
    "method": method,
    "passes": int(steps * s.passes_per_step),
    "wall_time_s": time.perf_counter() - t0,
    "start": start,
    "sparsity": 1.0 - s.density,
    "scope": s.scope,
    **extra,
  }
  return ticket.replace(info=info)


def one_shot(ctx: PruningContext, key: jax.Array) -> Ticket:
  """Train dense, prune the smallest trained weights once (Han et al.).

  Trains the dense net ``pruning.pretrain_epochs`` epochs with the run's
  objective, then keeps the largest-magnitude trained weights (global or
  layerwise). The ticket starts from the trained weights, masked
  (``info["start"] = "trained"``); the caller's training of the ticket is
  the fine-tuning stage.

  Args:
    ctx: the pruning context; ``ctx.params`` are the weights at init.
    key: PRNG key of the training state (attack random starts).

  Returns:
    The Ticket; ``scores`` are the trained magnitudes ``|θ|`` (the mask is
    their top-k).

  References:
    Han, Pool, Tran & Dally, "Learning both Weights and Connections for
    Efficient Neural Networks", NeurIPS 2015, Sec. 3.
  """
  t0 = time.perf_counter()
  s = _setup(ctx)
  epochs = _epochs(ctx, "pretrain_epochs", s.num_epochs)
  state = _pretrain(s, ctx, key, epochs)
  scores, mask = _prune_by_magnitude(
    state.params, state.mask, s.target, s.scope, s.paths
  )
  return _finish(
    s,
    t0,
    "one_shot",
    mask,
    state.params,
    state.batch_stats,
    scores,
    epochs * s.steps_per_epoch,
    "trained",
    pretrain_epochs=epochs,
  )


def _resume_schedule(opt_state: PyTree, count: int) -> PyTree:
  """Moves every learning-rate schedule in ``opt_state`` to step ``count``.

  The moments stay fresh (zeros); only ``ScaleByScheduleState.count`` is
  set, so a rewound run continues the schedule where step ``count`` had it.
  """
  is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)
  return jax.tree.map(
    lambda x: (
      x._replace(count=jnp.asarray(count, x.count.dtype))
      if is_schedule(x)
      else x
    ),
    opt_state,
    is_leaf=is_schedule,
  )


def imp_densities(sparsity: float, rounds: int) -> tuple[float, ...]:
  r"""Density after each round of iterative magnitude pruning.

  Each round removes the fraction :math:`p = 1 - (1 - s)^{1/R}` of the
  remaining weights, so round :math:`r` ends at density
  :math:`(1 - s)^{r/R}`; the last is exactly :math:`1 - s`.

  Args:
    sparsity: the final sparsity ``s`` in [0, 1).
    rounds: the number of rounds ``R >= 1``.

  Returns:
    ``R`` densities, decreasing, the last ``1 - sparsity``.

  Examples:
    >>> imp_densities(0.75, 2)
    (0.5, 0.25)
  """
  if rounds < 1:
    raise ValueError(f"pruning.imp_rounds must be >= 1, got {rounds}")
  return allocation.schedule(1.0 - sparsity, rounds)


def imp(ctx: PruningContext, key: jax.Array) -> Ticket:
  r"""Iterative magnitude pruning with rewinding (the lottery ticket).

  Round 0 trains the dense net ``pruning.imp_epochs`` epochs from
  ``ctx.params`` and saves the weights (and BatchNorm statistics) after
  epoch ``k = pruning.rewind_epoch``. Every round then keeps the
  largest-magnitude trained weights among those still kept, at the density
  of :func:`imp_densities`, and the next round trains the masked net from
  the rewind point for the remaining ``imp_epochs - k`` epochs, with the
  data order of epochs ``k, k+1, ...``, a fresh optimizer state and the
  learning-rate schedule resumed at step ``k * steps_per_epoch`` (as
  training from iteration ``k`` of the first run). ``pruning.imp_rounds``
  trainings and prunings in all; the ticket is the rewind point, masked
  (``start`` ``"init"`` for ``k = 0``, else ``"rewound"``). Every round's
  state uses ``key``, so the rewind point equals the first
  ``k`` epochs of ``training.train_epochs`` from
  ``create_train_state(ctx.params, ..., tx, key)`` with
  ``tx = make_optimizer(config.optimizer, imp_epochs * steps_per_epoch)``.

  With ``ctx.checkpoint_dir`` set, every finished round (its mask and the
  rewind point) is saved there, and a run started again with the same
  settings continues after the last finished round, bit-identically; a
  round cut short is run again from its start. ``info["wall_time_s"]``
  adds up the time of all attempts.

  Args:
    ctx: the pruning context; ``ctx.params`` are the weights at init.
    key: PRNG key of the training states (attack random starts).

  Returns:
    The Ticket (``scores`` None: each round ranks only surviving weights).

  References:
    Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse,
    Trainable Neural Networks", ICLR 2019, Sec. 1 (iterative pruning);
    Frankle, Dziugaite, Roy & Carbin, "Linear Mode Connectivity and the
    Lottery Ticket Hypothesis", ICML 2020, Sec. 5 (rewinding to iteration
    k).
  """
  t0 = time.perf_counter()
  s = _setup(ctx)
  rounds = option(ctx, "imp_rounds")
  epochs = _epochs(ctx, "imp_epochs", s.num_epochs)
  k = option(ctx, "rewind_epoch")
  if not k < epochs:
    raise ConfigError(
      f"pruning.rewind_epoch must be < pruning.imp_epochs ({epochs}), got {k}"
    )
  targets = allocation.schedule(s.target, rounds)
  densities = tuple(allocation.overall(t, s.sizes) for t in targets)
  tx, step = _trainer(s, s.model, s.opt_cfg, epochs)
  run = training.scan_steps(step)
  log = ctx.log or logging.info
  settings = {
    "method": "imp",
    "key": key_words(key),
    "num_examples": int(ctx.split.num_examples),
    "rounds": rounds,
    "epochs": epochs,
    "rewind_epoch": k,
    "densities": list(densities),
    **allocation.fingerprint(s.target),
    "scope": s.scope,
    "paths": [list(p) for p in s.paths],
    "batch_size": s.batch_size,
    "seed": s.seed,
    "adversarial": dict(s.adversarial),
    "optimizer": dict(s.opt_cfg),
  }
  with SearchCheckpoints(ctx.checkpoint_dir, settings) as ckpt:
    template = {
      "mask": masks.ones(ctx.params),
      "params": ctx.params,
      "batch_stats": ctx.batch_stats,
    }
    restored = ckpt.restore(template)
    t_round = time.perf_counter()  # Round 1's training starts below.
    if restored is None:
      first, earlier_s = 0, 0.0
      state = training.create_train_state(
        ctx.params, ctx.batch_stats, masks.ones(ctx.params), tx, key
      )
      state = _train(s, ctx, step, run, state, k)
      rewind = {"params": state.params, "batch_stats": state.batch_stats}
      mask = state.mask
      if k == 0:
        # Round 1 from init is the dense pretraining of the other pipelines.
        state = _pretrain(s, ctx, key, epochs)
    else:
      first, rewind, meta = restored
      mask, earlier_s = rewind.pop("mask"), meta["wall_time_s"]
      log(
        f"imp: resuming after round {first} of {rounds} from {ckpt.directory}"
      )
    for r in range(first, rounds):
      if r > 0:
        state = training.create_train_state(
          rewind["params"], rewind["batch_stats"], mask, tx, key
        )
        state = state.replace(
          step=jnp.asarray(k * s.steps_per_epoch, state.step.dtype),
          opt_state=_resume_schedule(state.opt_state, k * s.steps_per_epoch),
        )
      if r > 0 or k > 0:
        state = _train(s, ctx, step, run, state, epochs - k, first_epoch=k)
      _, mask = _prune_by_magnitude(
        state.params, mask, targets[r], s.scope, s.paths
      )
      ckpt.save(
        r + 1,
        {"mask": mask, **rewind},
        {"wall_time_s": earlier_s + time.perf_counter() - t0},
      )
      per_round = (time.perf_counter() - t_round) / (r + 1 - first)
      log(
        f"imp round {r + 1}/{rounds}: density {densities[r]:.4f}, "
        f"{per_round:.1f}s per round, ETA {per_round * (rounds - r - 1):.0f}s"
      )

  steps = (epochs + (rounds - 1) * (epochs - k)) * s.steps_per_epoch
  return _finish(
    s,
    t0 - earlier_s,
    "imp",
    mask,
    rewind["params"],
    rewind["batch_stats"],
    None,
    steps,
    "init" if k == 0 else "rewound",
    imp_rounds=rounds,
    imp_epochs=epochs,
    rewind_epoch=k,
    round_densities=densities,
  )


@dataclasses.dataclass(frozen=True)
class _Reparameterized:
  """A module whose parameters are computed from trainable and carried parts.

  Duck-types ``model.apply`` for ``training.make_train_step``: the step
  differentiates ``variables["params"]`` (the trainable part) while
  ``variables["batch_stats"] = {"aux": ..., "model": ...}`` carries the
  frozen part through the ``TrainState`` next to the model's own BatchNorm
  statistics. The network runs with ``weights(params, aux)``.
  """

  model: nn.Module
  weights: Callable[[PyTree, PyTree], PyTree]

  def apply(self, variables, x, train=False, mutable=False):
    carried = variables["batch_stats"]
    inner = training.model_variables(
      self.weights(variables["params"], carried["aux"]), carried["model"]
    )
    if not mutable:
      return self.model.apply(inner, x, train=train)
    logits, updates = self.model.apply(inner, x, train=train, mutable=mutable)
    new_stats = updates.get("batch_stats", carried["model"])
    return logits, {"batch_stats": {"aux": carried["aux"], "model": new_stats}}


def _path(keypath) -> tuple[str, ...]:
  """A jax key path as an ``awt.masks`` path: ``('Dense_0', 'kernel')``."""
  return tuple(str(getattr(k, "key", k)) for k in keypath)


def _leaves_at(tree: PyTree, paths) -> dict:
  """``{path: leaf}`` for the leaves of ``tree`` at ``paths``."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  by_path = {_path(kp): x for kp, x in flat}
  return {p: by_path[p] for p in paths}


def _on_paths(fn: Callable, tree: PyTree, paths) -> PyTree:
  """``fn(leaf)`` on the leaves at ``paths``, zeros elsewhere."""
  paths = set(paths)
  return jax.tree_util.tree_map_with_path(
    lambda kp, x: fn(x) if _path(kp) in paths else jnp.zeros_like(x), tree
  )


def hydra_init_scores(params: PyTree, paths) -> PyTree:
  r"""HYDRA's scaled initialization of the importance scores.

  .. math::
    s_i = \sqrt{6 / \mathrm{fan\_in}_l}\; \theta_i / \max_{j \in l}|\theta_j|

  per layer ``l`` (the bound of Kaiming-uniform, scaled by the normalized
  pretrained weight), so the initial mask ``top-k(|s|)`` is the layer's
  magnitude pruning; ``fan_in`` is the product of all kernel dimensions but
  the last.

  Args:
    params: the pretrained weights.
    paths: the prunable kernels.

  Returns:
    Scores with the structure of ``params``; zeros off ``paths``.

  References:
    Sehwag, Wang, Mittal & Jana, "HYDRA: Pruning Adversarially Robust Neural
    Networks", NeurIPS 2020, Sec. 3 (scaled score initialization; their code's
    ``initialize_scaled_score``).
  """

  def init(theta):
    fan_in = math.prod(theta.shape[:-1])
    return math.sqrt(6.0 / fan_in) * theta / jnp.max(jnp.abs(theta))

  return _on_paths(init, params, paths)


def hydra_weights(
  scores: PyTree,
  params: PyTree,
  density: allocation.Target,
  *,
  scope: str,
  paths,
) -> PyTree:
  r"""``θ ⊙ top-k(|s|)`` with a straight-through gradient to the scores.

  The forward value is exactly the masked weights; the backward pass treats
  the top-k as the identity (edge-popup), so
  :math:`\partial L / \partial s = (\partial L / \partial w) \odot \theta
  \odot \mathrm{sign}(s)`.

  Args:
    scores: importance scores with the structure of ``params``.
    params: the frozen weights.
    density: fraction kept, or (layerwise) one per path.
    scope: ``"global"`` or ``"layerwise"``.
    paths: the prunable kernels.

  Returns:
    The weights the network runs with.

  References:
    Sehwag et al., NeurIPS 2020, Sec. 3 (score optimization);
    Ramanujan et al., "What's Hidden in a Randomly Weighted Neural
    Network?", CVPR 2020, Sec. 3 (the straight-through top-k).
  """
  magnitude = jax.tree.map(jnp.abs, scores)
  hard = masks.topk(magnitude, density, scope=scope, paths=paths)
  straight = jax.tree.map(
    lambda h, a: h + (a - jax.lax.stop_gradient(a)), hard, magnitude
  )
  return jax.tree.map(lambda t, m: t * m, params, straight)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _learned_mask(scores, density, scope, paths) -> tuple[PyTree, PyTree]:
  """``(|s| on paths, zeros elsewhere; its top-k)``."""
  magnitude = _on_paths(jnp.abs, scores, paths)
  return magnitude, masks.topk(magnitude, density, scope=scope, paths=paths)


def hydra(ctx: PruningContext, key: jax.Array) -> Ticket:
  """HYDRA: learn which pretrained weights to keep with the robust loss.

  Pretrains the dense net (``pruning.pretrain_epochs``, the run's
  objective), initializes one score per prunable weight with
  :func:`hydra_init_scores`, then optimizes only the scores for
  ``pruning.score_epochs`` epochs with the same objective (attacks against
  the pruned net), the network running with :func:`hydra_weights` and the
  weights frozen; BatchNorm statistics keep updating as in their code. The
  mask is the exact top-k of the learned ``|s|``; the ticket starts from the
  pretrained weights, masked (HYDRA fine-tunes them).

  Args:
    ctx: the pruning context; ``ctx.params`` are the weights at init.
    key: PRNG key; both phases' states use it (attack random starts).

  Returns:
    The Ticket; ``scores`` are the learned ``|s|`` (zeros off the prunable
    kernels) and the mask is their top-k.

  References:
    Sehwag, Wang, Mittal & Jana, "HYDRA: Pruning Adversarially Robust Neural
    Networks", NeurIPS 2020, Sec. 3.
  """
  t0 = time.perf_counter()
  s = _setup(ctx)
  pretrain_epochs = _epochs(ctx, "pretrain_epochs", s.num_epochs)
  score_epochs = _epochs(ctx, "score_epochs", s.num_epochs)
  pretrained = _pretrain(s, ctx, key, pretrain_epochs)

  weights = lambda scores, theta: hydra_weights(
    scores, theta, s.target, scope=s.scope, paths=s.paths
  )
  opt_cfg = dict(s.opt_cfg)
  if option(ctx, "score_learning_rate") is not None:
    opt_cfg["learning_rate"] = option(ctx, "score_learning_rate")
  tx, step = _trainer(
    s, _Reparameterized(s.model, weights), opt_cfg, score_epochs
  )
  run = training.scan_steps(step)
  trainable = _on_paths(jnp.ones_like, ctx.params, s.paths)
  state = training.create_train_state(
    jax.jit(hydra_init_scores, static_argnames="paths")(
      pretrained.params, s.paths
    ),
    {"aux": pretrained.params, "model": pretrained.batch_stats},
    trainable,
    tx,
    key,
  )
  state = _train(s, ctx, step, run, state, score_epochs)
  scores, mask = _learned_mask(state.params, s.target, s.scope, s.paths)
  return _finish(
    s,
    t0,
    "hydra",
    mask,
    pretrained.params,
    state.batch_stats["model"],
    scores,
    (pretrain_epochs + score_epochs) * s.steps_per_epoch,
    "trained",
    pretrain_epochs=pretrain_epochs,
    score_epochs=score_epochs,
  )


def _thresholds(
  params: PyTree, density: allocation.Target, scope: str, paths
) -> dict:
  """Magnitude of the k-th largest ``|θ|`` per path (shared if global)."""

  def kth_largest(values, d):
    k = max(masks.num_to_keep(values.size, d), 1)
    return jnp.sort(values)[values.size - k]

  layers = {p: jnp.abs(x).ravel() for p, x in _leaves_at(params, paths).items()}
  if scope == "global":
    t = kth_largest(jnp.concatenate(list(layers.values())), density)
    return dict.fromkeys(layers, t)
  per_layer = masks.per_layer_density(density, scope, len(layers))
  return {
    p: kth_largest(v, d)
    for (p, v), d in zip(layers.items(), per_layer, strict=True)
  }


def dns_mask(
  params: PyTree,
  mask: PyTree,
  density: allocation.Target,
  *,
  scope: str,
  paths,
  low: float = 0.9,
  high: float = 1.1,
) -> PyTree:
  r"""One DNS mask update: prune below ``a``, splice back above ``b``.

  .. math::
    h(\theta, m) = \begin{cases} 0 & |\theta| < a \\ m & a \le |\theta| < b
      \\ 1 & b \le |\theta| \end{cases}, \qquad a = \mathrm{low}\cdot t,
      \quad b = \mathrm{high}\cdot t

  where ``t`` is the magnitude of the ``round(density * n)``-th largest
  ``|θ|`` (over all prunable weights, or per layer): hysteresis around the
  magnitude threshold of the target density, in place of DNS's
  ``μ + c σ`` whose ``c`` would have to be tuned per target.

  Args:
    params: current weights (pruned ones included: they keep training).
    mask: the current mask.
    density: the target fraction kept, or (layerwise) one per path.
    scope: ``"global"`` or ``"layerwise"``.
    paths: the prunable kernels.
    low: ``a / t``.
    high: ``b / t``.

  Returns:
    The new mask (ones off ``paths``).

  References:
    Guo, Yao & Chen, "Dynamic Network Surgery for Efficient DNNs", NeurIPS
    2016, Sec. 2 (the mask function h_k with thresholds a_k < b_k).
  """
  t = _thresholds(params, density, scope, paths)

  def update(keypath, theta, m):
    path = _path(keypath)
    if path not in t:
      return m
    magnitude = jnp.abs(theta)
    kept = jnp.where(magnitude < low * t[path], 0.0, m)
    return jnp.where(magnitude >= high * t[path], 1.0, kept).astype(m.dtype)

  return jax.tree_util.tree_map_with_path(update, params, mask)


def straight_through(params: PyTree, mask: PyTree) -> PyTree:
  r"""``θ ⊙ m`` whose gradient reaches every ``θ``, pruned ones included.

  DNS updates all weights with the gradient of the masked product,
  :math:`\theta \leftarrow \theta - \beta\, \partial L / \partial(\theta
  \odot m)`, so a pruned weight keeps moving and can be spliced back.

  Args:
    params: the weights.
    mask: the mask (same structure).

  Returns:
    Weights equal to ``θ ⊙ m`` with ``∂(output)/∂θ`` the identity.

  References:
    Guo, Yao & Chen, NeurIPS 2016, Sec. 2 (the weight update).
  """
  sg = jax.lax.stop_gradient
  return jax.tree.map(lambda p, m: sg(p) * m + (p - sg(p)), params, mask)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _final_topk(params, mask, density, scope, paths) -> PyTree:
  """Exact top-k of ``|θ|``, ranking currently kept weights first."""
  layers = _leaves_at(params, paths).values()
  bonus = 1.0 + jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in layers]))
  scores = jax.tree.map(lambda p, m: jnp.abs(p) + bonus * m, params, mask)
  return masks.topk(scores, density, scope=scope, paths=paths)


def dns(ctx: PruningContext, key: jax.Array) -> Ticket:
  r"""Dynamic network surgery: train while pruning and splicing weights.

  After ``pruning.pretrain_epochs`` of dense training (default 0), trains
  ``pruning.dns_epochs`` epochs with the run's objective, the network running
  with ``θ ⊙ m`` (:func:`straight_through`: every weight is updated, pruned
  ones too). At step ``t`` (counted from the start of surgery), if
  ``t % dns_interval == 0``, the mask is updated by :func:`dns_mask` with
  probability :math:`(1 + \gamma t)^{-\mathrm{power}}` (the first step always
  updates it). At the end the exact target count is kept by ranking the
  currently kept weights first, each group by ``|θ|``, so the kept set only
  shrinks (or grows from the largest pruned weights if surgery left too
  few). The ticket starts from the trained weights, masked.

  Args:
    ctx: the pruning context; ``ctx.params`` are the weights at init.
    key: PRNG key of the training states and of the update coin flips.

  Returns:
    The Ticket (``scores`` None); ``info`` adds ``mask_updates`` (how many
    updates ran) and ``spliced`` (weights brought back, summed over them).

  References:
    Guo, Yao & Chen, "Dynamic Network Surgery for Efficient DNNs", NeurIPS
    2016, Sec. 2–3; used for sparse robust nets by Guo, Zhang, Zhang &
    Chen, "Sparse DNNs with Improved Adversarial Robustness", NeurIPS 2018.
  """
  t0 = time.perf_counter()
  s = _setup(ctx)
  pretrain_epochs = _epochs(ctx, "pretrain_epochs", 0)
  epochs = _epochs(ctx, "dns_epochs", s.num_epochs)
  interval, gamma, power, low, high = (
    option(ctx, f"dns_{name}")
    for name in ("interval", "gamma", "power", "low", "high")
  )
  if not low <= high:
    raise ConfigError(f"pruning.dns_low={low} must be <= dns_high={high}")
  key_train, key_coin = jax.random.split(key)
  pretrained = _pretrain(s, ctx, key_train, pretrain_epochs)

  weights = lambda theta, aux: straight_through(theta, aux["mask"])
  tx, inner = _trainer(s, _Reparameterized(s.model, weights), s.opt_cfg, epochs)

  def step(state, batch):
    aux = state.batch_stats["aux"]
    t = state.step
    coin = jax.random.uniform(jax.random.fold_in(aux["key"], t))
    due = (t % interval == 0) & (coin < (1.0 + gamma * t) ** (-power))
    new_mask = jax.lax.cond(
      due,
      lambda: dns_mask(
        state.params,
        aux["mask"],
        s.target,
        scope=s.scope,
        paths=s.paths,
        low=low,
        high=high,
      ),
      lambda: aux["mask"],
    )
    spliced = sum(
      jnp.sum((new_mask_l > m_l).astype(jnp.int32))
      for new_mask_l, m_l in zip(
        jax.tree.leaves(new_mask), jax.tree.leaves(aux["mask"]), strict=True
      )
    )
    aux = {
      "mask": new_mask,
      "key": aux["key"],
      "updates": aux["updates"] + due.astype(jnp.int32),
      "spliced": aux["spliced"] + spliced,
    }
    return inner(
      state.replace(batch_stats={**state.batch_stats, "aux": aux}), batch
    )

  aux = {
    "mask": masks.ones(ctx.params),
    "key": key_coin,
    "updates": jnp.zeros((), jnp.int32),
    "spliced": jnp.zeros((), jnp.int32),
  }
  state = training.create_train_state(
    pretrained.params,
    {"aux": aux, "model": pretrained.batch_stats},
    masks.ones(ctx.params),
    tx,
    key_train,
  )
  state = _train(s, ctx, step, training.scan_steps(step), state, epochs)
  aux = state.batch_stats["aux"]
  mask = _final_topk(state.params, aux["mask"], s.target, s.scope, s.paths)
  return _finish(
    s,
    t0,
    "dns",
    mask,
    state.params,
    state.batch_stats["model"],
    None,
    (pretrain_epochs + epochs) * s.steps_per_epoch,
    "trained",
    pretrain_epochs=pretrain_epochs,
    dns_epochs=epochs,
    mask_updates=int(aux["updates"]),
    spliced=int(aux["spliced"]),
  )


# name -> (method, the options it reads besides the shared ones); the
# package registers them (``awt.pruning.register``).
METHODS: dict[
  str, tuple[Callable[[PruningContext, jax.Array], Ticket], tuple]
] = {
  "one_shot": (one_shot, (PRETRAIN_EPOCHS,)),
  "imp": (imp, IMP_OPTIONS),
  "hydra": (hydra, HYDRA_OPTIONS),
  "dns": (dns, DNS_OPTIONS),
}
