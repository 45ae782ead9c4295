"""Sparse compute for low-density masked Linear layers on CPUs.

Masking keeps the arithmetic dense: a Linear layer at density 0.04 still multiplies every zero.
For Linear layers where it may pay (float32 on the CPU, at least `MIN_PROBE_WEIGHTS` weights,
density at most `MAX_PROBE_DENSITY`), the sparsifier swaps the module's class to
`MaskedCSRLinear`, and each call takes the sparse path or the dense `F.linear` as measured on this
machine for its shape class (layer shape, density, batch: `itop.sparse.dispatch`, which times both,
forward and backward, the first time the class is met). Where nothing is measured (the probe budget
spent) the sparse path serves layers of at least `MIN_WEIGHTS` weights at density at most
`MAX_DENSITY`, in calls of at least `MIN_WORK` rows x weights (`benchmarks/step_overhead.py`);
ITOP_KERNELS=torch or dense never swaps, ITOP_KERNELS=numba always takes the sparse path.
The sparse path's forward multiplies by the active weights only (a CSR matrix built from the
mask's fixed pattern and the weights' current values); its backward computes the weight gradient
at the active positions only, or densely on steps whose criteria need the dense
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

from ..sparse import dispatch, native
from ..sparse.ops import autocast_on, forward_t, input_grad_t, own_tensor, random_structure, transposed, weight_grad
from ..sparse.structure import SparseStructure

MAX_PROBE_DENSITY = 0.3  # above it, or under MIN_PROBE_WEIGHTS weights, the dense layer is never probed against
MIN_PROBE_WEIGHTS = 10_000
# The sparse path is taken where its probe took at most this share of the dense path's time: inside
# a step it loses what a probe of one layer does not show (LeNet-300-100's first layer, measured
# even with dense alone, cost a step 7% more on the sparse path; AVX-512 Xeon).
SPARSE_MARGIN = 0.85
MIN_PROBE_CALL = 1 << 22  # rows x weights of a call below which the dense product takes tens of microseconds: not probed
# The rule where nothing is measured, from measurements on a 2-core AMD EPYC:
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
        # every gradient written since the masks last zeroed it came from the sampled backward, so it
        # is zero at the inactive weights already and the per-step multiply by the mask can skip it
        self.grad_clean = False
        self.weight = weight  # the parameter it belongs to: other tensors (torch.func) take the dense path
        self.nnz = self.structure.nnz


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
        and not autocast_on("cpu")
        and not torch.compiler.is_compiling()
        and not getattr(_dense_only, "on", False)
        and not _transformed(x)
        and _sparse_pays(x, pattern)
    )


def fixed_rule(shape: tuple[int, int], nnz: int, rows: int) -> str:
    """The choice (sparse path or dense) where nothing is measured (the probe budget spent)."""
    weights = shape[0] * shape[1]
    return "sparse" if rows * weights >= MIN_WORK and weights >= MIN_WEIGHTS and nnz <= MAX_DENSITY * weights else "dense"


def decision_key(shape: tuple[int, int], nnz: int, rows: int, train: bool) -> tuple:
    """The shape class of a masked layer's call (see `itop.sparse.dispatch`)."""
    return (
        "masked" if train else "masked_eval",
        *shape,
        nnz.bit_length(),
        dispatch.size_class(rows),
        torch.float32,
        torch.get_num_threads(),
    )


def _sparse_pays(x: Tensor, pattern: SparsePattern) -> bool:
    """Whether this call takes the sparse path: measured once per shape class (ITOP_KERNELS=auto),
    always with ITOP_KERNELS=numba, never with torch or dense."""
    chooser = dispatch.active or dispatch.current()
    if chooser.mode != "auto":
        return chooser.mode == "numba"
    shape, nnz = pattern.structure.shape, pattern.nnz
    rows, train = x.numel() // shape[1], torch.is_grad_enabled()
    key = decision_key(shape, nnz, rows, train)
    how = chooser.decisions.get(key)
    if how is None:
        if torch._C._len_torch_dispatch_stack() or rows * shape[0] * shape[1] < MIN_PROBE_CALL:
            return fixed_rule(shape, nnz, rows) == "sparse"  # FlopCounterMode would count a probe; small calls stay dense
        how = chooser.decide(
            key, lambda: masked_timings(shape, nnz, rows, train), lambda: fixed_rule(shape, nnz, rows), {"sparse": 1 / SPARSE_MARGIN}
        )
    return how == "sparse"


def _active_values(weight: Tensor, pattern: SparsePattern) -> Tensor:
    """The weight's values at the pattern's positions, in CSR order."""
    if native.usable(weight) and weight.is_contiguous():
        return native.gather(*pattern.structure.arrays(), weight)
    return weight.reshape(-1).index_select(0, pattern.flat)


