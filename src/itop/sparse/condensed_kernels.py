"""The numba kernels behind `CondensedLinear` (`condensed.py`), in a module of their own so that
numba is imported only when a condensed layer first computes on the CPU, not by `import itop`.

A condensed weight is two dense (rows_kept, k) arrays: `values` and the sorted input `indices` of
each kept output neuron; `rows` says which output neuron each kept row is. Every row has the same
length k, so a row's loop has a fixed trip count and no row pointer is read.

Each product is one serial kernel over a range of kept rows (`*_rows`), run alone on the calling
thread or split into equal ranges over numba's threads (`*_parallel`). Both give the same numbers:
each output is computed by one call, in the same order, whichever thread runs it. Three products:
`vector` (batch 1), `pairs` (small batches, on the input as it is) and `batch` (from the
transposed input).
"""

import numba
import numpy as np
from numba import prange

_FLAGS = {"cache": True, "nogil": True}
_JIT = {"fastmath": True, **_FLAGS}


@numba.njit(**_JIT)
def vector_rows(values, indices, rows, x, bias, out, start, stop):  # pragma: no cover - compiled
    """Batch 1: out[rows[r]] = bias + sum_j values[r, j] * x[indices[r, j]] for kept rows [start, stop).
    One plain loop per row: with fastmath LLVM vectorises it with gathers from the input vector
    (in the first-level cache), 1.7x a loop of four scalar sums on an AVX-512 Xeon."""
    k = values.shape[1]
    zero = values.dtype.type(0)
    for r in range(start, stop):
        v, c = values[r], indices[r]
        acc = zero
        for j in range(k):
            acc += v[j] * x[c[j]]
        o = rows[r]
        out[o] = (bias[o] if bias.shape[0] else zero) + acc


@numba.njit(parallel=True, **_JIT)
def vector_parallel(values, indices, rows, x, bias, out, parts):  # pragma: no cover - compiled
    kept = values.shape[0]
    for p in prange(parts):
        vector_rows(values, indices, rows, x, bias, out, kept * p // parts, kept * (p + 1) // parts)


@numba.njit(**_JIT)
def pairs_rows(values, indices, rows, x, bias, out, start, stop):  # pragma: no cover - compiled
    """Small batches (2-5) from the (B, in_features) input as it is: each kept row's dot products
    with two inputs at a time, so that each index and value loaded serves both (2-3x the
    transposed kernel's speed at batches 2-3, 1.75x at 4, where its loop over the batch is too
    short to vectorise)."""
    k, batch = values.shape[1], x.shape[0]
    zero = values.dtype.type(0)
    for r in range(start, stop):
        v, c = values[r], indices[r]
        o = rows[r]
        first = bias[o] if bias.shape[0] else zero
        b = 0
        while b + 1 < batch:
            x0, x1 = x[b], x[b + 1]
            a0 = a1 = zero
            for j in range(k):
                w, i = v[j], c[j]
                a0 += w * x0[i]
                a1 += w * x1[i]
            out[b, o] = first + a0
            out[b + 1, o] = first + a1
            b += 2
        if b < batch:
            x0 = x[b]
            a0 = zero
            for j in range(k):
                a0 += v[j] * x0[c[j]]
            out[b, o] = first + a0


@numba.njit(parallel=True, **_JIT)
def pairs_parallel(values, indices, rows, x, bias, out, parts):  # pragma: no cover - compiled
    kept = values.shape[0]
    for p in prange(parts):
        pairs_rows(values, indices, rows, x, bias, out, kept * p // parts, kept * (p + 1) // parts)


@numba.njit(**_JIT)
def batch_rows(values, indices, rows, inputs_t, bias, out, start, stop):  # pragma: no cover - compiled
    """Larger batches from the transposed (in_features, B) input: kept row r accumulates
    values[r, j] * inputs_t[indices[r, j]] (contiguous B-vectors) into one B-vector, four weights per
    pass over it, then writes it to column rows[r] of the (B, out_features) output. Elements are
    indexed in two dimensions: no view is made per weight (1.5x at batch 8)."""
    k, batch = values.shape[1], inputs_t.shape[1]
    zero = values.dtype.type(0)
    acc = np.empty(batch, dtype=values.dtype)
    for r in range(start, stop):
        acc[:] = zero
        j = 0
        while j + 3 < k:
            v0, v1, v2, v3 = values[r, j], values[r, j + 1], values[r, j + 2], values[r, j + 3]
            c0, c1, c2, c3 = indices[r, j], indices[r, j + 1], indices[r, j + 2], indices[r, j + 3]
            for b in range(batch):
                acc[b] += (v0 * inputs_t[c0, b] + v1 * inputs_t[c1, b]) + (v2 * inputs_t[c2, b] + v3 * inputs_t[c3, b])
            j += 4
        while j < k:
            w, c0 = values[r, j], indices[r, j]
            for b in range(batch):
                acc[b] += w * inputs_t[c0, b]
            j += 1
        o = rows[r]
        first = bias[o] if bias.shape[0] else zero
        for b in range(batch):
            out[b, o] = first + acc[b]


@numba.njit(parallel=True, **_JIT)
def batch_parallel(values, indices, rows, inputs_t, bias, out, parts):  # pragma: no cover - compiled
    kept = values.shape[0]
    for p in prange(parts):
        batch_rows(values, indices, rows, inputs_t, bias, out, kept * p // parts, kept * (p + 1) // parts)


@numba.njit(**_JIT)
def chain_rows(values, indices, rows, bias, src, dst, voff, k, roff, boff, relu, start, stop):  # pragma: no cover - compiled
    """Rows [start, stop) of one layer of `chain_vector`: each kept row's dot product with `src`
    gathered at its indices, plus its bias, through the ReLU if one follows, into `dst`."""
    zero = values.dtype.type(0)
    for r in range(start, stop):
        v = values[voff + r * k : voff + (r + 1) * k]
        c = indices[voff + r * k : voff + (r + 1) * k]
        acc = zero
        for j in range(k):
            acc += v[j] * src[c[j]]
        o = rows[roff + r]
        if boff >= 0:
            acc += bias[boff + o]
        dst[o] = zero if relu and acc < zero else acc


@numba.njit(parallel=True, **_JIT)
def chain_vector(values, indices, rows, bias, meta, x, scratch, out, parts):  # pragma: no cover - compiled
    """Batch 1 through a chain of condensed layers in one call, so that the thread pool never waits
    on Python between two layers (at batch 1 a layer's product is short, and waking the pool for
    each layer cost more than the product). The layers' arrays are concatenated (see
    `condensed_chain.py`); meta[L] = (offset of layer L's values and indices, its kept rows, k,
    its outputs, offset of its rows, offset of its bias or -1, 1 if a ReLU follows it). Each layer
    writes into one of two scratch rows, the last one into `out`."""
    layers = meta.shape[0]
    zero = values.dtype.type(0)
    for layer in range(layers):
        voff, kept, k, n_out = meta[layer, 0], meta[layer, 1], meta[layer, 2], meta[layer, 3]
        roff, boff, relu = meta[layer, 4], meta[layer, 5], meta[layer, 6] != 0
        src = x if layer == 0 else scratch[(layer - 1) % 2]
        dst = out if layer == layers - 1 else scratch[layer % 2]
        if kept < n_out:  # ablated neurons: their bias (0 without), through the activation
            for o in range(n_out):
                v = bias[boff + o] if boff >= 0 else zero
                dst[o] = zero if relu and v < zero else v
        for p in prange(parts):
            chain_rows(values, indices, rows, bias, src, dst, voff, k, roff, boff, relu, kept * p // parts, kept * (p + 1) // parts)
