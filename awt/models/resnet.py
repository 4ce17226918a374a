"""ResNet for 32x32 inputs (CIFAR): ResNet-18 with BasicBlocks."""

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


class BasicBlock(nn.Module):
  """Post-activation residual block: two 3x3 convs and a projection shortcut.

  relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); the shortcut is
  ``shortcut_bn(shortcut_conv(x))`` (1x1, strided) when the stride or the
  width changes (option B of He et al.), else the identity.

  Attributes:
    features: output channels.
    strides: stride of conv1 and of the shortcut.
    axis_name: pmap axis for the BatchNorm statistics.
    dtype: compute dtype.
    conv_impl: the convolutions' lowering (``Classifier.conv_impl``).

  References:
    He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition",
    CVPR 2016, Eq. (1)-(2) and Figure 2.
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

    def norm(name):
      return batch_norm(train, self.axis_name, self.dtype, name)

    y = he_conv(
      self.features, 3, self.strides, 1, self.dtype, "conv1", self.conv_impl
    )(x)
    y = nn.relu(norm("bn1")(y))
    y = he_conv(self.features, 3, 1, 1, self.dtype, "conv2", self.conv_impl)(y)
    y = norm("bn2")(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = he_conv(
        self.features,
        1,
        self.strides,
        0,
        self.dtype,
        "shortcut_conv",
        self.conv_impl,
      )(x)
      shortcut = norm("shortcut_bn")(shortcut)
    return nn.relu(y + shortcut)


class ResNet(Classifier):
  """CIFAR ResNet with BasicBlocks; ResNet-18 with ``stage_sizes=(2,2,2,2)``.

  Stem: ``conv1`` 3x3 (stride 1, no max pooling) -> ``bn1`` -> relu; four
  stages ``layer1`` ... ``layer4`` of BasicBlocks (modules ``layer{s}_{b}``)
  with widths ``width * (1, 2, 4, 8)`` and first strides (1, 2, 2, 2); global
  average pooling; Dense ``head``. Conv kernels use He (fan_in) normal
  initialization. With width 64 and 10 classes: 11,173,962 parameters.

  Attributes:
    width: channels of the stem and of the first stage.
    stage_sizes: BasicBlocks per stage (fixed by the registry name).

  References:
    He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition",
    CVPR 2016, Table 1 (18-layer), with the common CIFAR adaptation of the
    stem (3x3 stride-1 conv, no max pooling) for 32x32 inputs;
    He, Zhang, Ren & Sun, "Delving Deep into Rectifiers", ICCV 2015, Eq. 10.
  """

  width: int = 64
  stage_sizes: tuple[int, ...] = (2, 2, 2, 2)

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
    h = self.normalize(x)
    h = he_conv(self.width, 3, 1, 1, self.dtype, "conv1", self.conv_impl)(h)
    h = nn.relu(batch_norm(train, self.axis_name, self.dtype, "bn1")(h))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        h = BasicBlock(
          features=self.width * 2**stage,
          strides=2 if stage > 0 and block == 0 else 1,
          axis_name=self.axis_name,
          dtype=self.dtype,
          conv_impl=self.conv_impl,
          name=f"layer{stage + 1}_{block}",
        )(h, train)
    return head(
      global_avg_pool(h), self.num_classes, self.dtype, self.dense_impl
    )
