"""How `CondensedLinear` (`condensed.py`) computes: the numba kernels of `condensed_kernels.py`
at inference on the CPU, PyTorch's CSR product of the same arrays, the measured choice between
them (`itop.sparse.dispatch`, key "condensed"), and the PyTorch path in row chunks of bounded
memory, with its autograd Function, for training, other devices and `ITOP_KERNELS=torch`.

Kept beside the layer as `ops.py` is beside `layer.py` and `conv_ops.py` beside `conv.py`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import dispatch, native, ops

if TYPE_CHECKING:
    from .condensed import CondensedLinear

_INT32_LIMIT = 2**31 - 1
CHUNK_ELEMENTS = 1 << 20  # gathered inputs per chunk on the PyTorch path (4 MiB in float32): memory stays bounded
_DTYPES = (torch.float32, torch.float64)


# ----------------------------------------------------------------------------- kernels
_kernels = None
_broken: set[tuple] = set()  # (kernel, dtype, index dtype) numba failed to compile: PyTorch serves them


def kernels():
    """The compiled kernels (numba imported on first use), or None where numba does not serve."""
    global _kernels
    if _kernels is None and native.AVAILABLE and native.kernels() is not None:
        try:
            from . import condensed_kernels

            _kernels = condensed_kernels
        except Exception:  # noqa: BLE001 - a broken numba install leaves the PyTorch path, which always works
            return None
    return _kernels


def compiled(name: str):
    """The kernel `name` (tests record the calls here)."""
    return getattr(_kernels, name)


def numba_serves(x: Tensor, values: Tensor) -> bool:
    """The numba kernels serve CPU float32/float64 inference outside traces, dispatch modes and
    `ITOP_KERNELS=torch`."""
    if not (x.is_cpu and values.is_cpu and values.dtype in _DTYPES and x.dtype == values.dtype):
        return False
    if torch._C._len_torch_dispatch_stack() or torch.compiler.is_compiling():
        return False
    return (dispatch.active or dispatch.current()).mode != "torch" and (_kernels is not None or kernels() is not None)


def index_dtype(size: int) -> torch.dtype:
    """int32 where every index of [0, size) fits (half the bytes the kernels stream), else int64."""
    return torch.int32 if size <= _INT32_LIMIT else torch.int64


_NO_BIAS = {dtype: np.zeros(0, dtype=torch.empty(0, dtype=dtype).numpy().dtype) for dtype in _DTYPES}
PAIRS_MAX_BATCH = 5  # batches of 2 up to this take the pairs kernel on the input as it is; larger ones transpose it


def kernel_for(batch: int) -> str:
    """The kernel of a batch: one gathered dot product per row at 1, two at a time on the input
    as it is for small batches (2-3x the transposed kernel at 2-3), else from the transposed input."""
    return "vector" if batch == 1 else "pairs" if batch <= PAIRS_MAX_BATCH else "batch"


def numba_forward(prepared: Prepared, inputs: Tensor, bias: Tensor | None, out_features: int, threads: int) -> Tensor | None:
    """The (N, out) output of the (N, in) `inputs` through the kernels on `threads` threads: a
    transposed view of an (out, N) matrix from the transposed kernel (so that a chain of layers
    hands on transposed views and never copies, as `SparseLinear`'s products do). None where numba
    failed to compile this signature (the caller then takes PyTorch's path)."""
    arrays, batch = prepared.arrays, inputs.shape[0]
    name = kernel_for(batch)
    signature = (name, arrays[0].dtype, arrays[1].dtype)
    if signature in _broken:
        return None
    if name == "batch":
        source, out = ops.transposed(inputs.detach()).numpy(), torch.empty(out_features, batch, dtype=inputs.dtype).t()
    else:
        source, out = inputs.detach().contiguous().numpy(), torch.empty(batch, out_features, dtype=inputs.dtype)
    if prepared.ablated and bias is None:  # ablated neurons: 0
        out.zero_()
    elif prepared.ablated:  # ablated neurons: the bias
        out.copy_(bias.detach().expand_as(out))
    target = out.numpy()[0] if name == "vector" else out.numpy()
    source = source[0] if name == "vector" else source
    try:
        if threads == 1:
            compiled(name + "_rows")(*arrays[:3], source, arrays[3], target, 0, arrays[0].shape[0])
        else:
            native._pool(threads)
            compiled(name + "_parallel")(*arrays[:3], source, arrays[3], target, threads)
    except Exception:  # noqa: BLE001 - numba could not compile for these types: PyTorch serves them from now on
        _broken.add(signature)
        return None
    return out


COMPACT_INDEX_LIMIT = 1 << 16  # inputs up to this many: the kernels read a uint16 copy of the indices


def kernel_indices(indices: Tensor, in_features: int) -> np.ndarray:
    """The indices as the kernels read them: a uint16 copy where every input index fits (at batch 1
    the kernels are bound by the bytes they stream: 6 instead of 8 a weight took 0.70x the time on
    an AVX-512 Xeon; the int32 buffer stays what the state holds), else a view of the buffer."""
    array = indices.numpy()
    return array.astype(np.uint16) if in_features <= COMPACT_INDEX_LIMIT else array


def csr_forward(matrix: Tensor, inputs: Tensor, bias: Tensor | None) -> Tensor:
    """The (N, out) output through PyTorch's CSR product (MKL's on x86) of the condensed weight
    seen as a CSR with equal row lengths: a transposed view for N > 1, as `SparseLinear`'s."""
    if inputs.shape[0] == 1:
        row = inputs[0]
        out = torch.mv(matrix, row) if bias is None else torch.addmv(bias.detach(), matrix, row)
        return out.unsqueeze(0)
    out_t = torch.sparse.mm(matrix, ops.transposed(inputs.detach()))
    return (out_t if bias is None else out_t.add_(bias.detach().unsqueeze(1))).t()


def compute(how: str, layer: CondensedLinear, prepared: Prepared, inputs: Tensor) -> Tensor | None:
    """The output of one way ("numba1", "numba": the kernels on one or all threads; "csr")."""
    bias = layer._parameters["bias"]
    if how == "csr":
        return csr_forward(prepared.matrix(layer), inputs, bias)
    threads = 1 if how == "numba1" else native.configured_threads()
    return numba_forward(prepared, inputs, bias, layer.out_features, threads)


# ----------------------------------------------------------------------------- the choice
CSR_MIN_BATCH = 4  # where nothing is measured, batches from this take PyTorch's CSR product, smaller ones numba's kernels


def candidates(batch: int) -> list[str]:
    """The ways to compute CPU inference of `batch` inputs here: numba's kernels on one thread and on
    all configured threads, and from `CSR_MIN_BATCH` inputs PyTorch's CSR product. Below it the
    kernels alone, so that a model's layers keep to one thread pool: at batch 1 a chain of layers
    alternating numba's kernels and PyTorch's product took 1.2-1.4x the time of the kernels alone,
    though each layer alone had measured them alike."""
    names = ["numba1"] + (["numba"] if native.configured_threads() > 1 else [])
    return names + (["csr"] if batch >= CSR_MIN_BATCH else [])


def numba_by_work(work: int) -> str:
    return "numba1" if native.threads_for(work) == 1 else "numba"


def fixed_rule(batch: int, work: int) -> str:
    """The choice where nothing is measured: numba's kernels below `CSR_MIN_BATCH` inputs, on the
    calling thread for tiny products; PyTorch's CSR product (MKL's) from there: on one thread of
    an AVX-512 Xeon 2x the pairs kernel at batch 4, 1.9-2.9x the transposed kernel at batches 8-32
    and 1.3x at 128."""
    return numba_by_work(work) if batch < CSR_MIN_BATCH else "csr"


def decision_key(layer: CondensedLinear, batch: int, dtype: torch.dtype) -> tuple:
    """The shape class of a condensed product (see `dispatch`)."""
    return ("condensed", layer.out_features, layer.in_features, layer.fan_in, dispatch.size_class(batch), dtype, torch.get_num_threads())


def choose(layer: CondensedLinear, inputs: Tensor) -> str:
    """How this call computes: measured once per shape class (ITOP_KERNELS=auto), numba's kernels
    under ITOP_KERNELS=numba, the fixed rule for tiny products or once the probe budget is spent."""
    chooser = dispatch.active or dispatch.current()
    batch, work = inputs.shape[0], layer.values.numel() * inputs.shape[0]
    if chooser.mode == "numba":
        return numba_by_work(work)
    if chooser.mode != "auto" or work < dispatch.MIN_PROBE_WORK:
        return fixed_rule(batch, work)
    key = decision_key(layer, batch, inputs.dtype)
    how = chooser.decisions.get(key)
    if how is None:
        how = chooser.decide(key, lambda: timings(layer, batch, inputs.dtype), lambda: fixed_rule(batch, work))
    return how


def timings(layer: CondensedLinear, batch: int, dtype: torch.dtype) -> dict[str, float]:
    """Seconds per call of each way on this layer's weights (a shape class's own) and random inputs,
    timed as inference runs them: back to back (see `warm_times`)."""
    generator = torch.Generator().manual_seed(0)  # never the global one: probing must not change a run's draws
    inputs = torch.randn(batch, layer.in_features, generator=generator).to(dtype)
    prepared = layer._prepared(layer.values)

    def run(how: str):
        def call() -> None:
            if compute(how, layer, prepared, inputs) is None:
                raise RuntimeError("numba could not compile this kernel")  # no candidate then

        return call

    with torch.no_grad():
        return warm_times({how: run(how) for how in candidates(batch)})


PROBE_ROUNDS = 7


def warm_times(runs: dict) -> dict[str, float]:
    """The fastest over rounds (candidates in turn) of each candidate's second of two back-to-back
    calls. `dispatch.time_candidates` lets the thread pools fall asleep before each call, as between
    the products of a training step; a condensed layer serves inference, where the layers of a model
    follow one another with little in between (probes with sleeping pools chose one thread for
    the 3072-2048 and 2048-2048 layers of an MLP at batch 1, where two took 0.6x its time back to
    back and 0.8-0.9x inside the model with `itop.openmp`'s short spin). The fastest round, not the
    median: a virtual machine's cores stall for whole rounds, and medians chose one thread in some
    runs where two were faster."""
    times: dict[str, list[float]] = {}
    for name, run in runs.items():
        try:
            run()  # compiles, allocates, makes the CSR matrix
        except Exception:  # noqa: BLE001 - a candidate that cannot run is no candidate
            continue
        times[name] = []
    for _ in range(PROBE_ROUNDS):
        for name in times:
            runs[name]()
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


class Prepared:
    """What the CPU ways read, made once per state of a layer's tensors: the numpy views of
    (values, indices, rows, bias), whether a neuron is ablated, and the CSR matrix (on first use)."""

    def __init__(self, arrays: tuple, ablated: bool):
        self.arrays, self.ablated, self._matrix = arrays, ablated, None

    def matrix(self, layer: CondensedLinear) -> Tensor:
        """The weight as a CSR tensor sharing the values and indices (only the row pointers are new)."""
        if self._matrix is None:
            fan_in = layer.values.shape[1]
            counts = torch.zeros(layer.out_features + 1, dtype=torch.int64)
            counts[layer.rows + 1] = fan_in
            crow = counts.cumsum(0).to(layer.indices.dtype)
            shape = (layer.out_features, layer.in_features)
            self._matrix = torch.sparse_csr_tensor(
                crow, layer.indices.view(-1), layer.values.detach().view(-1), shape, check_invariants=False
            )
        return self._matrix


# ----------------------------------------------------------------------------- the PyTorch path
def _chunk_rows(batch: int, fan_in: int) -> int:
    """Kept rows per chunk, so that a chunk gathers at most `CHUNK_ELEMENTS` inputs."""
    return max(1, CHUNK_ELEMENTS // max(1, batch * fan_in))


def torch_products(inputs: Tensor, values: Tensor, indices: Tensor) -> Tensor:
    """(N, rows_kept): each kept row's dot product with the (N, in) `inputs`, in row chunks."""
    batch, (kept, fan_in) = inputs.shape[0], values.shape
    out = inputs.new_zeros(batch, kept)
    if fan_in == 0 or batch == 0:
        return out
    step = _chunk_rows(batch, fan_in)
    for start in range(0, kept, step):
        index = indices[start : start + step]
        gathered = inputs.index_select(1, index.reshape(-1)).view(batch, -1, fan_in)
        out[:, start : start + step] = torch.einsum("nrk,rk->nr", gathered, values[start : start + step])
    return out


def torch_values_grad(inputs: Tensor, grad: Tensor, indices: Tensor) -> Tensor:
    """(rows_kept, k): d loss / d values[r, j] = sum_n grad[n, r] * inputs[n, indices[r, j]]."""
    batch, (kept, fan_in) = inputs.shape[0], indices.shape
    out = grad.new_zeros(kept, fan_in)
    step = _chunk_rows(batch, fan_in)
    for start in range(0, kept if fan_in else 0, step):
        index = indices[start : start + step]
        gathered = inputs.index_select(1, index.reshape(-1)).view(batch, -1, fan_in)
        out[start : start + step] = torch.einsum("nrk,nr->rk", gathered, grad[:, start : start + step])
    return out


def torch_inputs_grad(values: Tensor, grad: Tensor, indices: Tensor, in_features: int) -> Tensor:
    """(N, in): each kept row's output gradient times its values, added at its input indices."""
    batch, (kept, fan_in) = grad.shape[0], values.shape
    out = grad.new_zeros(batch, in_features)
    step = _chunk_rows(batch, fan_in)
    for start in range(0, kept if fan_in else 0, step):
        index = indices[start : start + step]
        spread = grad[:, start : start + step, None] * values[start : start + step]
        out.index_add_(1, index.reshape(-1), spread.reshape(batch, -1))
    return out


class CondensedProduct(torch.autograd.Function):
    """The kept rows' products (N, rows_kept) with a backward that saves only the inputs and values
    (no gathered copy per chunk is kept for autograd): gradients equal the masked dense layer's."""

    @staticmethod
    def forward(ctx, inputs: Tensor, values: Tensor, indices: Tensor) -> Tensor:
        ctx.save_for_backward(inputs, values, indices)
        return torch_products(inputs.detach(), values.detach(), indices)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        inputs, values, indices = ctx.saved_tensors
        grad = grad.to(values.dtype)
        grad_inputs = torch_inputs_grad(values, grad, indices, inputs.shape[1]) if ctx.needs_input_grad[0] else None
        grad_values = torch_values_grad(inputs.to(values.dtype), grad, indices) if ctx.needs_input_grad[1] else None
        return grad_inputs, grad_values, None
