"""The model registry: build any model of the zoo by name."""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from awt.models import _cpu_conv, _cpu_gemm
from awt.models._common import Classifier
from awt.models.convnets import ConvNet, LeNet5
from awt.models.mlp import MLP, Linear
from awt.models.resnet import ResNet
from awt.models.vgg import VGG16
from awt.models.wrn import WideResNet

# name -> (module class, fields fixed by the name).
_MODELS: dict[str, tuple[type[Classifier], dict[str, Any]]] = {
  "linear": (Linear, {}),
  "mlp": (MLP, {}),
  "lenet5": (LeNet5, {}),
  "conv2": (ConvNet, {"depth": 2}),
  "conv4": (ConvNet, {"depth": 4}),
  "conv6": (ConvNet, {"depth": 6}),
  "vgg16": (VGG16, {}),
  "resnet18": (ResNet, {"stage_sizes": (2, 2, 2, 2)}),
  "wrn28": (WideResNet, {"depth": 28}),
}

# Fields every model takes from get()'s positional/explicit arguments, and
# flax's own bookkeeping fields.
_NOT_OPTIONS = ("num_classes", "mean", "std", "parent", "name")


def names() -> tuple[str, ...]:
  """Returns the registered model names, sorted."""
  return tuple(sorted(_MODELS))


def options(name: str) -> tuple[str, ...]:
  """Returns the keyword arguments ``get(name, ...)`` accepts, sorted.

  Args:
    name: a registry name.

  Returns:
    The option names, e.g. ``("axis_name", "conv_impl", "dtype", "widths")``
    for "mlp".
  """
  cls, fixed = _lookup(name)
  return tuple(
    sorted(
      f.name
      for f in dataclasses.fields(cls)
      if f.init and f.name not in _NOT_OPTIONS and f.name not in fixed
    )
  )


def get(
  name: str,
  num_classes: int,
  *,
  mean: float | Sequence[float] = (0.0,),
  std: float | Sequence[float] = (1.0,),
  **kw,
) -> Classifier:
  """Builds a model of the zoo by name.

  Every model maps pixel-space images ``x: [B, H, W, C] float32 in [0, 1]``
  to float32 logits ``[B, num_classes]``, normalizing ``(x - mean) / std``
  per channel first. ``variables = model.init(key, x, train=False)`` holds
  ``"params"`` (plus ``"batch_stats"`` for vgg16/resnet18/wrn28), and
  ``model.apply(variables, x, train=False)`` is pure; with ``train=True``
  BatchNorm models need ``mutable=["batch_stats"]``. Every Dense/Conv weight
  is a leaf named ``kernel``; the classifier layer is the module ``head``.

  Args:
    name: one of :func:`names`.
    num_classes: number of logits K.
    mean: per-channel mean of the pixels, a scalar or one value per channel.
    std: per-channel standard deviation, positive, same form as ``mean``.
    **kw: model options (see :func:`options`): every model takes
      ``axis_name`` (pmap axis of the BatchNorm statistics; ignored without
      BatchNorm), ``dtype`` (compute dtype) and ``conv_impl`` ("auto",
      "xla" or "cpu": how convolutions and max poolings are lowered, see
      ``Classifier``; ignored without convolutions) and ``dense_impl``
      ("auto", "xla" or "mkl": how Dense layers' products run); mlp
      ``widths``, vgg16 ``width_multiplier``, resnet18 ``width``, wrn28
      ``width`` (the k).

  Returns:
    An unbound ``flax.linen.Module``.

  Raises:
    ValueError: for an unknown name, an unknown option, an unknown
      ``conv_impl`` or ``dense_impl``, or a non-positive std.
    _cpu_gemm.Unavailable: for ``dense_impl="mkl"`` where MKL cannot load.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = get("mlp", 10, mean=0.1307, std=0.3081)
    >>> x = jnp.zeros((2, 28, 28, 1))
    >>> variables = model.init(jax.random.key(0), x, train=False)
    >>> model.apply(variables, x, train=False).shape
    (2, 10)
  """
  cls, fixed = _lookup(name)
  known = options(name)
  for key in kw:
    if key not in known:
      raise ValueError(
        f"unknown option {key!r} for model {name!r}; known: {', '.join(known)}"
      )
  mean = tuple(float(v) for v in np.ravel(mean))
  std = tuple(float(v) for v in np.ravel(std))
  if not std or min(std) <= 0:
    raise ValueError(f"std must be positive, got {std}")
  _cpu_conv.resolve(kw.get("conv_impl", "auto"))
  _cpu_gemm.resolve(kw.get("dense_impl", "auto"))
  kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
  return cls(num_classes=num_classes, mean=mean, std=std, **fixed, **kw)


def _lookup(name: str) -> tuple[type[Classifier], dict[str, Any]]:
  """The registry entry for ``name``, or a ValueError listing the names."""
  if name not in _MODELS:
    raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}")
  return _MODELS[name]
