"""Evaluation of a model over a loader in `itop train`: mean loss and accuracy, summed over the
ranks where each holds a shard of the data, and the per-layer densities the logs record."""

from __future__ import annotations

import torch
from torch import nn

from .distributed import World, all_sum


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, device, autocast, world: World = World(), sharded: bool = False, loss_sum_fn=None
) -> tuple[float, float]:
    """(mean loss, accuracy) over a loader; summed over ranks when each rank holds a shard.
    `loss_sum_fn(logits, labels)` gives the summed loss (cross-entropy by default)."""
    if loss_sum_fn is None:
        loss_sum_fn = nn.CrossEntropyLoss(reduction="sum")
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            logits = model(x)
        loss_sum += loss_sum_fn(logits.float(), y)
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    totals = [float(loss_sum), float(correct), float(count)]
    if sharded:
        totals = all_sum(totals, world, device)
    return totals[0] / max(totals[2], 1), totals[1] / max(totals[2], 1)


def layer_densities(sparsifier) -> dict[str, float]:
    return {} if sparsifier is None else {n: s["density"] for n, s in sparsifier.layer_stats().items()}
