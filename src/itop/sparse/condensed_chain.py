"""`CondensedSequential`: an nn.Sequential of condensed layers that runs batch 1 in one kernel call.

Online inference (one input at a time) through `CondensedLinear` layers is fast per layer, but each
layer's product is short (50-70 us for a 3072-2048 layer at 90% sparsity on two threads), and
between two layers Python runs long enough for OpenMP's idle threads to fall asleep under
`itop.openmp`'s short spin. Waking them cost more than the product. This module runs the whole
chain in one numba call (`condensed_kernels.chain_vector`): the threads go from one layer to the
next without returning to Python.

A chain is an nn.Sequential whose children are `CondensedLinear` layers, ReLUs (inplace or not),
Identity and Dropout layers (Dropout only in eval mode), beginning with a condensed layer.
`itop.sparse.export` turns every such nn.Sequential of a fan-in model into a `CondensedSequential`.
It has the same children under the same names, so its state dict is the nn.Sequential's. The
fused call serves CPU inference of one input (shape (1, in) or (in,)) in float32 or float64
without autograd. Everything else (batches, training, other devices) runs the children one by
one, as nn.Sequential does. The concatenated arrays the kernel reads are copies of the layers'
tensors, rebuilt whenever one of them changes (in-place updates included).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor, nn

from . import dispatch, native
from .condensed import CondensedLinear
from .condensed_ops import kernel_indices, kernels, numba_serves, warm_times

__all__ = ["CondensedSequential", "fusable", "fuse_chains"]

_PASS_THROUGH = (nn.Identity, nn.Dropout)


def _tensors(layer: CondensedLinear) -> tuple:
    """The layer's tensors the kernel copies, read from the module's dicts (this runs on every call)."""
    return layer._parameters["values"], layer._buffers["indices"], layer._buffers["rows"], layer._parameters["bias"]


def _plan(modules: list[nn.Module]) -> list[tuple[CondensedLinear, bool]] | None:
    """(layer, ReLU after it) for each condensed layer of a fusable chain, or None."""
    plan: list[tuple[CondensedLinear, bool]] = []
    for module in modules:
        if isinstance(module, CondensedLinear):
            if plan and plan[-1][0].out_features != module.in_features:
                return None
            plan.append((module, False))
        elif isinstance(module, nn.ReLU) and plan:
            plan[-1] = (plan[-1][0], True)
        elif isinstance(module, _PASS_THROUGH) and plan and not (isinstance(module, nn.Dropout) and module.training and module.p > 0):
            continue
        else:
            return None
    return plan or None


def fusable(sequential: nn.Module) -> bool:
    """Is `sequential` an nn.Sequential of at least two condensed layers that one call can run?"""
    plan = _plan(list(sequential)) if isinstance(sequential, nn.Sequential) else None
    return plan is not None and len(plan) >= 2


class _Packed:
    """The chain's layers concatenated: what `chain_vector` reads, and the key of the tensors it copies."""

    def __init__(self, plan: list[tuple[CondensedLinear, bool]], key: tuple):
        self.key = key
        layers = [layer for layer, _ in plan]
        dtype = layers[0].values.dtype
        offsets = np.cumsum([0] + [layer.values.numel() for layer in layers])
        row_offsets = np.cumsum([0] + [layer.rows.numel() for layer in layers])
        biased = [layer for layer in layers if layer.bias is not None]
        bias_offsets = dict(zip(map(id, biased), np.cumsum([0] + [layer.out_features for layer in biased])))
        self.values = torch.cat([layer.values.detach().reshape(-1) for layer in layers]).numpy()
        wide = max(layer.in_features for layer in layers)
        self.indices = np.concatenate([kernel_indices(layer.indices.reshape(-1), wide) for layer in layers])
        self.rows = torch.cat([layer.rows for layer in layers]).numpy()
        self.bias = torch.cat([layer.bias.detach() for layer in biased]).numpy() if biased else np.zeros(0, self.values.dtype)
        meta = [
            (offsets[i], layer.rows_kept, layer.fan_in, layer.out_features, row_offsets[i], bias_offsets.get(id(layer), -1), int(relu))
            for i, (layer, relu) in enumerate(plan)
        ]
        self.meta = np.array(meta, dtype=np.int64)
        self.scratch = np.empty((2, max(layer.out_features for layer in layers)), dtype=self.values.dtype)
        self.in_features, self.out_features, self.dtype = layers[0].in_features, layers[-1].out_features, dtype
        self.shapes = tuple((layer.in_features, layer.out_features, layer.fan_in, layer.rows_kept) for layer in layers)
        self.threads: int | None = None  # chosen on first use (`chain_threads`)

    def run(self, source: np.ndarray, out: np.ndarray, threads: int) -> None:
        native._pool(threads)
        kernels().chain_vector(self.values, self.indices, self.rows, self.bias, self.meta, source, self.scratch, out, threads)


