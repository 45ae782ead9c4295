"""Keeping masks identical on every rank of a torch.distributed job.

The engine takes the same decisions on every rank by construction: the random generator has the
same seed everywhere, and gradient-based criteria see the gradients DistributedDataParallel has
already averaged. `check_masks_agree` verifies it after every topology update with a 62-bit
checksum per layer, compared across ranks with one all-reduce (the maximum of the checksums and
of their negatives), and fails loudly if any rank differs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from .shards import is_sharded


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


_MASK62 = (1 << 62) - 1


def _signed(value: int) -> int:
    """A 64-bit constant as the int64 that has its bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


_MIX1, _MIX2, _GOLDEN = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB), _signed(0x9E3779B97F4A7C15)


def _xor_shift_right_(x: Tensor, bits: int, scratch: Tensor) -> Tensor:
    """x ^= x >>> bits in place (logical shift of int64 words), using `scratch` for x >>> bits."""
    torch.bitwise_right_shift(x, bits, out=scratch)
    scratch &= (1 << (64 - bits)) - 1
    return x.bitwise_xor_(scratch)


def _mix_(x: Tensor) -> Tensor:
    """SplitMix64's finaliser (Steele et al. 2014) on int64 words, in place, wrapping like uint64:
    every input bit changes about half of the output bits, so unlike a sum no structured change of
    the mask can cancel out."""
    scratch = torch.empty_like(x)
    _xor_shift_right_(x, 30, scratch).mul_(_MIX1)
    _xor_shift_right_(x, 27, scratch).mul_(_MIX2)
    return _xor_shift_right_(x, 31, scratch)


def _layer_checksum(mask: Tensor) -> Tensor:
    """One int64 that changes when any entry of `mask` changes (collisions about 2**-62).

    The bool mask is read as 64-bit words (eight entries each, zero-padded); each word is XORed
    with a key of its position (i * golden ratio), mixed, and the results are summed (wrapping).
    A handful of in-place passes over N/8 words, no nonzero(), the same on every device.
    """
    flat = mask.reshape(-1).view(torch.uint8)
    if flat.numel() % 8:
        flat = torch.cat([flat, flat.new_zeros(8 - flat.numel() % 8)])
    words = flat.view(torch.int64)
    keyed = torch.arange(1, words.numel() + 1, device=flat.device, dtype=torch.int64).mul_(_GOLDEN).bitwise_xor_(words)
    return _mix_(keyed).sum() & _MASK62


def mask_checksum(masks: Mapping[str, Tensor]) -> Tensor:
    """int64 tensor (layers,): a checksum of each layer's mask, equal on ranks with equal masks."""
    return torch.stack([_layer_checksum(mask) for mask in masks.values()])


def shared_seed(seed: int | None) -> int | None:
    """The seed of rank 0 on every rank (None stays None outside distributed jobs)."""
    if seed is not None or not is_distributed():
        return seed
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.randint(0, 2**62, (1,), device=device)
    dist.broadcast(value, src=0)
    return int(value.item())


def check_masks_agree(masks: Mapping[str, Tensor], generator: torch.Generator | None = None) -> None:
    """Raise RuntimeError naming the first layer whose mask differs between ranks.

    Masks sharded by FSDP2 (DTensors) differ between ranks by design, each rank holding its own
    shard; what must agree for their decisions to be one process's is the random generator that
    drew them (thresholds come from all-reduced counts), so its state is compared instead."""
    if not is_distributed():
        return
    compared = {name: mask for name, mask in masks.items() if not is_sharded(mask)}
    if generator is not None and len(compared) < len(masks):
        compared["the random generator of the sharded layers' decisions"] = generator.get_state()
    if not compared:
        return
    local = mask_checksum(compared)  # non-negative (62 bits), so -local cannot overflow
    extremes = torch.cat([local, -local])
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX)  # max and -min in one call
    high, low = extremes[: len(local)], -extremes[len(local) :]
    differs = low != high
    if bool(differs.any()):
        name = list(compared)[int(torch.nonzero(differs)[0])]
        raise RuntimeError(
            f"sparse masks differ between ranks at {name} (rank {dist.get_rank()}); every rank must build the "
            "Sparsifier with the same seed on identical weights, and gradients must be averaged (DistributedDataParallel "
            "or FSDP2's fully_shard)."
        )


def gather_rows(rows: Tensor) -> Tensor:
    """The rows of every rank, concatenated in rank order (ranks may hold different numbers of
    rows: each pads to the largest count for one all_gather, and the padding is cut off)."""
    if not is_distributed():
        return rows
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    most = int(max(int(c) for c in counts))
    padded = torch.cat([rows, rows.new_zeros(most - rows.shape[0], *rows.shape[1:])])
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(c)] for g, c in zip(gathered, counts)])
