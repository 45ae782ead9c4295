"""The numba kernels behind `native.py`, in a module of their own so that numba is imported (about
0.2 s) only when a truly sparse layer first computes, not by `import itop`.

Each product is one serial kernel over a range of rows (`*_rows`), run either alone on the calling
thread (no thread pool is woken: tiny products, one-thread processes) or split into equal ranges
over numba's threads (`*_parallel`). Both give the same numbers: each output row is computed by one
range, in the same order, whichever thread runs it.
"""

import numba
import numpy as np
from numba import prange

_FLAGS = {"cache": True, "nogil": True}
_JIT = {"fastmath": True, **_FLAGS}
# fastmath without reassociation: sums keep their written order (chains of independent adds)
_ORDERED = {"nnan", "ninf", "nsz", "arcp", "contract", "afn"}


@numba.njit(inline="always", **_FLAGS)
def unsigned(index):  # pragma: no cover - compiled
    """`index` (never negative) as np.uint64. numba fixes a signed index or slice bound for negative
    values (Python's wraparound) at every use; an unsigned one it takes as it is. The gathers through
    column indices (`inputs_t[col[j]]`) ran 1.11-1.20x faster so at batch 2 (SET-MLP layers of
    1,000 and 10,000 rows, AMD EPYC AVX-512), with the same numbers; in the conv kernels, LLVM also
    hoists its overlap checks out of the loops over rows. Every operand of an unsigned index must be
    unsigned too (int64 with uint64 gives float64)."""
    return np.uint64(index)


@numba.njit(inline="always", **_FLAGS)
def _eight_rows(inputs_t, col, j):  # pragma: no cover - compiled
    """The rows of `inputs_t` that the weights j to j + 7 read (eight weights per pass)."""
    return (
        inputs_t[unsigned(col[j])],
        inputs_t[unsigned(col[j + 1])],
        inputs_t[unsigned(col[j + 2])],
        inputs_t[unsigned(col[j + 3])],
        inputs_t[unsigned(col[j + 4])],
        inputs_t[unsigned(col[j + 5])],
        inputs_t[unsigned(col[j + 6])],
        inputs_t[unsigned(col[j + 7])],
    )


@numba.njit(**_JIT)
def weight_grad_rows(crow, col, grads_t, inputs_t, out, start, stop):  # pragma: no cover - compiled
    batch = inputs_t.shape[1]
    if batch == 2:  # SET's batch: both gradients in registers, no inner loop (2.2x the general loop at H=1,000)
        for i in range(start, stop):
            g0, g1 = grads_t[i, 0], grads_t[i, 1]
            if g0 == 0 and g1 == 0:  # a unit whose ReLU was off for both examples (about a quarter in SET-MLP)
                out[crow[i] : crow[i + 1]] = 0
                continue
            for j in range(crow[i], crow[i + 1]):
                c = unsigned(col[j])
                out[j] = g0 * inputs_t[c, 0] + g1 * inputs_t[c, 1]
        return
    zero = out.dtype.type(0)  # accumulators in the data's dtype (a literal 0.0 would sum float32 in float64)
    for i in range(start, stop):
        g = grads_t[i]
        j, end = crow[i], crow[i + 1]
        if batch >= 8:  # eight dot products per pass: each load of the output gradient serves eight weights (1.5x at batch 128)
            while j + 7 < end:
                x0, x1, x2, x3, x4, x5, x6, x7 = _eight_rows(inputs_t, col, j)
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = zero
                for b in range(batch):
                    gb = g[b]
                    a0 += gb * x0[b]
                    a1 += gb * x1[b]
                    a2 += gb * x2[b]
                    a3 += gb * x3[b]
                    a4 += gb * x4[b]
                    a5 += gb * x5[b]
                    a6 += gb * x6[b]
                    a7 += gb * x7[b]
                out[j], out[j + 1], out[j + 2], out[j + 3] = a0, a1, a2, a3
                out[j + 4], out[j + 5], out[j + 6], out[j + 7] = a4, a5, a6, a7
                j += 8
        while j < end:
            x = inputs_t[unsigned(col[j])]
            acc = zero
            for b in range(batch):
                acc += g[b] * x[b]
            out[j] = acc
            j += 1


