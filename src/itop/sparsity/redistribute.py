"""How many weights each layer grows back after pruning.

With `none` every layer regrows exactly what it lost. Otherwise the pruned total is shared out in
proportion to a per-layer statistic (sparse momentum, Dettmers & Zettlemoyer 2019): a
redistribution criterion is a pure function
    fn(weight, mask, *, removed, grad_average, **options) -> float
returning the layer's raw share, and `allocate` turns shares into exact integer counts that never
exceed a layer's room and always sum to the total. Register your own with
`itop.register_redistribution("name")`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor

from .registry import Registry
from .shards import count, masked_sum

RedistributeFn = Callable[..., float]
REDISTRIBUTE: Registry[RedistributeFn] = Registry("redistribution criterion")


def _mean_over(values: Tensor, mask: Tensor) -> float:
    active = count(mask)
    return masked_sum(values, mask) / active if active else 0.0


@REDISTRIBUTE.register("none")
def none(weight: Tensor, mask: Tensor, *, removed: int, **_) -> float:
    """Each layer gets back what it lost (the allocation keeps per-layer counts)."""
    return float(removed)


@REDISTRIBUTE.register("magnitude")
def magnitude(weight: Tensor, mask: Tensor, **_) -> float:
    """Share proportional to the mean |w| of the layer's remaining active weights."""
    return _mean_over(weight.abs(), mask)


@REDISTRIBUTE.register("nonzeros")
def nonzeros(weight: Tensor, mask: Tensor, **_) -> float:
    """Share proportional to the layer's remaining active count."""
    return float(count(mask))


@REDISTRIBUTE.register("momentum")
def momentum(weight: Tensor, mask: Tensor, *, grad_average: Tensor | None = None, **_) -> float:
    """Share proportional to the mean |running gradient average| over the active weights."""
    if grad_average is None:
        raise ValueError(
            "momentum redistribution needs a running gradient average; it is kept automatically when redistribution='momentum'."
        )
    return _mean_over(grad_average.abs(), mask)


def _usable(share: float) -> float:
    """A share as a weight: negative or non-finite shares (NaN gradients, say) count as zero."""
    share = float(share)
    return share if math.isfinite(share) and share > 0 else 0.0


def allocate(total: int, shares: Sequence[float], room: Sequence[int]) -> list[int]:
    """Split `total` into integers proportional to `shares`, each at most its `room`.

    Largest remainders (ties to the lower index) make the sum exact; a layer that fills up passes
    its excess to the layers with room left, in proportion to their shares. Layers with a zero
    (or negative, or non-finite) share get weights only when no layer with a positive share has room.
    """
    if total > sum(room):
        raise ValueError(f"cannot place {total} weights in layers with room for {sum(room)}.")
    counts = [0] * len(shares)
    remaining = total
    while remaining > 0:
        open_ = [i for i, r in enumerate(room) if counts[i] < r]
        weights = {i: _usable(shares[i]) for i in open_}
        if not any(weights.values()):
            weights = {i: 1.0 for i in open_}
        weight_sum = sum(weights.values())
        ideal = {i: remaining * w / weight_sum for i, w in weights.items()}
        given = 0
        for i, x in ideal.items():
            add = min(math.floor(x), room[i] - counts[i])
            counts[i] += add
            given += add
        if given == 0:
            order = sorted(ideal, key=lambda i: (-(ideal[i] - math.floor(ideal[i])), i))
            for i in order[:remaining]:
                if counts[i] < room[i] and weights[i] > 0:
                    counts[i] += 1
                    given += 1
        remaining -= given
    return counts


def prune_limits(
    nnz: Sequence[int], sizes: Sequence[int], rate: float, *, own_count: bool, grows: bool, per_layer: bool
) -> tuple[list[int], list[int]]:
    """How many active weights each layer may lose now, and its room to grow (inactive count).

    k_i = ceil(rate * nnz_i), or every active weight for a criterion that sets its own count
    (`fn.own_count = True`, like `threshold`). Prune-only runs take k_i as is. When each layer
    regrows its own losses, k_i is at most the layer's room (pruned weights are not regrown at
    once, so an ERK-dense layer stays dense). When growth is redistributed, only the total must
    fit the room of all layers; the counts are cut back, in proportion, only if it does not.
    """
    room = [size - c for size, c in zip(sizes, nnz)]
    wanted = list(nnz) if own_count else [math.ceil(rate * c) for c in nnz]
    if not grows:
        return wanted, room
    if per_layer:
        return [min(w, r) for w, r in zip(wanted, room)], room
    if sum(wanted) <= sum(room):
        return wanted, room
    return allocate(sum(room), wanted, wanted), room
