"""The In-Time Over-Parameterization rate Rs (Liu et al. 2021, arXiv 2102.02887, section 4).

Rs is the share of all sparse weights that have been active at some point: in the initial mask
or in the mask after any topology update. It starts at the density, never decreases, and stays at
the density when the topology is static.

A masked layer's explored set is a bool tensor of its shape; a truly sparse layer's is the sorted
int64 tensor of its ever-active flat positions, which grows with what was explored, never with
the layer (a 333,000 x 333,000 layer has 1.1e11 positions).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .shards import count, is_sharded, like, local_like


def _is_positions(explored: Tensor) -> bool:
    return explored.dtype != torch.bool


class Exploration:
    """Per-layer union of every mask (or set of active positions) seen so far, with counts kept as
    Python ints. `sizes` gives each layer's number of positions (needed for position sets)."""

    def __init__(self, active: Mapping[str, Tensor], sizes: Mapping[str, int] | None = None):
        self.explored = {name: t.clone() for name, t in active.items()}
        self.counts = {name: self._count(t) for name, t in self.explored.items()}
        self.sizes = {name: (sizes[name] if sizes is not None else t.numel()) for name, t in active.items()}

    @staticmethod
    def _count(explored: Tensor) -> int:
        return explored.numel() if _is_positions(explored) else count(explored)

    def update(self, active: Mapping[str, Tensor]) -> None:
        """Add the current masks or positions to the explored set (call after each topology update)."""
        for name, now in active.items():
            seen = self.explored[name]
            if _is_positions(seen):
                self.explored[name] = torch.unique(torch.cat([seen, now.to(seen.device, torch.int64)]))
            else:
                seen |= now
            self.counts[name] = self._count(self.explored[name])

    @property
    def rate(self) -> float:
        return sum(self.counts.values()) / sum(self.sizes.values())

    def layer_rate(self, name: str) -> float:
        return self.counts[name] / self.sizes[name]

    def to(self, devices: Mapping[str, torch.device]) -> None:
        """Move each masked layer's explored set to its parameter's device (position sets stay on the CPU)."""
        self.explored = {name: t.to(devices[name]) if name in devices else t for name, t in self.explored.items()}

    def state_dict(self) -> dict[str, Tensor]:
        return {name: t.clone() for name, t in self.explored.items()}

    def load_state_dict(self, explored: Mapping[str, Tensor]) -> None:
        for name, saved in explored.items():
            mine = self.explored[name]
            if _is_positions(mine):
                self.explored[name] = saved.to(device=mine.device, dtype=torch.int64).clone()
            elif is_sharded(mine):  # a sharded layer keeps its own shard of the saved set
                self.explored[name] = like(local_like(saved, mine).to(device=mine.device, dtype=torch.bool).clone(), mine)
            else:
                self.explored[name] = saved.to(device=mine.device, dtype=torch.bool).clone()
            self.counts[name] = self._count(self.explored[name])
