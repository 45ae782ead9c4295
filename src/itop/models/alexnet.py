"""AlexNet-s and AlexNet-b, the CIFAR variants from SNIP used by the original code.

Five strided convolutions (no pooling), each with bias, BatchNorm and ReLU, shrink a 32x32 image
to 1x1x256; the classifier has two hidden layers of 1024 (s) or 2048 (b) units with BatchNorm1d
before the ReLU. Module indices (`features.N`, `classifier.N`) match the original. The
classifier's input width is computed from the image size, so other inputs work too.
"""

from __future__ import annotations

import torch
from torch import nn

from ._shapes import check_positive, conv_output_size
from .registry import register_model

# (out_channels, kernel, stride, padding) of the five convolutions.
CONV_SPECS = ((96, 11, 2, 2), (256, 5, 2, 2), (384, 3, 2, 1), (384, 3, 2, 1), (256, 3, 2, 1))
HIDDEN_WIDTH = {"s": 1024, "b": 2048}


def _features(in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out_channels, kernel, stride, padding in CONV_SPECS:
        layers += [
            nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=True),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        in_channels = out_channels
    return nn.Sequential(*layers)


def _feature_side(image_size: int) -> int:
    side = image_size
    for _, kernel, stride, padding in CONV_SPECS:
        side = conv_output_size(side, kernel, stride, padding)
    return check_positive(side, "alexnet", image_size)


def _classifier(in_features: int, hidden: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )


class AlexNet(nn.Module):
    """AlexNet with BatchNorm and without pooling; `variant` "s" or "b" sets the hidden width."""

    def __init__(self, variant: str = "s", in_channels: int = 3, image_size: int = 32, num_classes: int = 10):
        super().__init__()
        if variant not in HIDDEN_WIDTH:
            raise ValueError(f"unknown AlexNet variant {variant!r}; choose one of: {', '.join(HIDDEN_WIDTH)}.")
        side = _feature_side(image_size)
        self.features = _features(in_channels)
        self.classifier = _classifier(CONV_SPECS[-1][0] * side * side, HIDDEN_WIDTH[variant], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model("alexnet-s")
def alexnet_s(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return AlexNet("s", in_channels, image_size, num_classes, **kwargs)


@register_model("alexnet-b")
def alexnet_b(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return AlexNet("b", in_channels, image_size, num_classes, **kwargs)
