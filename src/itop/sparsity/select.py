"""Exact selection: pick exactly k positions with the largest scores, ties to the lowest index.

Every criterion reduces to this. `kthvalue` finds the k-th largest score in linear time (no full
sort); ties at that score are resolved by position, so the result is deterministic and the count
is exact however many scores are equal (the original's thresholding removed every tied entry).
When only some positions may be chosen (`allowed`) and they are few, the selection runs on those
alone: pruning then looks at the active weights only, a few percent of a sparse tensor.
Random choices (`random_k_mask`) draw only about k positions, not one number per weight.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
    their number. NaN scores rank lowest.
    """
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


def _first_distinct(values: Tensor) -> Tensor:
    """The distinct entries of `values` in order of first appearance."""
    unique, inverse = torch.unique(values, return_inverse=True)
    order = torch.arange(values.numel(), device=values.device)
    first = torch.full_like(unique, values.numel()).scatter_reduce_(0, inverse, order, "amin")
    return unique[torch.argsort(first)]


def contains(sorted_set: Tensor, values: Tensor) -> Tensor:
    """Bool tensor like `values`: which entries are in the sorted 1-D tensor `sorted_set`."""
    if sorted_set.numel() == 0:
        return torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    where = torch.searchsorted(sorted_set, values).clamp_(max=sorted_set.numel() - 1)
    return sorted_set[where] == values


def complement(n: int, excluded: Tensor) -> Tensor:
    """The sorted positions of [0, n) that are not in the sorted, distinct `excluded`, built from
    the gaps between excluded positions (no tensor of n entries)."""
    bounds = torch.cat([excluded.new_tensor([-1]), excluded, excluded.new_tensor([n])])
    gaps = bounds.diff() - 1
    total = n - excluded.numel()
    offsets = torch.arange(total, dtype=torch.int64, device=excluded.device)
    starts = torch.repeat_interleave(bounds[:-1] + 1, gaps, output_size=total)
    before = torch.repeat_interleave(gaps.cumsum(0) - gaps, gaps, output_size=total)
    return starts + offsets - before


def random_k_positions(n: int, excluded: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """`k` distinct positions of [0, n) outside the sorted, distinct `excluded`, uniform without
    replacement, as a sorted int64 tensor (on the CPU, like the generator).

    Positions are drawn over all of [0, n) and the first k distinct allowed ones kept (a uniform
    k-subset), which costs about k draws and memory that grows with k and `excluded`, never with
    n: this serves layers of 10^11 positions. When allowed positions are scarce (under a quarter of
    n) they are listed and permuted instead, and when k is more than half of them the complement is
    drawn. `random_k_mask` is this on a bool mask, so both storages make the same draws.
    """
    excluded = excluded.reshape(-1).to("cpu", torch.int64)
    n_allowed = n - excluded.numel()
    if not 0 <= k <= n_allowed:
        raise ValueError(f"cannot select {k} of {n_allowed} allowed positions.")
    if 2 * k > n_allowed:
        left_out = random_k_positions(n, excluded, n_allowed - k, generator)
        return complement(n, torch.cat([excluded, left_out]).sort().values)
    if k == 0:
        return torch.zeros(0, dtype=torch.int64)
    if 4 * n_allowed < n:
        pick = torch.randperm(n_allowed, generator=generator)[:k]
        return complement(n, excluded)[pick].sort().values
    chosen = torch.zeros(0, dtype=torch.int64)
    while chosen.numel() < k:
        found = chosen.numel()
        draws = torch.randint(n, (int((k - found) * 1.25 * n / n_allowed) + 64,), generator=generator)
        draws = draws[~contains(excluded, draws) & ~contains(chosen, draws)]
        chosen = torch.cat([chosen, _first_distinct(draws)[: k - found]]).sort().values
    return chosen


def random_k_mask(allowed: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Bool mask True at `k` allowed positions drawn uniformly without replacement.

    Draws come from `generator` (a CPU generator), so a seed gives the same choice on every
    device; see `random_k_positions`, which this is on the mask's flat positions.
    """
    flat = allowed.reshape(-1)
    positions = random_k_positions(flat.numel(), torch.nonzero(~flat).squeeze(1), k, generator)
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[positions.to(flat.device)] = True
    return chosen.view_as(allowed)
