"""Which inactive weights to add back at a topology update.

A grow criterion is a pure function
    fn(candidates, k, *, weight, grad, grad_average, generator, **options) -> grown
taking the bool mask of positions allowed to grow (inactive before the update and not pruned in
it) and returning a bool mask of exactly k of them. Register your own with
`itop.register_grow("name")`. A criterion that also works with `Sparsifier(structure=...)` has a
`scores(weight=, grad=, grad_average=, generator=)` attribute: a score per position, which the
structured engine ranks within each row or N:M group.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import index_growth
from .registry import Registry
from .select import random_k_mask, top_k_mask

GrowFn = Callable[..., Tensor]
GROW: Registry[GrowFn] = Registry("grow criterion")


def _need(tensor: Tensor | None, what: str, criterion: str) -> Tensor:
    if tensor is None:
        raise ValueError(f"{criterion} growth needs {what}, and none was available; call update_topology() after loss.backward().")
    return tensor


@GROW.register("random")
def random(candidates: Tensor, k: int, *, generator: torch.Generator, **_) -> Tensor:
    """SET: k candidates uniformly at random (CPU generator, so every device draws the same)."""
    return random_k_mask(candidates, k, generator)


@GROW.register("gradient")
def gradient(candidates: Tensor, k: int, *, grad: Tensor | None = None, **_) -> Tensor:
    """RigL: the k candidates with the largest dense-gradient magnitude."""
    return top_k_mask(_need(grad, "a dense gradient", "gradient").abs(), k, candidates)


@GROW.register("momentum")
def momentum(candidates: Tensor, k: int, *, grad_average: Tensor | None = None, **_) -> Tensor:
    """Sparse momentum: the k candidates with the largest running average of dense gradients."""
    score = _need(grad_average, "a running gradient average", "momentum").abs()
    return top_k_mask(score, k, candidates)


@GROW.register("none")
def none(candidates: Tensor, k: int, **_) -> Tensor:
    """Grow nothing: updates only prune, so the density shrinks (gradual pruning)."""
    return torch.zeros_like(candidates)


# The score forms that structured sparsity ranks within each block (`structured.py`): a score per
# position of the weight, larger grows first.
random.scores = lambda weight, generator, **_: torch.rand(weight.shape, generator=generator).to(weight.device)
gradient.scores = lambda grad=None, **_: _need(grad, "a dense gradient", "gradient").abs()
momentum.scores = lambda grad_average=None, **_: _need(grad_average, "a running gradient average", "momentum").abs()

# The index-space forms that drive truly sparse layers (`index_growth.py`).
random.positions = index_growth.random_positions
gradient.positions = index_growth.gradient_positions
momentum.positions = index_growth.momentum_positions
none.positions = index_growth.no_positions
