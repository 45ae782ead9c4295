"""A run of truly sparse Linear layers with ReLUs between them, trained through one autograd node.

At SET's batch of 2 a truly sparse step spends most of its time around the products, not in them:
each layer's autograd Function, PyTorch's ReLU between layers, and the tensor ops that hand data to
the kernels (`benchmarks/fused_chain_ceiling.py`: at H=1,000 a one-call step ran 3.15x the
per-layer one). Here a run such as fc1, ReLU, fc2, ReLU, fc3 becomes one Function: its forward is
one numba call through every layer (`chain_kernels.chain_forward`), and so is its backward.

Taken only where the per-layer path would run the same kernels in the same order, so that the
numbers are the same bit for bit:
- training at a batch of at most 2, on one thread (`torch.get_num_threads() == 1`, which `itop
  train` sets for steps this small), on the CPU in float32 or float64, with numba's kernels
  allowed (`ITOP_KERNELS` auto or numba);
- each layer small enough that the dispatch's fixed rule picks the serial numba kernels
  (active weights x batch under `dispatch.MIN_PROBE_WORK`), with a bias, and not recording
  for RigL's growth (update steps take the per-layer path);
- no module hooks on the run's layers, no autocast, dispatch mode (`FlopCounterMode`) or
  `torch.compile` tracing.
Otherwise each layer computes on its own, as before. `SetMLP` (the `set-mlp` model of `itop train`)
runs its layers through `forward_run`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import dispatch, native
from .layer import SparseLinear
from .ops import autocast_on, own_tensor, transposed

MAX_BATCH = 2  # the bias gradient's sum in order equals PyTorch's sum(1) up to 2 rows


def _chain_kernels():
    from . import chain_kernels

    return chain_kernels


def run_length(modules: Sequence[nn.Module], start: int) -> int:
    """How many modules from `start` form a chain: SparseLinear, then (nn.ReLU, SparseLinear) pairs;
    0 where fewer than two SparseLinear layers would be in it."""
    end = start
    if not isinstance(modules[start], SparseLinear):
        return 0
    while end + 2 < len(modules) and type(modules[end + 1]) is nn.ReLU and isinstance(modules[end + 2], SparseLinear):
        end += 2
    return end - start + 1 if end > start else 0


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks)


def usable(layers: Sequence[SparseLinear], x: Tensor, exact: bool = True) -> bool:
    """Does the chain compute this call exactly as the layers one by one would (see the module
    docstring)? With `exact=False`, the same function to rounding: any thread count and layer size
    (`itop train`'s one-call step, whose parts follow the threads)."""
    if not (torch.is_grad_enabled() and native.AVAILABLE) or x.dim() != 2 or x.shape[0] > MAX_BATCH or not x.is_cpu:
        return False
    if exact and torch.get_num_threads() != 1:
        return False
    if torch._C._len_torch_dispatch_stack() or torch.compiler.is_compiling() or autocast_on("cpu"):
        return False
    if (dispatch.active or dispatch.current()).mode not in ("auto", "numba"):
        return False
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    dtype, limit, width = layers[0].values.dtype, dispatch.MIN_PROBE_WORK if exact else float("inf"), x.shape[1]
    for layer in layers:
        values, bias = layer.values, layer.bias
        if layer.in_features != width:  # a wrong width gets the layer's own one-line error, not the kernel's
            return False
        width = layer.out_features
        if bias is None or layer._recorder is not None or _hooked(layer) or values.dtype != dtype or bias.dtype != dtype:
            return False
        if not values.is_cpu or layer.nnz * x.shape[0] >= limit:
            return False
    return x.dtype == dtype and native.usable(x, layers[0].values)


def forward_run(layers: Sequence[SparseLinear], x: Tensor) -> Tensor:
    """The output of the run (ReLUs between the layers, none after the last) through one node."""
    params = [t for layer in layers for t in (layer.values, layer.bias)]
    return SparseChainFunction.apply(x, tuple(layer.structure for layer in layers), *params)


def _numpy(tensors: Sequence[Tensor]) -> tuple:
    return tuple(t.detach().numpy() for t in tensors)


class SparseChainFunction(torch.autograd.Function):
    """y = W_n relu(... relu(W_1 x + b_1) ...) + b_n for truly sparse (structure, values, bias) layers."""

    @staticmethod
    def forward(ctx, x: Tensor, structures: tuple, *params: Tensor) -> Tensor:
        values, biases = params[0::2], params[1::2]
        x_t = transposed(x)
        batch = x_t.shape[1]
        activations = [torch.empty(s.shape[0], batch, dtype=x.dtype) for s in structures]
        csr = tuple(s.arrays() for s in structures)
        _chain_kernels().chain_forward(x_t.detach().numpy(), csr, _numpy(values), _numpy(biases), _numpy(activations))
        ctx.save_for_backward(x_t, *values, *activations[:-1])  # not the output's storage, which the caller may change
        ctx.structures, ctx.layers = structures, len(structures)
        return own_tensor(activations[-1].t())  # not a view: an inplace op may follow

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        saved, n = ctx.saved_tensors, ctx.layers
        x_t, values, activations = saved[0], saved[1 : n + 1], saved[n + 1 :]
        batch, dtype = x_t.shape[1], x_t.dtype
        grads = [torch.empty(s.shape[0], batch, dtype=dtype) for s in ctx.structures[:-1]]
        grads.append(transposed(grad_out.to(dtype)))
        activations = (*activations, grads[-1])  # a placeholder for the output: the kernel reads activations[:-1] only
        parts = [torch.empty(s.shape[1], batch, dtype=dtype) for s in ctx.structures]
        grad_values = [torch.empty(len(v), dtype=dtype) for v in values]
        grad_biases = [torch.empty(s.shape[0], dtype=dtype) for s in ctx.structures]
        wants_input = ctx.needs_input_grad[0]
        _chain_kernels().chain_backward(
            x_t.numpy(),
            tuple(s.arrays() for s in ctx.structures),
            _numpy(values),
            _numpy(activations),
            _numpy(grads),
            _numpy(grad_values),
            _numpy(grad_biases),
            _numpy(parts),
            wants_input,
        )
        grad_x = parts[0].t() if wants_input else None
        layer_grads = [g for pair in zip(grad_values, grad_biases) for g in pair]
        return (grad_x, None, *layer_grads)
