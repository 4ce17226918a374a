"""Small convolutional classifiers: LeNet-5 and Conv-2/4/6."""

import flax.linen as nn
import jax

from awt.models._common import (
  Classifier,
  dense,
  flatten,
  glorot_normal,
  head,
  max_pool2,
)
from awt.models._cpu_conv import conv


class LeNet5(Classifier):
  """LeNet-5 in its common MNIST form (ReLU, max pooling, 'SAME' first conv).

  conv1 Conv(6, 5x5, 'SAME') -> relu -> maxpool 2 -> conv2 Conv(16, 5x5,
  'VALID') -> relu -> maxpool 2 -> flatten -> fc1 Dense(120) -> relu ->
  fc2 Dense(84) -> relu -> head Dense(num_classes). On 28x28x1 this is
  28 -> 14 -> 10 -> 5, i.e. 5 * 5 * 16 = 400 features into fc1.

  Small inputs: conv2 switches to 'SAME' padding when its input map is
  smaller than the 5x5 kernel (the 8x8 digits: 8 -> 4 -> 4 -> 2, so
  2 * 2 * 16 = 64 features), and a pooling is skipped when a side is 1.

  References:
    LeCun, Bottou, Bengio & Haffner, "Gradient-Based Learning Applied to
    Document Recognition", Proc. IEEE 1998, Section II.B.
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Computes the logits.

    Args:
      x: [B, H, W, C] float32 in [0, 1].
      train: unused (no BatchNorm or dropout).

    Returns:
      [B, num_classes] float32 logits.
    """
    del train
    h = self.normalize(x)
    kw = {"dtype": self.dtype, "impl": self.conv_impl}
    h = conv(6, (5, 5), padding="SAME", name="conv1", **kw)(h)
    h = max_pool2(nn.relu(h), self.conv_impl)
    padding = "VALID" if min(h.shape[1:3]) >= 5 else "SAME"
    h = conv(16, (5, 5), padding=padding, name="conv2", **kw)(h)
    h = flatten(max_pool2(nn.relu(h), self.conv_impl))
    fc = {"dtype": self.dtype, "impl": self.dense_impl}
    h = nn.relu(dense(120, name="fc1", **fc)(h))
    h = nn.relu(dense(84, name="fc2", **fc)(h))
    return head(h, self.num_classes, self.dtype, self.dense_impl)


class ConvNet(Classifier):
  """Conv-2/4/6 of the lottery-ticket paper: VGG-like, no BatchNorm.

  ``depth // 2`` stages, stage s being two 3x3 'SAME' convs with
  ``64 * 2**s`` filters (64, 128, 256), ReLUs and a 2x2 max pooling; then
  fc1 Dense(256) -> relu -> fc2 Dense(256) -> relu -> head. Convs are named
  ``conv1`` ... ``conv{depth}``. Weights use Gaussian Glorot initialization
  as in the paper. On 8x8 inputs Conv-6 pools 8 -> 4 -> 2 -> 1; a pooling is
  skipped when a side is already 1.

  Attributes:
    depth: number of conv layers, 2, 4 or 6 (fixed by the registry name).

  References:
    Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse,
    Trainable Neural Networks", ICLR 2019, Figure 2.
  """

  depth: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Computes the logits.

    Args:
      x: [B, H, W, C] float32 in [0, 1].
      train: unused (no BatchNorm or dropout).

    Returns:
      [B, num_classes] float32 logits.
    """
    del train
    if self.depth <= 0 or self.depth % 2:
      raise ValueError(
        f"depth must be a positive even number, got {self.depth}"
      )
    h = self.normalize(x)
    for i in range(self.depth):
      h = conv(
        64 * 2 ** (i // 2),
        (3, 3),
        impl=self.conv_impl,
        padding="SAME",
        dtype=self.dtype,
        kernel_init=glorot_normal,
        name=f"conv{i + 1}",
      )(h)
      h = nn.relu(h)
      if i % 2:
        h = max_pool2(h, self.conv_impl)
    h = flatten(h)
    for i in range(2):
      h = dense(
        256,
        impl=self.dense_impl,
        dtype=self.dtype,
        kernel_init=glorot_normal,
        name=f"fc{i + 1}",
      )(h)
      h = nn.relu(h)
    return head(
      h,
      self.num_classes,
      self.dtype,
      self.dense_impl,
      kernel_init=glorot_normal,
    )
