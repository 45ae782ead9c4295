"""Growth criteria in index space, for truly sparse layers (`itop.sparse.SparseLinear`, `SparseConv2d`).

A truly sparse layer has no dense mask: the positions allowed to grow are everything outside its
sorted active positions, and a criterion returns the sorted flat positions of exactly k new
weights. The built-in grow criteria of `grow.py` carry their index-space form as `fn.positions`
(a criterion without one cannot drive truly sparse layers):

    positions_fn(shape, k, *, excluded, generator, sources, gradient_rows) -> sorted int64 positions

`excluded` holds the active positions before the update (so weights pruned in it are not
regrown), `sources` the (inputs, output gradients) pairs that the layer's backward recorded on
the update step, and `gradient_rows(inputs, grads, first, last)` the dense weight gradient of
output rows [first, last) from them, flattened to (last - first, weights per row) (for a Linear
layer grads[:, first:last]^T @ inputs; for a convolution its weight gradient for those output
channels). Gradient growth scores block by block of output rows, so memory is bounded by one
block whatever the layer's size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..sparse.sampling import contains, random_k_positions
from .select import top_k_mask

BLOCK_ENTRIES = 1 << 22  # gradient entries scored at once (16 MB in float32)
EXACT_GRADIENT_LIMIT = 10**10  # above this many positions, gradient growth scores a random candidate subset
CANDIDATES = 1 << 22  # the subset's size: at least this many, and at least 8 per weight to grow


def random_positions(shape, k: int, *, excluded: Tensor, generator: torch.Generator, **_) -> Tensor:
    """SET: k positions uniformly among the inactive ones (the same draws as `random_k_mask`)."""
    return random_k_positions(math.prod(shape), excluded, k, generator)


def linear_rows(inputs: Tensor, grads: Tensor, first: int, last: int) -> Tensor:
    """A Linear layer's dense weight gradient, output rows [first, last)."""
    return grads[:, first:last].t() @ inputs


def no_positions(shape, k: int, **_) -> Tensor:
    return torch.zeros(0, dtype=torch.int64)


def _stacked(sources: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    if not sources:
        raise RuntimeError(
            "gradient growth on a truly sparse layer needs the inputs and output gradients of the update step, and "
            "none were recorded: updates must come from sparsifier.step() after loss.backward() and optimizer.step()."
        )
    dtype = torch.float64 if sources[0][0].dtype == torch.float64 else torch.float32
    return torch.cat([x for x, _ in sources]).to(dtype), torch.cat([g for _, g in sources]).to(dtype)


def gradient_positions(
    shape,
    k: int,
    *,
    excluded: Tensor,
    generator: torch.Generator,
    sources: Sequence[tuple[Tensor, Tensor]] = (),
    gradient_rows: Callable[[Tensor, Tensor, int, int], Tensor] = linear_rows,
    **_,
) -> Tensor:
    """RigL: the k inactive positions of largest |dense gradient| (ties to the lowest position),
    exact up to rounding; on layers of more than `EXACT_GRADIENT_LIMIT` positions, the best k of a
    uniform random subset of max(`CANDIDATES`, 8k) inactive positions, each scored exactly."""
    if k == 0:
        return torch.zeros(0, dtype=torch.int64)
    inputs, grads = _stacked(sources)
    out_features, in_features = shape[0], math.prod(shape[1:])
    excluded = excluded.to("cpu", torch.int64)
    if len(shape) == 2 and out_features * in_features > EXACT_GRADIENT_LIMIT:
        return _sampled_gradient_positions(shape, k, excluded, generator, inputs, grads)
    rows_per_block = max(1, BLOCK_ENTRIES // in_features)
    best_positions = torch.zeros(0, dtype=torch.int64)
    best_scores = torch.zeros(0, dtype=inputs.dtype)
    for first in range(0, out_features, rows_per_block):
        last = min(out_features, first + rows_per_block)
        scores = gradient_rows(inputs, grads, first, last).abs().reshape(-1).cpu()
        low, high = first * in_features, last * in_features
        inside = excluded[torch.searchsorted(excluded, low) : torch.searchsorted(excluded, high)] - low
        allowed = torch.ones(scores.numel(), dtype=torch.bool)
        allowed[inside] = False
        chosen = torch.nonzero(top_k_mask(scores, min(k, scores.numel() - inside.numel()), allowed)).squeeze(1)
        # the running best precede this block, so "ties to the lowest index" stays "lowest position"
        positions = torch.cat([best_positions, chosen + low])
        candidates = torch.cat([best_scores, scores[chosen]])
        keep = torch.nonzero(top_k_mask(candidates, min(k, candidates.numel()))).squeeze(1)
        best_positions, best_scores = positions[keep], candidates[keep]
    if best_positions.numel() != k:
        raise ValueError(f"cannot grow {k} weights in a layer with {out_features * in_features - excluded.numel()} inactive positions.")
    return best_positions


def _sampled_gradient_positions(shape, k, excluded, generator, inputs, grads) -> Tensor:
    room = shape[0] * shape[1] - excluded.numel()
    candidates = random_k_positions(shape[0] * shape[1], excluded, min(room, max(CANDIDATES, 8 * k)), generator)
    rows = candidates.div(shape[1], rounding_mode="floor")
    cols = candidates - rows * shape[1]
    scores = torch.zeros(candidates.numel(), dtype=inputs.dtype)
    for g, x in zip(grads.cpu(), inputs.cpu()):
        scores.addcmul_(g.index_select(0, rows), x.index_select(0, cols))
    return candidates[torch.nonzero(top_k_mask(scores.abs(), k)).squeeze(1)]


def momentum_positions(shape, k: int, **_) -> Tensor:
    raise ValueError(
        "momentum growth needs a dense running average of the gradients, which a truly sparse layer never holds; "
        "use grow='gradient' (RigL) or grow='random' (SET) with truly sparse layers."
    )


def outside(positions: Tensor, excluded: Tensor) -> bool:
    """True when no entry of `positions` is in the sorted `excluded` (a criterion's contract)."""
    return not bool(contains(excluded.to(positions.device), positions).any())
