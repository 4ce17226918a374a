"""Training state, objectives, optimizers and pmap-ready step functions.

A step is a pure function ``step(state, batch) -> (state, metrics)``. It is
written for ``jax.pmap(step, axis_name="batch")``: gradients and metrics are
averaged over the named axis, and BatchNorm models built with the same
``axis_name`` all-reduce their batch statistics, so N devices holding equal
shards of a global batch compute what one device computes for the whole batch.
Randomness (attack random starts) is drawn per example from
``fold_in(fold_in(state.key, step), batch["index"])``, where ``index`` is the
example's position in the global batch, for the same reason.

Pruned weights stay exactly zero: gradients and optimizer updates are
multiplied by the mask and the new parameters are masked again, so momentum
or weight decay can never regrow a pruned weight.
"""

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from awt import attacks
from awt import data as data_lib
from awt.attacks import _common, _threefry

PyTree = Any
OBJECTIVES = ("none", "pgd_at", "fast_at", "trades")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step", "linear")


@struct.dataclass
class TrainState:
  """Everything a training step reads and writes.

  Attributes:
    step: int32 scalar, number of optimizer steps taken.
    params: model parameters (pruned entries exactly zero).
    batch_stats: BatchNorm running statistics (``{}`` for models without).
    mask: mask pytree with the structure of ``params`` (see ``awt.masks``).
    opt_state: optax state.
    key: base PRNG key ``uint32[2]``; step ``t`` uses ``fold_in(key, t)``.
  """

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  mask: PyTree
  opt_state: PyTree
  key: jax.Array

  def variables(self) -> dict:
    """The flax variables dict for ``model.apply``."""
    return model_variables(self.params, self.batch_stats)


def model_variables(params: PyTree, batch_stats: PyTree) -> dict:
  """``{"params": ..., "batch_stats": ...}``, without empty collections."""
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  return variables


def init_variables(
  model: nn.Module, key: jax.Array, image_shape: tuple[int, ...]
) -> tuple[PyTree, PyTree]:
  """Initializes ``(params, batch_stats)`` for inputs ``[1, *image_shape]``."""
  variables = model.init(key, jnp.zeros((1, *image_shape)), train=False)
  return variables["params"], variables.get("batch_stats", {})


def create_train_state(
  params: PyTree,
  batch_stats: PyTree,
  mask: PyTree,
  tx: optax.GradientTransformation,
  key: jax.Array,
) -> TrainState:
  """A step-0 state with ``params ⊙ mask`` and a fresh optimizer state."""
  params = jax.tree.map(lambda p, m: p * m, params, mask)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    mask=mask,
    opt_state=tx.init(params),
    key=jnp.asarray(key),
  )


def make_schedule(opt_cfg: Mapping, total_steps: int) -> optax.Schedule:
  """Learning-rate schedule from ``optimizer.{learning_rate, schedule, ...}``.

  ``constant``; ``cosine`` (to 0 at ``total_steps``); ``linear`` (to 0);
  ``step`` (x0.1 at 50% and 75% of training, the usual CIFAR recipe of
  Madry et al. 2018 / Rice et al. 2020). Optional ``warmup_steps`` of linear
  warm-up precede any of them.
  """
  lr = float(opt_cfg["learning_rate"])
  name = opt_cfg.get("schedule", "constant")
  warmup = int(opt_cfg.get("warmup_steps", 0))
  steps = max(total_steps - warmup, 1)
  if name == "constant":
    sched = optax.constant_schedule(lr)
  elif name == "cosine":
    sched = optax.cosine_decay_schedule(lr, steps)
  elif name == "linear":
    sched = optax.linear_schedule(lr, 0.0, steps)
  elif name == "step":
    sched = optax.piecewise_constant_schedule(
      lr, {int(0.5 * steps): 0.1, int(0.75 * steps): 0.1}
    )
  else:
    raise ValueError(
      f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}"
    )
  if warmup:
    return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), sched], [warmup]
    )
  return sched


