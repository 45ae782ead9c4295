"""`ShardedStorage`: a masked weight that FSDP2 (`fully_shard`) split across ranks.

The weight is a DTensor sharded on its first dimension; its mask is the local shard only, a bool
tensor shaped like this rank's rows, and the criteria see both as DTensors of the weight's mesh
and placements, so the selections in `select` run across shards (`shards`) and the topology is
the one a single process would choose. Everything a step does (the gradient multiply, the
optimizer state zeroing) acts on local shards; counts are all-reduced, so `nnz` is the layer's
global count on every rank.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import shards
from .storage import MaskedStorage
from .truly_sparse import state_tensors


class ShardedStorage(MaskedStorage):
    """A DTensor parameter (FSDP2, `Shard(0)`) and the local shard of its mask."""

    def __init__(self, name: str, param: Tensor, module=None):
        shards.check_layout(name, param)
        super().__init__(name, param, None)  # no sparse Linear kernels on shards
        self.mask = torch.ones(shards.local(param).shape, dtype=torch.bool, device=param.device)
        self.nnz = param.numel()

    @property
    def active(self) -> Tensor:
        return shards.like(self.mask, self.param)

    def topology(self) -> Tensor:
        return self.active

    @property
    def shared_mask(self) -> Tensor:
        return self.active

    def set_mask(self, mask: Tensor) -> None:
        """Take a DTensor mask's local shard (a full-size mask: this rank's rows of it)."""
        mine = shards.local_like(mask, self.param)
        self.mask = mine.to(device=shards.local(self.param).device, dtype=torch.bool).contiguous()
        self.nnz = shards.count(self.active)

    def refresh(self) -> None:
        self.multiplier = self.mask.to(shards.local(self.param).dtype)

    def follows(self) -> bool:
        mine = shards.local(self.param)
        return self.multiplier is not None and mine.device == self.multiplier.device and mine.dtype == self.multiplier.dtype

    def replace(self, kept: Tensor, grown: Tensor, nnz: int) -> None:
        """The new local mask; every rank must have applied its part of the same decision."""
        self.mask = shards.local(kept | grown).contiguous()
        self.nnz = shards.count(self.active)
        if self.nnz != nnz:
            raise RuntimeError(
                f"the ranks took different sparse decisions at {self.name} ({self.nnz} active weights, {nnz} expected): every rank "
                "must build the Sparsifier with the same seed and call it on every step."
            )

    @torch.no_grad()
    def restart(self, positions: Tensor, optimizer: torch.optim.Optimizer) -> None:
        positions = shards.local(positions)
        shards.local(self.param).masked_fill_(positions, 0)
        for tensor in state_tensors(optimizer, self.param).values():
            shards.local(tensor).masked_fill_(positions, 0)

    @torch.no_grad()
    def mask_state(self, optimizer: torch.optim.Optimizer) -> None:
        inactive = None
        for tensor in state_tensors(optimizer, self.param).values():
            inactive = ~self.mask if inactive is None else inactive
            shards.local(tensor).masked_fill_(inactive, 0)

    def grad_looks_masked(self, grad: Tensor | None) -> bool | None:
        if grad is None or self.nnz == self.numel:
            return None
        return not shards.any_true(shards.like(shards.local(grad) * ~self.mask, self.param))

    def use_kernels(self, wanted: bool):
        return None

    @torch.no_grad()
    def scale_for_fan_in(self) -> None:
        shards.local(self.param).mul_(1.0 / (self.nnz / self.numel) ** 0.5)
