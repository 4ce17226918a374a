"""Fully connected classifiers: the linear model and LeNet-300-100."""

import flax.linen as nn
import jax

from awt.models._common import Classifier, dense, flatten, head


class Linear(Classifier):
  """Multinomial logistic regression on the flattened, normalized pixels.

  The linear classifier of Guo et al. (2018), whose l_2 robustness behaves
  differently from the nonlinear networks' under sparsification.

  References:
    Guo, Zhang, Zhang & Chen, "Sparse DNNs with Improved Adversarial
    Robustness", NeurIPS 2018.
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
    h = flatten(self.normalize(x))
    return head(h, self.num_classes, self.dtype, self.dense_impl)


class MLP(Classifier):
  """Multilayer perceptron with ReLUs; LeNet-300-100 by default.

  flatten -> Dense(300) -> relu -> Dense(100) -> relu -> Dense(num_classes),
  the hidden layers named ``fc1``, ``fc2``, ..., the output layer ``head``.

  Attributes:
    widths: hidden layer widths.

  References:
    LeCun, Bottou, Bengio & Haffner, "Gradient-Based Learning Applied to
    Document Recognition", Proc. IEEE 1998, Section III.C (300-100 net);
    Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019, Figure 2.
  """

  widths: tuple[int, ...] = (300, 100)

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
    h = flatten(self.normalize(x))
    for i, width in enumerate(self.widths):
      fc = dense(
        width, impl=self.dense_impl, dtype=self.dtype, name=f"fc{i + 1}"
      )
      h = nn.relu(fc(h))
    return head(h, self.num_classes, self.dtype, self.dense_impl)
