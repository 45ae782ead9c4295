"""The sparse products behind truly sparse Linear layers, with a hand-written backward.

Autograd through `torch.sparse` would build a dense gradient of the weight's shape; here the
backward computes

- the weight gradient at the active positions only: entry j is sum over rows of
  grad_out[:, row_j] * x[:, col_j];
- the input gradient as grad_out @ W, through the CSR of the transposed weight or a scatter over
  the weight's own CSR.

Each product has candidates: PyTorch's (`torch.sparse.mm`, MKL on Intel CPUs; `torch.mv` for one
row; `torch.sparse.sampled_addmm`), numba's (`native.py`, where installed) on the calling thread
(`numba1`) or over the configured threads (`numba`); for the input gradient also numba over the
transposed weight's CSR (`csc1`, `csc`); and the dense computation (`dense`: the
weight made dense from its values, then a dense product; only up to
`dispatch.DENSE_MAX_ELEMENTS`), so that where the dense layer could exist the truly sparse one is
not measurably slower. Which one serves a call is measured per shape class on the machine at hand
(`dispatch.py`); the constants below are the rule where nothing is measured (off the CPU, once the
probe budget is spent, under `torch.compile` or a dispatch mode such as `FlopCounterMode`). The forward and weight gradient are shared with the
masked engine's sparse Linear kernels (`itop.sparsity.kernels`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import dispatch, native
from .structure import SparseStructure

# The rule where nothing is measured, from measurements on a 2-core AMD EPYC (benchmarks/truly_sparse.py).
NATIVE_FORWARD_MIN_ROWS = 32  # forward: numba's loop from this many rows (1.5x MKL at 128), MKL below, mv for one row
NATIVE_INPUT_GRAD_MAX_ROWS = 16  # input gradient: numba's scatter up to this many rows, MKL on the transposed CSR above
# Transposing copies of fewer elements take PyTorch's copy unmeasured; larger ones are measured (`transpose_way`).
NATIVE_TRANSPOSE_MIN_SIZE = 1 << 16
_VECTOR_ROWS = 8  # sampled_addmm's CPU kernel takes a scalar path below 8 rows: 2 rows cost 2.4x what 8 do
OPS = ("forward", "input_grad", "weight_grad")


def autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def transposed(matrix: Tensor) -> Tensor:
    """matrix.t() as a contiguous tensor: free when `matrix` is itself a transposed view, which is
    how these products hand their outputs on (so a chain of sparse layers never copies); else a
    copy, made the way `transpose_way` chooses."""
    flipped = matrix.t()
    if flipped.is_contiguous():
        return flipped
    if matrix.is_contiguous() and matrix.numel() >= NATIVE_TRANSPOSE_MIN_SIZE and native.usable(matrix):
        how = transpose_way(matrix)
        if how != "torch":
            return native.transpose(matrix, how)
    return flipped.contiguous()


def transpose_way(matrix: Tensor) -> str:
    """How to copy `matrix` transposed: numba's sweep by row "bands" or column "blocks", or
    PyTorch's copy ("torch"). Measured once per shape class (ITOP_KERNELS=auto): which sweep wins
    depends on the CPU (the input batch of a 3072-wide layer, inside a training step at batch 128:
    bands 0.39 against 0.66 ms on a 2-core Xeon, blocks 0.27-0.33 against 0.40-0.44 ms on a 2-core
    AMD EPYC). ITOP_KERNELS=numba takes `native.transpose_rule`, torch and dense PyTorch's copy."""
    chooser = dispatch.active or dispatch.current()
    rows, cols = matrix.shape
    if chooser.mode != "auto":
        return native.transpose_rule(rows, cols) if chooser.mode == "numba" else "torch"
    if torch._C._len_torch_dispatch_stack():
        return native.transpose_rule(rows, cols)
    key = transpose_key(rows, cols, matrix.dtype)
    how = chooser.decisions.get(key)
    if how is None:
        how = chooser.decide(key, lambda: transpose_timings(rows, cols, matrix.dtype), lambda: native.transpose_rule(rows, cols))
    return how


def transpose_key(rows: int, cols: int, dtype: torch.dtype) -> tuple:
    """The shape class of a transposing copy: rows rounded up to a power of two (a batch), columns exact."""
    return ("transpose", dispatch.size_class(rows), cols, dtype, torch.get_num_threads())


TRANSPOSE_PROBE_BYTES = 8 << 20  # the probe's sources together: more than a core's L2, as a batch fresh from a loader is


