"""Shared facts for the model tests: the reference's parameter table and two ways to count masks."""

from __future__ import annotations

import torch
from torch import nn

from itop.models import create_model

# name -> (num_classes, total params, masked params) at the original input size.
# All rows except the four marked "torchvision" are REFERENCE.md section 5; those four are
# torchvision's published counts of the same architectures (the reference lists resnet50 only).
REFERENCE_COUNTS = {
    "lenet300-100": (10, 266_610, 266_200),
    "lenet5": (10, 431_080, 430_500),
    "mlp-cifar10": (10, 3_676_682, 3_675_136),
    "set-mlp": (10, 2_797_010, 2_794_000),  # 784-1000-1000-1000-10 (SET.md), not in REFERENCE.md
    "alexnet-s": (10, 5_077_066, 5_066_784),
    "alexnet-b": (10, 8_501_322, 8_484_896),
    "vgg-c": (10, 11_323_466, 11_307_712),
    "vgg-d": (10, 15_255_626, 15_239_872),
    "vgg-like": (10, 14_991_946, 14_977_728),
    "wrn-28-2": (10, 1_467_610, 1_463_984),
    "wrn-22-8": (10, 17_158_106, 17_147_312),
    "wrn-16-8": (10, 10_961_370, 10_954_160),
    "wrn-16-10": (10, 17_116_634, 17_107_632),
    "resnet18": (100, 11_220_032, 11_210_432),
    "resnet34": (100, 21_328_192, 21_311_168),
    "imagenet-resnet50": (1000, 25_557_032, 25_502_912),
    "imagenet-resnet18": (1000, 11_689_512, None),  # torchvision
    "imagenet-resnet34": (1000, 21_797_672, None),  # torchvision
    "imagenet-resnet101": (1000, 44_549_160, None),  # torchvision
    "imagenet-resnet152": (1000, 60_192_808, None),  # torchvision
}

# name -> the dataset the model was designed for; every model is tested at its input size.
DATASET = {
    "lenet300-100": "mnist",
    "lenet5": "mnist",
    "mlp-cifar10": "cifar10",
    "set-mlp": "mnist",
    "alexnet-s": "cifar10",
    "alexnet-b": "cifar10",
    "vgg-c": "cifar10",
    "vgg-d": "cifar10",
    "vgg-like": "cifar10",
    "wrn-28-2": "cifar10",
    "wrn-22-8": "cifar10",
    "wrn-16-8": "cifar10",
    "wrn-16-10": "cifar10",
    "resnet18": "cifar100",
    "resnet34": "cifar100",
    "imagenet-resnet18": "imagenet",
    "imagenet-resnet34": "imagenet",
    "imagenet-resnet50": "imagenet",
    "imagenet-resnet101": "imagenet",
    "imagenet-resnet152": "imagenet",
}

# dataset -> (channels, height, width) of its images.
INPUT_SHAPE = {
    "mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "imagenet": (3, 224, 224),
}


def build_reference(name: str, device: str = "meta") -> nn.Module:
    """The model as the original built it (its dataset's classes and input), by default shapes only."""
    with torch.device(device):
        return create_model(name, num_classes=REFERENCE_COUNTS[name][0])


def total_numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def linear_conv_weight_numel(model: nn.Module) -> int:
    """Masked count as the brief defines it: the weights of every Linear and Conv layer."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def reference_masked_names(model: nn.Module) -> list[str]:
    """Masked names by the original's rule: every parameter except biases and BatchNorm weights."""
    bn_weights = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))}
    return [name for name, _ in model.named_parameters() if "bias" not in name and name not in bn_weights]


def head(model: nn.Module) -> nn.Linear:
    """The last Linear layer (the classifier)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
