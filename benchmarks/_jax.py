"""The JAX side of the PyTorch comparisons: awt's step and attack, compiled.

Runners (see ``benchmarks._common.Runner``) for awt's PGD-k adversarial
training step (``awt.training.make_train_step``) and its PGD evaluation
attack (``awt.evaluation.parse_attack("pgdK")``) on random inputs, built the
way awt runs them. ``benchmarks/train_step.py`` and
``benchmarks/compare.py`` time them.

Each Runner's ``info`` carries the FLOPs of one call (:func:`flop_info`):
``flops_per_call`` from ``benchmarks._flops.count`` (the jaxpr, loop bodies
times their trip counts) and ``xla_flops_per_call`` from XLA's cost
analysis of the compiled executable, which counts a while loop's body once:
PGD's ``fori_loop`` (and a ``lax.scan`` of steps) is undercounted there.
:func:`matmul_gflop_per_s` measures the machine's float32 matmul rate, a
reference for those FLOP rates.
"""

import time

import jax
import jax.numpy as jnp
import jaxlib
import optax

from awt import evaluation, masks, models, training
from awt.models import _cpu_gemm
from benchmarks import _common, _flops

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def attack_config(model_name: str, steps: int) -> dict:
  """The ``pgd_at`` objective of ``make_train_step`` for a model's inputs.

  Args:
    model_name: a key of ``benchmarks._common.TASKS``.
    steps: PGD steps k.

  Returns:
    ``config.adversarial``-style dict: l_inf, the task's eps, k steps of
    ``2.5 eps / k`` (Madry et al. 2018).
  """
  eps = _common.TASKS[model_name][1]
  return {
    "method": "pgd_at",
    "norm": "linf",
    "eps": eps,
    "step_size": _common.STEP_SIZE_FACTOR * eps / steps,
    "steps": steps,
  }


