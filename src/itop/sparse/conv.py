"""`SparseConv2d`: a 2-D convolution that stores and computes only its active weights.

State, as `SparseLinear`: `values` (the parameter, one entry per active weight), `indices` (a
buffer: sorted flat positions over the (out_channels, in_channels/groups, kh, kw) weight) and
`bias`. Its computation (the direct numba kernels, im2col or dense) lives in `conv_ops.py`, the
choice between them per shape class in `conv_dispatch.py`; no tensor of the dense weight's shape
is made by the direct and im2col ways (`to_dense()` makes one on request).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import ops
from .base import SparseWeights, fresh_generator
from .conv_dispatch import choose
from .conv_ops import ConvGeometry, Im2col, SparseConv2dFunction, compute, geometry_of, pair
from .sampling import random_k_positions
from .structure import SparseStructure


# ----------------------------------------------------------------------------- the layer
def sparse_conv_init_bound(out_channels: int, nnz: int) -> float:
    """nn.Conv2d's weight bound 1/sqrt(fan_in) for the actual fan-in: nnz / out_channels."""
    return 1.0 / math.sqrt(nnz / out_channels)


class SparseConv2d(SparseWeights):
    """nn.Conv2d with its weight held as `values` at `indices` (see the module docstring).

    `SparseConv2d(in_channels, out_channels, kernel_size, ..., nnz=k)` draws k positions
    uniformly without replacement over the (out_channels, in_channels/groups, kh, kw) weight and
    initialises the values for the actual fan-in (nn.Conv2d's bound 1/sqrt(fan_in) with fan_in =
    k / out_channels); the bias keeps nn.Conv2d's initialisation. Takes nn.Conv2d's stride,
    padding (ints, pairs, "same", "valid"), dilation, groups and bias; `padding_mode` other than
    "zeros" is refused.

    Example:
        ```python
        conv = itop.sparse.SparseConv2d(64, 128, 3, padding=1, nnz=3_700)   # density 0.05
        y = conv(torch.randn(8, 64, 32, 32))                                 # (8, 128, 32, 32)
        conv.to_dense()                                                      # the equivalent nn.Conv2d
        ```
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        nnz: int,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self._set_geometry(geometry_of(in_channels, out_channels, kernel_size, stride, padding, dilation, groups), padding, padding_mode)
        numel = math.prod(self.weight_shape)
        if not isinstance(nnz, int) or isinstance(nnz, bool) or not 1 <= nnz <= numel:
            raise ValueError(
                f"SparseConv2d: nnz must be an integer in [1, {numel}] for a weight of shape {self.weight_shape}, got {nnz!r}."
            )
        generator = generator if generator is not None else fresh_generator()
        self.register_buffer("indices", random_k_positions(numel, torch.zeros(0, dtype=torch.int64), nnz, generator).to(device))
        bound = sparse_conv_init_bound(out_channels, nnz)
        values = torch.empty(nnz, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
        self.values = nn.Parameter(values.to(device=device, dtype=dtype or torch.get_default_dtype()))
        if bias:
            fan = 1.0 / math.sqrt(self.geometry.taps)
            b = torch.empty(out_channels, dtype=torch.float32).uniform_(-fan, fan, generator=generator)
            self.bias = nn.Parameter(b.to(device=device, dtype=dtype or torch.get_default_dtype()))
        else:
            self.register_parameter("bias", None)

    def _set_geometry(self, geometry: ConvGeometry, padding, padding_mode: str) -> None:
        if padding_mode != "zeros":
            raise ValueError(f"SparseConv2d: padding_mode={padding_mode!r} is not supported; only 'zeros' (nn.Conv2d's default).")
        self.geometry = geometry
        self.in_channels, self.out_channels, self.groups = geometry.in_channels, geometry.out_channels, geometry.groups
        self.kernel_size, self.stride, self.dilation = geometry.kernel, geometry.stride, geometry.dilation
        self.padding = padding if isinstance(padding, str) else pair(padding, "padding")
        self.weight_shape = geometry.weight_shape
        self._structure, self._im2col, self._recorder = None, None, None

    # ----------------------------------------------------------------------------- structures
    @property
    def structure(self) -> SparseStructure:
        """The CSR of the weight as an (out_channels, in_channels/groups*kh*kw) matrix."""
        if self._structure is None or self._structure.positions is not self.indices:
            self._structure = SparseStructure(self.indices, (self.out_channels, self.geometry.taps))
        return self._structure

    @property
    def im2col(self) -> Im2col:
        structure = self.structure
        if self._im2col is None or self._im2col.source is not structure:
            self._im2col = Im2col(self.geometry, structure)
            self._im2col.source = structure
        return self._im2col

    # ----------------------------------------------------------------------------- compute
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SparseConv2d expects inputs of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        if x.dtype != self.values.dtype:  # autocast and mixed inputs: the sparse products need one dtype
            x = x.to(self.values.dtype)
        if ops.autocast_on(x.device.type):  # no bfloat16/float16 kernels: run in the values' dtype
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x)
        train = torch.is_grad_enabled() and (x.requires_grad or self.values.requires_grad)
        how = choose(self, x, train)
        if train:
            return SparseConv2dFunction.apply(x, self.values, self.bias, self, how)
        return compute(how, self, x, self.values, self.bias, train=False)[0]  # inference: no autograd

    # ----------------------------------------------------------------------------- conversion
    @classmethod
    @torch.no_grad()
    def from_positions(cls, conv: nn.Conv2d, positions: Tensor) -> SparseConv2d:
        """A SparseConv2d holding `conv`'s weights at the sorted flat `positions` (its bias too)."""
        positions = positions.to(device=conv.weight.device, dtype=torch.int64)
        bias = None if conv.bias is None else conv.bias.detach().clone()
        layer = cls.from_values(conv, positions, conv.weight.reshape(-1)[positions].clone(), bias)
        layer.values.requires_grad_(conv.weight.requires_grad)  # a frozen layer stays frozen
        if bias is not None:
            layer.bias.requires_grad_(conv.bias.requires_grad)
        return layer

    @classmethod
    def from_values(cls, conv: nn.Conv2d, positions: Tensor, values: Tensor, bias: Tensor | None = None) -> SparseConv2d:
        """A SparseConv2d of `conv`'s geometry (its weights are not read: it may live on the meta
        device) holding `values` at the sorted, distinct flat `positions` (and `bias`)."""
        layer = cls._holding(positions, values, bias)
        geometry = geometry_of(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups)
        layer._set_geometry(geometry, conv.padding, conv.padding_mode)
        return layer

    @torch.no_grad()
    def to_dense(self) -> nn.Conv2d:
        """An nn.Conv2d with these weights and zeros elsewhere."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            bias=self.bias is not None,
            device=self.values.device,
            dtype=self.values.dtype,
        )
        conv.weight.zero_().view(-1)[self.indices] = self.values
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv

    def __getstate__(self):
        state = super().__getstate__()
        state["_im2col"] = None
        return state

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, nnz={self.nnz}, "
            f"density={self.density:.4g}, bias={self.bias is not None}"
        )
