"""`CondensedConv2d`: the convolution counterpart of `CondensedLinear` (`condensed.py`), kept
beside it as `conv.py` is beside `layer.py`.

Every kept output channel holds k active taps over (in_channels/groups, kh, kw). A constant-fan-in
convolution is a CSR with equal row lengths, so it computes through `SparseConv2d`'s machinery
(`conv_ops.py`, `conv_dispatch.py`), on a structure built from `rows` and `taps` and kept until they change.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import conv_dispatch, conv_ops
from .base import fresh_generator
from .condensed import CondensedWeights, _check_fan_in, condense, random_columns
from .conv import SparseConv2d
from .conv_ops import SparseConv2dFunction, geometry_of, pair
from .ops import autocast_on

__all__ = ["CondensedConv2d"]


class CondensedConv2d(CondensedWeights):
    """nn.Conv2d whose kept output channels each hold k active taps (see the module docstring).

    Taps are flat indices over (in_channels/groups, kh, kw), row-major. Takes nn.Conv2d's stride,
    padding (ints, pairs, "same", "valid"), dilation, groups and bias; a `padding_mode` other than
    "zeros" is refused. Computes through `SparseConv2d`'s ways (direct numba kernels, im2col or dense
    for the call, chosen as for `SparseConv2d`) on a structure built from `rows` and `taps`, kept
    until they change; ablated channels output the bias.

    Example:
        ```python
        layer = itop.sparse.CondensedConv2d.from_dense(conv, mask)   # mask: k per nonzero channel
        y = layer(torch.randn(8, conv.in_channels, 32, 32))
        layer.to_dense()                                             # the masked nn.Conv2d
        ```
    """

    _index_name = "taps"
    taps: Tensor

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
        fan_in: int,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self._set_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode)
        fan_in = _check_fan_in(fan_in, self.geometry.taps, "CondensedConv2d")
        generator = generator if generator is not None else fresh_generator()
        kept = out_channels if fan_in else 0
        columns = random_columns(kept, self.geometry.taps, fan_in, generator)
        bound = 1.0 / math.sqrt(max(1, fan_in))
        values = torch.empty(kept, fan_in).uniform_(-bound, bound, generator=generator).to(dtype or torch.get_default_dtype())
        b = None
        if bias:
            fan = 1.0 / math.sqrt(self.geometry.taps)
            b = torch.empty(out_channels).uniform_(-fan, fan, generator=generator).to(dtype or torch.get_default_dtype())
        self._hold(torch.arange(kept), columns, values, b, device)

    def _set_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode: str) -> None:
        if padding_mode != "zeros":
            raise ValueError(f"CondensedConv2d: padding_mode={padding_mode!r} is not supported; only 'zeros' (nn.Conv2d's default).")
        try:
            geometry = geometry_of(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
            padding = padding if isinstance(padding, str) else pair(padding, "padding")
        except ValueError as error:
            raise ValueError(str(error).replace("SparseConv2d", "CondensedConv2d")) from None
        self.geometry = geometry
        self.in_channels, self.out_channels, self.groups = geometry.in_channels, geometry.out_channels, geometry.groups
        self.kernel_size, self.stride, self.dilation, self.padding = geometry.kernel, geometry.stride, geometry.dilation, padding
        self.padding_mode = "zeros"
        self._cache = None

    def _width(self) -> int:
        return self.geometry.taps

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return tuple(self.geometry.weight_shape)

    def _outputs(self) -> int:
        return self.out_channels

    # ----------------------------------------------------------------------------- conversion
    @classmethod
    @torch.no_grad()
    def from_dense(cls, conv: nn.Conv2d, mask: Tensor) -> CondensedConv2d:
        """The condensed layer holding `conv`'s weights where `mask` is nonzero (its bias too).
        Every nonzero output channel of the mask must hold the same count k; empty ones are ablated."""
        weight = conv.weight
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(
                f"CondensedConv2d.from_dense: mask of shape {tuple(mask.shape)} does not match the weight's {tuple(weight.shape)}."
            )
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._set_geometry(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode
        )
        what = f"a Conv2d({conv.in_channels}, {conv.out_channels}, kernel_size={tuple(conv.kernel_size)})"
        flat = mask.to(weight.device).reshape(conv.out_channels, -1)
        rows, columns = condense(flat, what, "CondensedConv2d", "output channel")
        values = weight.detach().reshape(conv.out_channels, -1).index_select(0, rows).gather(1, columns)
        bias = None if conv.bias is None else conv.bias.detach().clone()
        layer._hold(rows, columns, values.clone(), bias, weight.device)
        layer.values.requires_grad_(weight.requires_grad)  # a frozen layer stays frozen
        if bias is not None:
            layer.bias.requires_grad_(conv.bias.requires_grad)
        return layer

    @torch.no_grad()
    def to_dense(self) -> nn.Conv2d:
        """An nn.Conv2d with these weights and zeros elsewhere (an exact round trip of `from_dense`)."""
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
        conv.weight.copy_(self._dense_rows().view(self.geometry.weight_shape))
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv

    # ----------------------------------------------------------------------------- compute
    def sparse_layer(self) -> SparseConv2d | None:
        """The `SparseConv2d` of the same active taps that the computation runs on (its values are
        not read: the calls pass this layer's), rebuilt when `rows`, `taps` or the values' shape
        change; None when no tap is active."""
        if not self.values.numel():
            return None
        key = (self.rows._version, self.taps._version, tuple(self.values.shape), self.values.device)
        cached = self._cache  # (rows, taps, key, layer): the tensors held, so that identity cannot be reused
        if cached is None or cached[0] is not self.rows or cached[1] is not self.taps or cached[2] != key:
            positions = (self.rows[:, None] * self.geometry.taps + self.taps.to(torch.int64)).reshape(-1)
            like = nn.Conv2d(
                self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation, self.groups,
                bias=False, device="meta",
            )  # fmt: skip
            self._cache = (self.rows, self.taps, key, SparseConv2d.from_values(like, positions, self.values.detach().reshape(-1)))
        return self._cache[3]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"CondensedConv2d expects inputs of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        if x.dtype != self.values.dtype:  # autocast and mixed inputs: the sparse products need one dtype
            x = x.to(self.values.dtype)
        if autocast_on(x.device.type):  # no bfloat16/float16 kernels: run in the values' dtype
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x)
        inner = self.sparse_layer()
        if inner is None:
            return self._bias_only(x)
        tensors = (x, self.values, self.bias) if self.bias is not None else (x, self.values)
        train = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        how = conv_dispatch.choose(inner, x, train)
        if train:
            return SparseConv2dFunction.apply(x, self.values.reshape(-1), self.bias, inner, how)
        return conv_ops.compute(how, inner, x, self.values.detach().reshape(-1), self.bias, train=False)[0]

    def _bias_only(self, x: Tensor) -> Tensor:
        """Every channel ablated: the output is the bias (0 without) at each output pixel."""
        height, width = self.geometry.output_size(*x.shape[2:])
        if height < 1 or width < 1:
            raise ValueError(f"CondensedConv2d: an input of {tuple(x.shape[2:])} pixels is smaller than the kernel's reach.")
        out = x.new_zeros(x.shape[0], self.out_channels, height, width)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, fan_in={self.fan_in}, "
            f"rows_kept={self.rows_kept}/{self.out_channels}, bias={self.bias is not None}"
        )
