"""The model zoo: flax.linen classifiers on pixel-space images, by name.

``awt.models.get(name, num_classes, mean=..., std=..., **options)`` builds a
module whose ``apply(variables, x, train=False)`` maps
``x: [B, H, W, C] float32 in [0, 1]`` to float32 logits ``[B, num_classes]``.
"""

from awt.models._common import Classifier
from awt.models._cpu_gemm import matmul_flops
from awt.models._registry import get, names, options
from awt.models.convnets import ConvNet, LeNet5
from awt.models.mlp import MLP, Linear
from awt.models.resnet import BasicBlock, ResNet
from awt.models.vgg import VGG16
from awt.models.wrn import WideBlock, WideResNet

__all__ = [
  "MLP",
  "VGG16",
  "BasicBlock",
  "Classifier",
  "ConvNet",
  "LeNet5",
  "Linear",
  "ResNet",
  "WideBlock",
  "WideResNet",
  "get",
  "matmul_flops",
  "names",
  "options",
]
