"""VGG-16 with BatchNorm for 32x32 inputs (CIFAR)."""

import flax.linen as nn
import jax

from awt.models._common import (
  Classifier,
  batch_norm,
  global_avg_pool,
  he_conv,
  head,
  max_pool2,
)

# Configuration "D" of Simonyan & Zisserman (2015), Table 1: conv widths,
# "M" a 2x2 max pooling.
VGG16_LAYERS = (
  64, 64, "M",
  128, 128, "M",
  256, 256, 256, "M",
  512, 512, 512, "M",
  512, 512, 512, "M",
)  # fmt: skip


class VGG16(Classifier):
  """VGG-16 (configuration D) with BatchNorm, CIFAR variant.

  13 convs ``conv1`` ... ``conv13`` (3x3, padding 1, no bias), each followed
  by BatchNorm ``bn{i}`` and ReLU, five 2x2 max poolings, then global average
  pooling and a single Dense classifier ``head`` (the CIFAR form of Liu et
  al. 2019, instead of ImageNet's 4096-4096 head). On 32x32 inputs the map is
  1x1 after the last pooling, so the average pooling is a plain flatten; it
  keeps the model defined on other sizes, where poolings of a 1-wide map are
  skipped. Conv kernels use He (fan_in) normal initialization.

  Attributes:
    width_multiplier: scales every conv width (rounded, at least 1).

  References:
    Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale
    Image Recognition", ICLR 2015, Table 1 (D);
    Ioffe & Szegedy, "Batch Normalization", ICML 2015;
    Liu, Sun, Zhou, Huang & Darrell, "Rethinking the Value of Network
    Pruning", ICLR 2019 (CIFAR VGG-16);
    He, Zhang, Ren & Sun, "Delving Deep into Rectifiers", ICCV 2015, Eq. 10.
  """

  width_multiplier: float = 1.0

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
    i = 0
    for layer in VGG16_LAYERS:
      if layer == "M":
        h = max_pool2(h, self.conv_impl)
        continue
      i += 1
      width = max(1, round(layer * self.width_multiplier))
      h = he_conv(width, 3, 1, 1, self.dtype, f"conv{i}", self.conv_impl)(h)
      h = batch_norm(train, self.axis_name, self.dtype, f"bn{i}")(h)
      h = nn.relu(h)
    return head(
      global_avg_pool(h), self.num_classes, self.dtype, self.dense_impl
    )
