"""The index structures of a truly sparse weight, built from its active positions alone.

A weight of shape (out_features, in_features) with nnz active entries is described by `positions`:
the sorted flat row-major indices of those entries (int64, so layers of more than 2**31 positions
work). Everything the products need is derived from it in O(nnz + out + in) memory, never from a
tensor of the dense shape:

- CSR of the weight (`crow`, `col`): the forward product and the weight gradient, whose values are
  the values vector itself, as the positions are sorted row-major;
- CSR of the transposed weight, and the order that takes the values vector to it: the input
  gradient on PyTorch's path (built on first use).

Column and row indices are int32 when every count fits (half the memory traffic of int64, and
MKL's sparse products take them), int64 otherwise.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

_INT32_LIMIT = 2**31 - 1

with warnings.catch_warnings():  # PyTorch's once-per-process "CSR support is in beta" notice, spent here
    warnings.simplefilter("ignore", UserWarning)
    torch.sparse_csr_tensor(torch.tensor([0, 0]), torch.tensor([], dtype=torch.int64), torch.tensor([]), (1, 1))


def _pointers(groups: Tensor, count: int, dtype: torch.dtype) -> Tensor:
    """Compressed pointers: entry i is the number of sorted `groups` entries below i."""
    pointers = torch.zeros(count + 1, dtype=torch.int64, device=groups.device)
    pointers[1:] = torch.bincount(groups, minlength=count).cumsum(0)
    return pointers.to(dtype)


class SparseStructure:
    """CSR and transposed-CSR indices of one sparse weight (see the module docstring)."""

    def __init__(self, positions: Tensor, shape: tuple[int, int]):
        out_features, in_features = shape
        self.shape = (int(out_features), int(in_features))
        self.positions = positions
        nnz = positions.numel()
        self.index_dtype = torch.int32 if max(nnz, out_features, in_features) <= _INT32_LIMIT else torch.int64
        rows = positions.div(in_features, rounding_mode="floor")
        cols = positions - rows * in_features
        self.crow = _pointers(rows, out_features, self.index_dtype)
        self.col = cols.to(self.index_dtype)
        self._transposed: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def nnz(self) -> int:
        return self.positions.numel()

    def arrays(self) -> tuple:
        """(crow, col) as numpy views, made once (the numba kernels take numpy arrays; a view costs
        a microsecond a call, paid here once per topology)."""
        if getattr(self, "_arrays", None) is None:
            self._arrays = (self.crow.numpy(), self.col.numpy())
        return self._arrays

    def transposed_arrays(self) -> tuple:
        """`transposed_indices()` as numpy views, made once."""
        if getattr(self, "_transposed_arrays", None) is None:
            self._transposed_arrays = tuple(index.numpy() for index in self.transposed_indices())
        return self._transposed_arrays

    def matrix(self, values: Tensor) -> Tensor:
        """The weight as a torch CSR tensor with these values (no copy of the indices or values).

        The tensor shares the values' memory, so it stays current through in-place optimizer
        updates; it is kept for the next call with the same values (a few microseconds a layer)."""
        key = (values.data_ptr(), values.dtype, values.device, values.numel())
        if getattr(self, "_matrix_key", None) != key:
            self._matrix = torch.sparse_csr_tensor(self.crow, self.col, values.detach(), self.shape, check_invariants=False)
            self._matrix_key = key
        return self._matrix

    def transposed_indices(self) -> tuple[Tensor, Tensor, Tensor]:
        """(order, ccol, row_t): the CSR of the transposed weight, and the order that takes the
        values vector to it, built on first use (the input gradient's products read them)."""
        if self._transposed is None:
            rows = self.positions.div(self.shape[1], rounding_mode="floor")
            cols = self.positions - rows * self.shape[1]
            order = torch.sort(cols, stable=True).indices  # stable: rows stay ascending inside each column
            self._transposed = (order, _pointers(cols[order], self.shape[1], self.index_dtype), rows[order].to(self.index_dtype))
        return self._transposed

    def cached(self, name: str, key: tuple, build: Callable[[], object]) -> object:
        """`build()` kept under (name, key) for this structure's lifetime: the index arrays a kernel
        derives from the positions for one input size (a topology update makes a new structure)."""
        cache = self.__dict__.setdefault("_derived", {})
        if (name, key) not in cache:
            cache[(name, key)] = build()
        return cache[(name, key)]

    def transposed_matrix(self, values: Tensor) -> Tensor:
        """The transposed weight (in_features x out_features) as a CSR tensor. Its indices (and the
        order taking the values to it) are built on first use: only PyTorch's input-gradient
        product reads them, so inference, the masked kernels and the numba path never pay the sort."""
        order, ccol, row_t = self.transposed_indices()
        return torch.sparse_csr_tensor(ccol, row_t, values.index_select(0, order), (self.shape[1], self.shape[0]), check_invariants=False)
