"""Keeping masks identical on every rank of a torch.distributed job.

The engine takes the same decisions on every rank by construction: the random generator has the
same seed everywhere, and gradient-based criteria see the gradients DistributedDataParallel has
already averaged. `check_masks_agree` verifies it after every topology update with a checksum of
three integers per layer, compared across ranks with two all-reduces (MIN and MAX), and fails
loudly if any rank differs.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _layer_checksum(mask: Tensor) -> Tensor:
    """Three int64 numbers that change when any entry of `mask` changes (whp).

    The bool mask is read as 64-bit words (eight entries each): their sum and their
    position-weighted sum (wrapping on overflow, identically on every device), plus a weighted
    sum of the few entries left over. One cheap pass over N/8 words, no nonzero().
    """
    flat = mask.reshape(-1).view(torch.uint8)
    whole = flat.numel() // 8 * 8
    words = flat[:whole].view(torch.int64)
    tail = flat[whole:].to(torch.int64)
    word_weights = torch.arange(1, words.numel() + 1, device=flat.device, dtype=torch.int64)
    tail_weights = torch.arange(1, tail.numel() + 1, device=flat.device, dtype=torch.int64)
    return torch.stack([words.sum(), (words * word_weights).sum(), (tail * tail_weights).sum()])


def mask_checksum(masks: Mapping[str, Tensor]) -> Tensor:
    """int64 tensor (layers, 3): a checksum of each layer's mask, equal on ranks with equal masks."""
    return torch.stack([_layer_checksum(mask) for mask in masks.values()])


def shared_seed(seed: int | None) -> int | None:
    """The seed of rank 0 on every rank (None stays None outside distributed jobs)."""
    if seed is not None or not is_distributed():
        return seed
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.randint(0, 2**62, (1,), device=device)
    dist.broadcast(value, src=0)
    return int(value.item())


def check_masks_agree(masks: Mapping[str, Tensor]) -> None:
    """Raise RuntimeError naming the first layer whose mask differs between ranks."""
    if not is_distributed():
        return
    local = mask_checksum(masks)
    low, high = local.clone(), local.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    differs = (low != high).any(dim=1)
    if bool(differs.any()):
        name = list(masks)[int(torch.nonzero(differs)[0])]
        raise RuntimeError(
            f"sparse masks differ between ranks at {name} (rank {dist.get_rank()}); every rank must build the "
            "Sparsifier with the same seed on identical weights, and gradients must be averaged (DistributedDataParallel)."
        )