@numba.njit(parallel=True, **_JIT)
def weight_grad_parallel(crow, col, grads_t, inputs_t, out, parts):  # pragma: no cover - compiled
    rows = grads_t.shape[0]
    for p in prange(parts):
        weight_grad_rows(crow, col, grads_t, inputs_t, out, rows * p // parts, rows * (p + 1) // parts)


@numba.njit(**_JIT)
def input_grad_rows(crow, col, values, grads_t, part, start, stop):  # pragma: no cover - compiled
    batch = grads_t.shape[1]
    part[:] = 0.0
    if batch == 2:  # SET's batch: no inner loop (2x the general loop at H=1,000)
        for i in range(start, stop):
            g0, g1 = grads_t[i, 0], grads_t[i, 1]
            for j in range(crow[i], crow[i + 1]):
                v, c = values[j], unsigned(col[j])
                part[c, 0] += v * g0
                part[c, 1] += v * g1
        return
    for i in range(start, stop):
        g = grads_t[i]
        for j in range(crow[i], crow[i + 1]):
            v = values[j]
            target = part[unsigned(col[j])]
            for b in range(batch):
                target[b] += v * g[b]


@numba.njit(**_JIT)
def input_grad_serial(crow, col, values, grads_t, parts):  # pragma: no cover - compiled
    count, rows = parts.shape[0], grads_t.shape[0]
    for p in range(count):
        input_grad_rows(crow, col, values, grads_t, parts[p], rows * p // count, rows * (p + 1) // count)


@numba.njit(parallel=True, **_JIT)
def input_grad_parallel(crow, col, values, grads_t, parts):  # pragma: no cover - compiled
    count, rows = parts.shape[0], grads_t.shape[0]
    for p in prange(count):
        input_grad_rows(crow, col, values, grads_t, parts[p], rows * p // count, rows * (p + 1) // count)


@numba.njit(fastmath=_ORDERED, **_FLAGS)
def input_grad_csc_pair(ccol, row_t, order, values, grads_t, out_t, start, stop):  # pragma: no cover - compiled
    """input_grad_csc_rows for a batch of 2: the sums in registers, two chains each (as
    `forward_rows_pair`); 1.8x the general loop at H=1,000."""
    zero = values.dtype.type(0)
    for c in range(start, stop):
        a0 = a1 = b0 = b1 = zero
        k, end = ccol[c], ccol[c + 1]
        while k + 1 < end:
            v, w = values[unsigned(order[k])], values[unsigned(order[k + 1])]
            p, q = unsigned(row_t[k]), unsigned(row_t[k + 1])
            a0 += v * grads_t[p, 0]
            a1 += v * grads_t[p, 1]
            b0 += w * grads_t[q, 0]
            b1 += w * grads_t[q, 1]
            k += 2
        if k < end:
            v, p = values[unsigned(order[k])], unsigned(row_t[k])
            a0 += v * grads_t[p, 0]
            a1 += v * grads_t[p, 1]
        out_t[c, 0] = a0 + b0
        out_t[c, 1] = a1 + b1


@numba.njit(**_JIT)
def input_grad_csc_rows(ccol, row_t, order, values, grads_t, out_t, start, stop):  # pragma: no cover - compiled
    """(g @ W)^T rows [start, stop) through the transposed weight's CSR (`ccol`, `row_t`; `order`
    takes the values to its order): each input row gathers value * output-gradient row over the
    weights of its column, so every output row is written once, by one thread."""
    batch = grads_t.shape[1]
    if batch == 2:
        input_grad_csc_pair(ccol, row_t, order, values, grads_t, out_t, start, stop)
        return
    for c in range(start, stop):
        row = out_t[c]
        row[:] = 0.0
        k, end = ccol[c], ccol[c + 1]
        while k + 3 < end:
            v0, v1, v2, v3 = (
                values[unsigned(order[k])],
                values[unsigned(order[k + 1])],
                values[unsigned(order[k + 2])],
                values[unsigned(order[k + 3])],
            )
            g0, g1, g2, g3 = (
                grads_t[unsigned(row_t[k])],
                grads_t[unsigned(row_t[k + 1])],
                grads_t[unsigned(row_t[k + 2])],
                grads_t[unsigned(row_t[k + 3])],
            )
            for b in range(batch):
                row[b] += (v0 * g0[b] + v1 * g1[b]) + (v2 * g2[b] + v3 * g3[b])
            k += 4
        while k < end:
            v, g = values[unsigned(order[k])], grads_t[unsigned(row_t[k])]
            for b in range(batch):
                row[b] += v * g[b]
            k += 1


@numba.njit(parallel=True, **_JIT)
def input_grad_csc_parallel(ccol, row_t, order, values, grads_t, out_t, parts):  # pragma: no cover - compiled
    rows = out_t.shape[0]
    for p in prange(parts):
        input_grad_csc_rows(ccol, row_t, order, values, grads_t, out_t, rows * p // parts, rows * (p + 1) // parts)


@numba.njit(fastmath=_ORDERED, **_FLAGS)
def forward_rows_pair(crow, col, values, inputs_t, bias, out_t, start, stop, relu=False):  # pragma: no cover - compiled
    """forward_rows for a batch of 2: the sums in registers, in four chains each so that no add waits
    on the one before; without reassociation LLVM keeps the chains instead of vectorising over
    the gathers (1.4-1.7x at H=1,000, 1.4x at H=10,000, on an AVX-512 Xeon)."""
    zero = values.dtype.type(0)
    for i in range(start, stop):
        a0 = a1 = b0 = b1 = c0 = c1 = d0 = d1 = zero
        j, end = crow[i], crow[i + 1]
        while j + 3 < end:
            v, w, x, y = values[j], values[j + 1], values[j + 2], values[j + 3]
            p, q, r, t = unsigned(col[j]), unsigned(col[j + 1]), unsigned(col[j + 2]), unsigned(col[j + 3])
            a0 += v * inputs_t[p, 0]
            a1 += v * inputs_t[p, 1]
            b0 += w * inputs_t[q, 0]
            b1 += w * inputs_t[q, 1]
            c0 += x * inputs_t[r, 0]
            c1 += x * inputs_t[r, 1]
            d0 += y * inputs_t[t, 0]
            d1 += y * inputs_t[t, 1]
            j += 4
        while j < end:
            v, p = values[j], unsigned(col[j])
            a0 += v * inputs_t[p, 0]
            a1 += v * inputs_t[p, 1]
            j += 1
        first = bias[i] if bias.shape[0] else zero
        y0, y1 = first + ((a0 + b0) + (c0 + d0)), first + ((a1 + b1) + (c1 + d1))
        if relu:
            y0, y1 = zero if y0 < zero else y0, zero if y1 < zero else y1
        out_t[i, 0], out_t[i, 1] = y0, y1


@numba.njit(**_JIT)
def forward_rows(crow, col, values, inputs_t, bias, out_t, start, stop, relu=False):  # pragma: no cover - compiled
    """out_t rows [start, stop) = W x + b, feature-major; with `relu`, max(., 0) of them, as each row
    is written (a pass over the output saved)."""
    batch = inputs_t.shape[1]
    if batch == 2:  # SET's batch: its own kernel (1.4-1.7x this loop's)
        forward_rows_pair(crow, col, values, inputs_t, bias, out_t, start, stop, relu)
        return
    for i in range(start, stop):
        row = out_t[i]
        row[:] = bias[i] if bias.shape[0] else 0.0
        j, end = crow[i], crow[i + 1]
        while j + 7 < end:  # eight weights per pass over the output row: an eighth of its loads and stores
            v0, v1, v2, v3 = values[j], values[j + 1], values[j + 2], values[j + 3]
            v4, v5, v6, v7 = values[j + 4], values[j + 5], values[j + 6], values[j + 7]
            x0, x1, x2, x3, x4, x5, x6, x7 = _eight_rows(inputs_t, col, j)
            for b in range(batch):
                row[b] += ((v0 * x0[b] + v1 * x1[b]) + (v2 * x2[b] + v3 * x3[b])) + ((v4 * x4[b] + v5 * x5[b]) + (v6 * x6[b] + v7 * x7[b]))
            j += 8
        while j < end:
            v, source = values[j], inputs_t[unsigned(col[j])]
            for b in range(batch):
                row[b] += v * source[b]
            j += 1
        if relu:
            for b in range(batch):
                row[b] = 0.0 if row[b] < 0.0 else row[b]


@numba.njit(parallel=True, **_JIT)
def forward_parallel(crow, col, values, inputs_t, bias, out_t, parts):  # pragma: no cover - compiled
    rows = out_t.shape[0]
    for p in prange(parts):
        forward_rows(crow, col, values, inputs_t, bias, out_t, rows * p // parts, rows * (p + 1) // parts)


@numba.njit(**_JIT)
def transpose_columns(src, dst, start, stop):  # pragma: no cover - compiled
    """dst = src.T for the 16-column blocks [start, stop) (the last block may be partial)."""
    rows, cols = src.shape
    tile = 16  # 16 x 16 blocks (fixed trip counts, unrolled): 16 cache lines of floats read, 16 written
    full_cols, full_rows = cols // tile, rows - rows % tile
    for t in range(start, stop):
        c0 = t * tile
        if t < full_cols:
            for r0 in range(0, full_rows, tile):
                for r in range(r0, r0 + tile):
                    for c in range(tile):
                        dst[c0 + c, r] = src[r, c0 + c]
            for r in range(full_rows, rows):
                for c in range(tile):
                    dst[c0 + c, r] = src[r, c0 + c]
        else:
            for r in range(rows):
                for c in range(c0, cols):
                    dst[c, r] = src[r, c]


@numba.njit(parallel=True, **_JIT)
def transpose_parallel(src, dst, parts):  # pragma: no cover - compiled
    blocks = src.shape[1] // 16 + 1
    for p in prange(parts):
        transpose_columns(src, dst, blocks * p // parts, blocks * (p + 1) // parts)


@numba.njit(**_JIT)
def transpose_band_rows(src, dst, start, stop):  # pragma: no cover - compiled
    """dst = src.T for the 16-row bands [start, stop) of src, each swept along its columns: the
    source is read row by row (a prefetcher follows 16 streams), which pays for a wide matrix read
    cold from memory, such as a fresh batch of inputs (0.58 against 1.0 ms for 128 x 3072)."""
    rows, cols = src.shape
    tile = 16
    full_cols = cols - cols % tile
    for t in range(start, stop):
        r0 = t * tile
        r1 = min(r0 + tile, rows)
        if r1 - r0 == tile:
            for c0 in range(0, full_cols, tile):
                for r in range(r0, r0 + tile):
                    for c in range(tile):
                        dst[c0 + c, r] = src[r, c0 + c]
        else:
            for c0 in range(0, full_cols, tile):
                for r in range(r0, r1):
                    for c in range(tile):
                        dst[c0 + c, r] = src[r, c0 + c]
        for r in range(r0, r1):
            for c in range(full_cols, cols):
                dst[c, r] = src[r, c]


@numba.njit(parallel=True, **_JIT)
def transpose_band_parallel(src, dst, parts):  # pragma: no cover - compiled
    bands = (src.shape[0] + 15) // 16
    for p in prange(parts):
        transpose_band_rows(src, dst, bands * p // parts, bands * (p + 1) // parts)


@numba.njit(**_JIT)
def row_sums(matrix, out, start, stop):  # pragma: no cover - compiled
    """out[i] = sum of matrix[i] for rows [start, stop) (a layer's bias gradient from its (out, batch)
    output gradient), on the calling thread: PyTorch's sum(1) wakes its thread pool for a (1024, 128)
    matrix, which inside a step took about 60 us (three such sums: 0.25 ms of a step, 0.07 ms with this)."""
    zero = out.dtype.type(0)
    for i in range(start, stop):
        row = matrix[i]
        total = zero
        for b in range(matrix.shape[1]):
            total += row[b]
        out[i] = total


@numba.njit(**_JIT)
def channel_sums_rows(planes, out, start, stop):  # pragma: no cover - compiled
    """out[c] = the sum of planes[:, c, :] for the channels [start, stop) of an (images, channels,
    pixels) array, images in order: a convolution's bias gradient."""
    zero = out.dtype.type(0)
    for c in range(start, stop):
        total = zero
        for n in range(planes.shape[0]):
            plane = planes[n, c]
            for p in range(planes.shape[2]):
                total += plane[p]
        out[c] = total


@numba.njit(parallel=True, **_JIT)
def channel_sums_parallel(planes, out, parts):  # pragma: no cover - compiled
    channels = planes.shape[1]
    for p in prange(parts):
        channel_sums_rows(planes, out, channels * p // parts, channels * (p + 1) // parts)


@numba.njit(**_JIT)
def backward_rows(crow, col, values, grads_t, inputs_t, grad_values, part, start, stop):  # pragma: no cover - compiled
    """weight_grad_rows and input_grad_rows in one pass over rows [start, stop) of the CSR: each
    active weight's column index and value are read once for both gradients (at small batches the
    two products are bound by reading the CSR, 1.6 MB a product for 200,000 weights). The numbers
    are those of the two kernels: the same expressions, in the same order."""
    batch = grads_t.shape[1]
    part[:] = 0.0
    if batch == 2:
        for i in range(start, stop):
            g0, g1 = grads_t[i, 0], grads_t[i, 1]
            if g0 == 0 and g1 == 0:  # no gradient to pass on: the weights' are 0 (as in weight_grad_rows)
                grad_values[crow[i] : crow[i + 1]] = 0
                continue
            for j in range(crow[i], crow[i + 1]):
                c, v = unsigned(col[j]), values[j]
                grad_values[j] = g0 * inputs_t[c, 0] + g1 * inputs_t[c, 1]
                part[c, 0] += v * g0
                part[c, 1] += v * g1
        return
    zero = grad_values.dtype.type(0)
    for i in range(start, stop):
        g = grads_t[i]
        for j in range(crow[i], crow[i + 1]):
            c, v = unsigned(col[j]), values[j]
            x, target = inputs_t[c], part[c]
            acc = zero
            for b in range(batch):
                acc += g[b] * x[b]
                target[b] += v * g[b]
            grad_values[j] = acc


@numba.njit(**_JIT)
def backward_serial(crow, col, values, grads_t, inputs_t, grad_values, parts):  # pragma: no cover - compiled
    count, rows = parts.shape[0], grads_t.shape[0]
    for p in range(count):
        backward_rows(crow, col, values, grads_t, inputs_t, grad_values, parts[p], rows * p // count, rows * (p + 1) // count)


@numba.njit(parallel=True, **_JIT)
def backward_parallel(crow, col, values, grads_t, inputs_t, grad_values, parts):  # pragma: no cover - compiled
    count, rows = parts.shape[0], grads_t.shape[0]
    for p in prange(count):
        backward_rows(crow, col, values, grads_t, inputs_t, grad_values, parts[p], rows * p // count, rows * (p + 1) // count)


@numba.njit(**_FLAGS)
def gather_rows(crow, col, dense, out, start, stop):  # pragma: no cover - compiled
    """out[j] = dense[i, col[j]] for the CSR rows [start, stop): a masked weight's active values."""
    for i in range(start, stop):
        row = dense[i]
        for j in range(crow[i], crow[i + 1]):
            out[j] = row[unsigned(col[j])]


@numba.njit(parallel=True, **_FLAGS)
def gather_parallel(crow, col, dense, out, parts):  # pragma: no cover - compiled
    rows = dense.shape[0]
    for p in prange(parts):
        gather_rows(crow, col, dense, out, rows * p // parts, rows * (p + 1) // parts)


@numba.njit(**_FLAGS)
def scatter_rows(crow, col, values, dense, start, stop):  # pragma: no cover - compiled
    """dense rows [start, stop) zero except dense[i, col[j]] = values[j]: one pass that writes each
    row once (a zero fill and then a scatter would write the matrix twice)."""
    for i in range(start, stop):
        row = dense[i]
        row[:] = 0
        for j in range(crow[i], crow[i + 1]):
            row[unsigned(col[j])] = values[j]


@numba.njit(parallel=True, **_FLAGS)
def scatter_parallel(crow, col, values, dense, parts):  # pragma: no cover - compiled
    rows = dense.shape[0]
    for p in prange(parts):
        scatter_rows(crow, col, values, dense, rows * p // parts, rows * (p + 1) // parts)
