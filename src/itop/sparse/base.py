"""What every truly sparse layer shares: active weights held as `values` (the parameter) at sorted
flat `indices` (a buffer) over the dense weight's shape, and the state handling around them.

A subclass sets `weight_shape` (the dense weight's shape) and builds its index structures from
`indices` on demand (`_structure` is reset whenever the positions change).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def fresh_generator() -> torch.Generator:
    """A generator seeded from torch's global one, so `torch.manual_seed` makes layers repeatable."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))


class SparseWeights(nn.Module):
    """Base of the truly sparse layers (see the module docstring)."""

    indices: Tensor
    values: nn.Parameter
    weight_shape: tuple[int, ...]
    _structure = None
    _recorder = None

    @property
    def nnz(self) -> int:
        return self.indices.numel()

    @property
    def density(self) -> float:
        return self.nnz / math.prod(self.weight_shape)

    def weight_indices(self) -> Tensor:
        """The flat row-major positions of the active weights, in the order of `values`."""
        return self.indices

    @classmethod
    def _holding(cls, positions: Tensor, values: Tensor, bias: Tensor | None):
        """A layer of this class (its shape still to set) holding `values` at the sorted, distinct
        flat `positions` (and `bias`) as trainable parameters."""
        if positions.numel() == 0:
            raise ValueError(f"no active weight given; a {cls.__name__} needs at least one.")
        if positions.shape != values.shape or positions.dim() != 1:
            raise ValueError("positions and values must be 1-D tensors of the same length.")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.register_buffer("indices", positions.to(device=values.device, dtype=torch.int64))
        layer.values = nn.Parameter(values.detach())
        layer.bias = None if bias is None else nn.Parameter(bias.detach())
        return layer

    @classmethod
    def from_dense(cls, module: nn.Module, mask: Tensor):
        """The truly sparse layer holding `module`'s weights where `mask` is True (its bias too)."""
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not match the weight's {tuple(module.weight.shape)}.")
        return cls.from_positions(module, torch.nonzero(mask.reshape(-1)).squeeze(1))

    @torch.no_grad()
    def set_positions(self, positions: Tensor, values: Tensor) -> None:
        """Replace the active positions (sorted, distinct) and their values in place: the `values`
        parameter stays the same object (optimizers keep holding it), its data is swapped."""
        if positions.shape != values.shape or positions.dim() != 1:
            raise ValueError("positions and values must be 1-D tensors of the same length.")
        self.indices = positions.to(device=self.indices.device, dtype=torch.int64)
        self.values.data = values.to(device=self.values.device, dtype=self.values.dtype)
        self.values.grad = None
        self._structure = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        """A saved layer may hold another number of active weights (redistribution moves them
        between layers): take the saved sizes before the values are copied in."""
        indices, values = state_dict.get(prefix + "indices"), state_dict.get(prefix + "values")
        if isinstance(indices, Tensor) and isinstance(values, Tensor) and indices.shape == values.shape and indices.dim() == 1:
            with torch.no_grad():
                self.indices = torch.empty_like(indices, device=self.indices.device)
                self.values.data = torch.empty(values.shape, dtype=self.values.dtype, device=self.values.device)
            self._structure = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def _apply(self, fn, *args, **kwargs):
        result = super()._apply(fn, *args, **kwargs)
        self._structure = None  # indices may have moved to another device
        return result

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_structure"] = None  # derived; rebuilt on first use
        state["_recorder"] = None  # a copy is no longer driven by the sparsifier that recorded for it
        return state
