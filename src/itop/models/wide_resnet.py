"""Wide ResNets (Zagoruyko & Komodakis) as in the original code, which could not build them.

The original defined two classes named `BasicBlock`; the CIFAR-ResNet one shadowed the WRN one,
so every `wrn-*` key crashed at construction. Here the WRN block has its own name. Structure:
conv1 3x3 -> 16 channels, three groups of (depth-4)/6 pre-activation blocks of widths 16k, 32k,
64k (strides 1, 2, 2; a 1x1 `convShortcut` where the width changes), BN-ReLU, global average
pooling (the original's avgpool 8 at 32x32), fc. Dropout 0.3 sits between the two 3x3 convs.
Convs are drawn from N(0, 2/(k*k*c_out)); BN gamma 1, beta 0; fc bias 0. Returns logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3, plus identity or 1x1-conv shortcut.

    As in the original, when the width changes the shortcut takes the *activated* input
    (BN-ReLU applied), while an identity shortcut takes the raw input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (  # noqa: N815 - name kept from the original (ERK tests refer to it)
            None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        if self.convShortcut is None:
            shortcut = x
        else:
            shortcut = self.convShortcut(activated)
        out = self.relu2(self.bn2(self.conv1(activated)))
        out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """A group of `num_blocks` blocks; only the first one changes width and stride."""

    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int, drop_rate: float):
        super().__init__()
        blocks = [
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate) for i in range(num_blocks)
        ]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k for small images."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.3,
    ):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}.")
        blocks_per_group = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(blocks_per_group, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(blocks_per_group, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(blocks_per_group, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # N(0, 2 / (k*k*c_out)), the original's formula, is kaiming-normal with fan_out.
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.pool(self.relu(self.bn1(out)))
        return self.fc(torch.flatten(out, 1))


def _register_wrn(depth: int, widen_factor: int) -> None:
    @register_model(f"wrn-{depth}-{widen_factor}")
    def factory(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
        # image_size is not needed: global pooling makes the head independent of it.
        return WideResNet(depth, widen_factor, num_classes=num_classes, in_channels=in_channels, **kwargs)


for _depth, _width in ((28, 2), (22, 8), (16, 8), (16, 10)):
    _register_wrn(_depth, _width)