def _dense_at_active(values: Tensor, pattern: SparsePattern) -> Tensor:
    """A dense matrix of the pattern's shape: `values` at its positions, zero elsewhere."""
    if native.usable(values):
        return native.scatter(*pattern.structure.arrays(), values, pattern.structure.shape)
    return values.new_zeros(pattern.structure.shape).view(-1).index_copy_(0, pattern.flat, values).view(pattern.structure.shape)


class _MaskedCSRLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, pattern: SparsePattern) -> Tensor:
        rows_t = transposed(x.reshape(-1, x.shape[-1]))
        values = _active_values(weight, pattern)
        out = forward_t(pattern.structure, values, rows_t).t()
        out = out + bias if bias is not None else out.contiguous()  # contiguous, as F.linear's output (a model may .view() it)
        ctx.save_for_backward(rows_t, values)
        ctx.pattern, ctx.input_shape, ctx.has_bias = pattern, x.shape, bias is not None
        return own_tensor(out.reshape(*x.shape[:-1], weight.shape[0]))  # not a view: inplace activations may follow

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        rows_t, values = ctx.saved_tensors
        pattern = ctx.pattern
        structure = pattern.structure
        grads_t = transposed(grad_out.reshape(-1, structure.shape[0]))
        grad_x = input_grad_t(structure, values, grads_t).t().reshape(ctx.input_shape) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            pattern.sampled_last = not pattern.dense_grad
            if pattern.dense_grad:
                pattern.grad_clean = False
                grad_w = grads_t.mm(rows_t.t())
            else:  # zero at every inactive weight: the gradient needs no masking after
                grad_w = _dense_at_active(weight_grad(structure, grads_t, rows_t), pattern)
        grad_b = grads_t.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
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
        pattern = self._itop_pattern
        pattern.sampled_last = False
        if torch.is_grad_enabled() and self.weight.requires_grad:  # its backward would write a dense gradient
            pattern.grad_clean = False
        return F.linear(x, self.weight, self.bias)

    def __reduce_ex__(self, protocol):
        return _plain_linear, (), {k: v for k, v in self.__dict__.items() if k != "_itop_pattern"}


def pays_off(module: nn.Module, mask: Tensor, nnz: int) -> bool:
    """Whether this layer becomes a `MaskedCSRLinear`: a plain nn.Linear weight on the CPU in
    float32, of at least `MIN_PROBE_WEIGHTS` weights at density at most `MAX_PROBE_DENSITY`, unless
    ITOP_KERNELS=torch or dense. Each of its calls then takes the sparse path where that was
    measured faster (`_sparse_pays`)."""
    weight = getattr(module, "weight", None)
    return (
        type(module) in (nn.Linear, MaskedCSRLinear)
        and weight is not None
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and mask.numel() >= MIN_PROBE_WEIGHTS
        and nnz <= MAX_PROBE_DENSITY * mask.numel()
        and (dispatch.active or dispatch.current()).mode in ("auto", "numba")
    )


def masked_timings(shape: tuple[int, int], nnz: int, rows: int, train: bool = True) -> dict[str, float]:
    """Seconds per call of the sparse path and of the dense `F.linear`, forward and (if `train`)
    backward, for a layer of this shape class on random data. In training the dense path's time
    includes the multiply that masks its weight gradient; the sparse path's gradient is zero at
    the inactive weights already."""
    generator = torch.Generator().manual_seed(0)  # never the global one: probing must not change a run's draws
    mask = torch.zeros(shape[0] * shape[1], dtype=torch.bool)
    mask[random_structure(shape, nnz, generator).positions] = True
    weight, bias = torch.randn(shape, generator=generator), torch.randn(shape[0], generator=generator)
    x, grad_out = torch.randn(rows, shape[1], generator=generator), torch.randn(rows, shape[0], generator=generator)
    pattern = SparsePattern(mask.view(shape), weight)
    if not train:
        with torch.no_grad():
            return dispatch.time_candidates(
                {"sparse": lambda: _MaskedCSRLinearFunction.apply(x, weight, bias, pattern), "dense": lambda: F.linear(x, weight, bias)}
            )
    leaves = [t.requires_grad_() for t in (x, weight, bias)]
    multiplier = mask.view(shape).to(weight.dtype)

    def dense() -> None:  # its weight gradient then takes the mask's multiply, which the sparse path's needs not
        torch.autograd.grad(F.linear(x, weight, bias), leaves, grad_out)[1].mul_(multiplier)

    with torch.enable_grad():
        return dispatch.time_candidates(
            {
                "sparse": lambda: torch.autograd.grad(_MaskedCSRLinearFunction.apply(x, weight, bias, pattern), leaves, grad_out),
                "dense": dense,
            }
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
