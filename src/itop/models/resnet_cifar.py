"""CIFAR ResNet-18/34 of the original (`ResNet18`, `ResNet34` keys), used for CIFAR-100.

A 3x3 stem without pooling, BasicBlocks of widths 64-128-256-512 with 1x1-conv+BN shortcuts
where shape changes, global average pooling (the original's avgpool 4 at 32x32) and a linear
head without bias named `classifier`. The original always built 100 outputs; here the class
count is an argument. PyTorch's default initialisation, as in the original. Returns logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection, ReLU after the sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs; `blocks_per_stage` e.g. (2, 2, 2, 2) for ResNet-18."""

    def __init__(self, blocks_per_stage: tuple[int, ...], num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_stage(64, blocks_per_stage[0], stride=1)
        self.layer2 = self._make_stage(128, blocks_per_stage[1], stride=2)
        self.layer3 = self._make_stage(256, blocks_per_stage[2], stride=2)
        self.layer4 = self._make_stage(512, blocks_per_stage[3], stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes, bias=False)

    def _make_stage(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            blocks.append(BasicBlock(self.in_planes, planes, block_stride))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.classifier(torch.flatten(self.pool(out), 1))


@register_model("resnet18", aliases=("resnet-18",))
def resnet18(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return CifarResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model("resnet34", aliases=("resnet-34",))
def resnet34(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return CifarResNet((3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels, **kwargs)
