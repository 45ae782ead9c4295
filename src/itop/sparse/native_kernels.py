"""The numba kernels behind `native.py`, in a module of their own so that numba is imported (about
0.2 s) only when a truly sparse layer first computes, not by `import itop`."""

import numba
from numba import prange


@numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def weight_grad(crow, col, grads_t, inputs_t, out):  # pragma: no cover - compiled
    batch = inputs_t.shape[1]
    for i in prange(grads_t.shape[0]):
        for j in range(crow[i], crow[i + 1]):
            c = col[j]
            acc = 0.0
            for b in range(batch):
                acc += grads_t[i, b] * inputs_t[c, b]
            out[j] = acc


@numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def input_grad(crow, col, values, grads_t, parts):  # pragma: no cover - compiled
    threads, rows, batch = parts.shape[0], grads_t.shape[0], grads_t.shape[1]
    for t in prange(threads):
        part = parts[t]
        part[:] = 0.0
        for i in range(rows * t // threads, rows * (t + 1) // threads):
            for j in range(crow[i], crow[i + 1]):
                v = values[j]
                c = col[j]
                for b in range(batch):
                    part[c, b] += v * grads_t[i, b]


@numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
def forward(crow, col, values, inputs_t, bias, out_t):  # pragma: no cover - compiled
    batch = inputs_t.shape[1]
    for i in prange(out_t.shape[0]):
        row = out_t[i]
        row[:] = bias[i] if bias.shape[0] else 0.0
        j, end = crow[i], crow[i + 1]
        while j + 3 < end:  # four weights per pass over the output row: a quarter of its loads and stores
            v0, v1, v2, v3 = values[j], values[j + 1], values[j + 2], values[j + 3]
            x0, x1, x2, x3 = inputs_t[col[j]], inputs_t[col[j + 1]], inputs_t[col[j + 2]], inputs_t[col[j + 3]]
            for b in range(batch):
                row[b] += (v0 * x0[b] + v1 * x1[b]) + (v2 * x2[b] + v3 * x3[b])
            j += 4
        while j < end:
            v, source = values[j], inputs_t[col[j]]
            for b in range(batch):
                row[b] += v * source[b]
            j += 1


@numba.njit(parallel=True, cache=True, nogil=True)
def transpose(src, dst):  # pragma: no cover - compiled
    rows, cols = src.shape
    tile = 16  # 16 x 16 blocks (fixed trip counts, unrolled): 16 cache lines of floats read, 16 written
    full_cols, full_rows = cols // tile, rows - rows % tile
    for t in prange(full_cols + 1):
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
