"""Sparse compute for low-density masked Linear layers on CPUs.

Masking keeps the arithmetic dense: a Linear layer at density 0.04 still multiplies every zero.
For the layers where it was measured to pay (float32 on the CPU, density at most `MAX_DENSITY`,
at least `MIN_WEIGHTS` weights, calls of at least `MIN_WORK` rows x weights;
`benchmarks/step_overhead.py`), the sparsifier swaps the module's
class to `MaskedCSRLinear`, whose forward multiplies by the active weights only (a CSR matrix built
from the mask's fixed pattern and the weights' current values) and whose backward computes the
weight gradient at the active positions only, or densely on steps whose criteria need the dense
gradient (gradient growth at an update, momentum criteria). The sparse products are those of the
truly sparse layers (`itop.sparse.ops`); the weight itself stays a dense, masked parameter (for a
layer that stores only its active weights, see `itop.sparse.SparseLinear`).
Everything else (GPU, bfloat16/float16, autocast, torch.compile, torch.func transforms, weights
other than the layer's own parameter, small calls) takes the dense `F.linear`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from ..sparse.ops import autocast_on, csr_forward, own_tensor, transposed, weight_grad
from ..sparse.structure import SparseStructure

MAX_DENSITY = 0.06
MIN_WORK = 100_000_000  # rows x weights of one call: below it the fixed cost of the sparse calls wins
MIN_WEIGHTS = 500_000  # at LeNet-300-100's 235k-weight layer the gain inside a real step was within noise


class SparsePattern:
    """The fixed sparse structure of one mask (flat positions in row-major order, which is also
    the order of CSR values), and whether the next backward must give the dense weight gradient."""

    def __init__(self, mask: Tensor, weight: Tensor):
        self.structure = SparseStructure(mask.flatten().nonzero().flatten(), tuple(mask.shape))
        self.flat = self.structure.positions
        self.dense_grad = False
        self.enabled = True  # off while an optimizer's closure runs: inactive weights may move inside such a step
        self.sampled_last = False  # the last backward gave the weight gradient at the active positions only
        self.weight = weight  # the parameter it belongs to: other tensors (torch.func) take the dense path


_dense_only = threading.local()


@contextlib.contextmanager
def dense_compute():
    """Within this block every MaskedCSRLinear computes densely (e.g. to count dense FLOPs)."""
    before = getattr(_dense_only, "on", False)
    _dense_only.on = True
    try:
        yield
    finally:
        _dense_only.on = before


def _transformed(x: Tensor) -> bool:
    """Is `x` wrapped by a torch.func transform (vmap, grad), which these kernels do not support?"""
    try:
        return bool(torch._C._functorch.is_functorch_wrapped_tensor(x))
    except AttributeError:
        return False


def _sparse_path(x: Tensor, weight: Tensor, pattern: SparsePattern) -> bool:
    return (
        pattern.enabled
        and weight is pattern.weight
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and x.dtype == torch.float32
        and x.numel() * weight.shape[0] >= MIN_WORK
        and not autocast_on("cpu")
        and not torch.compiler.is_compiling()
        and not getattr(_dense_only, "on", False)
        and not _transformed(x)
    )


class _MaskedCSRLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, pattern: SparsePattern) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        values = weight.reshape(-1).index_select(0, pattern.flat)
        out = csr_forward(pattern.structure, values, rows)
        out = out + bias if bias is not None else out.contiguous()
        ctx.save_for_backward(rows, weight)
        ctx.pattern, ctx.input_shape, ctx.has_bias = pattern, x.shape, bias is not None
        return own_tensor(out.reshape(*x.shape[:-1], weight.shape[0]))  # not a view: inplace activations may follow

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        rows, weight = ctx.saved_tensors
        pattern = ctx.pattern
        grads = grad_out.reshape(-1, weight.shape[0])
        grad_x = grads.mm(weight).reshape(ctx.input_shape) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            pattern.sampled_last = not pattern.dense_grad
            if pattern.dense_grad:
                grad_w = grads.t().mm(rows)
            else:
                values = weight_grad(pattern.structure, transposed(grads), transposed(rows))
                grad_w = torch.zeros_like(weight)
                grad_w.view(-1).index_copy_(0, pattern.flat, values)
        grad_b = grads.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


def _plain_linear() -> nn.Linear:
    return nn.Linear.__new__(nn.Linear)


class MaskedCSRLinear(nn.Linear):
    """An `nn.Linear` that multiplies by its active weights only (where `_sparse_path` allows).

    Copies (`copy.deepcopy`, pickling) are plain nn.Linear layers: no sparsifier keeps their
    pattern up to date (think of an EMA copy of the model).
    """

    _itop_pattern: SparsePattern

    def forward(self, x: Tensor) -> Tensor:
        if _sparse_path(x, self.weight, self._itop_pattern):
            return _MaskedCSRLinearFunction.apply(x, self.weight, self.bias, self._itop_pattern)
        self._itop_pattern.sampled_last = False
        return F.linear(x, self.weight, self.bias)

    def __reduce_ex__(self, protocol):
        return _plain_linear, (), {k: v for k, v in self.__dict__.items() if k != "_itop_pattern"}


def pays_off(module: nn.Module, mask: Tensor, nnz: int) -> bool:
    """Whether this layer gets the sparse kernels: a plain nn.Linear weight on the CPU in float32,
    sparse and large enough for the measured gain."""
    weight = getattr(module, "weight", None)
    return (
        type(module) in (nn.Linear, MaskedCSRLinear)
        and weight is not None
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and mask.numel() >= MIN_WEIGHTS
        and nnz <= MAX_DENSITY * mask.numel()
    )


def use_sparse(module: nn.Linear, mask: Tensor) -> SparsePattern:
    """Swap `module` to MaskedCSRLinear with `mask`'s pattern (state_dict and hooks are unchanged)."""
    pattern = SparsePattern(mask, module.weight)
    module.__class__ = MaskedCSRLinear
    module._itop_pattern = pattern
    return pattern


def use_dense(module: nn.Module) -> None:
    """Give `module` back its plain nn.Linear class."""
    if type(module) is MaskedCSRLinear:
        module.__class__ = nn.Linear
        del module._itop_pattern


def linear_owners(model: nn.Module, params: Mapping[str, Tensor]) -> dict[str, nn.Module]:
    """The Linear modules whose `weight` is one of the sparse parameters, by parameter name."""
    owners = {}
    for module_name, module in model.named_modules():
        name = f"{module_name}.weight" if module_name else "weight"
        if isinstance(module, nn.Linear) and params.get(name) is getattr(module, "weight", None):
            owners[name] = module
    return owners
