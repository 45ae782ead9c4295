"""SparseLinear's output under the in-place patterns users write after a Linear layer.

Each forced kernel mode (`ITOP_KERNELS`: PyTorch's products, numba's where installed, dense) at
one row (PyTorch's matrix-vector product), two rows and 128 rows.
"""

import pytest
import torch
from torch import nn

from itop.sparse import SparseLinear, dispatch, native, ops

BACKENDS = ["torch", "dense"] + (["numba"] if native.AVAILABLE else [])
FEATURES = 48  # in = out, so the residual patterns can add the input


def inplace_relu(out, x):
    return nn.ReLU(inplace=True)(out)


def inplace_dropout(out, x):
    torch.manual_seed(7)  # the same mask for the sparse model and its dense reference
    return nn.Dropout(p=0.5, inplace=True)(out)


def add_(out, x):
    return out.add_(x)


def plus_equals(out, x):
    out += x
    return out


PATTERNS = [inplace_relu, inplace_dropout, add_, plus_equals]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run with each forced kernel mode (ITOP_KERNELS=torch, dense, numba where installed)."""
    monkeypatch.setattr(dispatch, "active", dispatch.Dispatcher(mode=request.param))
    return request.param


def laid_out_like(dense_out, sparse_out):
    """`dense_out` with `sparse_out`'s strides, so a random in-place op (dropout) draws the same mask."""
    return torch.empty_strided(sparse_out.shape, sparse_out.stride(), dtype=sparse_out.dtype).copy_(dense_out)


def run(first, second, x, pattern, like=None):
    """first -> in-place pattern -> second, the second layer reading the first's output."""
    out = first(x)
    if like is not None:
        out = laid_out_like(out, like)
    hidden = pattern(out, x)
    return hidden, second(hidden)


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(1,), (2,), (128,), (1, 1), (1, 2), (2, 64)], ids=str)
def test_inplace_after_sparse_layer_matches_dense_gradients(backend, pattern, dtype, shape):
    torch.manual_seed(0)
    first = SparseLinear(FEATURES, FEATURES, nnz=500).to(dtype)
    second = SparseLinear(FEATURES, 10, nnz=200).to(dtype)
    dense_first, dense_second = first.to_dense(), second.to_dense()
    x = torch.randn(*shape, FEATURES, dtype=dtype, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()

    hidden, out = run(first, second, x, pattern)
    _, ref = run(dense_first, dense_second, x_ref, pattern, like=hidden)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)

    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(x.grad, x_ref.grad, **tol)
    for sparse, dense in ((first, dense_first), (second, dense_second)):
        torch.testing.assert_close(sparse.values.grad, dense.weight.grad.reshape(-1)[sparse.indices], **tol)
        torch.testing.assert_close(sparse.bias.grad, dense.bias.grad, **tol)


def test_output_is_not_a_view_and_keeps_the_transposed_layout():
    layer = SparseLinear(FEATURES, 10, nnz=100)
    out = layer(torch.randn(5, FEATURES, requires_grad=True))
    assert not out._is_view()
    assert out.t().is_contiguous()  # the next sparse layer reads it without a copy


def test_own_tensor_shares_memory_without_being_a_view():
    base = torch.randn(3, 4)
    own = ops.own_tensor(base.t())
    assert not own._is_view() and own.data_ptr() == base.data_ptr()
    assert torch.equal(own, base.t())
