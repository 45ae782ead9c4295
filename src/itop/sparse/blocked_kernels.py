"""The numba kernels of the "blocked" way of `SparseConv2d` (`conv_blocked.py`), stride 1.

Activations are held as (image blocks, channels, padded height, padded width, lanes): the images in
blocks of `lanes` (16, 32 or 64, `conv_blocked.lanes`; the kernels read it from the arrays' last
dimension), innermost, and each plane zero-padded. An active tap of value v at input channel
c and offset (i, j) then adds v times one contiguous window of the padded input to each output row
(out_w * lanes values, all images of the block at once), however small the plane: on 5x5 or 3x3
planes the NCHW kernels' pass over a plane was a vector or two, and the per-tap cost dominated.
Each tap arrives as `offsets[t]`: where its window starts in a block's flat padded planes, in
values (channel * plane + i * dilation * padded row + j * dilation, times lanes), in the order of
`conv_blocked.Layout` (by output channel, then kernel position). Terms that would read padding are
skipped: kernel rows whose input row is padding, and output columns that no kernel column reads
inside the plane (a 1x1 convolution padded by 1, as VGG-C's, on a 3x3 plane: 64% of its terms).

Every kernel splits its work so that each output value is written by one part in a fixed order:
the forward by image block and output channel, the input gradient by image block, the weight
gradient by output channel (summing over the blocks in order). The numbers do not depend on the threads that run the parts.
"""

import numba
from numba import prange

from .conv_kernels import taps_into_row
from .native_kernels import unsigned

_JIT = {"fastmath": True, "cache": True, "nogil": True}


@numba.njit(parallel=True, **_JIT)
def to_blocked(x, blocked, top, left):  # pragma: no cover - compiled
    """blocked[b, c, top + h, left + w, k] = x[b * lanes + k, c, h, w], zero elsewhere."""
    images, channels, height, width = x.shape
    lanes = blocked.shape[4]
    for p in prange(blocked.shape[0] * channels):
        b = p // channels
        c = p - b * channels
        planes = blocked[b, c]
        planes[:] = 0.0
        for k in range(min(lanes, images - b * lanes)):
            source = x[b * lanes + k, c]
            for h in range(height):
                row = planes[top + h]
                for w in range(width):
                    row[left + w, k] = source[h, w]


@numba.njit(parallel=True, **_JIT)
def from_blocked(blocked, out, top, left):  # pragma: no cover - compiled
    """out[n, c, h, w] = blocked[n // lanes, c, top + h, left + w, n % lanes]: the inverse of
    `to_blocked` on the unpadded part (top = left = 0 for an output)."""
    images, channels, height, width = out.shape
    lanes = blocked.shape[4]
    for p in prange(blocked.shape[0] * channels):
        b = p // channels
        c = p - b * channels
        planes = blocked[b, c]
        for k in range(min(lanes, images - b * lanes)):
            target = out[b * lanes + k, c]
            for h in range(height):
                row = planes[top + h]
                for w in range(width):
                    target[h, w] = row[left + w, k]


@numba.njit(parallel=True, **_JIT)
def forward(blocked, groups, offsets, values, bias, out, padded_w, shape):  # pragma: no cover - compiled
    """out (blocks, out_channels, out_h, out_w, lanes) = bias + the active taps over `blocked`.

    The taps come grouped by output channel and kernel position (i, j) (`conv_blocked.Layout`), so
    for each output row the kernel rows whose input row is padding are left out as whole runs,
    and only the output columns that some kernel column reads inside the plane are computed (a
    1x1 convolution padded by 1, as VGG-C's, skips its border: 64% of the terms on a 3x3 plane).
    Runs over whole rows of kernel positions were 1.1-1.3x faster than runs per position (i, j)
    narrowed to their own columns, which are short on small planes (AVX-512 Xeon, VGG-C's layers).
    shape = (top, left, height, width, kh, kw, dh, dw)."""
    top, left, height, width, kh, kw, dh, dw = shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], shape[6], shape[7]
    out_h, out_w, positions, lanes = out.shape[2], out.shape[3], kh * kw, out.shape[4]
    span = out_w * lanes
    x0, x1 = max(0, left - (kw - 1) * dw), min(out_w, left + width)
    channels_out = out.shape[1]
    for p in prange(out.shape[0] * channels_out):  # each (block, output channel) plane is one part: blocks may be few
        b = p // channels_out
        o = p - b * channels_out
        source = blocked[b].reshape(-1)
        plane = out[b, o].reshape(-1)
        plane[:] = bias[o] if bias.shape[0] else 0.0
        for oh in range(out_h):
            base = oh * padded_w * lanes
            first_i, end_i = 0, kh
            while first_i < kh and oh + first_i * dh < top:
                first_i += 1
            while end_i > first_i and oh + (end_i - 1) * dh >= top + height:
                end_i -= 1
            g = o * positions
            first, end = groups[g + first_i * kw], groups[g + end_i * kw]
            if first < end:
                row = plane[oh * span + x0 * lanes : oh * span + x1 * lanes]
                taps_into_row(row, source, base + x0 * lanes, offsets, values, first, end)


