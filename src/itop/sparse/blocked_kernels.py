"""The numba kernels of the "blocked" way of `SparseConv2d` (`conv_blocked.py`), stride 1.

Activations are held as (image blocks, channels, padded height, padded width, BLOCK): the images in
blocks of BLOCK, innermost, and each plane zero-padded. An active tap of value v at input channel
c and offset (i, j) then adds v times one contiguous window of the padded input to each output row
(out_w * BLOCK values, all images of the block at once), however small the plane: on 5x5 or 3x3
planes the NCHW kernels' pass over a plane was a vector or two, and the per-tap cost dominated.
Each tap arrives as `offsets[t]`: where its window starts in a block's flat padded planes, in
values (channel * plane + i * dilation * padded row + j * dilation, times BLOCK).

Every kernel splits its work so that each output value is written by one part in a fixed order:
the forward and the input gradient by image block, the weight gradient by output channel (summing
over the blocks in order). The numbers do not depend on the threads that run the parts.
"""

import numba
from numba import prange

from .conv_kernels import taps_into_row

BLOCK = 16  # images per block: one AVX-512 vector of float32
_JIT = {"fastmath": True, "cache": True, "nogil": True}


@numba.njit(parallel=True, **_JIT)
def to_blocked(x, blocked, top, left):  # pragma: no cover - compiled
    """blocked[b, c, top + h, left + w, k] = x[b * BLOCK + k, c, h, w], zero elsewhere."""
    images, channels, height, width = x.shape
    for p in prange(blocked.shape[0] * channels):
        b = p // channels
        c = p - b * channels
        planes = blocked[b, c]
        planes[:] = 0.0
        for k in range(min(BLOCK, images - b * BLOCK)):
            source = x[b * BLOCK + k, c]
            for h in range(height):
                row = planes[top + h]
                for w in range(width):
                    row[left + w, k] = source[h, w]


@numba.njit(parallel=True, **_JIT)
def from_blocked(blocked, out, top, left):  # pragma: no cover - compiled
    """out[n, c, h, w] = blocked[n // BLOCK, c, top + h, left + w, n % BLOCK]: the inverse of
    `to_blocked` on the unpadded part (top = left = 0 for an output)."""
    images, channels, height, width = out.shape
    for p in prange(blocked.shape[0] * channels):
        b = p // channels
        c = p - b * channels
        planes = blocked[b, c]
        for k in range(min(BLOCK, images - b * BLOCK)):
            target = out[b * BLOCK + k, c]
            for h in range(height):
                row = planes[top + h]
                for w in range(width):
                    target[h, w] = row[left + w, k]


@numba.njit(parallel=True, **_JIT)
def forward(blocked, crow, offsets, values, bias, out, padded_w):  # pragma: no cover - compiled
    """out (blocks, out_channels, out_h, out_w, BLOCK) = bias + the active taps over `blocked`."""
    out_h, span = out.shape[2], out.shape[3] * BLOCK
    for b in prange(out.shape[0]):
        source = blocked[b].reshape(-1)
        for o in range(out.shape[1]):
            plane = out[b, o].reshape(-1)
            plane[:] = bias[o] if bias.shape[0] else 0.0
            for oh in range(out_h):
                row = plane[oh * span : (oh + 1) * span]
                taps_into_row(row, source, oh * padded_w * BLOCK, offsets, values, crow[o], crow[o + 1])


@numba.njit(parallel=True, **_JIT)
def input_grad(grad_out, crow, offsets, values, grad_blocked, padded_w, out_w):  # pragma: no cover - compiled
    """grad_blocked (blocks, in_channels, padded_h, padded_w, BLOCK): each active tap scatters its
    value times the output gradient's rows back onto its window (the padding receives what falls
    outside the input, and is dropped after). `grad_out` has rows of padded_w pixels, the first
    out_w of them the output's."""
    out_h, span, stride = grad_out.shape[2], out_w * BLOCK, padded_w * BLOCK
    for b in prange(grad_out.shape[0]):
        target = grad_blocked[b].reshape(-1)
        target[:] = 0.0
        for o in range(grad_out.shape[1]):
            plane = grad_out[b, o].reshape(-1)
            for t in range(crow[o], crow[o + 1]):
                v, offset = values[t], offsets[t]
                for oh in range(out_h):
                    row = plane[oh * stride : oh * stride + span]
                    window = target[oh * stride + offset : oh * stride + offset + span]
                    for k in range(span):
                        window[k] += v * row[k]


@numba.njit(parallel=True, **_JIT)
def weight_grad(grad_out, blocked, crow, offsets, out, out_w, parts):  # pragma: no cover - compiled
    """out[t] = the sum over images and output pixels of grad_out times tap t's window, the output
    channels split into `parts`, each summing over the image blocks in order. `grad_out` has rows
    of padded_w pixels, zero past the first out_w, so that each tap's sum over a plane is one
    contiguous dot product (the zeros meet the pixels its window wraps onto)."""
    channels_out, out_h, padded_w = grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]
    length = ((out_h - 1) * padded_w + out_w) * BLOCK
    zero = out.dtype.type(0)
    for p in prange(parts):
        first_o, end_o = channels_out * p // parts, channels_out * (p + 1) // parts
        out[crow[first_o] : crow[end_o]] = zero
        for b in range(grad_out.shape[0]):
            source = blocked[b].reshape(-1)
            for o in range(first_o, end_o):
                plane = grad_out[b, o].reshape(-1)[:length]
                for t in range(crow[o], crow[o + 1]):
                    window = source[offsets[t] : offsets[t] + length]
                    acc = zero
                    for k in range(length):
                        acc += plane[k] * window[k]
                    out[t] += acc