def _compile(fn, *args):
  """``(fn.lower(*args).compile(), seconds)``: AOT compilation, timed."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - start


def _num_params(params) -> int:
  return int(sum(v.size for v in jax.tree.leaves(params)))


def flop_info(fn, compiled, *args) -> dict:
  """The FLOPs of one call ``fn(*args)``, for a Runner's ``info``.

  Traces ``fn`` (it does not run it, so donated ``args`` stay valid).

  Args:
    fn: the jitted function.
    compiled: ``fn.lower(*args).compile()``.
    *args: its arguments.

  Returns:
    ``flops_per_call``: ``benchmarks._flops.count(fn, *args).total``
    (matrix products, convolutions and elementwise arithmetic; loop bodies
    times their trip counts); ``matmul_flops_per_call``: its matrix product
    and convolution part; ``xla_flops_per_call``: XLA's cost analysis of
    ``compiled`` (a loop body counted once); and ``flops_unbounded_loops``
    when the program has ``while`` loops of unknown trip count (each counted
    once: ``flops_per_call`` is then a lower bound).
  """
  counted = _flops.count(fn, *args)
  info = {
    "flops_per_call": counted.total,
    "matmul_flops_per_call": counted.matmul + counted.conv,
    "xla_flops_per_call": _flops.compiled_flops(compiled),
  }
  if counted.unbounded_loops:
    info["flops_unbounded_loops"] = counted.unbounded_loops
  return info


def matmul_gflop_per_s(
  shape: tuple[int, int, int] = (1024, 1024, 1024),
  warmup: int = 3,
  repeats: int = 10,
  dtype: str = "float32",
) -> float:
  """The default device's matmul rate under XLA: ``jnp.dot`` [m, k] [k, n].

  Args:
    shape: ``(m, k, n)``.
    warmup: untimed calls after compilation.
    repeats: timed calls.
    dtype: a key of ``DTYPES``, the operands' type (float32 products run
      at JAX's default precision, which on a GPU may use TF32).

  Returns:
    ``2 m k n`` over the fastest timed call's seconds, in GFLOP/s (the best
    call: the rate the machine reaches when nothing else interferes).
  """
  m, k, n = shape
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (m, k), DTYPES[dtype])
  b = jax.random.normal(kb, (k, n), DTYPES[dtype])
  dot = jax.jit(jnp.dot)
  return _common.best_gflop_per_s(
    lambda: jax.block_until_ready(dot(a, b)), 2 * m * k * n, warmup, repeats
  )


def train_runner(
  model_name: str,
  *,
  batch: int,
  steps: int,
  dtype: str = "float32",
  scan_length: int = 0,
  seed: int = 0,
  conv_impl: str = "auto",
  dense_impl: str = "auto",
) -> _common.Runner:
  """Compiles awt's PGD-k training step on random data; a Runner.

  The optimizer is SGD with momentum (``benchmarks._common``), the mask all
  ones (a dense run; the step still masks gradients and updates).

  Args:
    model_name: a key of ``benchmarks._common.TASKS`` (and a registry name).
    batch: images per step B.
    steps: PGD steps k.
    dtype: "float32" or "bfloat16" (compute; parameters stay float32).
    scan_length: 0 for one ``jax.jit``-ed step per call (state donated),
      else S steps per call in one ``lax.scan`` (``training.scan_steps``)
      over S copies of the batch.
    seed: PRNG seed of the weights, the inputs and the attack starts.
    conv_impl: the conv models' lowering (``awt.models``: "auto", "xla",
      "cpu").
    dense_impl: the Dense layers' products (``awt.models``: "auto", "xla",
      "mkl").

  Returns:
    The Runner; each ``call()`` advances the training state. Its ``info``
    has :func:`flop_info`'s fields.
  """
  shape = _common.TASKS[model_name][0]
  model = models.get(
    model_name,
    _common.NUM_CLASSES,
    dtype=DTYPES[dtype],
    conv_impl=conv_impl,
    dense_impl=dense_impl,
  )
  tx = optax.sgd(_common.LEARNING_RATE, momentum=_common.MOMENTUM)
  step = training.make_train_step(
    model, tx, attack_config(model_name, steps), axis_name=None
  )
  k_init, k_x, k_y, k_train = jax.random.split(jax.random.PRNGKey(seed), 4)
  params, batch_stats = training.init_variables(model, k_init, shape)
  state = training.create_train_state(
    params, batch_stats, masks.ones(params), tx, k_train
  )
  data = {
    "image": jax.random.uniform(k_x, (batch, *shape)),
    "label": jax.random.randint(k_y, (batch,), 0, _common.NUM_CLASSES),
    "index": jnp.arange(batch, dtype=jnp.int32),
  }
  if scan_length:
    data = jax.tree.map(
      lambda v: jnp.broadcast_to(v, (scan_length, *v.shape)), data
    )
    fn = training.scan_steps(step)
  else:
    fn = jax.jit(step, donate_argnums=(0,))
  compiled, compile_s = _compile(fn, state, data)
  flops = flop_info(fn, compiled, state, data)
  holder = [state]

  def call():
    holder[0] = jax.block_until_ready(compiled(holder[0], data))[0]

  return _common.Runner(
    call=call,
    images_per_call=batch * max(scan_length, 1),
    compile_s=compile_s,
    info={
      "mode": f"scan{scan_length}" if scan_length else "step",
      "params": _num_params(params),
      **flops,
    },
    hlo=compiled.as_text,
  )


def pgd_eval_runner(
  model_name: str, *, batch: int, steps: int, seed: int = 0
) -> _common.Runner:
  """Compiles awt's evaluation PGD (``parse_attack(f"pgd{steps}")``).

  As ``benchmarks/attacks.py`` runs it: one jitted function of the
  variables and the batch, the network in eval mode, labels the clean
  predictions, per-example attack keys, eps of the task.

  Args:
    model_name: a key of ``benchmarks._common.TASKS``.
    batch: images per call.
    steps: PGD steps.
    seed: PRNG seed of the weights, the inputs and the random starts.

  Returns:
    The Runner; its ``info`` has :func:`flop_info`'s fields.
  """
  shape, eps = _common.TASKS[model_name]
  model = models.get(model_name, _common.NUM_CLASSES)
  k_init, k_x, k_attack = jax.random.split(jax.random.PRNGKey(seed), 3)
  variables = model.init(k_init, jnp.zeros((1, *shape)), train=False)
  x = jax.random.uniform(k_x, (batch, *shape))
  y = jnp.argmax(model.apply(variables, x, train=False), axis=-1)
  keys = jax.random.split(k_attack, batch)
  attack = evaluation.parse_attack(f"pgd{steps}")(eps, "linf")

  def run(variables, x, y, keys):
    logits_fn = lambda v: model.apply(variables, v, train=False)
    return attack(logits_fn, x, y, keys)

  fn = jax.jit(run)
  compiled, compile_s = _compile(fn, variables, x, y, keys)
  flops = flop_info(fn, compiled, variables, x, y, keys)

  def call():
    jax.block_until_ready(compiled(variables, x, y, keys))

  return _common.Runner(
    call=call,
    images_per_call=batch,
    compile_s=compile_s,
    info={
      "mode": "jit",
      "params": _num_params(variables["params"]),
      **flops,
    },
    hlo=compiled.as_text,
  )


def max_rel_diff(a: jax.Array, b: jax.Array) -> float:
  """``max |a - b| / max |b|``: how far a variant's output is from ``b``'s."""
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def versions() -> dict:
  """JAX and jaxlib versions, the device kind and what the models' default
  ``dense_impl="auto"`` runs ("xla" or "mkl"), for the records."""
  return {
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "device": jax.devices()[0].device_kind,
    "dense_impl": _cpu_gemm.resolve("auto"),
  }
