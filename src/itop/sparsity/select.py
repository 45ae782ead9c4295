"""Exact selection: pick exactly k positions with the largest scores, ties to the lowest index.

Every criterion reduces to this. `kthvalue` finds the k-th largest score in linear time (no full
sort); ties at that score are resolved by position, so the result is deterministic and the count
is exact however many scores are equal (the original's thresholding removed every tied entry).
When only some positions may be chosen (`allowed`) and they are few, the selection runs on those
alone: pruning then looks at the active weights only, a few percent of a sparse tensor.
Random choices (`random_k_mask`) draw only about k positions, not one number per weight, with
the index-space sampler of the truly sparse storage (`itop.sparse.sampling.random_k_positions`,
re-exported here with its helpers `contains` and `complement`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..sparse.sampling import complement, contains, random_k_positions
from . import shards

__all__ = ["top_k_mask", "bottom_k_mask", "random_k_mask", "random_k_positions", "contains", "complement", "count"]

count = shards.count  # nonzero entries of a whole tensor, DTensors included: what criteria count with


def _kth_largest(scores: Tensor, k: int) -> Tensor:
    return torch.kthvalue(scores, scores.numel() - k + 1).values


def _top_k_flat(scores: Tensor, k: int, shortlist: bool = True) -> Tensor:
    n = scores.numel()
    chosen = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if k == 0:
        return chosen
    if k == n:
        return chosen.fill_(True)
    scores = torch.nan_to_num(scores.float(), nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    if shortlist and n > 1 << 16 and 4 * k < n:
        # Shortlist: a threshold from a strided sample, set low enough that (almost always) at
        # least k scores pass it; the exact selection then runs on that shortlist alone. The
        # result is the same as without it, because every score >= the true k-th is kept.
        stride = n >> 14
        sample = scores[::stride]
        wanted = min(sample.numel(), 2 * (k * sample.numel()) // n + 64)
        positions = torch.nonzero(scores >= _kth_largest(sample, wanted)).squeeze(1)
        if k <= positions.numel() <= n // 2:
            chosen[positions[_top_k_flat(scores[positions], k, shortlist=False)]] = True
            return chosen
    kth = _kth_largest(scores, k)
    torch.gt(scores, kth, out=chosen)
    missing = k - int(torch.count_nonzero(chosen))
    if missing > 0:
        chosen[torch.nonzero(scores == kth).squeeze(1)[:missing]] = True
    return chosen


def top_k_mask(scores: Tensor, k: int, allowed: Tensor | None = None) -> Tensor:
    """Bool mask shaped like `scores`, True at exactly `k` positions of largest score.

    With `allowed` (a bool mask), only allowed positions can be chosen, and `k` may not exceed
    their number. NaN scores rank lowest. A DTensor sharded by FSDP2 gets the same selection
    across its shards (`shards.top_k`).
    """
    if shards.is_sharded(scores):
        return shards.top_k(scores, k, allowed)
    flat = scores.reshape(-1)
    if allowed is None:
        if not 0 <= k <= flat.numel():
            raise ValueError(f"cannot select {k} of {flat.numel()} positions.")
        return _top_k_flat(flat, k).view_as(scores)
    allowed = allowed.reshape(-1)
    n_allowed = int(torch.count_nonzero(allowed))
    if not 0 <= k <= n_allowed:
        raise ValueError(f"cannot select {k} of {n_allowed} allowed positions.")
    if 2 * n_allowed > flat.numel():
        # Allowed scores made finite (NaN and -inf lowest among them) so that -inf marks exactly
        # the positions that may not be chosen.
        big = torch.finfo(torch.float32).max
        finite = torch.nan_to_num(flat.float(), nan=-big, posinf=big, neginf=-big)
        lowest = torch.full((), float("-inf"), device=flat.device)
        return _top_k_flat(torch.where(allowed, finite, lowest), k).view_as(scores)
    positions = torch.nonzero(allowed).squeeze(1)
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[positions[_top_k_flat(flat[positions], k)]] = True
    return chosen.view_as(scores)


def bottom_k_mask(scores: Tensor, k: int, allowed: Tensor | None = None) -> Tensor:
    """Bool mask True at exactly `k` positions of smallest score (ties to the lowest index)."""
    return top_k_mask(-scores.float(), k, allowed)


def random_k_mask(allowed: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Bool mask True at `k` allowed positions drawn uniformly without replacement.

    Draws come from `generator` (a CPU generator), so a seed gives the same choice on every
    device; see `random_k_positions`, which this is on the mask's flat positions.
    """
    if shards.is_sharded(allowed):
        return shards.random_k(allowed, k, generator)
    flat = allowed.reshape(-1)
    positions = random_k_positions(flat.numel(), torch.nonzero(~flat).squeeze(1), k, generator)
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[positions.to(flat.device)] = True
    return chosen.view_as(allowed)
