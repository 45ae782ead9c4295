"""Where each active tap's window starts in zero-padded planes: the index arrays that the stride-1
convolution kernels read (`conv_kernels`' wide forms and the blocked way), computed once per
padded size and kept on the layer's structure."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .structure import SparseStructure

if TYPE_CHECKING:
    from .conv_ops import ConvGeometry


def tap_coordinates(geometry: ConvGeometry, structure: SparseStructure) -> tuple[np.ndarray, ...]:
    """Per active tap (in CSR order): its output channel, its input channel (over all groups) and
    its kernel row and column."""
    kh, kw = geometry.kernel
    crow, col = (a.astype(np.int64) for a in structure.arrays())
    rows = np.repeat(np.arange(len(crow) - 1), np.diff(crow))
    channel, tap = np.divmod(col, kh * kw)
    i, j = np.divmod(tap, kw)
    channel += rows // (geometry.out_channels // geometry.groups) * (geometry.in_channels // geometry.groups)
    return rows, channel, i, j


def wide_sources(geometry: ConvGeometry, structure: SparseStructure, padded_h: int, padded_w: int) -> np.ndarray:
    """Per active tap, where its window starts in an image's zero-padded planes at stride 1:
    input channel * plane size + i * dilation * row length + j * dilation. Kept per padded size on
    the structure (a few nnz-sized arrays)."""

    def build() -> np.ndarray:
        (dh, dw), (_, channel, i, j) = geometry.dilation, tap_coordinates(geometry, structure)
        return _compact(channel * (padded_h * padded_w) + i * dh * padded_w + j * dw)

    return structure.cached("wide_sources", (padded_h, padded_w), build)


def _compact(index: np.ndarray) -> np.ndarray:
    """An index array in int32 where its values fit (half the memory of int64)."""
    return index.astype(np.int32) if index.size == 0 or int(index.max()) < 2**31 else index


def wide_gather(geometry: ConvGeometry, structure: SparseStructure, padded_h: int, padded_w: int, out_h: int) -> tuple:
    """For the stride-1 input gradient: the taps grouped by the input channel they read (`starts`
    pointers over `order`, indices into the values), each tap's window start in the output
    gradient's wide rows (`bases`), and the rows' zero margin. Kept per size on the structure."""

    def build() -> tuple:
        (kh, kw), (dh, dw) = geometry.kernel, geometry.dilation
        margin = (kh - 1) * dh * padded_w + (kw - 1) * dw
        rows, channel, i, j = tap_coordinates(geometry, structure)
        order = np.argsort(channel, kind="stable")
        starts = np.zeros(geometry.in_channels + 1, dtype=np.int64)
        starts[1:] = np.cumsum(np.bincount(channel, minlength=geometry.in_channels))
        length = out_h * padded_w + 2 * margin
        bases = (rows * length + margin - (i * dh * padded_w + j * dw))[order]
        return starts, _compact(order), _compact(bases), margin

    return structure.cached("wide_gather", (padded_h, padded_w, out_h), build)
