"""Uniform random positions in index space: the sampler both storages draw with.

`random_k_positions(n, excluded, k, generator)` picks k distinct positions of [0, n) outside a
sorted set, uniformly without replacement, in time and memory that grow with k and the excluded
set, never with n (layers of 10^11 positions). It lives with the truly sparse storage, which draws
a layer's initial positions with it (`SparseLinear(..., nnz=k)`); the engine draws its masks'
random choices (`itop.sparsity.select.random_k_mask`) and its growth in index space with the
same function, so a masked and a truly sparse model of one seed make the same draws.
`contains` and `complement` are the sorted-set helpers it is built on.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["contains", "complement", "random_k_positions"]


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
    drawn. The engine's `random_k_mask` (`itop.sparsity.select`) is this on a bool mask, so both
    storages make the same draws.
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
