"""The computation behind `SparseConv2d` (`conv.py`): its geometry, and five ways to convolve.

A layer's weight is the CSR of an (out_channels, in_channels/groups * kh * kw) matrix, so output
channel o's active taps are row o. Which way serves a call is measured on the machine at hand per
shape class (`conv_dispatch.py`, through `itop.sparse.dispatch` as for the Linear products;
`ITOP_KERNELS` forces one); this module computes whichever way is chosen:

- direct (numba, CPU float32/float64): each active tap adds its value times a shifted input
  plane to its output plane (`conv_kernels.py`); the input gradient gathers back per input
  channel, and the weight gradient sums grad_out * shifted input at the active taps only;
- blocked (numba, CPU, stride 1; `conv_blocked.py`): the same taps over planes that hold 16
  images innermost, so that small planes compute in full vectors;
- polyphase (numba, CPU, strided, groups and dilation 1; `conv_polyphase.py`): a strided layer as
  the stride-1 convolution over its input's phases (space-to-depth), computed blocked on small
  output planes, by the NCHW kernels on larger ones;
- im2col (anywhere, CUDA included): the input unfolded into columns
  (`torch.nn.functional.unfold`), then the truly sparse Linear layers' products (`ops.py`) with
  a block-diagonal CSR over all groups; its input gradient folds the columns back;
- dense (where the dense weight would take at most `dispatch.DENSE_MAX_ELEMENTS`): the weight made
  dense for the call, then PyTorch's convolution and its backward, the weight gradient read at
  the active taps (a layer at ERK's 0.2-0.4 density, such as a 1x1 convolution, is faster so).

The direct, blocked, polyphase and im2col ways make no tensor of the dense weight's shape; im2col holds the unfolded
input (in_channels * kh * kw values per output pixel), as PyTorch's own unfold-based convolutions do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from . import conv_blocked, conv_polyphase, dispatch, native, ops
from .conv_windows import wide_gather, wide_sources
from .structure import SparseStructure

_WEIGHT_GRAD_PARTS = 8  # images split into this many partial sums for the direct weight gradient, whatever the threads


def pair(value, name: str) -> tuple[int, int]:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"SparseConv2d: {name} must be an int or a pair of ints, got {value!r}.")
    return pair


@dataclass(frozen=True)
class ConvGeometry:
    """Everything but the weights that decides a convolution's arithmetic. `padding` holds
    (top, bottom, left, right): "same" pads asymmetrically where the total is odd, as PyTorch."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int

    @property
    def taps(self) -> int:
        """Weights per output channel: in_channels / groups * kh * kw."""
        return self.in_channels // self.groups * self.kernel[0] * self.kernel[1]

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (top, bottom, left, right), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        return ((height + top + bottom - dh * (kh - 1) - 1) // sh + 1, (width + left + right - dw * (kw - 1) - 1) // sw + 1)

    def kernel_arguments(self) -> np.ndarray:
        """(kh, kw, sh, sw, top, left, dh, dw, out_channels/groups, in_channels/groups) for the numba kernels."""
        (kh, kw), (sh, sw), (top, _, left, _), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        return np.array(
            [kh, kw, sh, sw, top, left, dh, dw, self.out_channels // self.groups, self.in_channels // self.groups], dtype=np.int64
        )


def geometry_of(in_channels, out_channels, kernel_size, stride, padding, dilation, groups) -> ConvGeometry:
    """The checked geometry of nn.Conv2d's arguments, or a one-line ValueError naming the argument."""
    kernel, stride, dilation = pair(kernel_size, "kernel_size"), pair(stride, "stride"), pair(dilation, "dilation")
    if min(*kernel, *stride, *dilation) < 1:
        raise ValueError(f"SparseConv2d: kernel_size, stride and dilation must be positive, got {kernel}, {stride}, {dilation}.")
    if not isinstance(groups, int) or groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(f"SparseConv2d: groups={groups!r} must divide in_channels={in_channels} and out_channels={out_channels}.")
    if padding == "same":
        if stride != (1, 1):
            raise ValueError("SparseConv2d: padding='same' needs stride 1, as nn.Conv2d.")
        totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
        pads = (totals[0] // 2, totals[0] - totals[0] // 2, totals[1] // 2, totals[1] - totals[1] // 2)
    elif padding == "valid":
        pads = (0, 0, 0, 0)
    else:
        ph, pw = pair(padding, "padding")
        if min(ph, pw) < 0:
            raise ValueError(f"SparseConv2d: padding must not be negative, got {padding!r}.")
        pads = (ph, ph, pw, pw)
    return ConvGeometry(int(in_channels), int(out_channels), kernel, stride, pads, dilation, int(groups))


# ----------------------------------------------------------------------------- kernels
_conv_kernels = None


def conv_kernels():
    """The compiled direct-convolution kernels, or None where numba does not serve (see `native`)."""
    global _conv_kernels
    if _conv_kernels is None and native.AVAILABLE and native.kernels() is not None:
        from . import conv_kernels as compiled

        _conv_kernels = compiled
    return _conv_kernels


def direct_usable(*tensors: Tensor) -> bool:
    """The direct kernels serve contiguous CPU float32/float64 tensors of one dtype."""
    return native.usable(*tensors) and len({t.dtype for t in tensors}) == 1 and conv_kernels() is not None


def _run_images(kernel: str, args: tuple, images: int, work: int) -> None:
    """`kernel` over the images: on the calling thread for small work (`native.threads_for`), else
    split over the configured threads."""
    compiled = conv_kernels()
    threads = native.threads_for(work)
    if threads == 1 or images == 1:
        getattr(compiled, kernel + "_images")(*args, 0, images)
    else:
        native._pool(threads)
        getattr(compiled, kernel + "_parallel")(*args, min(threads, images))


def _form(geometry: ConvGeometry, structure: SparseStructure, height: int, width: int) -> tuple[str, object, tuple]:
    """Which kernels serve this geometry: at stride 1 the "_wide" ones, with each tap's window start
    in the padded image (`wide_sources`) and the padded plane's size; else the general ones, with
    the CSR's columns."""
    if geometry.stride != (1, 1):
        return "", structure.arrays()[1], ()
    top, bottom, left, right = geometry.padding
    padded = (height + top + bottom, width + left + right)
    return "_wide", wide_sources(geometry, structure, *padded), padded


STACK_SPAN = 1024  # the stride-1 forward stacks images until a channel's planes hold about this many values
STACK_BYTES = 1 << 20  # ... and while all channels' stacked planes fit in this much (about half an L2 cache)


def stack_group(geometry: ConvGeometry, padded_h: int, padded_w: int, images: int) -> int:
    """How many images the stride-1 forward stacks in one pass (1 for planes of 32x32 and more)."""
    plane = padded_h * padded_w
    fits = STACK_BYTES // max(1, geometry.in_channels * plane * 4)
    return max(1, min(images, STACK_SPAN // plane, fits, 16))


def direct_forward(geometry: ConvGeometry, structure: SparseStructure, values: Tensor, x: Tensor, bias: Tensor | None) -> Tensor:
    crow = structure.arrays()[0]
    height, width = x.shape[2:]
    out = torch.empty(x.shape[0], geometry.out_channels, *geometry.output_size(height, width), dtype=values.dtype)
    bias_array = native._NO_BIAS[values.dtype] if bias is None else native._data(bias, values.dtype)
    form, taps, extra = _form(geometry, structure, height, width)
    if form:  # stride 1: images stacked in groups (see forward_wide_images)
        group = stack_group(geometry, *extra, x.shape[0])
        taps = wide_sources(geometry, structure, group * extra[0], extra[1])
        extra = (*extra, group)
    args = (x.detach().numpy(), crow, taps, values.detach().numpy(), bias_array, out.numpy(), geometry.kernel_arguments(), *extra)
    _run_images("forward" + form, args, x.shape[0], structure.nnz * out[0, 0].numel() * x.shape[0])
    return out


def direct_input_grad(geometry: ConvGeometry, structure: SparseStructure, values: Tensor, grad_out: Tensor, input_shape) -> Tensor:
    crow = structure.arrays()[0]
    grad_x = torch.empty(input_shape, dtype=values.dtype)
    form, taps, extra = _form(geometry, structure, *input_shape[2:])
    if form:  # stride 1: gathered per input channel
        starts, order, bases, margin = wide_gather(geometry, structure, *extra, grad_out.shape[2])
        args = (
            grad_out.numpy(),
            starts,
            order,
            bases,
            values.detach().numpy(),
            grad_x.numpy(),
            geometry.kernel_arguments(),
            *extra,
            margin,
        )
    else:
        args = (grad_out.numpy(), crow, taps, values.detach().numpy(), grad_x.numpy(), geometry.kernel_arguments())
    _run_images("input_grad" + form, args, grad_out.shape[0], structure.nnz * grad_out[0, 0].numel() * grad_out.shape[0])
    return grad_x


def direct_weight_grad(geometry: ConvGeometry, structure: SparseStructure, grad_out: Tensor, x: Tensor) -> Tensor:
    """The weight gradient at the active taps: partial sums over a fixed split of the images,
    added in order (the same numbers on any number of threads)."""
    crow = structure.arrays()[0]
    parts = torch.empty(max(1, min(_WEIGHT_GRAD_PARTS, x.shape[0])), structure.nnz, dtype=x.dtype)
    form, taps, extra = _form(geometry, structure, *x.shape[2:])
    args = (grad_out.numpy(), x.detach().numpy(), crow, taps, parts.numpy(), geometry.kernel_arguments(), *extra)
    compiled = conv_kernels()
    if native.threads_for(structure.nnz * grad_out[0, 0].numel() * x.shape[0]) == 1 or len(parts) == 1:
        getattr(compiled, f"weight_grad{form}_serial")(*args)
    else:
        native._pool(native.configured_threads())
        getattr(compiled, f"weight_grad{form}_parallel")(*args)
    return parts.sum(0) if len(parts) > 1 else parts[0]


# ----------------------------------------------------------------------------- polyphase
def _polyphase_forward(
    geometry: ConvGeometry, structure: SparseStructure, values: Tensor, x: Tensor, bias: Tensor | None, train: bool = True
):
    """The output of a strided layer computed over its input's phases (`conv_polyphase`), and what
    its backward needs: the blocked phases, or the phases themselves for the NCHW kernels."""
    form = conv_polyphase.phases(geometry, structure, *x.shape[2:])
    ordered = values.detach().index_select(0, form.order)
    if conv_polyphase.blocked(form, x.shape[0]):
        blocked = form.split_blocked(x, train)
        phase_shape = (x.shape[0], form.geometry.in_channels, *form.phase_size)
        return conv_blocked.forward_blocked(form.geometry, form.structure, ordered, blocked, phase_shape, bias), (blocked,)
    split = form.split(x)
    return direct_forward(form.geometry, form.structure, ordered, split, bias), (split,)


def _polyphase_backward(
    geometry: ConvGeometry, structure: SparseStructure, values: Tensor, grad_out: Tensor, saved: Tensor, input_shape, needs
):
    """(input gradient or None, gradient of the active values or None) of `_polyphase_forward`."""
    form = conv_polyphase.phases(geometry, structure, *input_shape[2:])
    ordered = values.detach().index_select(0, form.order)
    phase_shape = (input_shape[0], form.geometry.in_channels, *form.phase_size)
    if conv_polyphase.blocked(form, input_shape[0]):
        merge = lambda grad: form.merge_blocked(grad, input_shape[0])  # noqa: E731 - the unblocking step, named
        grad_x, grad_ordered = conv_blocked.backward(form.geometry, form.structure, ordered, grad_out, saved, phase_shape, needs, merge)
    else:
        grad_out = grad_out.to(values.dtype).contiguous()
        grad_phases = direct_input_grad(form.geometry, form.structure, ordered, grad_out, phase_shape) if needs[0] else None
        grad_ordered = direct_weight_grad(form.geometry, form.structure, grad_out, saved) if needs[1] else None
        grad_x = None if grad_phases is None else form.merge(grad_phases)
    grad_values = None if grad_ordered is None else torch.empty_like(grad_ordered).index_copy_(0, form.order, grad_ordered)
    return grad_x, grad_values


# ----------------------------------------------------------------------------- im2col
class Im2col:
    """The im2col form of a layer: a block-diagonal CSR over (out_channels, in_channels*kh*kw)."""

    def __init__(self, geometry: ConvGeometry, structure: SparseStructure):
        rows = structure.positions.div(geometry.taps, rounding_mode="floor")
        group = rows.div(geometry.out_channels // geometry.groups, rounding_mode="floor")
        width = geometry.in_channels * geometry.kernel[0] * geometry.kernel[1]
        positions = structure.positions + rows * (width - geometry.taps) + group * geometry.taps
        self.structure = SparseStructure(positions, (geometry.out_channels, width))
        self.geometry = geometry

    def columns(self, x: Tensor) -> Tensor:
        """The unfolded input as an (in_channels*kh*kw, images*pixels) matrix."""
        g = self.geometry
        top, bottom, left, right = g.padding
        padded = F.pad(x, (left, right, top, bottom)) if (top, left) != (bottom, right) else x
        padding = (0, 0) if padded is not x else (top, left)
        cols = F.unfold(padded, g.kernel, dilation=g.dilation, padding=padding, stride=g.stride)
        return cols.transpose(0, 1).reshape(cols.shape[1], -1)

    def fold(self, columns_t: Tensor, input_shape) -> Tensor:
        """The input gradient from the gradient of the columns (the adjoint of `columns`)."""
        g = self.geometry
        images, _, height, width = input_shape
        top, bottom, left, right = g.padding
        size = (height + top + bottom, width + left + right)
        cols = columns_t.reshape(columns_t.shape[0], images, -1).transpose(0, 1)
        grad = F.fold(cols, size, g.kernel, dilation=g.dilation, stride=g.stride)
        return grad[:, :, top : top + height, left : left + width]

    def forward(self, values: Tensor, x: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        columns_t = self.columns(x).contiguous()
        out_t = ops.forward_t(self.structure, values, columns_t, bias)
        out_h, out_w = self.geometry.output_size(*x.shape[2:])
        out = out_t.reshape(-1, x.shape[0], out_h, out_w).transpose(0, 1).contiguous()
        return out, columns_t


def _grads_t(grad_out: Tensor) -> Tensor:
    """grad_out (N, O, H, W) as an (O, N*H*W) matrix, the columns' order."""
    return grad_out.transpose(0, 1).reshape(grad_out.shape[1], -1).contiguous()


# ----------------------------------------------------------------------------- dense
def _dense_weight(layer, values: Tensor) -> Tensor:
    flat = values.new_zeros(math.prod(layer.weight_shape))
    return flat.index_copy_(0, layer.indices, values.detach()).view(layer.weight_shape)


def _padded(geometry: ConvGeometry, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """x padded by hand where the padding is asymmetric ("same" with an even kernel), and the
    symmetric padding left for the convolution itself."""
    top, bottom, left, right = geometry.padding
    if (top, left) == (bottom, right):
        return x, (top, left)
    return F.pad(x, (left, right, top, bottom)), (0, 0)


def compute(how: str, layer, x: Tensor, values: Tensor, bias: Tensor | None, train: bool = True) -> tuple[Tensor, tuple]:
    """The output of one way, and what its backward needs (`train`: a backward will follow; the
    blocked ways take wider blocks without one, `conv_blocked.lanes`)."""
    geometry = layer.geometry
    if how == "direct":
        x = x.contiguous()
        return direct_forward(geometry, layer.structure, values, x, bias), (x,)
    if how == "blocked":
        out, blocked = conv_blocked.forward(geometry, layer.structure, values, x, bias, train)
        return out, (blocked,)
    if how == "polyphase":
        return _polyphase_forward(geometry, layer.structure, values, x, bias, train)
    if how == "dense":
        weight = _dense_weight(layer, values)
        padded, padding = _padded(geometry, x.detach())
        out = F.conv2d(
            padded, weight, None if bias is None else bias.detach(), geometry.stride, padding, geometry.dilation, geometry.groups
        )
        return out, (padded, weight)
    im2col = layer.im2col
    out, columns_t = im2col.forward(values, x, bias)
    return out, (columns_t,)


def _dense_backward(geometry: ConvGeometry, indices: Tensor, saved: tuple, grad_out: Tensor, needs: tuple, input_shape):
    """The dense way's input gradient and weight gradient at the active taps."""
    padded, weight = saved
    by_hand = tuple(padded.shape[2:]) != tuple(input_shape[2:])  # `_padded` padded it itself
    top, _, left, _ = geometry.padding
    padding = [0, 0] if by_hand else [top, left]
    grad_padded, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad_out, padded, weight, None, list(geometry.stride), padding, list(geometry.dilation), False, [0, 0], geometry.groups,
        [needs[0], needs[1], False],
    )  # fmt: skip
    grad_x = grad_values = None
    if needs[0]:
        grad_x = grad_padded[:, :, top : top + input_shape[2], left : left + input_shape[3]] if by_hand else grad_padded
    if needs[1]:
        grad_values = grad_weight.reshape(-1).index_select(0, indices)
    return grad_x, grad_values


def _bias_grad(grad_out: Tensor) -> Tensor:
    """grad_out.sum((0, 2, 3)): numba's per-channel sums where its kernels serve (inside a training
    step PyTorch's reduction woke its thread pool: 0.6 ms for a (128, 512, 3, 3) gradient on a
    2-core Xeon, against 0.17 ms alone), else PyTorch's."""
    if (dispatch.active or dispatch.current()).mode in ("auto", "numba") and direct_usable(grad_out) and grad_out.is_contiguous():
        return native.channel_sums(grad_out)
    return grad_out.sum((0, 2, 3))


# ----------------------------------------------------------------------------- autograd
class SparseConv2dFunction(torch.autograd.Function):
    """conv2d(x, W) + b with W given by the layer's (structure, values), computed the way `how`
    names; the backward gives the weight gradient at the active taps only."""

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, bias: Tensor | None, layer, how: str) -> Tensor:
        out, saved = compute(how, layer, x, values, bias)
        recorded = layer._recorder is not None  # a Sparsifier's, on steps whose gradient growth scores inactive taps
        ctx.save_for_backward(values, x if recorded else None, *saved)
        ctx.how, ctx.layer_state = how, (layer.geometry, layer.structure, layer.indices, layer.im2col if how == "im2col" else None)
        ctx.input_shape, ctx.has_bias, ctx.recorder = x.shape, bias is not None, layer._recorder
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        values, x, *saved = ctx.saved_tensors
        if ctx.recorder is not None:
            ctx.recorder(x, grad_out)
        geometry, structure, indices, im2col = ctx.layer_state
        needs = ctx.needs_input_grad[:2]
        grad_x = grad_values = grad_b = None
        if ctx.how == "direct":
            grad_out = grad_out.to(values.dtype).contiguous()
            if needs[0]:
                grad_x = direct_input_grad(geometry, structure, values, grad_out, ctx.input_shape)
            if needs[1]:
                grad_values = direct_weight_grad(geometry, structure, grad_out, saved[0])
        elif ctx.how == "blocked":
            grad_x, grad_values = conv_blocked.backward(geometry, structure, values, grad_out, saved[0], ctx.input_shape, needs)
        elif ctx.how == "polyphase":
            grad_x, grad_values = _polyphase_backward(geometry, structure, values, grad_out, saved[0], ctx.input_shape, needs)
        elif ctx.how == "dense":
            grad_x, grad_values = _dense_backward(geometry, indices, tuple(saved), grad_out.to(values.dtype), needs, ctx.input_shape)
        else:
            grads_t = _grads_t(grad_out)
            if needs[0]:
                grad_x = im2col.fold(ops.input_grad_t(im2col.structure, values, grads_t), ctx.input_shape)
            if needs[1]:
                grad_values = ops.weight_grad(im2col.structure, grads_t, saved[0])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = _bias_grad(grad_out)
        return grad_x, grad_values, grad_b, None, None
