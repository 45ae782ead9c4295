"""Compiled CPU kernels (numba) for the two sparse products where PyTorch's are slow.

At small batches (SET trains at batch 2) `torch.sparse.sampled_addmm` takes a scalar path and the
input gradient through the transposed CSR first gathers the values into column order; at
H=100,000 these two cost most of a step. At large batches MKL's CSR product is slower than a
plain loop that adds value * input row into the output row. Here:

- `weight_grad`: for each active weight, the dot product of its output gradient column and input
  column over the batch, rows of the CSR in parallel;
- `input_grad`: each thread scatters value * output gradient of its share of the rows into its
  own buffer (no transposed order, no atomics); the buffers are summed after;
- `forward`: each output row accumulates value * (transposed) input row over its active weights;
- `transpose`: the contiguous transpose of a layer's input, in 16 x 16 blocks on both threads (half
  the time of `.t().contiguous()` for a batch of 128 CIFAR images, a quarter of the inference time).

Each product runs on the calling thread alone (the `*_rows` kernels: no thread pool woken) or over
the configured threads (`*_parallel`), with the same numbers either way: the caller passes
`threads`, which `itop.sparse.dispatch` measures per shape class; without it, `threads_for` keeps
tiny products on the calling thread (waking a thread pool costs more than they take, and on a core
shared with another busy process a woken thread may wait a whole time slice).

numba is optional: `AVAILABLE` is False when it is not installed (or fails to import) or
`ITOP_KERNELS=torch` (old name: `ITOP_SPARSE_KERNELS=torch`) is set, and `itop.sparse.ops` then
uses the pure-PyTorch products. numba is imported when a truly sparse layer
first computes (`native_kernels.py`), not by `import itop`; kernels compile then and are cached on disk.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch
from torch import Tensor

from . import free_cores

AVAILABLE = (
    "torch" not in (os.environ.get("ITOP_SPARSE_KERNELS", "").strip().lower(), os.environ.get("ITOP_KERNELS", "").strip().lower())
    and importlib.util.find_spec("numba") is not None
)
_kernels = None


def kernels():
    """The compiled kernels (numba imported on first use); None, and AVAILABLE False, if it fails."""
    global _kernels, AVAILABLE
    if _kernels is None and AVAILABLE:
        try:
            from . import native_kernels

            _kernels = native_kernels
        except Exception:  # noqa: BLE001 - a broken numba install leaves PyTorch's products, which always work
            AVAILABLE = False
    return _kernels


_DTYPES = (torch.float32, torch.float64)


def usable(*tensors: Tensor) -> bool:
    """The kernels serve contiguous CPU float32/float64 tensors, outside autograd transforms."""
    if not AVAILABLE:
        return False
    for tensor in tensors:
        if not tensor.is_cpu or tensor.dtype not in _DTYPES:
            return False
    return _kernels is not None or kernels() is not None


def _array(index):
    """An index array as numpy: the structures hand over cached numpy views, tests pass tensors."""
    return index if type(index) is np.ndarray else index.numpy()


def _data(tensor: Tensor, dtype: torch.dtype):
    """A tensor's data as a numpy view in `dtype` (a copy only where the dtype differs)."""
    if tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    return tensor.detach().numpy()


PARALLEL_MIN_WORK = 1 << 17  # multiply-adds below which the calling thread alone serves (where no measurement decides)


def configured_threads() -> int:
    """The threads a product may use: PyTorch's (`torch.set_num_threads`, or the OMP_NUM_THREADS=1
    torchrun gives each process), never more than numba started."""
    return max(1, min(torch.get_num_threads(), _kernels.numba.config.NUMBA_NUM_THREADS))


def threads_for(work: int) -> int:
    """Threads for a product of `work` multiply-adds: one (the calling thread, no pool woken) for
    tiny products, else all configured."""
    return 1 if work < PARALLEL_MIN_WORK else configured_threads()


def _pool(threads: int) -> None:
    """numba's pool set to run `threads` parts: on fewer threads where other processes keep cores
    busy (`free_cores`), with the same numbers (each part still computes its own rows)."""
    numba, threads = _kernels.numba, free_cores.free(threads)
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)


def _run(kernel: str, args: tuple, units: int, threads: int) -> None:
    """Run `kernel` over `units` rows (or blocks): its serial `*_rows`/`*_columns` form on the calling
    thread when `threads` is 1 (no pool woken), else its `*_parallel` form in `threads` equal ranges."""
    if threads == 1:
        getattr(_kernels, kernel)(*args, 0, units)
    else:
        _pool(threads)
        getattr(_kernels, kernel.rsplit("_", 1)[0] + "_parallel")(*args, threads)


