"""Pieces shared by the model zoo: the base fields, normalization, layers.

Every model is a :class:`Classifier`: it takes pixel-space images
``x: [B, H, W, C] float32 in [0, 1]``, normalizes them per channel inside the
model (so attacks work with the literature's pixel-space epsilons) and
returns float32 logits ``[B, num_classes]``.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from awt.models import _cpu_conv, _cpu_gemm

Dtype = Any

# He et al. (2015), "Delving Deep into Rectifiers", Eq. (10): zero-mean
# Gaussian with variance 2 / fan_in, untruncated.
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

# Glorot & Bengio (2010), Eq. (12) in its Gaussian form: variance
# 2 / (fan_in + fan_out); Frankle & Carbin (2019), Figure 2.
glorot_normal = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")

# PyTorch's BatchNorm defaults, which the reference implementations of
# VGG/ResNet/WRN use: running = 0.9 * running + 0.1 * batch, eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


class Classifier(nn.Module):
  """Base fields shared by every model of the zoo.

  Attributes:
    num_classes: number of logits.
    mean: per-channel mean subtracted from the pixels, length 1 or C.
    std: per-channel standard deviation dividing the pixels, length 1 or C.
    axis_name: pmap axis over which BatchNorm statistics are averaged;
      ignored by models without BatchNorm.
    dtype: compute dtype of Dense/Conv/BatchNorm (parameters stay float32,
      logits are returned as float32).
    conv_impl: how convolutions and max poolings are lowered: "xla"
      (``nn.Conv`` / ``nn.max_pool`` as they are), "cpu" (the XLA:CPU
      lowerings of ``awt.models._cpu_conv``: same parameters, same numbers
      up to float rounding) or "auto" ("cpu" exactly when
      ``jax.default_backend()`` is the CPU, at trace time); ignored by
      models without convolutions.
    dense_impl: how Dense layers' float32 matrix products run: "xla"
      (``lax.dot_general``), "mkl" (MKL's sgemm through
      ``awt.models._cpu_gemm``: same parameters, same numbers up to float
      rounding; fails on a machine where it cannot load) or "auto" ("mkl"
      exactly when ``jax.default_backend()`` is the CPU and it loads, at
      trace time).
  """

  num_classes: int
  mean: tuple[float, ...] = (0.0,)
  std: tuple[float, ...] = (1.0,)
  axis_name: str | None = None
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"
  dense_impl: str = "auto"

  def normalize(self, x: jax.Array) -> jax.Array:
    """Maps pixels to the network's input space, ``(x - mean) / std``.

    Args:
      x: [B, H, W, C] float32 in [0, 1].

    Returns:
      [B, H, W, C] float32, normalized per channel.
    """
    channels = x.shape[-1]
    for label, values in (("mean", self.mean), ("std", self.std)):
      if len(values) not in (1, channels):
        raise ValueError(
          f"{label} has {len(values)} entries; the input has {channels} "
          "channels (give 1 or one per channel)"
        )
    shape = (1,) * (x.ndim - 1) + (-1,)
    mean = jnp.asarray(self.mean, jnp.float32).reshape(shape)
    std = jnp.asarray(self.std, jnp.float32).reshape(shape)
    return (x.astype(jnp.float32) - mean) / std


def batch_norm(
  train: bool, axis_name: str | None, dtype: Dtype, name: str
) -> nn.BatchNorm:
  """A BatchNorm whose batch statistics are all-reduced over ``axis_name``.

  Args:
    train: normalize with the batch statistics (and update the running ones,
      which needs ``mutable=["batch_stats"]``) rather than the running ones.
    axis_name: pmap axis to average the batch statistics over, or None.
    dtype: compute dtype.
    name: module name.

  Returns:
    An ``nn.BatchNorm`` with PyTorch's momentum and epsilon.
  """
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=BN_MOMENTUM,
    epsilon=BN_EPSILON,
    axis_name=axis_name,
    dtype=dtype,
    name=name,
  )


def flatten(x: jax.Array) -> jax.Array:
  """[B, ...] -> [B, prod(...)]."""
  return x.reshape(x.shape[0], -1)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, C], the mean over the spatial positions."""
  return jnp.mean(x, axis=(1, 2))


def max_pool2(x: jax.Array, impl: str = "auto") -> jax.Array:
  """2x2 max pooling with stride 2 ('VALID', i.e. floor of odd sizes).

  Skipped when a spatial side is already below 2, so that the small-image
  variants (8x8 digits) never reach a zero spatial size.

  Args:
    x: [B, H, W, C].
    impl: ``Classifier.conv_impl``: "xla" is ``nn.max_pool``, "cpu" a
      pooling whose gradient has no scatter (``_cpu_conv.max_pool``).

  Returns:
    [B, H // 2, W // 2, C], or ``x`` itself when ``min(H, W) < 2``.
  """
  if min(x.shape[1:3]) < 2:
    return x
  return _cpu_conv.max_pool(x, 2, impl)


def dense(features: int, *, impl: str = "auto", **dense_kw) -> nn.Dense:
  """An ``nn.Dense`` whose matrix product runs as ``impl`` says.

  Args:
    features: output units.
    impl: ``Classifier.dense_impl``: "xla", "mkl" or "auto".
    **dense_kw: further ``nn.Dense`` fields (``dtype``, ``kernel_init``,
      ``name``, ...).

  Returns:
    An ``nn.Dense``: the same parameters (names, shapes, initializers) for
    every ``impl``.
  """
  if _cpu_gemm.resolve(impl) == "mkl":
    dense_kw["dot_general"] = _cpu_gemm.dot_general
  return nn.Dense(features, **dense_kw)


def head(
  h: jax.Array, num_classes: int, dtype: Dtype, impl: str = "auto", **dense_kw
) -> jax.Array:
  """The classifier layer, a Dense named ``head``, with float32 logits.

  Args:
    h: [B, D] features.
    num_classes: K.
    dtype: compute dtype.
    impl: ``Classifier.dense_impl``.
    **dense_kw: further ``nn.Dense`` fields (e.g. ``kernel_init``).

  Returns:
    [B, K] float32 logits.
  """
  layer = dense(num_classes, impl=impl, dtype=dtype, name="head", **dense_kw)
  return layer(h).astype(jnp.float32)


def he_conv(
  features: int,
  kernel_size: int,
  strides: int,
  padding: int,
  dtype: Dtype,
  name: str,
  impl: str = "auto",
) -> nn.Conv:
  """A bias-free square conv with He (fan_in) normal initialization.

  The conv of the BatchNorm networks (VGG, ResNet, WRN): a bias before
  BatchNorm is redundant; padding is symmetric, as in the papers' code.

  Args:
    features: output channels.
    kernel_size: side of the square kernel.
    strides: stride along both spatial axes.
    padding: zero padding on every side (1 for 3x3, 0 for 1x1).
    dtype: compute dtype.
    name: module name.
    impl: ``Classifier.conv_impl``, the convolution's lowering.

  Returns:
    An ``nn.Conv`` whose ``kernel`` is prunable.
  """
  return _cpu_conv.conv(
    features,
    (kernel_size, kernel_size),
    impl=impl,
    strides=(strides, strides),
    padding=padding,
    use_bias=False,
    dtype=dtype,
    kernel_init=kaiming_normal,
    name=name,
  )
