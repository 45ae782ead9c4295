"""When to update the topology, and what share of each layer's weights to replace.

The prune rate follows the original's cosine decay by default (a CosineAnnealingLR on a dummy
optimizer there, the closed form here): r_t = r_min + (r_0 - r_min) * (1 + cos(pi * t / T)) / 2,
with t the number of completed optimizer steps and T the run's length; after T it stays at r_min.
`linear` decays in a straight line from r_0 to r_min over T steps, `constant` keeps r_0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DECAYS = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class PruneSchedule:
    prune_rate: float
    update_frequency: int | None
    total_steps: int
    final_rate: float = 0.005
    decay: str = "cosine"

    def __post_init__(self):
        if self.decay not in DECAYS:
            raise ValueError(f"unknown decay schedule {self.decay!r}; choose one of {', '.join(DECAYS)}.")

    def rate(self, step: int) -> float:
        """Prune rate for an update after `step` completed optimizer steps."""
        progress = min(step, self.total_steps) / self.total_steps
        if self.decay == "cosine":
            remaining = (1 + math.cos(math.pi * progress)) / 2
        elif self.decay == "linear":
            remaining = 1 - progress
        else:
            remaining = 1.0
        return self.final_rate + (self.prune_rate - self.final_rate) * remaining

    def is_update(self, step: int) -> bool:
        """True when the topology changes after optimizer step number `step` (counted from 1)."""
        return self.update_frequency is not None and step > 0 and step % self.update_frequency == 0
