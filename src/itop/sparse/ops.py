"""The sparse products behind truly sparse Linear layers, with a hand-written backward.

Autograd through `torch.sparse` would build a dense gradient of the weight's shape; here the
backward computes

- the weight gradient at the active positions only: entry j is sum over rows of
  grad_out[:, row_j] * x[:, col_j] (`torch.sparse.sampled_addmm` on the weight's CSR pattern);
- the input gradient as grad_out @ W through the CSR of the transposed weight.

The forward is one CSR-times-dense product (`torch.sparse.mm`, MKL on Intel CPUs). These are
shared with the masked engine's sparse Linear kernels (`itop.sparsity.kernels`), which multiply a
dense weight's active entries the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import native
from .structure import SparseStructure

NATIVE_MAX_ROWS = 16  # batches up to this many rows use the numba kernels when present (measured in benchmarks/truly_sparse.py)


def use_native(rows: Tensor, values: Tensor) -> bool:
    """Small batches on the CPU, where the numba kernels beat PyTorch's sparse products."""
    return rows.shape[0] <= NATIVE_MAX_ROWS and native.usable(rows, values)


def csr_forward(structure: SparseStructure, values: Tensor, rows: Tensor) -> Tensor:
    """rows @ W^T for a (batch, in) matrix `rows`: (batch, out)."""
    return torch.sparse.mm(structure.matrix(values), rows.t().contiguous()).t()


def csr_input_grad(structure: SparseStructure, values: Tensor, grads: Tensor) -> Tensor:
    """grads @ W for a (batch, out) matrix `grads`: (batch, in)."""
    return torch.sparse.mm(structure.transposed_matrix(values), grads.t().contiguous()).t()


_VECTOR_ROWS = 8  # sampled_addmm's CPU kernel takes a scalar path below 8 rows: 2 rows cost 2.4x what 8 do


def sampled_weight_grad(structure: SparseStructure, grads: Tensor, rows: Tensor) -> Tensor:
    """(grads^T @ rows) at the active positions only, in the order of the values: (nnz,).

    Fewer than 8 rows (batch 2, SET's recipe) are padded with zero rows to 8 on the CPU, which
    the measurement in `benchmarks/truly_sparse.py` found faster than the unpadded call.
    """
    if rows.shape[0] < _VECTOR_ROWS and rows.device.type == "cpu":
        pad = _VECTOR_ROWS - rows.shape[0]
        rows = torch.cat([rows, rows.new_zeros(pad, rows.shape[1])])
        grads = torch.cat([grads, grads.new_zeros(pad, grads.shape[1])])
    ones = getattr(structure, "_ones", None)
    if ones is None or ones.dtype != rows.dtype:
        ones = structure._ones = torch.ones(structure.nnz, dtype=rows.dtype, device=rows.device)
    pattern = structure.matrix(ones)
    return torch.sparse.sampled_addmm(pattern, grads.t().contiguous(), rows.contiguous(), beta=0.0).values()


class SparseLinearFunction(torch.autograd.Function):
    """y = x @ W^T + b with W given by (structure, values).

    `recorder`, when not None, is called in the backward with the (rows, grad_out) pair of the call:
    what gradient growth needs to score the inactive positions of the layer (see `growth.py`).
    """

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, bias: Tensor | None, structure: SparseStructure, recorder) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = csr_forward(structure, values, rows)
        out = out + bias if bias is not None else out.contiguous()
        ctx.save_for_backward(rows, values)
        ctx.structure, ctx.recorder, ctx.input_shape, ctx.has_bias = structure, recorder, x.shape, bias is not None
        return out.reshape(*x.shape[:-1], structure.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        rows, values = ctx.saved_tensors
        structure = ctx.structure
        grads = grad_out.reshape(-1, structure.shape[0])
        if ctx.recorder is not None:
            ctx.recorder(rows, grads)
        fast = use_native(rows, values)
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_x = (native.input_grad(structure.crow, structure.col, values, grads, structure.shape[1]) if fast
                      else csr_input_grad(structure, values, grads)).reshape(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            grad_values = (native.weight_grad(structure.crow, structure.col, grads, rows) if fast
                           else sampled_weight_grad(structure, grads, rows))
        grad_b = grads.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_values, grad_b, None, None