@numba.njit(parallel=True, **_JIT)
def input_grad(
    grad_out, groups, offsets, values, tap_rows, tap_columns, grad_blocked, padded_w, out_w, shape
):  # pragma: no cover - compiled
    """grad_blocked (blocks, in_channels, padded_h, padded_w, lanes): each active tap scatters its
    value times the output gradient's rows back onto its window, over the output rows and columns
    whose input pixel is inside the plane (`tap_rows` = i * dh, `tap_columns` = j * dw; see
    `forward`): nothing falls on the padding, which is dropped after. `grad_out` has rows of
    padded_w pixels, the first out_w of them the output's."""
    top, left, height, width, positions = shape[0], shape[1], shape[2], shape[3], shape[4] * shape[5]
    out_h, lanes = grad_out.shape[2], grad_out.shape[4]
    stride = padded_w * lanes
    for b in prange(grad_out.shape[0]):
        target = grad_blocked[b].reshape(-1)
        target[:] = 0.0
        for o in range(grad_out.shape[1]):
            plane = grad_out[b, o].reshape(-1)
            for t in range(groups[o * positions], groups[(o + 1) * positions]):
                v, offset = values[t], unsigned(offsets[t])
                first_x, end_x = max(0, left - tap_columns[t]), min(out_w, left + width - tap_columns[t])
                span = unsigned((end_x - first_x) * lanes)
                for oh in range(max(0, top - tap_rows[t]), min(out_h, top + height - tap_rows[t])):
                    start = unsigned(oh * stride + first_x * lanes)
                    window = start + offset
                    for k in range(span):
                        target[window + k] += v * plane[start + k]


