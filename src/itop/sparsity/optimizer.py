"""What the engine needs to know about the user's optimizer and the GradScaler driving it.

Which optimizers leave a zero weight with a zero gradient and zero state at zero (so masking the
gradients is enough), the closure of `optimizer.step(closure)`, the flags a GradScaler hands a
fused optimizer, and the in-place multiply that applies the masks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ZERO_PRESERVING = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Adadelta,
)


def zero_preserving(optimizer: torch.optim.Optimizer) -> bool:
    """Does a zero gradient on a zero weight with zero state leave all three at zero?"""
    if isinstance(optimizer, torch.optim.Adagrad):
        return all(g.get("initial_accumulator_value", 0) == 0 for g in optimizer.param_groups)
    return type(optimizer) in ZERO_PRESERVING


def multiply_all(tensors: list[Tensor], masks: list[Tensor]) -> None:
    """tensors[i] *= masks[i] in place: one foreach kernel on accelerators; on the CPU, where
    foreach is a slower single loop, one multi-threaded multiply per tensor (measured faster)."""
    if not tensors:
        return
    if tensors[0].device.type == "cpu":
        for tensor, mask in zip(tensors, masks):
            tensor.mul_(mask)
    else:
        torch._foreach_mul_(tensors, masks)


def closure_of(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> Callable | None:
    """The closure passed to `optimizer.step(closure)`, if any (step hooks get the optimizer
    itself as the first positional argument)."""
    if args and args[0] is optimizer:
        args = args[1:]
    return kwargs.get("closure", args[0] if args else None)


def skipped_by_grad_scaler(optimizer: torch.optim.Optimizer) -> bool:
    """True when a GradScaler drives a fused optimizer (one that unscales inside its own kernel) and
    found inf/NaN gradients: the optimizer is called but leaves everything as it was. Reading the flag
    is one host synchronisation per step, made only in that set-up."""
    found_inf = getattr(optimizer, "found_inf", None)
    return isinstance(found_inf, Tensor) and bool(found_inf.item())


def grad_scale(optimizer: torch.optim.Optimizer) -> Tensor | None:
    """The loss scale the gradients still carry when a GradScaler leaves unscaling to a fused optimizer."""
    scale = getattr(optimizer, "grad_scale", None)
    return scale if isinstance(scale, Tensor) else None
