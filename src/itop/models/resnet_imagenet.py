"""ImageNet ResNet-18/34/50/101/152 as used by the original's ImageNet code (NVIDIA's "v1.5").

Same layout and parameter names as torchvision (`conv1, bn1, layer1.0.downsample.0, fc`, ...):
7x7 stride-2 stem with max-pooling, four stages, the bottleneck's stride on its 3x3 conv, global
average pooling, fc with bias. `init` selects the original's `-c/--model-config`: "classic" draws
every conv from kaiming-normal with fan_out, "fanin" with fan_in (the README's ResNet-50 runs use
fanin). BatchNorm starts at gamma 1, beta 0; fc keeps PyTorch's default initialisation.
Registered as `imagenet-resnetN`, since `resnet18`/`resnet34` are the CIFAR models.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

FAN_MODES = {"classic": "fan_out", "fanin": "fan_in"}


def _conv(in_planes: int, out_planes: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel, stride=stride, padding=kernel // 2, bias=False)


def _downsample(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(_conv(in_planes, out_planes, 1, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convs (stride on the first) with a residual connection."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv(in_planes, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride: "v1.5"), 1x1 expand by 4, residual connection."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = _conv(in_planes, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, out_planes, 1)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


ARCHITECTURES = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ImageNetResNet(nn.Module):
    """ResNet-`depth` (18, 34, 50, 101 or 152) for 224x224 images."""

    def __init__(self, depth: int = 50, num_classes: int = 1000, in_channels: int = 3, init: str = "classic"):
        super().__init__()
        if depth not in ARCHITECTURES:
            raise ValueError(f"unsupported ResNet depth {depth}; choose one of: {', '.join(map(str, ARCHITECTURES))}.")
        if init not in FAN_MODES:
            raise ValueError(f"unknown init {init!r}; choose one of: {', '.join(FAN_MODES)}.")
        block, blocks_per_stage = ARCHITECTURES[depth]
        self.in_planes = 64
        self.conv1 = _conv(in_channels, 64, 7, stride=2)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_stage(block, 64, blocks_per_stage[0], stride=1)
        self.layer2 = self._make_stage(block, 128, blocks_per_stage[1], stride=2)
        self.layer3 = self._make_stage(block, 256, blocks_per_stage[2], stride=2)
        self.layer4 = self._make_stage(block, 512, blocks_per_stage[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self._init_weights(FAN_MODES[init])

    def _make_stage(self, block: type[nn.Module], planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            blocks.append(block(self.in_planes, planes, block_stride))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*blocks)

    def _init_weights(self, fan_mode: str) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode=fan_mode, nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.avgpool(out), 1))


def _register_imagenet_resnet(depth: int, aliases: tuple[str, ...] = ()) -> None:
    @register_model(f"imagenet-resnet{depth}", in_channels=3, image_size=224, aliases=aliases)
    def factory(num_classes: int, in_channels: int, image_size: int, init: str = "classic", **kwargs) -> nn.Module:
        # image_size is not needed: global pooling makes the head independent of it.
        return ImageNetResNet(depth, num_classes=num_classes, in_channels=in_channels, init=init, **kwargs)


# resnet18/34 name the CIFAR models; the deeper ones exist only for ImageNet, so their plain
# names (the original's `--arch` values) are aliases here.
for _depth in ARCHITECTURES:
    _register_imagenet_resnet(_depth, aliases=(f"resnet{_depth}",) if _depth >= 50 else ())