@numba.njit(parallel=True, **_JIT)
def input_and_weight_grad(
    grad_out, blocked, groups, offsets, values, tap_rows, tap_columns, grad_blocked, partial, padded_w, out_w, shape
):  # pragma: no cover - compiled
    """`input_grad` and the weight gradient in one pass: each tap's rows of the output gradient are
    read once for both, scattered onto the input gradient's window and multiplied with the input's.
    The taps of one output channel and kernel position share their rows and columns, so they go
    four per pass: each load of the output gradient serves four windows and four independent sums
    (1.10-1.23x over one tap per pass on VGG-C's 3x3 to 8x8 layers, AMD EPYC AVX-512).
    partial[b, t] = tap t's weight-gradient sum over image block b, over the same rows and columns
    as the scatter (the columns it skips read padding, zero in the input); the caller sums the
    blocks in order. Each block is one part: the numbers do not depend on the threads."""
    top, left, height, width, positions = shape[0], shape[1], shape[2], shape[3], shape[4] * shape[5]
    out_h, lanes = grad_out.shape[2], grad_out.shape[4]
    stride = padded_w * lanes
    zero = partial.dtype.type(0)
    for b in prange(grad_out.shape[0]):
        target = grad_blocked[b].reshape(-1)
        target[:] = 0.0
        source = blocked[b].reshape(-1)
        for o in range(grad_out.shape[1]):
            plane = grad_out[b, o].reshape(-1)
            for position in range(o * positions, (o + 1) * positions):
                t, end = groups[position], groups[position + 1]
                if t == end:
                    continue
                first_x, end_x = max(0, left - tap_columns[t]), min(out_w, left + width - tap_columns[t])
                span = unsigned((end_x - first_x) * lanes)
                first_row, end_row = max(0, top - tap_rows[t]), min(out_h, top + height - tap_rows[t])
                while t + 3 < end:
                    v0, v1, v2, v3 = values[t], values[t + 1], values[t + 2], values[t + 3]
                    f0, f1 = unsigned(offsets[t]), unsigned(offsets[t + 1])
                    f2, f3 = unsigned(offsets[t + 2]), unsigned(offsets[t + 3])
                    a0 = a1 = a2 = a3 = zero
                    for oh in range(first_row, end_row):
                        start = unsigned(oh * stride + first_x * lanes)
                        w0, w1, w2, w3 = start + f0, start + f1, start + f2, start + f3
                        for k in range(span):
                            g = plane[start + k]
                            target[w0 + k] += v0 * g
                            target[w1 + k] += v1 * g
                            target[w2 + k] += v2 * g
                            target[w3 + k] += v3 * g
                            a0 += g * source[w0 + k]
                            a1 += g * source[w1 + k]
                            a2 += g * source[w2 + k]
                            a3 += g * source[w3 + k]
                    partial[b, t], partial[b, t + 1], partial[b, t + 2], partial[b, t + 3] = a0, a1, a2, a3
                    t += 4
                while t < end:
                    v, f = values[t], unsigned(offsets[t])
                    acc = zero
                    for oh in range(first_row, end_row):
                        start = unsigned(oh * stride + first_x * lanes)
                        w = start + f
                        for k in range(span):
                            g = plane[start + k]
                            target[w + k] += v * g
                            acc += g * source[w + k]
                    partial[b, t] = acc
                    t += 1


@numba.njit(parallel=True, **_JIT)
def weight_grad(grad_out, blocked, groups, offsets, tap_rows, out, out_w, parts, shape):  # pragma: no cover - compiled
    """out[t] = the sum over images and output pixels of grad_out times tap t's window, the output
    channels split into `parts`, each summing over the image blocks in order. `grad_out` has rows
    of padded_w pixels, zero past the first out_w, so that each tap's sum over its rows is one
    contiguous dot product (the zeros meet the pixels its window wraps onto); the rows whose
    input row is padding are left out (see `forward`)."""
    channels_out, out_h, padded_w = grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]
    top, height, positions, stride = shape[0], shape[2], shape[4] * shape[5], padded_w * grad_out.shape[4]
    zero = out.dtype.type(0)
    for p in prange(parts):
        first_o, end_o = channels_out * p // parts, channels_out * (p + 1) // parts
        out[groups[first_o * positions] : groups[end_o * positions]] = zero
        for b in range(grad_out.shape[0]):
            source = blocked[b].reshape(-1)
            for o in range(first_o, end_o):
                plane = grad_out[b, o].reshape(-1)
                for t in range(groups[o * positions], groups[(o + 1) * positions]):
                    r0, r1 = max(0, top - tap_rows[t]), min(out_h, top + height - tap_rows[t])
                    if r1 <= r0:
                        continue
                    start, span = unsigned(r0 * stride), unsigned((r1 - 1 - r0) * stride + out_w * grad_out.shape[4])
                    window = start + unsigned(offsets[t])
                    acc = zero
                    for k in range(span):
                        acc += plane[start + k] * source[window + k]
                    out[t] += acc


