"""When to update the topology, and what share of each layer's weights to replace.

The prune rate follows the original's cosine decay (a CosineAnnealingLR on a dummy optimizer
there, the closed form here): r_t = r_min + (r_0 - r_min) * (1 + cos(pi * t / T)) / 2, with t the
number of completed optimizer steps and T the run's length; after T it stays at r_min.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CosineSchedule:
    prune_rate: float
    update_frequency: int | None
    total_steps: int
    final_rate: float = 0.005

    def rate(self, step: int) -> float:
        """Prune rate for an update after `step` completed optimizer steps."""
        t = min(step, self.total_steps)
        cosine = (1 + math.cos(math.pi * t / self.total_steps)) / 2
        return self.final_rate + (self.prune_rate - self.final_rate) * cosine

    def is_update(self, step: int) -> bool:
        """True when the topology changes after optimizer step number `step` (counted from 1)."""
        return self.update_frequency is not None and step > 0 and step % self.update_frequency == 0