def make_optimizer(
  opt_cfg: Mapping, total_steps: int
) -> optax.GradientTransformation:
  """optax optimizer from ``optimizer.{name, learning_rate, momentum, ...}``.

  Weight decay is coupled (added to the gradient, as in PyTorch SGD) for the
  SGD family and ``adam``, decoupled for ``adamw`` (Loshchilov & Hutter 2019).
  """
  name = opt_cfg["name"]
  sched = make_schedule(opt_cfg, total_steps)
  wd = float(opt_cfg.get("weight_decay", 0.0))
  momentum = float(opt_cfg.get("momentum", 0.9))
  if name == "adamw":
    return optax.adamw(sched, weight_decay=wd)
  if name == "sgd":
    base = optax.sgd(sched)
  elif name == "momentum":
    base = optax.sgd(sched, momentum=momentum)
  elif name == "nesterov":
    base = optax.sgd(sched, momentum=momentum, nesterov=True)
  elif name == "adam":
    base = optax.adam(sched)
  else:
    raise ValueError(
      f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}"
    )
  if wd:
    return optax.chain(optax.add_decayed_weights(wd), base)
  return base


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy over the batch (a scalar)."""
  return jnp.mean(_common.ce_loss(logits.astype(jnp.float32), labels))


def _trades_kl(logits_nat: jax.Array, logits_adv: jax.Array) -> jax.Array:
  """Per-example ``KL(p(x) || p(x'))`` ``[B]`` (TRADES, Zhang et al. 2019)."""
  logp_nat = jax.nn.log_softmax(logits_nat)
  logp_adv = jax.nn.log_softmax(logits_adv)
  return jnp.sum(jnp.exp(logp_nat) * (logp_nat - logp_adv), axis=-1)


def trades_attack(
  logits_fn: Callable, x: jax.Array, keys: jax.Array, *, eps, step_size, steps
) -> jax.Array:
  """The TRADES inner maximization of ``KL(p(x) || p(x'))``, l_inf.

  Starts at ``x + 0.001 N(0, I)`` and takes ``steps`` signed-gradient steps,
  projecting onto the eps-ball and [0, 1] (Zhang et al. 2019, Alg. 1).
  """
  logits_nat = jax.lax.stop_gradient(logits_fn(x))
  noise = jax.vmap(lambda k, xi: _threefry.normal(k, xi.shape))(keys, x)
  x_adv = jnp.clip(x + 0.001 * noise, 0.0, 1.0)
  kl_sum = lambda xa: jnp.sum(_trades_kl(logits_nat, logits_fn(xa)))

  def body(_, xa):
    g = jax.grad(kl_sum)(xa)
    return _common.project(xa + step_size * jnp.sign(g), x, eps, "linf")

  return jax.lax.fori_loop(0, steps, body, x_adv)


def _mask_tree(tree: PyTree, mask: PyTree) -> PyTree:
  return jax.tree.map(lambda t, m: t * m.astype(t.dtype), tree, mask)


def make_train_step(
  model: nn.Module,
  tx: optax.GradientTransformation,
  adversarial: Mapping | None = None,
  *,
  axis_name: str | None = "batch",
  steps_per_epoch: int | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Builds ``step(state, batch) -> (state, metrics)`` for one objective.

  Objectives (``adversarial["method"]``):

  * ``none``: natural training, mean cross-entropy.
  * ``pgd_at``: Madry et al. 2018, Eq. (2.1): minimize the cross-entropy at
    PGD points (random start, ``steps`` steps of ``step_size``) inside the
    ``norm`` ball of radius ``eps``.
  * ``fast_at``: Wong et al. 2020, "Fast is better than free": one FGSM step
    of ``step_size`` (1.25 eps in the paper) from a uniform random start.
  * ``trades``: Zhang et al. 2019, Eq. (5): CE(x) + beta * KL(p(x)||p(x')).

  The attack runs against the current parameters in train mode (BatchNorm
  uses the batch's statistics, as PyTorch implementations do); the
  statistics it would update are discarded.

  With ``adversarial["eps_warmup_epochs"] = E > 0`` the budget ramps up
  linearly: step ``t`` (from 0) attacks with ``eps * min(1, (t + 1) / (E
  S))`` and the step size scaled alike (``S = steps_per_epoch``), the
  ramp-up MNIST adversarial training uses at large eps (Gowal et al. 2018,
  Sec. 4; Wong et al. 2020, Sec. 5.1), without which eps 0.3 collapses
  every arm to chance on the small mnist5k training set.

  Args:
    model: a flax module from ``awt.models.get`` (built with the same
      ``axis_name`` if it has BatchNorm).
    tx: the optax optimizer.
    adversarial: mapping with ``method`` and, for adversarial methods,
      ``norm``, ``eps``, ``step_size``, ``steps`` (and ``beta`` for trades).
      ``None`` means natural training.
    axis_name: the ``pmap`` axis to average over, or None outside ``pmap``.
    steps_per_epoch: needed when ``eps_warmup_epochs`` is set.

  Returns:
    ``step``; ``batch`` holds ``image [B, H, W, C]`` float32 in [0, 1],
    ``label [B]`` int32 and ``index [B]`` int32 (position in the global
    batch). Metrics: ``loss`` and ``accuracy`` on the inputs trained on.
  """
  adv = dict(adversarial or {"method": "none"})
  method = adv.get("method", "none")
  if method not in OBJECTIVES:
    raise ValueError(
      f"unknown adversarial method {method!r}; known: {', '.join(OBJECTIVES)}"
    )

  warmup_steps = eps_warmup_steps(adv, steps_per_epoch)

  def pmean(x):
    return jax.lax.pmean(x, axis_name) if axis_name else x

  def budget(step):
    """``(eps, step_size)`` of the attack at optimizer step ``step``."""
    if not warmup_steps:
      return adv.get("eps"), adv.get("step_size")
    ramp = jnp.minimum(1.0, (step + 1).astype(jnp.float32) / warmup_steps)
    return ramp * adv["eps"], ramp * adv["step_size"]

  def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    x, y = batch["image"], batch["label"]
    step_key = jax.random.fold_in(state.key, state.step)
    keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(batch["index"])

    def apply_train(params, inputs):
      logits, updates = model.apply(
        model_variables(params, state.batch_stats),
        inputs,
        train=True,
        mutable=["batch_stats"],
      )
      return logits, updates.get("batch_stats", state.batch_stats)

    def attacked_logits(inputs):
      return apply_train(state.params, inputs)[0]

    eps, step_size = budget(state.step)

    if method in ("pgd_at", "fast_at"):
      steps = 1 if method == "fast_at" else int(adv["steps"])
      x_train = attacks.pgd(
        attacked_logits,
        x,
        y,
        keys,
        eps=eps,
        step_size=step_size,
        steps=steps,
        norm=adv.get("norm", "linf"),
        random_start=True,
        select="last",
      )
      x_train = jax.lax.stop_gradient(x_train)
    elif method == "trades":
      x_train = jax.lax.stop_gradient(
        trades_attack(
          attacked_logits,
          x,
          keys,
          eps=eps,
          step_size=step_size,
          steps=int(adv["steps"]),
        )
      )
    else:
      x_train = x

    def loss_fn(params):
      if method == "trades":
        logits_nat, batch_stats = apply_train(params, x)
        logits_adv, _ = apply_train(params, x_train)
        kl = jnp.mean(_trades_kl(logits_nat, logits_adv))
        loss = cross_entropy(logits_nat, y) + float(adv["beta"]) * kl
        return loss, (logits_adv, batch_stats)
      logits, batch_stats = apply_train(params, x_train)
      return cross_entropy(logits, y), (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True
    )(state.params)
    grads = _mask_tree(pmean(grads), state.mask)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = _mask_tree(updates, state.mask)
    params = _mask_tree(optax.apply_updates(state.params, updates), state.mask)
    accuracy = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
    metrics = {"loss": pmean(loss), "accuracy": pmean(accuracy)}
    new_state = state.replace(
      step=state.step + 1,
      params=params,
      batch_stats=batch_stats,
      opt_state=opt_state,
    )
    return new_state, metrics

  return step


def eps_warmup_steps(adversarial: Mapping, steps_per_epoch: int | None) -> int:
  """Steps of the linear eps ramp-up (0: none); see ``make_train_step``."""
  epochs = float(adversarial.get("eps_warmup_epochs", 0) or 0)
  if adversarial.get("method", "none") == "none" or epochs <= 0:
    return 0
  if not steps_per_epoch:
    raise ValueError("adversarial.eps_warmup_epochs needs steps_per_epoch")
  return max(1, round(epochs * steps_per_epoch))


def epoch_batches(split, batch_size: int, *, seed: int, epoch: int) -> dict:
  """One shuffled epoch stacked for ``lax.scan``: leaves ``[S, B, ...]``.

  Uses ``awt.data.batches`` (same order as the binaries) and adds the
  ``index`` field (position in the batch) the step functions expect.
  """
  batches = list(
    data_lib.batches(split, batch_size, seed=seed, epoch=epoch, shuffle=True)
  )
  stacked = {k: jnp.stack([b[k] for b in batches]) for k in ("image", "label")}
  stacked["index"] = jnp.broadcast_to(
    jnp.arange(batch_size, dtype=jnp.int32), (len(batches), batch_size)
  )
  return stacked


def scan_steps_fn(step: Callable) -> Callable:
  """``run(state, stacked) -> (state, metrics [S])`` via ``lax.scan``.

  Not jitted, so it can be wrapped by ``jax.pmap`` (the binaries) or
  ``jax.jit`` (``scan_steps``).
  """
  return lambda state, stacked: jax.lax.scan(step, state, stacked)


def scan_steps(step: Callable) -> Callable:
  """``run(state, stacked) -> (state, metrics [S])``: S steps in one program.

  Library pipelines (pruning rounds, ticket searches) train with this: the
  whole epoch is one compiled ``lax.scan`` over the stacked batches from
  ``epoch_batches``, so there is no per-step dispatch. Compiles once per
  (state structure, epoch shape).
  """

  return jax.jit(scan_steps_fn(step))


def train_epochs(
  step: Callable,
  state: TrainState,
  split,
  *,
  batch_size: int,
  epochs: int,
  seed: int,
  first_epoch: int = 0,
  run: Callable | None = None,
) -> tuple[TrainState, list[dict]]:
  """Trains ``epochs`` epochs on one device with ``scan_steps``.

  Args:
    step: from ``make_train_step(..., axis_name=None)``.
    state: the starting state.
    split: an ``awt.data.Split``.
    batch_size, seed: data order as in the binaries.
    epochs: number of epochs; epoch ``e`` uses order ``(seed, e)``.
    first_epoch: epoch number to start the data order at.
    run: a ``scan_steps(step)`` to reuse across calls (avoids recompiling).

  Returns:
    ``(state, per-epoch means of the step metrics)``.
  """
  run = scan_steps(step) if run is None else run
  history = []
  for e in range(first_epoch, first_epoch + epochs):
    state, metrics = run(
      state, epoch_batches(split, batch_size, seed=seed, epoch=e)
    )
    history.append({k: float(jnp.mean(v)) for k, v in metrics.items()})
  return state, history
