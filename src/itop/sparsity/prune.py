"""Which active weights to drop at a topology update.

A prune criterion is a pure function
    fn(weight, mask, k, *, grad=None, **options) -> new_mask
taking a layer's weight, its bool mask and the number k of active weights to remove, and
returning the mask with exactly k active entries switched off. A criterion with its own rule for
the count, like `threshold`, sets `fn.own_count = True`: it is then passed as k the most it may
remove, and removes at most that. Register your own with `itop.register_prune("name")`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .registry import Registry
from .select import bottom_k_mask, count

PruneFn = Callable[..., Tensor]
PRUNE: Registry[PruneFn] = Registry("prune criterion")


def _drop(mask: Tensor, removed: Tensor) -> Tensor:
    return mask & ~removed


@PRUNE.register("magnitude")
def magnitude(weight: Tensor, mask: Tensor, k: int, **_) -> Tensor:
    """Remove the k active weights of smallest |w| (RigL, SET-ITOP)."""
    return _drop(mask, bottom_k_mask(weight.abs(), k, mask))


@PRUNE.register("set")
def set_signed(weight: Tensor, mask: Tensor, k: int, **_) -> Tensor:
    """SET's rule (Mocanu et al. 2018): remove the same share of each sign, the smallest positive
    weights and the negative weights closest to zero.

    The k removals are split in proportion to the active positive and negative counts (rounded half
    up), so pruning k = ceil(zeta * nnz) removes the fraction zeta of each sign, as the SET code's
    two percentiles do. When one sign runs short the other makes up the difference, so the count
    is always exactly k. Active weights that are exactly zero count as positive.
    """
    positive = mask & (weight >= 0)
    negative = mask & (weight < 0)
    n_pos, n_neg = count(positive), count(negative)
    active = max(1, n_pos + n_neg)
    k_pos = min(n_pos, (2 * k * n_pos + active) // (2 * active))
    k_neg = min(n_neg, k - k_pos)
    k_pos = k - k_neg
    removed = bottom_k_mask(weight, k_pos, positive)
    removed |= bottom_k_mask(-weight, k_neg, negative)
    return _drop(mask, removed)


@PRUNE.register("threshold")
def threshold(weight: Tensor, mask: Tensor, k: int, *, threshold: float = 1e-3, **_) -> Tensor:
    """Remove every active weight with |w| < threshold; the prune rate plays no part.

    k is only the most the layer can lose and still grow back (its room); when more weights lie
    below the threshold, the k smallest go.
    """
    below = mask & (weight.abs() < threshold)
    count_below = min(k, count(below))
    return _drop(mask, bottom_k_mask(weight.abs(), count_below, below))


threshold.own_count = True  # the sparsifier passes the most it may remove, not ceil(rate * nnz)
