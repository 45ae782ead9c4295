"""Exact selection over the shards of a parameter that FSDP2 (`fully_shard`) split across ranks.

Under FSDP2 a weight is a DTensor sharded on its first dimension (`Shard(0)`): each rank holds a
contiguous run of rows, so the flat positions of its shard are one range of the dense weight's
positions, and ranks in mesh order hold them in increasing order. The engine keeps each mask as
the local shard of a DTensor of the weight's mesh and placements; no rank ever holds a full-size
mask. The selections here give exactly what `select` gives on the whole weight in one process:

- `top_k`: the k largest scores, ties to the lowest position, by radix selection: four rounds
  over the 32 bits of an order-preserving integer key of each float32 score, each round
  all-reducing a 256-bin histogram, then the ties at the threshold split in rank order. Five
  small collectives per selection. Memory: an int32 key per local weight, or, when few are
  allowed (pruning looks at the active weights only), keys and positions of those alone.
- `random_k`: the draws of `random_k_positions` (the same generator, the same numbers on every
  rank); each rank answers for the draws that fall in its range, one all-reduce per round.
- `count`, `any_true`, `masked_sum`: reductions of sharded tensors to plain Python numbers,
  the same on every rank. (A DTensor's own `int(torch.count_nonzero(x))` gives the local count.)
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from ..sparse.sampling import _first_distinct

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


def is_sharded(tensor) -> bool:
    """Is `tensor` a DTensor? (Without importing DTensor, about half a second: none can exist before
    torch.distributed.tensor is loaded.)"""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def local(tensor: Tensor) -> Tensor:
    """The rank's own part of a DTensor (writing it writes the DTensor); other tensors as they are.

    Read from the DTensor's own field where it has one (0.05 us, where `to_local()` takes 7-15 us,
    a cost every step pays per layer): the engine only writes it under no_grad."""
    if not is_sharded(tensor):
        return tensor
    inner = getattr(tensor, "_local_tensor", None)
    return inner if isinstance(inner, Tensor) else tensor.to_local()


def refuse_flat_sharding(model) -> None:
    """One-line ValueError for a model wrapped in FSDP1 (`FullyShardedDataParallel`), whose flat
    parameters mix the weights of several layers in one sharded vector that no mask can follow."""
    module = sys.modules.get("torch.distributed.fsdp.fully_sharded_data_parallel")
    wrapper = getattr(module, "FullyShardedDataParallel", None)
    if wrapper is not None and any(isinstance(m, wrapper) for m in model.modules()):
        raise ValueError(
            "the model is wrapped in FullyShardedDataParallel (FSDP1), which flattens the weights the masks cover; shard it with "
            "FSDP2 instead: torch.distributed.fsdp.fully_shard on each layer, then on the model."
        )


def check_layout(name: str, param: DTensor) -> None:
    """Refuse (one-line ValueError) a sharded weight the engine cannot follow: FSDP2's layout is
    one mesh dimension with `Shard(0)`."""
    from torch.distributed.tensor import Shard

    placements = tuple(param.placements)
    if param.device_mesh.ndim != 1 or placements != (Shard(0),):
        raise ValueError(
            f"the sharded weight {name} has placements {placements} on a {param.device_mesh.ndim}-D mesh; itop follows FSDP2's "
            "layout (fully_shard on a 1-D mesh, Shard(0)): shard with fully_shard(module, mesh=init_device_mesh(device, (world,)))."
        )
    rows, start = param.shape[0], first_row(param)
    expected = min(-(-rows // param.device_mesh.size()), rows - start)
    if param.to_local().shape[0] != expected:
        raise ValueError(
            f"the shard of {name} holds {param.to_local().shape[0]} rows, not the {expected} of Shard(0); shard with fully_shard."
        )


def like(local_part: Tensor, reference: DTensor) -> DTensor:
    """`local_part` (shaped like this rank's shard of `reference`) as a DTensor of `reference`'s mesh,
    placements, global shape and stride."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        local_part, reference.device_mesh, reference.placements, run_check=False, shape=reference.shape, stride=reference.stride()
    )


