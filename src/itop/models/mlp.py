"""The CIFAR-10 MLP of the original (`MLPCIFAR10`): 3072-1024-512-10 with ReLU.

Kept because it is the cheapest model with millions of weights, handy for timing sparse
training. The input width follows `in_channels * image_size**2`; the model returns logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model


class MLPCIFAR10(nn.Module):
    """Two hidden layers (1024, 512) on the flattened image."""

    def __init__(self, in_features: int = 3 * 32 * 32, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(in_features, 1024)
        self.fc2 = nn.Linear(1024, 512)
        self.fc3 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@register_model("mlp-cifar10", aliases=("mlpcifar10",))
def mlp_cifar10(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return MLPCIFAR10(in_features=in_channels * image_size * image_size, num_classes=num_classes, **kwargs)
