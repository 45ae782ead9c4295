"""The two MNIST networks of the paper: LeNet-300-100 (fully connected) and Caffe's LeNet-5.

Layer names (`fc1..fc3`, `conv1, conv2, fc3, fc4`) and registration order match the original,
because per-layer densities and mask sampling go layer by layer in parameter order. Unlike the
original, the input size is an argument (the flattened width is computed from it) and the
models return logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._shapes import check_positive, conv_output_size
from .pooling import max_pool_2x2
from .registry import register_model


class LeNet300100(nn.Module):
    """Multi-layer perceptron with hidden widths 300 and 100 and ReLU activations."""

    def __init__(self, in_features: int = 784, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe's LeNet-5: two unpadded 5x5 convs (20, 50 maps) with 2x2 max-pooling, then fc 500."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10):
        super().__init__()
        side = self.feature_side(image_size)
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc3 = nn.Linear(50 * side * side, 500)
        self.fc4 = nn.Linear(500, num_classes)

    @staticmethod
    def feature_side(image_size: int) -> int:
        """Side of the last feature map: 28 -> 24 -> 12 -> 8 -> 4."""
        side = image_size
        for _ in range(2):
            side = conv_output_size(side, kernel=5) // 2
        return check_positive(side, "lenet5", image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = max_pool_2x2(F.relu(self.conv1(x)))
        x = max_pool_2x2(F.relu(self.conv2(x)))
        x = F.relu(self.fc3(torch.flatten(x, 1)))
        return self.fc4(x)


@register_model("lenet300-100", in_channels=1, image_size=28)
def lenet300_100(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return LeNet300100(in_features=in_channels * image_size * image_size, num_classes=num_classes, **kwargs)


@register_model("lenet5", in_channels=1, image_size=28)
def lenet5(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return LeNet5(in_channels=in_channels, image_size=image_size, num_classes=num_classes, **kwargs)
