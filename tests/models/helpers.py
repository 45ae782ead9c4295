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

# Models too slow for a CPU forward at their natural size, with the size the tests use instead.
SMALL_IMAGE_SIZE = {
    "wrn-22-8": 16,
    "wrn-16-8": 16,
    "wrn-16-10": 16,
    "imagenet-resnet18": 64,
    "imagenet-resnet34": 64,
    "imagenet-resnet50": 64,
    "imagenet-resnet101": 32,
    "imagenet-resnet152": 32,
}

# The deepest models are only run forward (no backward): their blocks are resnet50's.
FORWARD_ONLY = {"imagenet-resnet101", "imagenet-resnet152"}


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
    bn_weights = {
        f"{name}.weight" for name, m in model.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))
    }
    return [name for name, _ in model.named_parameters() if "bias" not in name and name not in bn_weights]


def head(model: nn.Module) -> nn.Linear:
    """The last Linear layer (the classifier)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