def transpose_timings(rows: int, cols: int, dtype: torch.dtype) -> dict[str, float]:
    """Seconds per transposing copy of a (rows, cols) matrix, for each way `transpose_way` knows.
    Each call reads the next of a few random matrices, so that, as in a step, the source comes from
    the last-level cache or memory. On a 2-core AMD EPYC, where blocks win inside a step, one
    source read again and again chose bands in 1 of 12 probes and in 1 of 2 on a busier day;
    these sources chose blocks in 12 of 12."""
    generator = torch.Generator().manual_seed(0)
    count = max(1, min(8, TRANSPOSE_PROBE_BYTES // (rows * cols * torch.empty(0, dtype=dtype).element_size())))
    sources = [torch.randn(rows, cols, generator=generator).to(dtype) for _ in range(count)]
    turn = [0]

    def source() -> Tensor:
        turn[0] += 1
        return sources[turn[0] % count]

    return dispatch.time_candidates(
        {
            "bands": lambda: native.transpose(source(), "bands"),
            "blocks": lambda: native.transpose(source(), "blocks"),
            "torch": lambda: source().t().contiguous(),
        }
    )


def own_tensor(view: Tensor) -> Tensor:
    """`view`'s elements, shape and strides as a tensor of its own (not a view), without a copy.

    Autograd forbids in-place changes (an inplace ReLU or dropout, `out += x`) to a view made
    inside a custom Function; copying the output would instead cost the forward a pass over it.
    """
    return view.new_empty(0).set_(view)


# ----------------------------------------------------------------------------- the candidates


def _dense_weight(structure: SparseStructure, values: Tensor) -> Tensor:
    out_features, in_features = structure.shape
    flat = values.new_zeros(out_features * in_features)
    return flat.index_copy_(0, structure.positions, values.detach()).view(out_features, in_features)


def _threads(how: str) -> int:
    return 1 if how == "numba1" else native.configured_threads()


def _forward(how: str, structure: SparseStructure, values: Tensor, rows_t: Tensor, bias: Tensor | None) -> Tensor:
    if how.startswith("numba") and native.usable(rows_t, values):
        return native.forward(*structure.arrays(), values, rows_t, bias, _threads(how))
    if how == "dense":
        weight = _dense_weight(structure, values)
        return weight.mm(rows_t) if bias is None else torch.addmm(bias.detach().unsqueeze(1), weight, rows_t)
    if rows_t.shape[1] == 1:
        out_t = torch.mv(structure.matrix(values), rows_t[:, 0]).unsqueeze(1)
    else:
        out_t = torch.sparse.mm(structure.matrix(values), rows_t)
    return out_t if bias is None else out_t.add_(bias.unsqueeze(1))


def _input_grad(how: str, structure: SparseStructure, values: Tensor, grads_t: Tensor) -> Tensor:
    if how.startswith("csc") and native.usable(grads_t, values):
        return native.input_grad_csc(structure.transposed_arrays(), values, grads_t, 1 if how == "csc1" else native.configured_threads())
    if how.startswith("numba") and native.usable(grads_t, values):
        return native.input_grad(*structure.arrays(), values, grads_t, structure.shape[1], _threads(how))
    if how == "dense":
        return _dense_weight(structure, values).t().mm(grads_t)
    return torch.sparse.mm(structure.transposed_matrix(values), grads_t)


def _weight_grad(how: str, structure: SparseStructure, grads_t: Tensor, rows_t: Tensor) -> Tensor:
    if how.startswith("numba") and native.usable(grads_t, rows_t):
        return native.weight_grad(*structure.arrays(), grads_t, rows_t, _threads(how))
    if how == "dense":
        return grads_t.mm(rows_t.t()).view(-1).index_select(0, structure.positions)
    if rows_t.shape[1] < _VECTOR_ROWS and rows_t.device.type == "cpu":
        pad = _VECTOR_ROWS - rows_t.shape[1]
        rows_t = torch.cat([rows_t, rows_t.new_zeros(rows_t.shape[0], pad)], 1)
        grads_t = torch.cat([grads_t, grads_t.new_zeros(grads_t.shape[0], pad)], 1)
    ones = getattr(structure, "_ones", None)
    if ones is None or ones.dtype != rows_t.dtype or ones.device != rows_t.device:
        ones = structure._ones = torch.ones(structure.nnz, dtype=rows_t.dtype, device=rows_t.device)
    return torch.sparse.sampled_addmm(structure.matrix(ones), grads_t, rows_t.t().contiguous(), beta=0.0).values()


# ----------------------------------------------------------------------------- the choice


def _numba_by_work(nnz: int, batch: int) -> str:
    return "numba1" if nnz * batch < native.PARALLEL_MIN_WORK else "numba"


def fixed_rule(op: str, shape: tuple[int, int], nnz: int, batch: int, tensor: Tensor) -> str:
    """The choice where nothing is measured: where numba runs, every product under
    `native.PARALLEL_MIN_WORK` multiply-adds on the calling thread (the input gradient through the
    transposed CSR where the scatter would have per-thread buffers to sum; on one thread the
    scatter, which `native.backward` joins to the weight gradient), and above it numba's weight gradient, forward from
    `NATIVE_FORWARD_MIN_ROWS` rows and input gradient up to `NATIVE_INPUT_GRAD_MAX_ROWS` rows;
    PyTorch's products otherwise. (At H=1,000 and a batch of 2, on an AVX-512 Xeon, PyTorch's CSR
    product took about 100 us a call inside a training step, numba's about 36 us.)"""
    if not native.usable(tensor):
        return "torch"
    if nnz * batch < native.PARALLEL_MIN_WORK:  # the input gradient's scatter only where it needs no buffers to sum
        return "csc1" if op == "input_grad" and native.configured_threads() > 1 else "numba1"
    numba = (
        op == "weight_grad"
        or (op == "forward" and batch >= NATIVE_FORWARD_MIN_ROWS)
        or (op == "input_grad" and batch <= NATIVE_INPUT_GRAD_MAX_ROWS)
    )
    return _numba_by_work(nnz, batch) if numba else "torch"


def forced_rule(mode: str, op: str, shape: tuple[int, int], nnz: int, batch: int, tensor: Tensor) -> str:
    """The choice ITOP_KERNELS=torch|numba|dense forces: numba where it runs, dense where the dense
    weight may exist (else PyTorch's products)."""
    if mode == "numba" and native.usable(tensor):
        how = _numba_by_work(nnz, batch)
        return how.replace("numba", "csc") if op == "input_grad" and batch > NATIVE_INPUT_GRAD_MAX_ROWS else how
    if mode == "dense" and shape[0] * shape[1] <= dispatch.DENSE_MAX_ELEMENTS:
        return "dense"
    return "torch"


def decision_key(op: str, shape: tuple[int, int], nnz: int, batch: int, dtype: torch.dtype) -> tuple:
    """The shape class of a product (see `dispatch`)."""
    return (op, *shape, nnz.bit_length(), dispatch.size_class(batch), dtype, torch.get_num_threads())


def candidates(op: str, shape: tuple[int, int], dtype: torch.dtype) -> list[str]:
    """The ways to compute `op` here: PyTorch's, numba's on one and on all configured threads, dense."""
    names = ["torch"]
    if native.usable(torch.empty(0, dtype=dtype)):
        names += ["numba1"] + (["numba"] if native.configured_threads() > 1 else [])
        if op == "input_grad":  # numba over the transposed CSR: each input row written once
            names += ["csc1"] + (["csc"] if native.configured_threads() > 1 else [])
    if shape[0] * shape[1] <= dispatch.DENSE_MAX_ELEMENTS:
        names.append("dense")
    return names


def random_structure(shape: tuple[int, int], nnz: int, generator: torch.Generator) -> SparseStructure:
    """Random positions, about `nnz` of them (same class), drawn fast at any layer size."""
    numel = shape[0] * shape[1]
    if nnz * 2 > numel:
        positions = torch.randperm(numel, generator=generator)[:nnz].sort().values
    else:  # with replacement, drawing enough that about nnz stay distinct
        draws = math.ceil(-numel * math.log1p(-nnz / numel))
        positions = torch.randint(0, numel, (draws,), generator=generator).unique()
    return SparseStructure(positions, shape)


def candidate_timings(op: str, shape: tuple[int, int], nnz: int, batch: int, dtype: torch.dtype) -> dict[str, float]:
    """Seconds per call of each candidate for `op` on random data of this shape class."""
    generator = torch.Generator().manual_seed(0)  # never the global one: probing must not change a run's draws
    structure = random_structure(shape, nnz, generator)
    values = torch.randn(structure.nnz, generator=generator).to(dtype)
    rows_t = torch.randn(shape[1], batch, generator=generator).to(dtype)
    grads_t = torch.randn(shape[0], batch, generator=generator).to(dtype)
    bias = torch.randn(shape[0], generator=generator).to(dtype)
    runs = {
        "forward": lambda how: lambda: _forward(how, structure, values, rows_t, bias),
        "input_grad": lambda how: lambda: _input_grad(how, structure, values, grads_t),
        "weight_grad": lambda how: lambda: _weight_grad(how, structure, grads_t, rows_t),
    }[op]
    with torch.no_grad():
        return dispatch.time_candidates({how: runs(how) for how in candidates(op, shape, dtype)})


def choose(op: str, structure: SparseStructure, batch: int, tensor: Tensor) -> str:
    """The candidate that computes `op` for this call: measured once per shape class (ITOP_KERNELS=auto
    on the CPU), forced by ITOP_KERNELS, or the fixed rule. Under a dispatch mode such as
    `FlopCounterMode` nothing is probed and nothing computed densely (it would count as the layer's
    work)."""
    chooser = dispatch.active or dispatch.current()
    mode = chooser.mode
    if mode == "auto" and tensor.is_cpu and not torch._C._len_torch_dispatch_stack() and structure.nnz * batch >= dispatch.MIN_PROBE_WORK:
        shape, nnz = structure.shape, structure.nnz
        key = decision_key(op, shape, nnz, batch, tensor.dtype)
        how = chooser.decisions.get(key)
        if how is None:
            how = chooser.decide(
                key, lambda: candidate_timings(op, shape, nnz, batch, tensor.dtype), lambda: fixed_rule(op, shape, nnz, batch, tensor)
            )
        return how
    if mode == "auto":
        return fixed_rule(op, structure.shape, structure.nnz, batch, tensor)
    if mode == "dense" and torch._C._len_torch_dispatch_stack():
        mode = "torch"
    return forced_rule(mode, op, structure.shape, structure.nnz, batch, tensor)


# ----------------------------------------------------------------------------- the products


def forward_t(structure: SparseStructure, values: Tensor, rows_t: Tensor, bias: Tensor | None = None) -> Tensor:
    """W @ rows_t + bias for a contiguous (in, batch) matrix: (out, batch)."""
    return _forward(choose("forward", structure, rows_t.shape[1], rows_t), structure, values, rows_t, bias)


def csr_forward(structure: SparseStructure, values: Tensor, rows: Tensor) -> Tensor:
    """rows @ W^T for a (batch, in) matrix `rows`: (batch, out), as a transposed view."""
    return forward_t(structure, values, transposed(rows)).t()


def input_grad_t(structure: SparseStructure, values: Tensor, grads_t: Tensor) -> Tensor:
    """(grads @ W)^T for a contiguous (out, batch) matrix `grads_t`: (in, batch)."""
    return _input_grad(choose("input_grad", structure, grads_t.shape[1], grads_t), structure, values, grads_t)


def weight_grad(structure: SparseStructure, grads_t: Tensor, rows_t: Tensor) -> Tensor:
    """(grads^T @ rows) at the active positions only, in the order of the values: (nnz,), from
    contiguous (out, batch) and (in, batch) matrices. PyTorch's form is `torch.sparse.sampled_addmm`,
    with fewer than 8 rows (batch 2, SET's recipe) padded to 8 on the CPU (faster than unpadded)."""
    return _weight_grad(choose("weight_grad", structure, rows_t.shape[1], rows_t), structure, grads_t, rows_t)


def _bias_grad(grads_t: Tensor) -> Tensor:
    """Each output's gradient summed over the batch: numba's sum on the calling thread where its
    kernels serve (PyTorch's sum(1) woke its thread pool: about 60 us for a (1024, 128) matrix
    inside a training step on a 2-core Xeon; a 3072-1024-512-10 step at batch 128 spent 0.25 ms on
    its bias gradients that way, 0.07 ms with this), else PyTorch's."""
    if (dispatch.active or dispatch.current()).mode in ("auto", "numba") and native.usable(grads_t):
        return native.row_sums(grads_t)
    return grads_t.sum(1)


def fusable(how_input: str | None, how_weight: str | None, batch: int) -> bool:
    """Whether both gradients come from one pass over the CSR (`native.backward`): at a batch of 2,
    where both products would take numba's row kernels, whose numbers the fused kernel gives exactly."""
    return (
        batch == 2 and how_input is not None and how_weight is not None and how_input.startswith("numba") and how_weight.startswith("numba")
    )


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
        batch = grads_t.shape[1]
        how_input = choose("input_grad", structure, batch, grads_t) if ctx.needs_input_grad[0] else None
        how_weight = choose("weight_grad", structure, batch, rows_t) if ctx.needs_input_grad[1] else None
        grad_x_t = grad_values = grad_b = None
        if fusable(how_input, how_weight, batch) and native.usable(grads_t, rows_t, values):
            threads = native.configured_threads() if "numba" in (how_input, how_weight) else 1
            grad_values, grad_x_t = native.backward(*structure.arrays(), values, grads_t, rows_t, structure.shape[1], threads)
        else:
            grad_x_t = None if how_input is None else _input_grad(how_input, structure, values, grads_t)
            grad_values = None if how_weight is None else _weight_grad(how_weight, structure, grads_t, rows_t)
        grad_x = None if grad_x_t is None else grad_x_t.t().reshape(ctx.input_shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = _bias_grad(grads_t)
        return grad_x, grad_values, grad_b, None, None