def weight_grad(crow: Tensor, col: Tensor, grads_t: Tensor, rows_t: Tensor, threads: int | None = None) -> Tensor:
    """(grads^T @ rows) at the CSR's positions, in CSR order: (nnz,), from contiguous
    (out, batch) and (in, batch) matrices; on `threads` threads (None: `threads_for`)."""
    crow, col = _array(crow), _array(col)
    out = torch.empty(len(col), dtype=rows_t.dtype)
    args = (crow, col, _data(grads_t, rows_t.dtype), rows_t.detach().numpy(), out.numpy())
    threads = threads_for(len(col) * rows_t.shape[1]) if threads is None else threads
    _run("weight_grad_rows", args, len(crow) - 1, threads)
    return out


def input_grad(crow: Tensor, col: Tensor, values: Tensor, grads_t: Tensor, in_features: int, threads: int | None = None) -> Tensor:
    """(grads @ W)^T for the CSR weight (crow, col, values) and a contiguous (out, batch) matrix
    of output gradients: (in_features, batch).

    The rows are split into one part per configured thread, each scattered into a buffer of its
    own and summed after, whether the parts then run in parallel or one after another: the sums,
    and so the numbers, do not depend on that choice (`threads`; None: `threads_for`).
    """
    crow, col = _array(crow), _array(col)
    buffers = _scatter_buffers(len(crow) - 1, in_features, grads_t.shape[1], values.dtype)
    args = (crow, col, values.detach().contiguous().numpy(), _data(grads_t, values.dtype), buffers.numpy())
    threads = threads_for(len(col) * grads_t.shape[1]) if threads is None else threads
    _run_parts("input_grad", args, len(buffers), threads)
    return _summed(buffers)


def _scatter_buffers(rows: int, in_features: int, batch: int, dtype: torch.dtype) -> Tensor:
    """One (in_features, batch) buffer per configured thread (at most one per row) for a scatter
    over the rows: how many decides the sums, so it never depends on the threads that run them."""
    return torch.empty(max(1, min(configured_threads(), rows)), in_features, batch, dtype=dtype)


def _run_parts(kernel: str, args: tuple, parts: int, threads: int) -> None:
    """The `kernel`_serial form over the parts one after another, or its _parallel form."""
    if parts == 1 or threads == 1:
        getattr(_kernels, kernel + "_serial")(*args)
    else:
        _pool(parts)
        getattr(_kernels, kernel + "_parallel")(*args)


def _summed(buffers: Tensor) -> Tensor:
    return buffers.sum(0) if len(buffers) > 1 else buffers[0]


def backward(crow, col, values: Tensor, grads_t: Tensor, rows_t: Tensor, in_features: int, threads: int) -> tuple[Tensor, Tensor]:
    """`weight_grad` and `input_grad` in one pass over the CSR, for a batch of 2: the same numbers
    as the two products (same expressions, the same parts as `input_grad`), with the column
    indices and values read once (1.2-1.5x the pair at H=10,000)."""
    crow, col = _array(crow), _array(col)
    grad_values = torch.empty(len(col), dtype=values.dtype)
    buffers = _scatter_buffers(len(crow) - 1, in_features, grads_t.shape[1], values.dtype)
    args = (crow, col, values.detach().contiguous().numpy(), _data(grads_t, values.dtype), _data(rows_t, values.dtype))
    _run_parts("backward", args + (grad_values.numpy(), buffers.numpy()), len(buffers), threads)
    return grad_values, _summed(buffers)


def input_grad_csc(transposed: tuple[Tensor, Tensor, Tensor], values: Tensor, grads_t: Tensor, threads: int) -> Tensor:
    """(grads @ W)^T through the transposed weight's CSR (`SparseStructure.transposed_indices()`):
    each input row gathers its column's weights times their output-gradient rows, written once by
    one thread (no buffers to sum), on `threads` threads; the same numbers on any count."""
    order, ccol, row_t = (_array(index) for index in transposed)
    out_t = torch.empty(len(ccol) - 1, grads_t.shape[1], dtype=values.dtype)
    args = (ccol, row_t, order, values.detach().contiguous().numpy(), _data(grads_t, values.dtype), out_t.numpy())
    _run("input_grad_csc_rows", args, len(ccol) - 1, threads)
    return out_t


def forward(crow: Tensor, col: Tensor, values: Tensor, rows_t: Tensor, bias: Tensor | None = None, threads: int | None = None) -> Tensor:
    """W @ rows_t (+ bias per row) for the CSR weight and a contiguous (in_features, batch) matrix:
    (out_features, batch), on `threads` threads (None: `threads_for`). The bias is added in the
    same pass over the output."""
    crow, col = _array(crow), _array(col)
    out_t = torch.empty(len(crow) - 1, rows_t.shape[1], dtype=values.dtype)
    bias = _NO_BIAS.get(values.dtype) if bias is None else _data(bias, values.dtype)
    args = (crow, col, values.detach().contiguous().numpy(), rows_t.detach().numpy(), bias, out_t.numpy())
    threads = threads_for(len(col) * rows_t.shape[1]) if threads is None else threads
    _run("forward_rows", args, len(crow) - 1, threads)
    return out_t


