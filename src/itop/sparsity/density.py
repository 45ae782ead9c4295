"""How a global density D is split over the sparse layers: uniform, ER and ERK.

ERK (Evci et al. 2020, "Rigging the Lottery", section 3) gives layer i a density proportional to
s_i = sum(shape_i) / prod(shape_i); ER (Mocanu et al. 2018) uses the same formula with the kernel
dimensions left out. Both are capped as in the RigL code and the original ITOP core: while the
largest eps*s_i exceeds 1, every layer sharing that largest score becomes dense and eps is solved
again for the rest, so that sum_i d_i N_i = D * sum_i N_i holds exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from .registry import Registry

Shapes = Mapping[str, Sequence[int]]
DensityFn = Callable[[Shapes, float], dict[str, float]]

DISTRIBUTIONS: Registry[DensityFn] = Registry("distribution")


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


@DISTRIBUTIONS.register("uniform")
def uniform(shapes: Shapes, density: float) -> dict[str, float]:
    """Every layer at the global density."""
    return {name: density for name in shapes}


def capped_scaling(shapes: Shapes, density: float, scores: Mapping[str, float]) -> dict[str, float]:
    """Layer densities eps*s_i with the dense-set capping loop (exact float ties go dense together)."""
    dense: set[str] = set()
    while True:
        sparse = [n for n in shapes if n not in dense]
        if not sparse:
            return {n: 1.0 for n in shapes}
        rhs = sum(density * _numel(shapes[n]) for n in sparse) - sum((1 - density) * _numel(shapes[n]) for n in dense)
        divisor = sum(scores[n] * _numel(shapes[n]) for n in sparse)
        eps = rhs / divisor
        top = max(scores[n] for n in sparse)
        if eps * top <= 1:
            return {n: 1.0 if n in dense else eps * scores[n] for n in shapes}
        dense.update(n for n in sparse if scores[n] == top)


@DISTRIBUTIONS.register("erk")
def erdos_renyi_kernel(shapes: Shapes, density: float) -> dict[str, float]:
    """ERK: s_i = sum of all dimensions / number of weights, kernel dimensions included."""
    scores = {n: sum(s) / _numel(s) for n, s in shapes.items()}
    return capped_scaling(shapes, density, scores)


@DISTRIBUTIONS.register("er")
def erdos_renyi(shapes: Shapes, density: float) -> dict[str, float]:
    """ER: s_i = (fan_out + fan_in) / (fan_out * fan_in), kernel dimensions left out."""
    return capped_scaling(shapes, density, {n: _er_score(s) for n, s in shapes.items()})


def _er_score(shape: Sequence[int]) -> float:
    out_in = list(shape[:2]) if len(shape) >= 2 else [shape[0]]
    return sum(out_in) / _numel(out_in)


def er_epsilon_density(shapes: Shapes, epsilon: float) -> float:
    """The global density of SET's Erdős–Rényi layers (Mocanu et al. 2018): layer i keeps
    epsilon * (fan_in + fan_out) weights (its ER score times epsilon, capped at dense).

    `erdos_renyi` at this density gives back exactly these layers: the capping loop makes dense
    precisely the layers with epsilon * s_i > 1 and solves eps = epsilon for the rest.
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon!r}.")
    scores = {n: _er_score(s) for n, s in shapes.items()}
    active = sum(min(1.0, epsilon * scores[n]) * _numel(s) for n, s in shapes.items())
    return active / sum(_numel(s) for s in shapes.values())


def layer_counts(shapes: Shapes, densities: Mapping[str, float]) -> dict[str, int]:
    """Exact active counts round(d_i * N_i), at least one weight per layer and at most N_i."""
    counts = {}
    for name, shape in shapes.items():
        n = _numel(shape)
        counts[name] = min(n, max(1, round(densities[name] * n)))
    return counts
