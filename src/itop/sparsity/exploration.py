"""The In-Time Over-Parameterization rate Rs (Liu et al. 2021, arXiv 2102.02887, section 4).

Rs is the share of all sparse weights that have been active at some point: in the initial mask
or in the mask after any topology update. It starts at the density, never decreases, and stays at
the density when the topology is static.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor


class Exploration:
    """Per-layer union of every mask seen so far, with counts kept as Python ints."""

    def __init__(self, masks: Mapping[str, Tensor]):
        self.explored = {name: mask.clone() for name, mask in masks.items()}
        self.counts = {name: int(torch.count_nonzero(mask)) for name, mask in masks.items()}
        self.sizes = {name: mask.numel() for name, mask in masks.items()}

    def update(self, masks: Mapping[str, Tensor]) -> None:
        """Add the current masks to the explored set (call after each topology update)."""
        for name, mask in masks.items():
            self.explored[name] |= mask
            self.counts[name] = int(torch.count_nonzero(self.explored[name]))

    @property
    def rate(self) -> float:
        return sum(self.counts.values()) / sum(self.sizes.values())

    def layer_rate(self, name: str) -> float:
        return self.counts[name] / self.sizes[name]

    def to(self, devices: Mapping[str, torch.device]) -> None:
        """Move each layer's explored set to its parameter's device."""
        self.explored = {name: mask.to(devices[name]) for name, mask in self.explored.items()}

    def state_dict(self) -> dict[str, Tensor]:
        return {name: mask.clone() for name, mask in self.explored.items()}

    def load_state_dict(self, explored: Mapping[str, Tensor]) -> None:
        for name, mask in explored.items():
            self.explored[name] = mask.to(device=self.explored[name].device, dtype=torch.bool).clone()
            self.counts[name] = int(torch.count_nonzero(self.explored[name]))
