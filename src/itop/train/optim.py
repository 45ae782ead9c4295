"""Optimizer and learning-rate schedule of a run, as the original scripts set them up.

The learning rate is a pure function of (epoch, step) rather than a stateful scheduler, so a
resumed run recomputes exactly the rate an uninterrupted run would have used.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov for the CIFAR script, plain for ImageNet) or Adam, with weight decay.

    Without --bn-weight-decay (ImageNet), normalisation-layer parameters get no weight decay.
    """
    decay, no_decay = [], []
    norm_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)
    for module in model.modules():
        for param in module.parameters(recurse=False):
            skip = not cfg.bn_weight_decay and isinstance(module, norm_types)
            (no_decay if skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


def learning_rate(cfg: TrainConfig, epoch: int, step: int, total_steps: int) -> float:
    """LR for 0-based `epoch` and global optimizer `step` (0-based) under --lr-schedule."""
    m, base = cfg.multiplier, cfg.lr
    if cfg.lr_schedule == "multistep":
        milestones = (int(cfg.epochs / 2) * m, int(cfg.epochs * 3 / 4) * m)
        return base * 0.1 ** sum(epoch >= ms for ms in milestones)
    if cfg.lr_schedule == "step":
        return base * 0.1 ** (step // (cfg.decay_frequency * m))  # decay points scale with the run, like milestones
    if cfg.lr_schedule == "constant":  # the SET recipes
        return base
    if cfg.lr_schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    if epoch < cfg.warmup:  # imagenet-step
        return base * (epoch + 1) / (cfg.warmup + 1)
    return base * 0.1 ** sum(epoch >= e * m for e in (30, 60, 90))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