def chain_threads(packed: _Packed) -> int:
    """The threads the chain runs on: one or all configured, measured once per chain of shapes
    (`itop.sparse.dispatch`, key "condensed_chain"; with another process busy on a 2-core machine,
    one thread ran layers faster than two); the calling thread alone for small chains where
    nothing is measured."""
    configured, work = native.configured_threads(), int(packed.values.size)
    chooser = dispatch.active or dispatch.current()
    if configured == 1 or chooser.mode != "auto" or work < dispatch.MIN_PROBE_WORK:
        return native.threads_for(work)
    key = ("condensed_chain", packed.shapes, str(packed.dtype), torch.get_num_threads())
    how = chooser.decisions.get(key)
    if how is None:
        fixed = "numba" if native.threads_for(work) > 1 else "numba1"
        how = chooser.decide(key, lambda: _timings(packed, configured), lambda: fixed)
    return configured if how == "numba" else 1


def _timings(packed: _Packed, configured: int) -> dict[str, float]:
    """Seconds per call of the chain on one thread ("numba1") and on all ("numba"), back to back."""
    generator = torch.Generator().manual_seed(0)  # never the global one: probing must not change a run's draws
    source = torch.randn(packed.in_features, generator=generator).to(packed.dtype).numpy()
    out = np.empty(packed.out_features, dtype=packed.values.dtype)
    return warm_times({"numba1": lambda: packed.run(source, out, 1), "numba": lambda: packed.run(source, out, configured)})


class CondensedSequential(nn.Sequential):
    """nn.Sequential whose chain of condensed layers runs one input in one kernel call (see the
    module docstring); anything else runs as nn.Sequential does."""

    def forward(self, x: Tensor) -> Tensor:
        fused = self._fused(x)
        return super().forward(x) if fused is None else fused

    def _fused(self, x: Tensor) -> Tensor | None:
        """The chain's output for one input through `chain_vector`, or None where it does not serve.
        Kept short: at batch 1 the time spent here is time the thread pool sleeps through."""
        if x.dim() not in (1, 2) or (x.dim() == 2 and x.shape[0] != 1):
            return None
        plan = self._chain()
        if plan is None:
            return None
        tensors = [_tensors(layer) for layer, _ in plan]
        first = tensors[0][0]
        if x.shape[-1] != plan[0][0].in_features or not numba_serves(x, first):
            return None
        if torch.is_grad_enabled() and (
            x.requires_grad or any(v.requires_grad or (b is not None and b.requires_grad) for v, _, _, b in tensors)
        ):
            return None
        packed = self._packed(plan, tensors)
        if packed is None or kernels() is None:
            return None
        if packed.threads is None:
            packed.threads = chain_threads(packed)
        out = torch.empty(packed.out_features, dtype=packed.dtype)
        packed.run(x.detach().reshape(-1).contiguous().numpy(), out.numpy(), packed.threads)
        return out if x.dim() == 1 else out.unsqueeze(0)

    def _chain(self) -> list[tuple[CondensedLinear, bool]] | None:
        """The plan of the current children (kept until they change), or None if they cannot fuse."""
        key = (tuple(map(id, self._modules.values())), self.training, tuple(m.training for m in self._modules.values()))
        cached = self.__dict__.get("_chain_plan")
        if cached is None or cached[0] != key:
            plan = _plan(list(self))
            cached = (key, plan if plan is not None and len(plan) >= 2 else None)
            self.__dict__["_chain_plan"] = cached
        return cached[1]

    def _packed(self, plan: list[tuple[CondensedLinear, bool]], tensors: list[tuple]) -> _Packed | None:
        """The concatenated arrays, rebuilt when a tensor was replaced or changed in place; None when
        the layers' dtypes or devices differ."""
        key = tuple((t.data_ptr(), t._version) for group in tensors for t in group if t is not None)
        packed = self.__dict__.get("_packed_chain")
        if packed is None or packed.key != key:
            held = [t for group in tensors for t in group if t is not None]
            if any(not t.is_cpu for t in held) or len({t.dtype for group in tensors for t in (group[0], group[3]) if t is not None}) > 1:
                return None
            packed = _Packed(plan, key)
            self.__dict__["_packed_chain"] = packed
        return packed

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_packed_chain", None)  # derived; rebuilt on first use
        state.pop("_chain_plan", None)
        return state


def fuse_chains(model: nn.Module) -> nn.Module:
    """Turn every fusable nn.Sequential of `model` (the model itself included) into a
    `CondensedSequential` with the same children; returns the model (or its replacement)."""
    for name, module in list(model.named_children()):
        fused = fuse_chains(module)
        if fused is not module:
            setattr(model, name, fused)
    if type(model) is nn.Sequential and fusable(model):
        chain = CondensedSequential(OrderedDict(model.named_children()))
        chain.train(model.training)
        return chain
    return model