def row_sums(matrix: Tensor) -> Tensor:
    """matrix.sum(1) for a contiguous 2-D CPU float matrix, on the calling thread (`native_kernels.row_sums`)."""
    out = torch.empty(matrix.shape[0], dtype=matrix.dtype)
    _kernels.row_sums(matrix.detach().numpy(), out.numpy(), 0, matrix.shape[0])
    return out


def channel_sums(grad_out: Tensor) -> Tensor:
    """grad_out.sum((0, 2, 3)) for a contiguous (N, C, H, W) CPU float tensor: each channel summed
    by one part, images in order, so the sum does not depend on the threads (`threads_for` its size)."""
    images, channels = grad_out.shape[:2]
    out = torch.empty(channels, dtype=grad_out.dtype)
    planes = grad_out.detach().reshape(images, channels, -1).numpy()
    threads = min(threads_for(grad_out.numel()), channels)
    _run("channel_sums_rows", (planes, out.numpy()), channels, threads)
    return out


def gather(crow, col, dense: Tensor, threads: int | None = None) -> Tensor:
    """The CSR's values taken from a contiguous 2-D `dense` matrix (a masked weight's active
    weights), in CSR order, on `threads` threads (None: `threads_for`)."""
    crow, col = _array(crow), _array(col)
    out = torch.empty(len(col), dtype=dense.dtype)
    threads = threads_for(len(col)) if threads is None else threads
    _run("gather_rows", (crow, col, dense.detach().numpy(), out.numpy()), len(crow) - 1, threads)
    return out


def scatter(crow, col, values: Tensor, shape: tuple[int, int], threads: int | None = None) -> Tensor:
    """A dense (rows, cols) matrix, zero but for `values` at the CSR's positions, written once, on
    `threads` threads (None: `threads_for` its size)."""
    crow, col = _array(crow), _array(col)
    dense = torch.empty(shape, dtype=values.dtype)
    threads = threads_for(dense.numel()) if threads is None else threads
    _run("scatter_rows", (crow, col, values.detach().numpy(), dense.numpy()), shape[0], threads)
    return dense


_NO_BIAS = {dtype: np.zeros(0, dtype=torch.empty(0, dtype=dtype).numpy().dtype) for dtype in _DTYPES}


WIDE_TRANSPOSE = 4  # columns per row from which the fixed rule sweeps row bands (a batch of inputs) instead of column blocks


def transpose_rule(rows: int, cols: int) -> str:
    """The sweep where nothing is measured: "bands" (16 rows at a time, along the columns) for a
    wide matrix, such as a batch of inputs (on a 2-core Xeon, 0.39 against 0.66 ms a step for 128 x
    3072 inputs), "blocks" (16 columns at a time) otherwise."""
    return "bands" if cols >= WIDE_TRANSPOSE * rows else "blocks"


def transpose(matrix: Tensor, way: str | None = None) -> Tensor:
    """matrix.t() as a new contiguous tensor, for a contiguous 2-D CPU float matrix, swept in 16-row
    "bands" or 16-column "blocks" (None: `transpose_rule`); the same numbers either way."""
    rows, cols = matrix.shape
    out = torch.empty(cols, rows, dtype=matrix.dtype)
    args = (matrix.detach().numpy(), out.numpy())
    if (way or transpose_rule(rows, cols)) == "bands":
        _run("transpose_band_rows", args, (rows + 15) // 16, threads_for(matrix.numel()))
    else:
        _run("transpose_columns", args, cols // 16 + 1, threads_for(matrix.numel()))
    return out


def prepare(dtype: torch.dtype = torch.float32) -> None:
    """Load every kernel for `dtype` now (numba's first call in a process takes about 0.3 s, each
    later kernel a few ms from the on-disk cache), so that a run's first training steps do not pay
    for it; a no-op where numba is not used."""
    if not usable(torch.empty(0, dtype=dtype)):
        return
    crow, col = torch.tensor([0, 1, 2], dtype=torch.int32), torch.tensor([0, 1], dtype=torch.int32)
    values, dense = torch.ones(2, dtype=dtype), torch.ones(2, 2, dtype=dtype)
    transposed = (torch.tensor([0, 1]), torch.tensor([0, 1, 2], dtype=torch.int32), torch.tensor([0, 1], dtype=torch.int32))
    for threads in sorted({1, configured_threads()}):
        forward(crow, col, values, dense, values, threads)
        forward(crow, col, values, dense, None, threads)
        weight_grad(crow, col, dense, dense, threads)
        input_grad(crow, col, values, dense, 2, threads)
        input_grad_csc(transposed, values, dense, threads)
        backward(crow, col, values, dense, dense, 2, threads)
        gather(crow, col, dense, threads)
        row_sums(dense)
        channel_sums(dense.view(1, 2, 1, 2))
        scatter(crow, col, values, (2, 2), threads)
        for kernel in ("transpose_columns", "transpose_band_rows"):
            _run(kernel, (dense.numpy(), torch.empty(2, 2, dtype=dtype).numpy()), 1, threads)
