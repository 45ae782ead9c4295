"""Compiled CPU kernels (numba) for the two sparse products where PyTorch's are slow.

At small batches (SET trains at batch 2) `torch.sparse.sampled_addmm` takes a scalar path and the
input gradient through the transposed CSR first gathers the values into column order; at
H=100,000 these two cost most of a step. At large batches MKL's CSR product is slower than a
plain loop that adds value * input row into the output row. Here:

- `weight_grad`: for each active weight, the dot product of its output gradient column and input
  column over the batch, rows of the CSR in parallel;
- `input_grad`: each thread scatters value * output gradient of its share of the rows into its
  own buffer (no transposed order, no atomics); the buffers are summed after;
- `forward`: each output row accumulates value * (transposed) input row over its active weights.

numba is optional: `AVAILABLE` is False when it cannot be imported and `itop.sparse.ops` then uses
the pure-PyTorch products. Kernels compile on first use and are cached on disk.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:  # pragma: no cover - exercised by whichever environment runs the tests
    if os.environ.get("ITOP_SPARSE_KERNELS", "").lower() == "torch":
        raise ImportError("numba kernels switched off by ITOP_SPARSE_KERNELS=torch")
    import numba
    from numba import prange
except ImportError:  # pragma: no cover
    numba = None

AVAILABLE = numba is not None

if AVAILABLE:
    @numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
    def _weight_grad(crow, col, grads_t, inputs_t, out):  # pragma: no cover - compiled
        batch = inputs_t.shape[1]
        for i in prange(grads_t.shape[0]):
            for j in range(crow[i], crow[i + 1]):
                c = col[j]
                acc = 0.0
                for b in range(batch):
                    acc += grads_t[i, b] * inputs_t[c, b]
                out[j] = acc

    @numba.njit(parallel=True, cache=True, fastmath=True, nogil=True)
    def _input_grad(crow, col, values, grads_t, parts):  # pragma: no cover - compiled
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
    def _forward(crow, col, values, inputs_t, bias, out_t):  # pragma: no cover - compiled
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


def usable(*tensors: Tensor) -> bool:
    """The kernels serve contiguous CPU float32/float64 tensors, outside autograd transforms."""
    return AVAILABLE and all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)


def _follow_torch_threads() -> None:
    """Run the kernels on as many threads as PyTorch's CPU ops (`torch.set_num_threads`, or the
    OMP_NUM_THREADS=1 torchrun gives each process), never on more than numba started."""
    wanted = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)


def weight_grad(crow: Tensor, col: Tensor, grads_t: Tensor, rows_t: Tensor) -> Tensor:
    """(grads^T @ rows) at the CSR's positions, in CSR order: (nnz,), from contiguous
    (out, batch) and (in, batch) matrices."""
    out = torch.empty(col.numel(), dtype=rows_t.dtype)
    _follow_torch_threads()
    _weight_grad(crow.numpy(), col.numpy(), grads_t.to(rows_t.dtype).numpy(), rows_t.numpy(), out.numpy())
    return out


def input_grad(crow: Tensor, col: Tensor, values: Tensor, grads_t: Tensor, in_features: int) -> Tensor:
    """(grads @ W)^T for the CSR weight (crow, col, values) and a contiguous (out, batch) matrix
    of output gradients: (in_features, batch)."""
    _follow_torch_threads()
    threads = max(1, min(numba.get_num_threads(), crow.numel() - 1))
    parts = torch.empty(threads, in_features, grads_t.shape[1], dtype=values.dtype)
    _input_grad(crow.numpy(), col.numpy(), values.detach().contiguous().numpy(), grads_t.to(values.dtype).numpy(), parts.numpy())
    return parts.sum(0) if threads > 1 else parts[0]


def forward(crow: Tensor, col: Tensor, values: Tensor, rows_t: Tensor, bias: Tensor | None = None) -> Tensor:
    """W @ rows_t (+ bias per row) for the CSR weight and a contiguous (in_features, batch) matrix:
    (out_features, batch). The bias is added in the same pass (one parallel region less)."""
    out_t = torch.empty(crow.numel() - 1, rows_t.shape[1], dtype=values.dtype)
    bias = values.new_zeros(0) if bias is None else bias.detach().to(values.dtype)
    _follow_torch_threads()
    _forward(crow.numpy(), col.numpy(), values.detach().contiguous().numpy(), rows_t.numpy(), bias.numpy(), out_t.numpy())
    return out_t
