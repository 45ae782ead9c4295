"""Forward, loss and backward of a truly sparse SET-MLP step in one numba call (`itop train`).

At SET's batch of 2 most of a truly sparse step is PyTorch's per-op cost, not the products
(`benchmarks/fused_chain_ceiling.py`). Where a run trains a `SetMLP` whose hidden layers are truly
sparse, with ReLU, no dropout, cross-entropy, on the CPU in one process, this computes the step's
mean loss, its correct predictions and every parameter's gradient (into `.grad`) in one call
through the row kernels (`itop.sparse.chain_kernels.cross_entropy_step`); the dense last layer is
read as a CSR of all its positions. The optimizer, the Sparsifier's hooks and the rest of the loop
run as always. Steps it does not serve compute through autograd: more than 2 rows, or a layer
recording for RigL's growth (`chain.usable`).

On several threads (SET's recipe at H=10,000 trains on two, `train/threads.py`) each layer's rows
are split into one part per thread inside the call, so that no Python and no sleeping pool sits
between the layers. The part count follows the configured threads, as the per-layer kernels'
input-gradient parts do, so a run and its resume compute the same numbers.

The gradients are the same function as autograd's; the softmax is computed in float64 and the
input gradients are summed in parts, so they differ from PyTorch's in the last bits (tests: to 1e-6).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..models.set_mlp import SetMLP
from ..sparse import chain, native
from ..sparse.layer import SparseLinear
from ..sparse.ops import transposed

SHORT_INDEX_LIMIT = 1 << 16  # layers this narrow hand the kernel 16-bit column indices: its time 1.04x faster in training at H=10,000


class FusedStep:
    """The one-call step for one model (see the module docstring); `FusedStep.for_model` says
    whether the model can have one at all, `ready(x)` whether this step can."""

    MAX_BATCH = chain.MAX_BATCH  # larger batches always take autograd: a run of them needs no FusedStep

    def __init__(self, sparse: list[SparseLinear], last: nn.Linear | SparseLinear):
        self.sparse, self.last = sparse, last
        self._workspace: dict[tuple[int, int], tuple] = {}  # scratch arrays by batch size and parts (`_scratch`)
        self._cached_arguments = self._cached_gradients = None  # (key, numpy views): `_arguments`, `_gradients`
        if isinstance(last, SparseLinear):
            self._last_csr = None  # its own structure's, read each step (it changes at updates)
        else:  # a dense weight, row-major, is the CSR of all its positions
            rows, cols = last.weight.shape
            self._last_csr = (
                torch.arange(0, rows * cols + 1, cols, dtype=torch.int32).numpy(),
                torch.arange(cols, dtype=torch.int32).repeat(rows).numpy(),
            )

    def _last_weight(self) -> Tensor:
        return self.last.values if isinstance(self.last, SparseLinear) else self.last.weight

    @classmethod
    def for_model(cls, model: nn.Module, loss: str, label_smoothing: float, amp: str, l1: float) -> FusedStep | None:
        if type(model) is not SetMLP or model.activation != "relu" or model.dropout or loss != "cross-entropy":
            return None
        if label_smoothing or amp != "none" or l1:
            return None
        layers = list(model.children())
        sparse, last = layers[:-1:2], layers[-1]
        if any(type(m) is not nn.ReLU for m in layers[1:-1:2]) or not all(isinstance(m, SparseLinear) for m in sparse):
            return None
        if any(layer.values.dtype != torch.float32 for layer in sparse):  # the kernel's scratch is float32
            return None
        if isinstance(last, SparseLinear):
            return cls(sparse, last) if last.bias is not None and last.values.dtype == torch.float32 else None
        if type(last) is not nn.Linear or last.bias is None or last.weight.dtype != torch.float32:
            return None
        return cls(sparse, last)

    def ready(self, x: Tensor) -> bool:
        """Can this step be computed in one call (and give autograd's function)?"""
        last, flat = self.last, x.reshape(x.shape[0], -1)
        if isinstance(last, SparseLinear):
            return chain.usable([*self.sparse, last], flat, exact=False)
        if last._forward_hooks or last._forward_pre_hooks or not (last.weight.is_cpu and last.weight.is_contiguous()):
            return False
        return chain.usable(self.sparse, flat, exact=False) and last.in_features == self.sparse[-1].out_features

    def prepare(self) -> None:
        """Compile (or load from numba's disk cache: about 0.5 s) the kernel for this model now, on a
        batch of zeros, so that the first epoch's time does not hold it; the gradients are cleared."""
        first = self.sparse[0]
        self(torch.zeros(1, first.in_features, dtype=first.values.dtype), torch.zeros(1, dtype=torch.long))
        for layer in (*self.sparse, self.last):
            for p in layer.parameters():
                p.grad = None

    def __call__(self, x: Tensor, labels: Tensor) -> tuple[float, int]:
        """The step's mean loss and correct predictions; every parameter's `.grad` holds its gradient."""
        x_t = transposed(x.reshape(x.shape[0], -1))
        parts = native.configured_threads()
        activations, grads, buffers = self._scratch(x_t.shape[1], parts)
        native._pool(parts)  # one part: numba's pool set to the calling thread alone, none woken
        params = self._params()
        loss, correct = chain._chain_kernels().cross_entropy_step(
            x_t.detach().numpy(), labels.numpy(), *self._arguments(params), activations, grads, *self._gradients(params), buffers
        )
        return float(loss), int(correct)

    def _params(self) -> list[Tensor]:
        return [t for layer in self.sparse for t in (layer.values, layer.bias)] + [self._last_weight(), self.last.bias]

    def _arguments(self, params: list[Tensor]) -> tuple:
        """(CSR arrays, weights, biases) as the kernel takes them: numpy views, made again only when a
        tensor or a structure changed (a topology update): making them took about 25 us a step."""
        structures = tuple(layer.structure for layer in self.sparse) + (getattr(self.last, "structure", None),)
        key = _identity(structures, params)
        if self._cached_arguments is None or self._cached_arguments[0] != key:
            csr = tuple(layer.structure.arrays() for layer in self.sparse) + (self._last_csr or self.last.structure.arrays(),)
            if max(layer.in_features for layer in (*self.sparse, self.last)) <= SHORT_INDEX_LIMIT:
                csr = tuple((crow, col.astype(np.uint16)) for crow, col in csr)  # made once a topology
            weights = tuple(w.detach().reshape(-1).numpy() for w in params[0::2])
            biases = tuple(b.detach().numpy() for b in params[1::2])
            self._cached_arguments = (key, (csr, weights, biases), (structures, params))  # held: no id is reused
        return self._cached_arguments[1]

    def _gradients(self, params: list[Tensor]) -> tuple:
        """(weight gradients, bias gradients) as numpy views into each parameter's `.grad`, which is
        made (contiguous, of the parameter's shape) where it is missing or unfit; cached as `_arguments`."""
        for p in params:
            grad = p.grad
            if grad is None or grad.shape != p.shape or not grad.is_contiguous():
                p.grad = torch.empty_like(p, memory_format=torch.contiguous_format)
        grads = [p.grad for p in params]
        key = _identity((), grads)
        if self._cached_gradients is None or self._cached_gradients[0] != key:
            views = tuple(g.reshape(-1).numpy() for g in grads)
            self._cached_gradients = (key, (views[0::2], views[1::2]), grads)
        return self._cached_gradients[1]

    def _scratch(self, batch: int, parts: int) -> tuple[tuple, tuple, tuple]:
        """The kernel's activations, output gradients and per-part input-gradient buffers for this
        batch size, as numpy arrays made once: they live only inside one call, which nothing else sees."""
        found = self._workspace.get((batch, parts))
        if found is None:
            layers = [*self.sparse, self.last]
            activations = tuple(np.empty((layer.out_features, batch), np.float32) for layer in layers)
            grads = tuple(np.empty((layer.out_features, batch), np.float32) for layer in layers)
            buffers = tuple(np.empty((parts, layer.in_features, batch), np.float32) for layer in layers)
            found = self._workspace[(batch, parts)] = (activations, grads, buffers)
        return found


def _identity(objects: tuple, tensors: list[Tensor]) -> tuple:
    """What numpy views of `tensors` (and arrays of `objects`) depend on: each object's identity and
    each tensor's storage and shape (`p.data = ...` keeps the object, not the storage)."""
    return (*map(id, objects), *((id(t), t.data_ptr(), t.shape) for t in tensors))
