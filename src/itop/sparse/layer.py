"""`SparseLinear`: a Linear layer that stores and computes only its active weights.

State: `values` (the parameter, one entry per active weight), `indices` (a buffer: the sorted flat
row-major positions of those weights, int64) and `bias`. The CSR structures the products need
are derived from `indices` (`structure.py`); no tensor of the weight's dense shape is made by
training, evaluation or a topology update (`to_dense()` makes one on request).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import SparseWeights, fresh_generator
from .ops import SparseLinearFunction, autocast_on, forward_t, transposed
from .sampling import random_k_positions
from .structure import SparseStructure


def sparse_init_bound(in_features: int, out_features: int, nnz: int) -> float:
    """The bound of nn.Linear's uniform weight initialisation (1/sqrt(fan_in)) for the layer's
    actual fan-in: the mean number of active inputs per output, nnz / out_features."""
    return 1.0 / math.sqrt(nnz / out_features)


class SparseLinear(SparseWeights):
    """y = x W^T + b with W held as `values` at `indices` (see the module docstring).

    `SparseLinear(in_features, out_features, nnz=k)` draws k positions uniformly without
    replacement and initialises the values for the actual fan-in (nn.Linear's bound
    1/sqrt(fan_in) with fan_in = k / out_features); the bias keeps nn.Linear's initialisation.
    No tensor of the weight's dense shape is made while training, evaluating or updating.

    Args:
        in_features: size of each input row.
        out_features: size of each output row.
        nnz: number of active weights, in [1, in_features * out_features].
        bias: learn an additive bias, as nn.Linear.
        generator: the generator of the positions and values (default: a fresh random one).
        device: where the values, positions and bias live.
        dtype: the values' dtype (float32 or float64 on the CPU).

    Attributes:
        values: the active weights, in position order (the parameter the optimizer sees).
        indices: the sorted flat row-major positions of the active weights (a buffer).

    Example:
        ```python
        layer = itop.sparse.SparseLinear(784, 300, nnz=12_000)
        y = layer(torch.randn(32, 784))       # (32, 300)
        layer.to_dense()                      # the equivalent nn.Linear, zeros off the positions
        ```
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nnz: int,
        bias: bool = True,
        *,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        numel = in_features * out_features
        if not isinstance(nnz, int) or not 1 <= nnz <= numel:
            raise ValueError(f"nnz must be an integer in [1, {numel}] for a {out_features}x{in_features} layer, got {nnz!r}.")
        self.in_features, self.out_features = int(in_features), int(out_features)
        generator = generator if generator is not None else fresh_generator()
        positions = random_k_positions(numel, torch.zeros(0, dtype=torch.int64), nnz, generator)
        self.register_buffer("indices", positions.to(device))
        bound = sparse_init_bound(in_features, out_features, nnz)
        values = torch.empty(nnz, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
        self.values = nn.Parameter(values.to(device=device, dtype=dtype or torch.get_default_dtype()))
        if bias:
            fan = 1.0 / math.sqrt(in_features)
            b = torch.empty(out_features, dtype=torch.float32).uniform_(-fan, fan, generator=generator)
            self.bias = nn.Parameter(b.to(device=device, dtype=dtype or torch.get_default_dtype()))
        else:
            self.register_parameter("bias", None)
        self._structure: SparseStructure | None = None
        self._recorder = None  # set by a Sparsifier on steps whose gradient growth scores inactive positions

    # ----------------------------------------------------------------------------- shape
    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def weight_shape(self) -> tuple[int, int]:
        return self.shape

    @property
    def structure(self) -> SparseStructure:
        if self._structure is None or self._structure.positions is not self.indices:
            self._structure = SparseStructure(self.indices, self.shape)
        return self._structure

    # ----------------------------------------------------------------------------- compute
    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"SparseLinear expects inputs of shape (..., {self.in_features}), got {tuple(x.shape)}.")
        if x.dtype != self.values.dtype:  # autocast and mixed inputs: the sparse products need one dtype
            x = x.to(self.values.dtype)
        if autocast_on(x.device.type):  # the sparse products have no bfloat16/float16 kernels: run in the values' dtype
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x)
        if torch.is_grad_enabled() and (x.requires_grad or self.values.requires_grad):
            return SparseLinearFunction.apply(x, self.values, self.bias, self.structure, self._recorder)
        rows = x.reshape(-1, self.in_features)  # inference: no autograd
        if rows.shape[0] == 1:  # one example: one addmv, as each op's fixed cost dominates (3.3x -> 3.9-4.3x dense on the 95% MLP)
            matrix = self.structure.matrix(self.values)
            out = torch.mv(matrix, rows[0]) if self.bias is None else torch.addmv(self.bias, matrix, rows[0])
            return out.reshape(*x.shape[:-1], self.out_features)
        out_t = forward_t(self.structure, self.values, transposed(rows), self.bias)
        return out_t.t().reshape(*x.shape[:-1], self.out_features)

    # ----------------------------------------------------------------------------- conversion
    @classmethod
    @torch.no_grad()
    def from_positions(cls, linear: nn.Linear, positions: Tensor) -> SparseLinear:
        """A SparseLinear holding `linear`'s weights at the sorted flat `positions` (its bias too)."""
        positions = positions.to(device=linear.weight.device, dtype=torch.int64)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        layer = cls.from_values(linear.in_features, linear.out_features, positions, linear.weight.reshape(-1)[positions].clone(), bias)
        layer.values.requires_grad_(linear.weight.requires_grad)  # a frozen layer stays frozen
        if bias is not None:
            layer.bias.requires_grad_(linear.bias.requires_grad)
        return layer

    @classmethod
    def from_values(
        cls, in_features: int, out_features: int, positions: Tensor, values: Tensor, bias: Tensor | None = None
    ) -> SparseLinear:
        """A SparseLinear holding `values` at the sorted, distinct flat `positions` (and `bias`),
        as trainable parameters: no tensor of the layer's dense shape is involved."""
        layer = cls._holding(positions, values, bias)
        layer.in_features, layer.out_features = in_features, out_features
        layer._structure, layer._recorder = None, None
        return layer

    @torch.no_grad()
    def to_dense(self) -> nn.Linear:
        """An nn.Linear with these weights and zeros elsewhere."""
        linear = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device=self.values.device, dtype=self.values.dtype
        )
        linear.weight.zero_().view(-1)[self.indices] = self.values
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, "
            f"density={self.density:.4g}, bias={self.bias is not None}"
        )
