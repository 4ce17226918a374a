r"""Throughput of the attacks: images/s per (model, attack), one JSON line each.

  python -m benchmarks.attacks \
    [--models=digits_mlp,lenet5,lenet300] \
    [--attacks=pgd40,apgd-ce,square1000,deepfool,cw_l2-3x100] \
    [--batch_size=32] [--repeats=3] [--eps=0.001]

Models are randomly initialized (throughput does not depend on the weights):
``digits_mlp`` is LeNet-300-100 on the digits' ``[B, 8, 8, 1]`` inputs,
``lenet5`` and ``lenet300`` (LeNet-300-100) take MNIST-shaped
``[B, 28, 28, 1]`` uniform random inputs. Labels are the clean predictions,
so every example starts correctly classified, and ``--eps`` is tiny, so
few examples are fooled and every eps-bounded attack runs its full budget
(pgd and apgd always do; square stops early only once every example is
fooled) — its cost on a robust model. The minimal-perturbation attacks
(deepfool, cw_l2) have no eps and stop as they normally would (deepfool
once every example crosses the boundary, cw_l2's Adam steps on a stalled
loss). ``cw_l2`` runs a small budget by default, 3 binary steps x 100 Adam
steps (``cw_l2-3x100``; the reference is 9 x 1000). ``fooled`` in each
record is the fraction of the batch the attack fooled.

Each attack is one jitted function of the variables and the batch:
compiled once (``compile_s``, lowering plus XLA compilation), run once to
warm up, then timed ``--repeats`` times; ``images_per_s`` is the batch size
over the median time.
"""

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
from absl import flags

from awt import evaluation, models
from experiments import _main

MODELS = {
  # name: (registry name, input shape)
  "digits_mlp": ("mlp", (8, 8, 1)),
  "lenet5": ("lenet5", (28, 28, 1)),
  "lenet300": ("mlp", (28, 28, 1)),
}

flags.DEFINE_list("models", list(MODELS), f"Models: {', '.join(MODELS)}.")
flags.DEFINE_list(
  "attacks",
  ["pgd40", "apgd-ce", "square1000", "deepfool", "cw_l2-3x100"],
  "Names for awt.evaluation.parse_attack or parse_minimal_attack.",
)
flags.DEFINE_integer("batch_size", 32, "Examples per call.")
flags.DEFINE_integer("repeats", 3, "Timed runs after the warm-up run.")
flags.DEFINE_float("eps", 1e-3, "Budget of the eps-bounded attacks (linf).")


def _attack_fn(name: str, eps: float):
  """The attack ``(logits_fn, x, y, keys) -> x_adv`` for a name."""
  try:
    return evaluation.parse_minimal_attack(name)
  except ValueError:
    return evaluation.parse_attack(name)(eps, "linf")


def benchmark(
  model_name: str,
  attack_name: str,
  *,
  batch_size: int,
  repeats: int,
  eps: float,
) -> dict:
  """Compiles and times one attack on one model; the JSON record."""
  registry_name, shape = MODELS[model_name]
  model = models.get(registry_name, 10)
  k_init, k_x, k_attack = jax.random.split(jax.random.PRNGKey(0), 3)
  variables = model.init(k_init, jnp.zeros((1, *shape)), train=False)
  x = jax.random.uniform(k_x, (batch_size, *shape))
  y = jnp.argmax(model.apply(variables, x, train=False), axis=-1)
  keys = jax.random.split(k_attack, batch_size)
  attack = _attack_fn(attack_name, eps)

  @jax.jit
  def run(variables, x, y, keys):
    logits_fn = lambda v: model.apply(variables, v, train=False)
    x_adv = attack(logits_fn, x, y, keys)
    return x_adv, jnp.mean(jnp.argmax(logits_fn(x_adv), axis=-1) != y)

  start = time.perf_counter()
  compiled = run.lower(variables, x, y, keys).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(variables, x, y, keys))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    _, fooled = jax.block_until_ready(compiled(variables, x, y, keys))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return {
    "model": model_name,
    "input_shape": [batch_size, *shape],
    "attack": attack_name,
    "eps": eps,
    "batch_size": batch_size,
    "compile_s": round(compile_s, 3),
    "median_s": round(median, 5),
    "images_per_s": round(batch_size / median, 1),
    "repeats": repeats,
    "fooled": float(fooled),
    "jax": jax.__version__,
    "device": jax.devices()[0].device_kind,
    "num_cpu": os.cpu_count(),
  }


def main(argv):
  del argv
  f = flags.FLAGS
  for m in f.models:
    if m not in MODELS:
      raise ValueError(f"unknown model {m!r}; known: {', '.join(MODELS)}")
  for a in f.attacks:
    _attack_fn(a, f.eps)
  if f.batch_size < 1 or f.repeats < 1:
    raise ValueError("--batch_size and --repeats must be >= 1")
  for m in f.models:
    for a in f.attacks:
      _main.log(f"{m} / {a}: compiling and timing")
      record = benchmark(
        m, a, batch_size=f.batch_size, repeats=f.repeats, eps=f.eps
      )
      print(json.dumps(record), flush=True)


if __name__ == "__main__":
  _main.run(main)
