"""The three CIFAR VGG-16 variants of SNIP used by the original code: VGG-C, VGG-D and VGG-like.

Every convolution has bias, BatchNorm and ReLU, and padding 1, including VGG-C's 1x1 convs,
which therefore grow the map by 2 (a 32x32 input ends at 2x2x512 = 2048 features). The
classifier uses 512-wide layers with BatchNorm1d after the ReLU in place of dropout. Module
indices (`features.N`, `classifier.N`) match the original; the classifier's input width is
computed from the image size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._shapes import check_positive, conv_output_size
from .pooling import MaxPool2x2
from .registry import register_model

# An int is a 3x3 conv with that many channels, (k, c) a kxk conv, "M" a 2x2 max-pool.
Layer = int | tuple[int, int] | str
VGG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG_C = (
    64, 64, "M", 128, 128, "M", 256, 256, (1, 256), "M",
    512, 512, (1, 512), "M", 512, 512, (1, 512), "M",
)  # fmt: skip
CONFIGS = {"C": VGG_C, "D": VGG_D, "like": VGG_D}
HIDDEN_LAYERS = {"C": 2, "D": 2, "like": 1}
HIDDEN_WIDTH = 512


def _conv_shape(layer: Layer) -> tuple[int, int]:
    """(kernel, out_channels) of a conv entry."""
    return layer if isinstance(layer, tuple) else (3, layer)


def _features(config: Sequence[Layer], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for layer in config:
        if layer == "M":
            layers.append(MaxPool2x2())
            continue
        kernel, out_channels = _conv_shape(layer)
        layers += [
            nn.Conv2d(in_channels, out_channels, kernel_size=kernel, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        in_channels = out_channels
    return nn.Sequential(*layers)


def _flat_features(config: Sequence[Layer], image_size: int) -> int:
    side, channels = image_size, 0
    for layer in config:
        if layer == "M":
            side = check_positive(side // 2, "vgg", image_size)
        else:
            kernel, channels = _conv_shape(layer)
            side = check_positive(conv_output_size(side, kernel, padding=1), "vgg", image_size)
    return channels * side * side


def _classifier(in_features: int, hidden_layers: int, num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(hidden_layers):
        layers += [nn.Linear(in_features, HIDDEN_WIDTH), nn.ReLU(True), nn.BatchNorm1d(HIDDEN_WIDTH)]
        in_features = HIDDEN_WIDTH
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


class VGG16(nn.Module):
    """VGG-16 for small images; `config` is "C", "D" or "like"."""

    def __init__(self, config: str = "D", in_channels: int = 3, image_size: int = 32, num_classes: int = 10):
        super().__init__()
        if config not in CONFIGS:
            raise ValueError(f"unknown VGG config {config!r}; choose one of: {', '.join(CONFIGS)}.")
        layers = CONFIGS[config]
        self.features = _features(layers, in_channels)
        self.classifier = _classifier(_flat_features(layers, image_size), HIDDEN_LAYERS[config], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model("vgg-c")
def vgg_c(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return VGG16("C", in_channels, image_size, num_classes, **kwargs)


@register_model("vgg-d")
def vgg_d(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return VGG16("D", in_channels, image_size, num_classes, **kwargs)


@register_model("vgg-like")
def vgg_like(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return VGG16("like", in_channels, image_size, num_classes, **kwargs)
