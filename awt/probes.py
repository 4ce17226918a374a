"""Forward-pass probes: which units pass a signal, how much the logits vary.

A network stuck at the constant classifier (loss ln K, accuracy 1/K) shows
it on a forward pass: its logits barely depend on the input, because some
layer's ReLUs are almost all silent, and a silent ReLU passes no gradient
back. :func:`probe` reads both quantities off any model of the zoo, so a
ticket can be looked at before training (does it start with a layer nearly
dead?) and after (where did it stall?). docs/results/awt.md ("What a stall
is") uses it on LeNet-5 tickets.

Each prunable layer (a module with a ``kernel``, ``masks.prunable_paths``)
is read at its output, before anything the parent applies to it. In the
MLP, LeNet-5 and Conv-k a ReLU follows each hidden layer directly, so the
share of outputs above zero is the share of active ReLUs; in nets with
BatchNorm between a conv and its ReLU (VGG, ResNet, WRN) it is the share
of positive pre-normalization outputs, which says less. The last layer's
output is the logits.
"""

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from awt import masks

PyTree = Any

__all__ = ["Probe", "layer_outputs", "probe"]


class Probe(NamedTuple):
  """What :func:`probe` measures on a batch of images.

  Attributes:
    active: layer path (``"conv1"``, ``"block1/conv2"``) -> share of its
      outputs above zero, over images, positions and channels; layers in
      call order, the last one the logits.
    logit_sd: the standard deviation of each logit across the images,
      averaged over classes; 0 for a network whose output does not depend on
      its input (the constant classifier).
  """

  active: dict[str, float]
  logit_sd: float


def layer_outputs(
  model: nn.Module, variables: PyTree, x: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The logits and each prunable layer's output on ``x`` (eval mode).

  Args:
    model: an ``awt.models`` classifier.
    variables: ``{"params", ["batch_stats"]}``; for a ticket, params with
      its mask applied (``masks.apply``; a ``Ticket``'s and a restored
      run's params already are), else the network probed is the dense one.
    x: [B, H, W, C] float32 in [0, 1].

  Returns:
    ``(logits [B, K], outputs)``: ``outputs`` maps each prunable layer's
    path, joined with ``/``, to its output ([B, ..., features]) on its first
    call, in call order.
  """
  layers = {p[:-1] for p in masks.prunable_paths(variables["params"])}
  logits, state = model.apply(
    variables,
    x,
    capture_intermediates=lambda _, method: method == "__call__",
    mutable=["intermediates"],
  )
  flat = traverse_util.flatten_dict(state["intermediates"])
  outputs = {
    "/".join(path[:-1]): calls[0]
    for path, calls in flat.items()
    if path[-1] == "__call__" and path[:-1] in layers
  }
  return logits, outputs


@functools.partial(jax.jit, static_argnums=0)
def _measure(model, variables, x):
  logits, outputs = layer_outputs(model, variables, x)
  active = {k: jnp.mean(v > 0) for k, v in outputs.items()}
  return active, jnp.mean(jnp.std(logits, axis=0))


def probe(model: nn.Module, variables: PyTree, x: jax.Array) -> Probe:
  """Each prunable layer's share of outputs above zero, and the logits' spread.

  .. math::
    \\mathrm{active}_\\ell = \\frac{1}{|h_\\ell|}
      \\sum_{b, i} [h_\\ell(x_b)_i > 0], \\qquad
    \\mathrm{logit\\_sd} = \\frac{1}{K} \\sum_k
      \\mathrm{sd}_b\\, f_k(x_b)

  with ``h_l`` layer l's output (before its ReLU) and ``f`` the logits.

  Args:
    model: an ``awt.models`` classifier.
    variables: ``{"params", ["batch_stats"]}`` (a ticket's masked params).
    x: [B, H, W, C] float32 in [0, 1]; B > 1 for a spread.

  Returns:
    A :class:`Probe` of Python floats.

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from awt import models, probes
    >>> model = models.get("mlp", num_classes=10)
    >>> x = np.random.default_rng(0).random((8, 8, 8, 1), np.float32)
    >>> variables = model.init(jax.random.key(0), x)
    >>> p = probes.probe(model, variables, x)
    >>> list(p.active)
    ['fc1', 'fc2', 'head']
    >>> zero = jax.tree.map(jnp.zeros_like, variables)
    >>> probes.probe(model, zero, x).logit_sd
    0.0
  """
  active, logit_sd = jax.device_get(_measure(model, variables, x))
  return Probe({k: float(v) for k, v in active.items()}, float(logit_sd))
