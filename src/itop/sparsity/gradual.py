"""Gradual pruning, dense to sparse: Zhu & Gupta's cubic schedule (arXiv 1710.01878).

Between `prune_start` and `prune_end` (optimizer steps) each layer's active count falls from its
initial count c_i to its final count c_f as

    c_t = c_f + round((c_i - c_f) * (1 - p)^3),   p = (t - prune_start) / (prune_end - prune_start) in [0, 1],

evaluated at every topology update t, so it prunes fast while many redundant weights remain and
slowly near the end (Zhu & Gupta write it for the sparsity s_t = s_f + (s_i - s_f)(1 - p)^3; the
counts are that sparsity per layer). From the first update at or after `prune_end` on, every layer
holds exactly its final count. The final counts are the distribution's at the final density, the
initial ones at `initial_density` (1.0: dense). With `grow="none"` this is gradual magnitude
pruning (GMP); with regrowth, each update also replaces a share of the remaining weights, as
GraNet's zero-cost neuroregeneration (Liu et al., NeurIPS 2021) does after its pruning step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .arguments import is_int, is_real
from .density import layer_counts


@dataclass(frozen=True)
class GradualPruning:
    """The cubic schedule of each layer's count between `start` and `end` (optimizer steps)."""

    initial_density: float
    start: int
    end: int
    initial: dict[str, int]  # each layer's count at the start
    final: dict[str, int]  # each layer's count from the end on

    def progress(self, step: int) -> float:
        if step >= self.end:
            return 1.0
        return max(0.0, (step - self.start) / (self.end - self.start))

    def targets(self, step: int) -> dict[str, int]:
        """Each layer's active count after the update at optimizer step `step`."""
        remaining = (1.0 - self.progress(step)) ** 3
        return {name: final + math.floor((self.initial[name] - final) * remaining + 0.5) for name, final in self.final.items()}

    def prune(self, storages, rule, grads, step: int) -> int:
        """Prune each storage (in layer order) down to its count at `step` with the prune `rule`
        (magnitude or SET's, reading `grads` where it asks); returns how many weights went."""
        removed = 0
        for storage, target in zip(storages, self.targets(step).values()):
            if storage.nnz > target:
                before = storage.nnz
                storage.shrink(storage.prune(rule, before - target, grads.get(storage.name)))
                removed += before - storage.nnz
        return removed


def gradual_schedule(config, storages, distribution, prune, per_layer: bool) -> GradualPruning | None:
    """The cubic schedule from the storages' current counts to the distribution's counts at the
    final density (None when `config` asks for no gradual pruning); refuses (one-line ValueError)
    criteria that cannot follow it."""
    if "initial_density" not in config:
        return None
    if getattr(prune, "own_count", False) or not per_layer:
        raise ValueError(
            "gradual pruning lowers each layer's count on its schedule; use a prune criterion that removes a given number "
            "(magnitude or set) and redistribution='none'."
        )
    shapes = {n: s.shape for n, s in storages.items()}
    final = layer_counts(shapes, distribution(shapes, config["density"]))
    initial = {n: s.nnz for n, s in storages.items()}
    return GradualPruning(config["initial_density"], config["prune_start"], config["prune_end"], initial, final)


def check_gradual(initial_density, density: float, prune_start, prune_end, update_frequency, total_steps: int) -> None:
    """One-line ValueErrors for a gradual schedule that cannot run as asked."""
    if not is_real(initial_density) or not density <= initial_density <= 1:
        raise ValueError(f"initial_density must be a number in [density, 1] (here [{density}, 1]), got {initial_density!r}.")
    if update_frequency is None:
        raise ValueError("gradual pruning lowers the density at topology updates; give update_frequency (steps between updates).")
    if not is_int(prune_start) or not is_int(prune_end) or not 0 <= prune_start < prune_end <= total_steps:
        raise ValueError(
            f"prune_start and prune_end must be optimizer steps with 0 <= prune_start < prune_end <= total_steps={total_steps}, "
            f"got {prune_start!r} and {prune_end!r}."
        )
    last = -(-prune_end // update_frequency) * update_frequency  # the first update at or after prune_end
    if last > total_steps:
        raise ValueError(
            f"no topology update falls between prune_end={prune_end} and the run's end ({total_steps} steps, an update every "
            f"{update_frequency}), so the final density would never be reached; lower prune_end or update_frequency."
        )
