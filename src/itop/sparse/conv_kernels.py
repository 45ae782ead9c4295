"""The numba kernels of `SparseConv2d`: direct sparse convolution over NCHW tensors.

Each output channel o holds its active taps in CSR order (`crow`, `col`): `col` indexes the
(in_channels/groups, kh, kw) slice of the weight, as in a flattened Conv2d weight. A tap (c, i, j)
of value v adds v times the input plane of channel c, shifted by (i, j) (times the dilation, less
the padding, at the stride), to the output plane of o. The loops run over whole rows of output
pixels, so the innermost loop is contiguous at stride 1 (vectorised).

- `forward_images`: out[n] for images [start, stop): bias, then every tap of every channel;
- `input_grad_images`: grad_x[n] for images [start, stop): every tap scatters value * grad_out
  plane back to its input plane (each image written by one thread: no buffers to sum);
- `weight_grad_images`: per active tap, the sum over images [start, stop) and output pixels of
  grad_out * shifted input, added into one row of partial sums.

The `_parallel` forms split the images into the given number of parts. The weight gradient's
parts are fixed by the caller (not by the thread count), and summed in order, so the numbers do
not depend on the threads that ran them.
"""

import numba
import numpy as np
from numba import prange

from .native_kernels import unsigned

_FLAGS = {"cache": True, "nogil": True}
_JIT = {"fastmath": True, **_FLAGS}


@numba.njit(inline="always", **_JIT)
def copy_run(target, at, source, start, count):  # pragma: no cover - compiled
    """target[at : at + count] = source[start : start + count] over flat arrays, by unsigned offsets:
    the padded-plane fills and the copies out move many short rows (32 values on 32x32 planes),
    where slice assignment's per-row cost had been 40% of a 32x32 layer's sparse forward."""
    at, start = unsigned(at), unsigned(start)
    for k in range(unsigned(count)):
        target[at + k] = source[start + k]


