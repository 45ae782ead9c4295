"""The "blocked" way of `SparseConv2d` at stride 1: images in blocks of 16 to 64, innermost
(`blocked_kernels.py`).

The input is rearranged once per call into zero-padded (image blocks, channels, height, width,
lanes) planes; each active tap then multiplies contiguous windows that hold all the images of a
block, so small planes (8x8 down to 3x3, where the NCHW kernels' passes are a vector or two long)
compute in full vectors. The rearrangement costs a pass over the input and one over the output,
which large planes do not win back: `conv_dispatch` measures it beside the other ways per shape
class. The forward keeps the rearranged input for the weight gradient.

Wider blocks make each tap's pass longer, so its fixed cost (its value, window and the rows it
reads) is spread over more images: on VGG-C's 3x3 planes (512 channels, ERK 0.05) 64 images a
block ran the forward 1.5x and the backward 1.8x faster than 16 (AMD EPYC, AVX-512). But the
backward scatters each tap onto the input gradient's planes of its block and reads the input's,
at channels all over the block: past a few MB a block (64 images of VGG-C's 5x5 planes, 6.4 MB)
those miss the cache and the backward ran 0.89x. `lanes` takes the widest block that the batch
fills, within BLOCK_BYTES where a backward follows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import native
from .conv_windows import tap_coordinates, wide_sources
from .structure import SparseStructure

MIN_LANES, MAX_LANES = 16, 64  # images per block: one AVX-512 vector of float32 at least, four at most
BLOCK_BYTES = 4 << 20  # a block's padded input planes at most this size (see the module docstring)
MAX_PIXELS = 64  # output planes up to 8x8: where the blocked kernels beat the NCHW ones (they lost on every 16x16 and 32x32 layer measured)


def lanes(images: int, channels: int, padded_pixels: int, itemsize: int, train: bool = True) -> int:
    """Images per block for a batch of `images` whose padded input planes hold `channels` x
    `padded_pixels` values of `itemsize` bytes: the widest of 64 and 32 that makes at least two
    blocks (the backward's parts), whose blocks leave at most an eighth of the batch's lanes empty
    (100 images: 32 a block leaves 28, too many) and, where a backward will follow (`train`), whose
    block stays within BLOCK_BYTES; else 16. The forward alone only reads the block, and ran
    fastest on 64 images on every plane measured (VGG-C's 3x3 to 8x8: 1.16-1.54x over 16). It
    depends on the shapes alone, not on the threads, so the weight gradient's sums over the blocks
    are the same on any thread count."""
    for per_block in (MAX_LANES, MAX_LANES // 2):
        blocks = -(-images // per_block)
        fits = not train or per_block * channels * padded_pixels * itemsize <= BLOCK_BYTES
        if blocks >= 2 and (blocks * per_block - images) * 8 <= images and fits:
            return per_block
    return MIN_LANES


def pays(output_pixels: int, images: int) -> bool:
    """Whether the blocked kernels are the ones for an output plane of this size at this batch:
    small planes, and at least one whole block of the narrowest width."""
    return output_pixels <= MAX_PIXELS and images >= MIN_LANES


def usable(geometry) -> bool:
    """Stride 1 only: a strided tap's window is not contiguous."""
    return geometry.stride == (1, 1)


def _kernels():
    native.kernels()  # numba loaded and its threads set up, as for every numba kernel
    from . import blocked_kernels

    return blocked_kernels


def _padded_size(geometry, height: int, width: int) -> tuple[int, int]:
    top, bottom, left, right = geometry.padding
    return height + top + bottom, width + left + right


class Layout:
    """A layer's taps as the blocked kernels read them, for one padded input size: sorted within
    each output channel by kernel position (i, j), so that the taps reading one kernel position are
    a contiguous run (`groups`: pointers over output channel * kh * kw + i * kw + j) and a row or
    column of padding skips whole runs. `order` takes the values (and their gradient) to this order;
    `offsets` are where each tap's window starts in a block's flat padded planes, in values (the
    NCHW kernels' window start, `conv_windows.wide_sources`, times the block's lanes); `shape` holds
    (top, left, height, width, kh, kw, dh, dw) for the kernels."""

    def __init__(self, geometry, structure: SparseStructure, padded_h: int, padded_w: int, lanes: int):
        (kh, kw), (dh, dw), (top, bottom, left, right) = geometry.kernel, geometry.dilation, geometry.padding
        rows, _, i, j = tap_coordinates(geometry, structure)
        key = rows * (kh * kw) + i * kw + j
        self.order = np.argsort(key, kind="stable")
        self.groups = np.zeros(geometry.out_channels * kh * kw + 1, dtype=np.int64)
        self.groups[1:] = np.cumsum(np.bincount(key, minlength=geometry.out_channels * kh * kw))
        self.offsets = wide_sources(geometry, structure, padded_h, padded_w).astype(np.int64)[self.order] * lanes
        self.tap_rows, self.tap_columns = (i * dh)[self.order], (j * dw)[self.order]
        self.order_tensor = torch.from_numpy(self.order)
        height, width = padded_h - top - bottom, padded_w - left - right
        self.shape = np.array([top, left, height, width, kh, kw, dh, dw], dtype=np.int64)


def layout(geometry, structure: SparseStructure, blocked: Tensor) -> Layout:
    """The layer's `Layout` for this blocked input's padded size and lanes, kept on the structure."""
    padded_h, padded_w, per_block = blocked.shape[2:]
    return structure.cached(
        "blocked_layout", (padded_h, padded_w, per_block), lambda: Layout(geometry, structure, padded_h, padded_w, per_block)
    )


def _pool() -> None:
    _kernels()
    native._pool(native.configured_threads())


def empty_blocks(images: int, channels: int, height: int, width: int, dtype: torch.dtype, train: bool) -> Tensor:
    """An uninitialised (ceil(images / lanes), channels, height, width, lanes) array, `lanes` images
    a block as `lanes` sets for these planes."""
    per_block = lanes(images, channels, height * width, dtype.itemsize, train)
    return torch.empty(-(-images // per_block), channels, height, width, per_block, dtype=dtype)


def to_blocked(geometry, x: Tensor, train: bool = True) -> Tensor:
    """x (N, C, H, W) as zero-padded (ceil(N / lanes), C, padded H, padded W, lanes) planes (`lanes`)."""
    images, channels, height, width = x.shape
    blocked = empty_blocks(images, channels, *_padded_size(geometry, height, width), x.dtype, train)
    top, _, left, _ = geometry.padding
    _pool()
    _kernels().to_blocked(x.detach().contiguous().numpy(), blocked.numpy(), top, left)
    return blocked


def _from_blocked(blocked: Tensor, shape, top: int = 0, left: int = 0) -> Tensor:
    out = torch.empty(shape, dtype=blocked.dtype)
    _kernels().from_blocked(blocked.numpy(), out.numpy(), top, left)
    return out


def forward(
    geometry, structure: SparseStructure, values: Tensor, x: Tensor, bias: Tensor | None, train: bool = True
) -> tuple[Tensor, Tensor]:
    """The convolution's output (N, O, out_h, out_w) and the blocked input (for the weight gradient;
    `train`: a backward will follow, which sets the block width, `lanes`)."""
    blocked = to_blocked(geometry, x, train)
    return forward_blocked(geometry, structure, values, blocked, x.shape, bias), blocked


def forward_blocked(geometry, structure: SparseStructure, values: Tensor, blocked: Tensor, input_shape, bias: Tensor | None) -> Tensor:
    """The convolution's output (N, O, out_h, out_w) from its input already blocked (`to_blocked`, or
    the polyphase way's split into blocked phases); `input_shape` is the unblocked input's."""
    padded_w = blocked.shape[3]
    out_h, out_w = geometry.output_size(*input_shape[2:])
    out_blocked = torch.empty(blocked.shape[0], geometry.out_channels, out_h, out_w, blocked.shape[4], dtype=values.dtype)
    bias_array = native._NO_BIAS[values.dtype] if bias is None else native._data(bias, values.dtype)
    taps = layout(geometry, structure, blocked)
    ordered = values.detach().index_select(0, taps.order_tensor).numpy()  # the pool set up by whoever blocked the input
    _kernels().forward(blocked.numpy(), taps.groups, taps.offsets, ordered, bias_array, out_blocked.numpy(), padded_w, taps.shape)
    return _from_blocked(out_blocked, (input_shape[0], geometry.out_channels, out_h, out_w))


def _grad_blocked(grad_out: Tensor, blocked: Tensor) -> Tensor:
    """The output gradient as (blocks, O, out_h, padded_w, lanes) planes, blocked as the input
    `blocked`: each row as wide as its padded rows, zero past the output's pixels (see
    `blocked_kernels.weight_grad`)."""
    channels, height = grad_out.shape[1:3]
    blocked = torch.empty(blocked.shape[0], channels, height, *blocked.shape[3:], dtype=grad_out.dtype)
    _kernels().to_blocked(grad_out.contiguous().numpy(), blocked.numpy(), 0, 0)
    return blocked


def backward(
    geometry, structure: SparseStructure, values: Tensor, grad_out: Tensor, blocked: Tensor, input_shape, needs, unblock=None
) -> tuple:
    """(input gradient or None, gradient of the active values or None) from the blocked input;
    `unblock` takes the blocked input gradient to the input gradient (default: `_from_blocked` to
    `input_shape`; the polyphase way merges the phases in the same pass)."""
    _pool()
    padded_w, out_w = blocked.shape[3], grad_out.shape[3]
    grads = _grad_blocked(grad_out.to(values.dtype), blocked)
    taps = layout(geometry, structure, blocked)
    grad_x = grad_values = None
    if needs[0]:
        grad_blocked = torch.empty_like(blocked)
        ordered = values.detach().index_select(0, taps.order_tensor).numpy()
        args = (taps.groups, taps.offsets, ordered, taps.tap_rows, taps.tap_columns, grad_blocked.numpy())
        if needs[1] and blocked.shape[0] > 1:  # both in one pass, parallel over the blocks, their sums added in order
            partial = torch.empty(blocked.shape[0], structure.nnz, dtype=values.dtype)
            _kernels().input_and_weight_grad(grads.numpy(), blocked.numpy(), *args, partial.numpy(), padded_w, out_w, taps.shape)
            sums = partial.sum(0)
            grad_values = torch.empty_like(sums).index_copy_(0, taps.order_tensor, sums)
        else:
            _kernels().input_grad(grads.numpy(), *args, padded_w, out_w, taps.shape)
        top, _, left, _ = geometry.padding
        grad_x = _from_blocked(grad_blocked, input_shape, top, left) if unblock is None else unblock(grad_blocked)
    if needs[1] and grad_values is None:
        ordered = torch.empty(structure.nnz, dtype=values.dtype)
        parts = max(1, min(native.configured_threads(), geometry.out_channels))
        _kernels().weight_grad(
            grads.numpy(), blocked.numpy(), taps.groups, taps.offsets, taps.tap_rows, ordered.numpy(), out_w, parts, taps.shape
        )
        grad_values = torch.empty_like(ordered).index_copy_(0, taps.order_tensor, ordered)
    return grad_x, grad_values