def local_like(tensor: Tensor, reference: Tensor) -> Tensor:
    """`tensor`'s part that matches `reference`'s local shard: a DTensor's own shard, or this rank's
    rows of a full-size tensor (a state saved by one process, loaded under FSDP2)."""
    if is_sharded(tensor) or not is_sharded(reference):
        return local(tensor)
    start = first_row(reference)
    return tensor[start : start + reference.to_local().shape[0]]


def all_sum(values: Tensor, reference: Tensor) -> Tensor:
    """`values` (a CPU tensor computed from a local shard) summed over `reference`'s shards."""
    return _all_sum(values, _group(reference)) if is_sharded(reference) else values


def _group(reference: DTensor):
    return reference.device_mesh.get_group()


def first_row(reference: DTensor) -> int:
    """The dense weight's row at which this rank's shard starts (Shard(0) splits rows as torch.chunk)."""
    rows, parts = reference.shape[0], reference.device_mesh.size()
    return min(reference.device_mesh.get_local_rank() * -(-rows // parts), rows)


def offset(reference: DTensor) -> int:
    """The flat position, in the dense weight, of this rank's first local entry."""
    return first_row(reference) * (reference.numel() // max(reference.shape[0], 1))


def _all_sum(values: Tensor, group) -> Tensor:
    dist.all_reduce(values, op=dist.ReduceOp.SUM, group=group)
    return values


def _counts_per_rank(count: int, group) -> list[int]:
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, torch.tensor([count], dtype=torch.int64), group=group)
    return [int(s) for s in sizes]


def count(tensor: Tensor) -> int:
    """Number of nonzero entries of the whole tensor (all-reduced for a DTensor)."""
    if not is_sharded(tensor):
        return int(torch.count_nonzero(tensor))
    mine = torch.count_nonzero(tensor.to_local()).reshape(1).to("cpu", torch.int64)
    return int(_all_sum(mine, _group(tensor)))


def any_true(tensor: Tensor) -> bool:
    """Whether any entry of the whole tensor is nonzero."""
    return count(tensor) > 0


def masked_sum(values: Tensor, mask: Tensor) -> float:
    """Sum of `values` at the True entries of `mask` (in float32; for DTensors each shard's sum in
    float64, all-reduced, so it may differ from one process's sum by rounding)."""
    if not is_sharded(values):
        return float(values.float()[mask].sum())
    mine = local(values).double()[local(mask)].sum().reshape(1).cpu()
    return float(_all_sum(mine, _group(values)))


_LOWEST = -(1 << 31)  # below the key of every float, -inf included: marks the positions that may not be chosen


def _order_keys(scores: Tensor, allowed: Tensor | None) -> Tensor:
    """int32 keys ordered (as signed integers) as the float32 scores are, with NaN as low as -inf,
    -0.0 equal to +0.0 (what `select`'s kthvalue sees) and `_LOWEST` where `allowed` is False: 4
    bytes per local weight, no list of positions."""
    finite = torch.nan_to_num(scores.float(), nan=float("-inf")) + 0.0  # adding +0.0 turns -0.0 into +0.0
    bits = finite.view(torch.int32)
    keys = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats: magnitude bits flipped, so larger is lower
    return keys if allowed is None else keys.masked_fill_(~allowed, _LOWEST)


def _digit(keys: Tensor, shift: int) -> Tensor:
    """Byte `shift` // 8 of each key in unsigned order (the sign bit flipped in the top byte)."""
    digits = (keys >> shift) & 255
    return digits ^ 128 if shift == 24 else digits


def top_k(scores: DTensor, k: int, allowed: Tensor | None = None) -> DTensor:
    """Bool DTensor like `scores`: True at exactly the `k` allowed positions of largest score, ties
    to the lowest position, exactly as `select.top_k_mask` on the whole tensor."""
    group = _group(scores)
    flat = local(scores).reshape(-1).cpu()
    where_allowed = None if allowed is None else local(allowed).reshape(-1).cpu()
    mine = flat.numel() if where_allowed is None else int(torch.count_nonzero(where_allowed))
    total = int(_all_sum(torch.tensor([mine], dtype=torch.int64), group))
    if not 0 <= k <= total:
        raise ValueError(f"cannot select {k} of {total} allowed positions.")
    if k == 0 or k == total:
        chosen = torch.full_like(flat, k == total, dtype=torch.bool) if where_allowed is None else where_allowed & (k == total)
        return like(chosen.view(local(scores).shape).to(local(scores).device), scores)
    # few allowed (pruning looks at the active weights only): their keys and positions; else a key per weight
    positions = None if where_allowed is None or 4 * mine > flat.numel() else torch.nonzero(where_allowed).squeeze(1)
    keys = _order_keys(flat, where_allowed) if positions is None else _order_keys(flat[positions], None)
    need, unsigned, candidates = k, 0, keys
    for shift in (24, 16, 8, 0):  # each round: the byte holding the k-th largest key, from all ranks' histograms
        digits = _digit(candidates, shift)
        histogram = _all_sum(torch.bincount(digits, minlength=256).to(torch.int64), group)
        from_top = histogram.flip(0).cumsum(0)
        index = int(torch.nonzero(from_top >= need)[0])
        digit = 255 - index
        need -= int(from_top[index]) - int(histogram[digit])
        unsigned = (unsigned << 8) | digit
        candidates = candidates[digits == digit]
    threshold = unsigned - (1 << 31)  # the k-th largest key, back in signed order
    chosen = keys > threshold
    ties = torch.nonzero(keys == threshold).squeeze(1)
    counts = _counts_per_rank(ties.numel(), group)
    before = sum(counts[: dist.get_rank(group)])
    chosen[ties[: max(0, min(ties.numel(), need - before))]] = True  # the ties in rank order: lowest positions first
    if positions is not None:
        chosen = torch.zeros(flat.numel(), dtype=torch.bool).index_fill_(0, positions[chosen], True)
    return like(chosen.view(local(scores).shape).to(local(scores).device), scores)


def random_k(allowed: DTensor, k: int, generator: torch.Generator) -> DTensor:
    """Bool DTensor like `allowed`: `k` allowed positions drawn as `select.random_k_mask` draws them
    on the whole tensor in one process (same generator state, same result)."""
    return like(_random_local(allowed, k, generator).view(local(allowed).shape), allowed)


def _random_local(allowed: DTensor, k: int, generator: torch.Generator) -> Tensor:
    group, n, start = _group(allowed), allowed.numel(), offset(allowed)
    mine = local(allowed).reshape(-1)
    counts = _counts_per_rank(int(torch.count_nonzero(mine)), group)
    n_allowed = sum(counts)
    if not 0 <= k <= n_allowed:
        raise ValueError(f"cannot select {k} of {n_allowed} allowed positions.")
    if 2 * k > n_allowed:  # as random_k_positions: draw the ones left out
        return mine & ~_random_local(allowed, n_allowed - k, generator)
    chosen = torch.zeros(mine.numel(), dtype=torch.bool, device=mine.device)
    if k == 0:
        return chosen
    if 4 * n_allowed < n:  # a permutation of the allowed positions, in order of position
        before = sum(counts[: dist.get_rank(group)])
        pick = torch.randperm(n_allowed, generator=generator)[:k]
        pick = pick[(pick >= before) & (pick < before + counts[dist.get_rank(group)])] - before
        chosen[torch.nonzero(mine).squeeze(1)[pick.to(mine.device)]] = True
        return chosen
    found = 0
    while found < k:
        draws = torch.randint(n, (int((k - found) * 1.25 * n / n_allowed) + 64,), generator=generator)
        own = (draws >= start) & (draws < start + mine.numel())
        at = (draws[own] - start).to(mine.device)
        usable = torch.zeros(draws.numel(), dtype=torch.uint8)
        usable[own] = (mine[at] & ~chosen[at]).to("cpu", torch.uint8)
        draws = draws[_all_sum(usable, group).bool()]
        new = _first_distinct(draws)[: k - found]
        found += new.numel()
        new = new[(new >= start) & (new < start + mine.numel())] - start
        chosen[new.to(mine.device)] = True
    return chosen