@numba.njit(parallel=True, **_JIT)
def to_blocked_phases(x, blocked, sh, sw, kept_r, kept_q, top, left):  # pragma: no cover - compiled
    """blocked[b, (r * kept_q + q) * C + c, Y, X, k] = x[b * lanes + k, c, sh * Y + r - top, sw * X + q - left],
    zero where that pixel is padding: `to_phases` and `to_blocked` in one pass (the separate split
    took 3.3-5.1 ms of the 10-17 ms of ResNet-18's 8x8 and 4x4 strided layers, AMD EPYC AVX-512).
    Each phase row is copied over the columns inside the input only, by unsigned offsets: 1.2-1.8x
    faster than testing every pixel (ResNet-18's strided layers)."""
    images, channels, height, width = x.shape
    rows, columns, lanes = blocked.shape[2], blocked.shape[3], blocked.shape[4]
    step, stride = unsigned(sw), unsigned(lanes)
    for p in prange(blocked.shape[0] * channels):
        b = p // channels
        c = p - b * channels
        for r in range(kept_r):
            for q in range(kept_q):
                planes = blocked[b, (r * kept_q + q) * channels + c].reshape(-1)
                planes[:] = 0.0
                first = max(0, -((q - left) // sw))  # the phase's first column inside the input
                last = width - 1 + left - q
                end = min(columns, last // sw + 1) if last >= 0 else 0
                if first >= end:
                    continue
                for k in range(min(lanes, images - b * lanes)):
                    source = x[b * lanes + k, c].reshape(-1)
                    for y in range(rows):
                        iy = sh * y + r - top
                        if 0 <= iy < height:
                            at = unsigned((y * columns + first) * lanes + k)
                            start = unsigned(iy * width + sw * first + q - left)
                            for j in range(unsigned(end - first)):
                                planes[at + j * stride] = source[start + j * step]


@numba.njit(parallel=True, **_JIT)
def from_blocked_phases(blocked, out, sh, sw, kept_r, kept_q, top, left):  # pragma: no cover - compiled
    """The adjoint of `to_blocked_phases`: out[n, c, iy, ix] = the blocked phases' value at that input
    pixel (zero where no kept phase holds it), in one pass."""
    images, channels, height, width = out.shape
    rows, columns, lanes = blocked.shape[2], blocked.shape[3], blocked.shape[4]
    for p in prange(blocked.shape[0] * channels):
        b = p // channels
        c = p - b * channels
        for k in range(min(lanes, images - b * lanes)):
            target = out[b * lanes + k, c]
            for iy in range(height):
                y, r = (iy + top) // sh, (iy + top) % sh
                for ix in range(width):
                    column, q = (ix + left) // sw, (ix + left) % sw
                    kept = y < rows and column < columns and r < kept_r and q < kept_q
                    target[iy, ix] = blocked[b, (r * kept_q + q) * channels + c, y, column, k] if kept else 0.0


@numba.njit(parallel=True, **_JIT)
def to_phases(x, phases, sh, sw, kept_r, kept_q, top, left):  # pragma: no cover - compiled
    """phases[n, (r * kept_q + q) * C + c, Y, X] = x[n, c, sh * Y + r - top, sw * X + q - left] for
    r < kept_r, q < kept_q, zero where that pixel is padding: a strided layer's input split into
    its phases in one pass (`conv_polyphase`; padding, then a permuting copy, took three passes)."""
    images, channels, height, width = x.shape
    rows, columns = phases.shape[2], phases.shape[3]
    for p in prange(images * channels):
        n = p // channels
        c = p - n * channels
        source = x[n, c]
        for r in range(kept_r):
            for q in range(kept_q):
                target = phases[n, (r * kept_q + q) * channels + c]
                for y in range(rows):
                    iy = sh * y + r - top
                    row = target[y]
                    if iy < 0 or iy >= height:
                        row[:] = 0.0
                        continue
                    for k in range(columns):
                        ix = sw * k + q - left
                        row[k] = source[iy, ix] if 0 <= ix < width else 0.0


@numba.njit(parallel=True, **_JIT)
def from_phases(phases, out, sh, sw, kept_r, kept_q, top, left):  # pragma: no cover - compiled
    """The adjoint of `to_phases`: out[n, c, iy, ix] = the phases' value at that input pixel (zero
    where no kept phase holds it), in one pass."""
    images, channels, height, width = out.shape
    rows, columns = phases.shape[2], phases.shape[3]
    for p in prange(images * channels):
        n = p // channels
        c = p - n * channels
        target = out[n, c]
        for iy in range(height):
            y, r = (iy + top) // sh, (iy + top) % sh
            for ix in range(width):
                k, q = (ix + left) // sw, (ix + left) % sw
                kept = y < rows and k < columns and r < kept_r and q < kept_q
                target[iy, ix] = phases[n, (r * kept_q + q) * channels + c, y, k] if kept else 0.0
