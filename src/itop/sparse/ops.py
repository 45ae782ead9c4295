"""The sparse products behind truly sparse Linear layers, with a hand-written backward.

Autograd through `torch.sparse` would build a dense gradient of the weight's shape; here the
backward computes

- the weight gradient at the active positions only: entry j is sum over rows of
  grad_out[:, row_j] * x[:, col_j];
- the input gradient as grad_out @ W, through the CSR of the transposed weight or a scatter over
  the weight's own CSR.

Each product has a pure-PyTorch form (`torch.sparse.mm`, MKL on Intel CPUs;
`torch.sparse.sampled_addmm`) and, where numba is installed and it was measured faster on the CPU,
a compiled one (`native.py`); the constants below say which serves which batch size. The forward
and weight gradient are shared with the masked engine's sparse Linear kernels
(`itop.sparsity.kernels`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import native
from .structure import SparseStructure

# Which kernels serve which batch sizes (rows of the call), from measurements on the 2-core CPU
# (benchmarks/truly_sparse.py); the numba ones only where numba is installed.
NATIVE_FORWARD_MIN_ROWS = 32  # forward: numba's loop from this many rows (1.5x MKL at 128), MKL below, mv for one row
NATIVE_INPUT_GRAD_MAX_ROWS = 16  # input gradient: numba's scatter up to this many rows, MKL on the transposed CSR above
NATIVE_TRANSPOSE_MIN_SIZE = 1 << 16  # transposing copies: numba's blocked loop from this many elements, PyTorch's copy below
_VECTOR_ROWS = 8  # sampled_addmm's CPU kernel takes a scalar path below 8 rows: 2 rows cost 2.4x what 8 do


def autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def transposed(matrix: Tensor) -> Tensor:
    """matrix.t() as a contiguous tensor: free when `matrix` is itself a transposed view, which is
    how these products hand their outputs on (so a chain of sparse layers never copies)."""
    flipped = matrix.t()
    if flipped.is_contiguous():
        return flipped
    if matrix.is_contiguous() and matrix.numel() >= NATIVE_TRANSPOSE_MIN_SIZE and native.usable(matrix):
        return native.transpose(matrix)
    return flipped.contiguous()


def own_tensor(view: Tensor) -> Tensor:
    """`view`'s elements, shape and strides as a tensor of its own (not a view), without a copy.

    Autograd forbids in-place changes (an inplace ReLU or dropout, `out += x`) to a view made
    inside a custom Function; copying the output would instead cost the forward a pass over it.
    """
    return view.new_empty(0).set_(view)


def forward_t(structure: SparseStructure, values: Tensor, rows_t: Tensor, bias: Tensor | None = None) -> Tensor:
    """W @ rows_t + bias for a contiguous (in, batch) matrix: (out, batch), with the fastest
    product for the batch: a CSR matrix-vector product for one row, MKL's CSR product for a few,
    numba's loop (bias added in the same pass) for many."""
    if rows_t.shape[1] >= NATIVE_FORWARD_MIN_ROWS and native.usable(rows_t, values):
        return native.forward(structure.crow, structure.col, values, rows_t, bias)
    if rows_t.shape[1] == 1:
        out_t = torch.mv(structure.matrix(values), rows_t[:, 0]).unsqueeze(1)
    else:
        out_t = torch.sparse.mm(structure.matrix(values), rows_t)
    return out_t if bias is None else out_t.add_(bias.unsqueeze(1))


def csr_forward(structure: SparseStructure, values: Tensor, rows: Tensor) -> Tensor:
    """rows @ W^T for a (batch, in) matrix `rows`: (batch, out), as a transposed view."""
    return forward_t(structure, values, transposed(rows)).t()


def input_grad_t(structure: SparseStructure, values: Tensor, grads_t: Tensor) -> Tensor:
    """(grads @ W)^T for a contiguous (out, batch) matrix `grads_t`: (in, batch)."""
    if grads_t.shape[1] <= NATIVE_INPUT_GRAD_MAX_ROWS and native.usable(grads_t, values):
        return native.input_grad(structure.crow, structure.col, values, grads_t, structure.shape[1])
    return torch.sparse.mm(structure.transposed_matrix(values), grads_t)


def weight_grad(structure: SparseStructure, grads_t: Tensor, rows_t: Tensor) -> Tensor:
    """(grads^T @ rows) at the active positions only, in the order of the values: (nnz,), from
    contiguous (out, batch) and (in, batch) matrices.

    numba's per-weight dot products where installed; otherwise `torch.sparse.sampled_addmm`, with
    fewer than 8 rows (batch 2, SET's recipe) padded to 8 on the CPU (faster than unpadded).
    """
    if native.usable(grads_t, rows_t):
        return native.weight_grad(structure.crow, structure.col, grads_t, rows_t)
    if rows_t.shape[1] < _VECTOR_ROWS and rows_t.device.type == "cpu":
        pad = _VECTOR_ROWS - rows_t.shape[1]
        rows_t = torch.cat([rows_t, rows_t.new_zeros(rows_t.shape[0], pad)], 1)
        grads_t = torch.cat([grads_t, grads_t.new_zeros(grads_t.shape[0], pad)], 1)
    ones = getattr(structure, "_ones", None)
    if ones is None or ones.dtype != rows_t.dtype or ones.device != rows_t.device:
        ones = structure._ones = torch.ones(structure.nnz, dtype=rows_t.dtype, device=rows_t.device)
    return torch.sparse.sampled_addmm(structure.matrix(ones), grads_t, rows_t.t().contiguous(), beta=0.0).values()


class SparseLinearFunction(torch.autograd.Function):
    """y = x @ W^T + b with W given by (structure, values).

    The output holds an (out, batch) result in transposed order, so the next sparse layer reads
    its input without a copy; it is a tensor of its own, not a view, so inplace activations and
    residual additions may change it. `recorder`, when not None, is called in the backward with
    the (inputs, output gradients) of the call: what gradient growth needs to score the inactive
    positions of the layer (`itop.sparsity.index_growth`).
    """

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, bias: Tensor | None, structure: SparseStructure, recorder) -> Tensor:
        rows_t = transposed(x.reshape(-1, x.shape[-1]))
        out_t = forward_t(structure, values, rows_t, bias)
        ctx.save_for_backward(rows_t, values)
        ctx.structure, ctx.recorder, ctx.input_shape, ctx.has_bias = structure, recorder, x.shape, bias is not None
        out = out_t.t() if x.dim() == 2 else out_t.t().reshape(*x.shape[:-1], structure.shape[0])
        return own_tensor(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        rows_t, values = ctx.saved_tensors
        structure = ctx.structure
        grads_t = transposed(grad_out.reshape(-1, structure.shape[0]))
        if ctx.recorder is not None:
            ctx.recorder(rows_t.t(), grads_t.t())
        grad_x = grad_values = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = input_grad_t(structure, values, grads_t).t().reshape(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            grad_values = weight_grad(structure, grads_t, rows_t)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grads_t.sum(1)
        return grad_x, grad_values, grad_b, None, None