@numba.njit(**_FLAGS)
def _span(size, out_size, stride, offset):  # pragma: no cover - compiled
    """The output positions p in [lo, hi) whose source p * stride + offset lies in [0, size)."""
    lo = 0 if offset >= 0 else (-offset + stride - 1) // stride
    last = size - 1 - offset
    hi = 0 if last < 0 else min(out_size, last // stride + 1)
    return lo, max(lo, hi)


@numba.njit(**_FLAGS)
def _tap(code, geometry, height, width, out_h, out_w):  # pragma: no cover - compiled
    """A tap's input channel within its group, and the output rows [row_lo, row_hi) and columns
    [col_lo, col_hi) whose source pixel lies inside the input, from its CSR column `code`; the
    source row of output row oh is oh * sh + row_shift, the source column of ow is ow * sw + shift."""
    kh, kw, sh, sw, ph, pw, dh, dw = geometry[0], geometry[1], geometry[2], geometry[3], geometry[4], geometry[5], geometry[6], geometry[7]
    c, r = divmod(code, kh * kw)
    i, j = divmod(r, kw)
    row_shift, shift = i * dh - ph, j * dw - pw
    row_lo, row_hi = _span(height, out_h, sh, row_shift)
    col_lo, col_hi = _span(width, out_w, sw, shift)
    return c, row_shift, shift, row_lo, row_hi, col_lo, col_hi


@numba.njit(**_JIT)
def forward_images(x, crow, col, values, bias, out, geometry, start, stop):  # pragma: no cover - compiled
    sh, sw, out_per_group, in_per_group = geometry[2], geometry[3], geometry[8], geometry[9]
    channels_out, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    height, width = x.shape[2], x.shape[3]
    for n in range(start, stop):
        for o in range(channels_out):
            plane = out[n, o]
            plane[:, :] = bias[o] if bias.shape[0] else 0.0
            first_channel = (o // out_per_group) * in_per_group
            for t in range(crow[o], crow[o + 1]):
                c, row_shift, shift, row_lo, row_hi, col_lo, col_hi = _tap(col[t], geometry, height, width, out_h, out_w)
                v = values[t]
                source = x[n, first_channel + c]
                for oh in range(row_lo, row_hi):
                    src = source[oh * sh + row_shift]
                    dst = plane[oh]
                    if sw == 1:
                        for ow in range(col_lo, col_hi):
                            dst[ow] += v * src[ow + shift]
                    else:
                        for ow in range(col_lo, col_hi):
                            dst[ow] += v * src[ow * sw + shift]


@numba.njit(parallel=True, **_JIT)
def forward_parallel(x, crow, col, values, bias, out, geometry, parts):  # pragma: no cover - compiled
    images = x.shape[0]
    for p in prange(parts):
        forward_images(x, crow, col, values, bias, out, geometry, images * p // parts, images * (p + 1) // parts)


@numba.njit(**_JIT)
def input_grad_images(grad_out, crow, col, values, grad_x, geometry, start, stop):  # pragma: no cover - compiled
    sh, sw, out_per_group, in_per_group = geometry[2], geometry[3], geometry[8], geometry[9]
    channels_out, out_h, out_w = grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]
    height, width = grad_x.shape[2], grad_x.shape[3]
    for n in range(start, stop):
        grad_x[n] = 0.0
        for o in range(channels_out):
            plane = grad_out[n, o]
            first_channel = (o // out_per_group) * in_per_group
            for t in range(crow[o], crow[o + 1]):
                c, row_shift, shift, row_lo, row_hi, col_lo, col_hi = _tap(col[t], geometry, height, width, out_h, out_w)
                v = values[t]
                target = grad_x[n, first_channel + c]
                for oh in range(row_lo, row_hi):
                    dst = target[oh * sh + row_shift]
                    src = plane[oh]
                    if sw == 1:
                        for ow in range(col_lo, col_hi):
                            dst[ow + shift] += v * src[ow]
                    else:
                        for ow in range(col_lo, col_hi):
                            dst[ow * sw + shift] += v * src[ow]


@numba.njit(parallel=True, **_JIT)
def input_grad_parallel(grad_out, crow, col, values, grad_x, geometry, parts):  # pragma: no cover - compiled
    images = grad_out.shape[0]
    for p in prange(parts):
        input_grad_images(grad_out, crow, col, values, grad_x, geometry, images * p // parts, images * (p + 1) // parts)


@numba.njit(**_JIT)
def weight_grad_images(grad_out, x, crow, col, sums, geometry, start, stop):  # pragma: no cover - compiled
    sh, sw, out_per_group, in_per_group = geometry[2], geometry[3], geometry[8], geometry[9]
    channels_out, out_h, out_w = grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]
    height, width = x.shape[2], x.shape[3]
    zero = sums.dtype.type(0)
    sums[:] = 0.0
    for n in range(start, stop):
        for o in range(channels_out):
            plane = grad_out[n, o]
            first_channel = (o // out_per_group) * in_per_group
            for t in range(crow[o], crow[o + 1]):
                c, row_shift, shift, row_lo, row_hi, col_lo, col_hi = _tap(col[t], geometry, height, width, out_h, out_w)
                source = x[n, first_channel + c]
                acc = zero
                for oh in range(row_lo, row_hi):
                    src = source[oh * sh + row_shift]
                    g = plane[oh]
                    if sw == 1:
                        for ow in range(col_lo, col_hi):
                            acc += g[ow] * src[ow + shift]
                    else:
                        for ow in range(col_lo, col_hi):
                            acc += g[ow] * src[ow * sw + shift]
                sums[t] += acc


@numba.njit(**_JIT)
def weight_grad_serial(grad_out, x, crow, col, parts_sums, geometry):  # pragma: no cover - compiled
    count, images = parts_sums.shape[0], x.shape[0]
    for p in range(count):
        weight_grad_images(grad_out, x, crow, col, parts_sums[p], geometry, images * p // count, images * (p + 1) // count)


@numba.njit(parallel=True, **_JIT)
def weight_grad_parallel(grad_out, x, crow, col, parts_sums, geometry):  # pragma: no cover - compiled
    count, images = parts_sums.shape[0], x.shape[0]
    for p in prange(count):
        weight_grad_images(grad_out, x, crow, col, parts_sums[p], geometry, images * p // count, images * (p + 1) // count)


# ----------------------------------------------------------------------------- stride 1: wide rows
# At stride 1 a tap reads a window of the zero-padded input plane whose rows are consecutive in
# memory. Computing each output plane `wide`, with the padded plane's row length (the extra
# columns are computed and dropped), makes every tap one contiguous multiply-add over the whole
# plane instead of one short loop per output row (16 values at 16x16 pixels: the loop overhead
# cost more than the arithmetic). The padded planes of an image sit in one flat buffer with
# `_slack` zeros after the last plane, which the dropped columns of the last rows may read. Each
# tap arrives as `sources[t]`: where its window starts in that buffer (channel * plane + row
# offset + column offset, from `conv_windows.wide_sources`).


@numba.njit(**_JIT)
def taps_into_row(row, source, base, sources, values, first, end):  # pragma: no cover - compiled
    """row += values[t] * source[base + sources[t] :][: len(row)] for the taps [first, end), four
    taps per pass over the row (a quarter of its loads and stores). The windows are read by
    unsigned offsets (`unsigned`), which LLVM vectorises as it did the slices this replaced, without
    their per-slice bound fixing: 1.07-1.17x on the blocked forward (AMD EPYC, AVX-512). Shared by
    the wide and the blocked forwards."""
    span, t = unsigned(row.shape[0]), first
    while t + 3 < end:
        v0, v1, v2, v3 = values[t], values[t + 1], values[t + 2], values[t + 3]
        s0, s1 = unsigned(base + sources[t]), unsigned(base + sources[t + 1])
        s2, s3 = unsigned(base + sources[t + 2]), unsigned(base + sources[t + 3])
        for k in range(span):
            row[k] += (v0 * source[s0 + k] + v1 * source[s1 + k]) + (v2 * source[s2 + k] + v3 * source[s3 + k])
        t += 4
    while t < end:
        v, s0 = values[t], unsigned(base + sources[t])
        for k in range(span):
            row[k] += v * source[s0 + k]
        t += 1


@numba.njit(**_FLAGS)
def _slack(geometry):  # pragma: no cover - compiled
    return (geometry[1] - 1) * geometry[7] + 1


@numba.njit(**_JIT)
def _fill_padded(image, padded, top, left, padded_h, padded_w):  # pragma: no cover - compiled
    channels, height, width = image.shape
    padded[:] = 0.0
    flat = image.reshape(-1)
    for c in range(channels):
        base = c * padded_h * padded_w
        for r in range(height):
            copy_run(padded, base + (r + top) * padded_w + left, flat, (c * height + r) * width, width)


@numba.njit(**_JIT)
def forward_wide_images(
    x, crow, sources, values, bias, out, geometry, padded_h, padded_w, group, start, stop
):  # pragma: no cover - compiled
    """`group` images at a time stacked one above the other in each channel's padded plane, so that
    a tap's pass runs over all of them (the rows between two images are computed and dropped): on
    small planes (5x5, 3x3) one image's pass was a vector or two, and the per-tap cost dominated."""
    channels, channels_out, out_h, out_w = x.shape[1], out.shape[1], out.shape[2], out.shape[3]
    height, width = x.shape[2], x.shape[3]
    top, left = geometry[4], geometry[5]
    plane = group * padded_h * padded_w
    padded = np.empty(channels * plane + _slack(geometry), dtype=x.dtype)
    wide = np.empty(((group - 1) * padded_h + out_h) * padded_w, dtype=x.dtype)
    n = start
    while n < stop:
        count = min(group, stop - n)
        padded[:] = 0.0
        for g in range(count):
            image = x[n + g].reshape(-1)
            for c in range(channels):
                for r in range(height):
                    copy_run(padded, c * plane + (g * padded_h + r + top) * padded_w + left, image, (c * height + r) * width, width)
        span = ((count - 1) * padded_h + out_h) * padded_w
        row = wide[:span]
        for o in range(channels_out):
            row[:] = bias[o] if bias.shape[0] else 0.0
            taps_into_row(row, padded, 0, sources, values, crow[o], crow[o + 1])
            for g in range(count):
                target = out[n + g, o].reshape(-1)
                for oh in range(out_h):
                    copy_run(target, oh * out_w, row, (g * padded_h + oh) * padded_w, out_w)
        n += count


@numba.njit(parallel=True, **_JIT)
def forward_wide_parallel(x, crow, sources, values, bias, out, geometry, padded_h, padded_w, group, parts):  # pragma: no cover - compiled
    images = x.shape[0]
    for p in prange(parts):
        forward_wide_images(
            x, crow, sources, values, bias, out, geometry, padded_h, padded_w, group, images * p // parts, images * (p + 1) // parts
        )


@numba.njit(**_JIT)
def _fill_wide(planes, wide, padded_w):  # pragma: no cover - compiled
    """wide (flat: channels x rows x padded_w) = planes, the extra columns zero."""
    channels, rows, width = planes.shape
    wide[:] = 0.0
    flat = planes.reshape(-1)
    for c in range(channels):
        for r in range(rows):
            copy_run(wide, (c * rows + r) * padded_w, flat, (c * rows + r) * width, width)


@numba.njit(**_JIT)
def input_grad_wide_images(
    grad_out, starts, order, bases, values, grad_x, geometry, padded_h, padded_w, margin, start, stop
):  # pragma: no cover - compiled
    """The input gradient at stride 1, gathered: each input channel's padded plane sums value *
    output-gradient plane over the taps that read it (`starts`/`order`/`bases`, from
    `conv_windows.wide_gather`), four taps per pass, as the forward does. The output-gradient planes sit in
    wide rows with `margin` zeros on both sides, so every tap reads the whole plane: its window
    starts at bases[t] = o * row length + margin - (the tap's offset in the padded plane)."""
    top, left = geometry[4], geometry[5]
    channels, height, width = grad_x.shape[1], grad_x.shape[2], grad_x.shape[3]
    channels_out, out_h, out_w = grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]
    plane = padded_h * padded_w
    length = out_h * padded_w + 2 * margin
    extended = np.zeros(channels_out * length, dtype=grad_x.dtype)  # the margins and dropped columns stay zero
    acc = np.empty(plane, dtype=grad_x.dtype)
    for n in range(start, stop):
        image = grad_out[n].reshape(-1)
        for o in range(channels_out):
            for oh in range(out_h):
                copy_run(extended, o * length + margin + oh * padded_w, image, (o * out_h + oh) * out_w, out_w)
        for c in range(channels):
            acc[:] = 0.0
            t, end = starts[c], starts[c + 1]
            while t + 3 < end:
                v0, v1, v2, v3 = values[order[t]], values[order[t + 1]], values[order[t + 2]], values[order[t + 3]]
                e0, e1 = unsigned(bases[t]), unsigned(bases[t + 1])
                e2, e3 = unsigned(bases[t + 2]), unsigned(bases[t + 3])
                for q in range(unsigned(plane)):
                    acc[q] += (v0 * extended[e0 + q] + v1 * extended[e1 + q]) + (v2 * extended[e2 + q] + v3 * extended[e3 + q])
                t += 4
            while t < end:
                v, e = values[order[t]], unsigned(bases[t])
                for q in range(unsigned(plane)):
                    acc[q] += v * extended[e + q]
                t += 1
            target = grad_x[n, c].reshape(-1)
            for r in range(height):
                copy_run(target, r * width, acc, (r + top) * padded_w + left, width)


@numba.njit(parallel=True, **_JIT)
def input_grad_wide_parallel(
    grad_out, starts, order, bases, values, grad_x, geometry, padded_h, padded_w, margin, parts
):  # pragma: no cover - compiled
    images = grad_out.shape[0]
    for p in prange(parts):
        input_grad_wide_images(
            grad_out,
            starts,
            order,
            bases,
            values,
            grad_x,
            geometry,
            padded_h,
            padded_w,
            margin,
            images * p // parts,
            images * (p + 1) // parts,
        )


@numba.njit(**_JIT)
def weight_grad_wide_images(grad_out, x, crow, sources, sums, geometry, padded_h, padded_w, start, stop):  # pragma: no cover - compiled
    channels, channels_out, out_h = x.shape[1], grad_out.shape[1], grad_out.shape[2]
    plane = padded_h * padded_w
    span = out_h * padded_w
    padded = np.empty(channels * plane + _slack(geometry), dtype=x.dtype)
    wide = np.empty(channels_out * span, dtype=x.dtype)
    zero = sums.dtype.type(0)
    sums[:] = 0.0
    for n in range(start, stop):
        _fill_padded(x[n], padded, geometry[4], geometry[5], padded_h, padded_w)
        _fill_wide(grad_out[n], wide, padded_w)
        for o in range(channels_out):
            g = wide[o * span : (o + 1) * span]
            t, end = crow[o], crow[o + 1]
            while t + 3 < end:  # four taps per pass: each load of the output gradient serves four sums
                s0, s1 = unsigned(sources[t]), unsigned(sources[t + 1])
                s2, s3 = unsigned(sources[t + 2]), unsigned(sources[t + 3])
                a0 = a1 = a2 = a3 = zero
                for k in range(unsigned(span)):
                    gk = g[k]
                    a0 += gk * padded[s0 + k]
                    a1 += gk * padded[s1 + k]
                    a2 += gk * padded[s2 + k]
                    a3 += gk * padded[s3 + k]
                sums[t] += a0
                sums[t + 1] += a1
                sums[t + 2] += a2
                sums[t + 3] += a3
                t += 4
            while t < end:
                s0 = unsigned(sources[t])
                acc = zero
                for k in range(unsigned(span)):
                    acc += g[k] * padded[s0 + k]
                sums[t] += acc
                t += 1


@numba.njit(**_JIT)
def weight_grad_wide_serial(grad_out, x, crow, sources, parts_sums, geometry, padded_h, padded_w):  # pragma: no cover - compiled
    count, images = parts_sums.shape[0], x.shape[0]
    for p in range(count):
        weight_grad_wide_images(
            grad_out, x, crow, sources, parts_sums[p], geometry, padded_h, padded_w, images * p // count, images * (p + 1) // count
        )


@numba.njit(parallel=True, **_JIT)
def weight_grad_wide_parallel(grad_out, x, crow, sources, parts_sums, geometry, padded_h, padded_w):  # pragma: no cover - compiled
    count, images = parts_sums.shape[0], x.shape[0]
    for p in prange(count):
        weight_grad_wide_images(
            grad_out, x, crow, sources, parts_sums[p], geometry, padded_h, padded_w, images * p // count, images * (p + 1) // count
        )
