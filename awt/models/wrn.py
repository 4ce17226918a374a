"""Wide residual networks (WRN-d-k) for 32x32 inputs (CIFAR)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from awt.models._common import (
  Classifier,
  Dtype,
  batch_norm,
  global_avg_pool,
  he_conv,
  head,
)


class WideBlock(nn.Module):
  """Pre-activation basic block B(3, 3) of a wide residual network.

  a = relu(bn1(x)); y = conv2(relu(bn2(conv1(a)))); returns y + shortcut,
  with shortcut = ``shortcut`` 1x1 strided conv of ``a`` when the stride or
  the width changes, else ``x`` (as in the authors' implementation).

  Attributes:
    features: output channels.
    strides: stride of conv1 and of the shortcut.
    axis_name: pmap axis for the BatchNorm statistics.
    dtype: compute dtype.
    conv_impl: the convolutions' lowering (``Classifier.conv_impl``).

  References:
    Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016, Figure 1(c)
    and Table 1; He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual
    Networks", ECCV 2016 (pre-activation).
  """

  features: int
  strides: int = 1
  axis_name: str | None = None
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Applies the block.

    Args:
      x: [B, H, W, C_in].
      train: use (and update) batch statistics.

    Returns:
      [B, H / strides, W / strides, features].
    """
    a = batch_norm(train, self.axis_name, self.dtype, "bn1")(x)
    a = nn.relu(a)
    y = he_conv(
      self.features, 3, self.strides, 1, self.dtype, "conv1", self.conv_impl
    )(a)
    y = nn.relu(batch_norm(train, self.axis_name, self.dtype, "bn2")(y))
    y = he_conv(self.features, 3, 1, 1, self.dtype, "conv2", self.conv_impl)(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = he_conv(
        self.features,
        1,
        self.strides,
        0,
        self.dtype,
        "shortcut",
        self.conv_impl,
      )(a)
    return y + shortcut


class WideResNet(Classifier):
  """WRN-d-k; WRN-28-k with ``depth=28``, ``width=k``.

  ``conv1`` 3x3 with 16 channels; three groups ``group{g}_{b}`` of
  ``(depth - 4) / 6`` pre-activation blocks with widths ``16k, 32k, 64k``
  and first strides (1, 2, 2); final ``bn`` -> relu -> global average
  pooling -> Dense ``head``. No dropout. Conv kernels use He (fan_in) normal
  initialization. WRN-28-10 with 10 classes has 36.5M parameters (Table 1
  of the paper).

  Attributes:
    width: the widening factor k.
    depth: total depth d, with (d - 4) divisible by 6 (fixed by the name).

  References:
    Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016, Table 1;
    He, Zhang, Ren & Sun, "Delving Deep into Rectifiers", ICCV 2015, Eq. 10.
  """

  width: int = 10
  depth: int = 28

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Computes the logits.

    Args:
      x: [B, H, W, C] float32 in [0, 1].
      train: normalize with batch statistics and update the running ones
        (apply with ``mutable=["batch_stats"]``).

    Returns:
      [B, num_classes] float32 logits.
    """
    if (self.depth - 4) % 6 or self.depth < 10:
      raise ValueError(f"WRN depth must be 6n + 4 (n >= 1), got {self.depth}")
    blocks_per_group = (self.depth - 4) // 6
    h = self.normalize(x)
    h = he_conv(16, 3, 1, 1, self.dtype, "conv1", self.conv_impl)(h)
    for group in range(3):
      for block in range(blocks_per_group):
        h = WideBlock(
          features=16 * self.width * 2**group,
          strides=2 if group > 0 and block == 0 else 1,
          axis_name=self.axis_name,
          dtype=self.dtype,
          conv_impl=self.conv_impl,
          name=f"group{group + 1}_{block}",
        )(h, train)
    h = nn.relu(batch_norm(train, self.axis_name, self.dtype, "bn")(h))
    return head(
      global_avg_pool(h), self.num_classes, self.dtype, self.dense_impl
    )
