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
    """SGD (Nesterov for the CIFAR script, plain for ImageNet) or Adam, with weight decay. SGD
    runs fused where PyTorch has the kernel (the same update, its multiply-adds fused).

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
    nesterov = cfg.nesterov and cfg.momentum > 0
    if cfg.fsdp:  # DTensor parameters have no fused SGD kernel; foreach runs on their local shards
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov, foreach=True)
    try:  # one kernel for all parameters: 164 -> 77 us for SET's 8 tensors at H=1,000, 5.7 -> 3.1 ms a dense MLP step
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov, fused=True)
    except (RuntimeError, TypeError):  # a torch or device without fused SGD
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov)


def multistep_milestones(cfg: TrainConfig, total_steps: int) -> tuple[str, tuple[int, int]]:
    """Where --lr-schedule multistep divides the LR by 10: ("epochs", (e1, e2)) or ("steps", (s1, s2)).

    The original ITOP code's milestones, epochs int(epochs/2) and int(3*epochs/4) times the
    multiplier, whenever both fall after the first epoch and apart. Shorter runs would decay from
    their first step (1 epoch: both milestones are 0, so the whole run trains at 1/100 of --lr) or
    skip the middle rate (2 epochs), so they decay after 1/2 and 3/4 of their optimizer steps instead.
    """
    m = cfg.multiplier
    epochs = (int(cfg.epochs / 2) * m, int(cfg.epochs * 3 / 4) * m)
    if 1 <= epochs[0] < epochs[1]:
        return "epochs", epochs
    first = max(1, total_steps // 2)
    return "steps", (first, max(first + 1, total_steps * 3 // 4))


def learning_rate(cfg: TrainConfig, epoch: int, step: int, total_steps: int) -> float:
    """LR for 0-based `epoch` and global optimizer `step` (0-based) under --lr-schedule."""
    m, base = cfg.multiplier, cfg.lr
    if cfg.lr_schedule == "multistep":
        unit, milestones = multistep_milestones(cfg, total_steps)
        now = epoch if unit == "epochs" else step
        return base * 0.1 ** sum(now >= ms for ms in milestones)
    if cfg.lr_schedule == "step":
        return base * 0.1 ** (step // (cfg.decay_frequency * m))  # decay points scale with the run, like milestones
    if cfg.lr_schedule == "constant":  # the SET recipes
        return base
    if cfg.lr_schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    if epoch < cfg.warmup:  # imagenet-step
        return base * (epoch + 1) / (cfg.warmup + 1)
    return base * 0.1 ** sum(epoch >= e for e in _imagenet_milestones(cfg))


def _imagenet_milestones(cfg: TrainConfig) -> tuple[int, ...]:
    """The ImageNet script's decays: after epochs 30, 60 and 90, times the multiplier."""
    return tuple(e * cfg.multiplier for e in (30, 60, 90))


def describe_schedule(cfg: TrainConfig, total_steps: int) -> str:
    """The run's LR schedule in a few words for its first printed line, e.g. "lr 0.1, x0.1 after
    epochs 125 and 187" or "lr 0.1, x0.1 after steps 18 and 27": the decays a user should expect."""
    base = f"lr {cfg.lr:g}"
    if cfg.lr_schedule == "multistep":
        unit, (first, second) = multistep_milestones(cfg, total_steps)
        return f"{base}, x0.1 after {unit} {first} and {second}"
    if cfg.lr_schedule == "step":
        return f"{base}, x0.1 every {cfg.decay_frequency * cfg.multiplier} steps"
    if cfg.lr_schedule == "constant":
        return f"{base} constant"
    if cfg.lr_schedule == "cosine":
        return f"{base}, cosine to 0 over {total_steps} steps"
    warmup = f" after {cfg.warmup} warm-up epochs" if cfg.warmup else ""
    first, second, third = _imagenet_milestones(cfg)
    return f"{base}{warmup}, x0.1 after epochs {first}, {second} and {third}"


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
