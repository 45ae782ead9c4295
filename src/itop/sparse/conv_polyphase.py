"""The "polyphase" way of `SparseConv2d`: a strided layer as a stride-1 one, computed blocked.

A convolution of stride (sh, sw) reads input pixel (sh * y + i, sw * x + j) for output pixel (y, x)
and kernel position (i, j). Split the zero-padded input into its sh * sw phases, planes of the
pixels (sh * Y + r, sw * X + q) for each r < sh, q < sw (space-to-depth), and the tap (o, c, i, j)
becomes the tap (o, (r, q, c), i // sh, j // sw) with r = i % sh, q = j % sw of a stride-1
convolution without padding over the phases' channels (only the phases a kernel position reads:
min(kh, sh) x min(kw, sw) of them, one for a 1x1 kernel), with a kernel of ceil(kh / sh) x
ceil(kw / sw): the same active weights, one for one, in another order. `conv_ops` computes that
convolution with the stride-1 kernels: blocked (`conv_blocked.py`) on output planes up to 8x8
at batches of 16 or more, the input split straight into blocked phases (`split_blocked`), the NCHW
ones otherwise (a blocked form reading strided windows had
been slower than the dense convolution, and the NCHW kernels' strided form slower still). Groups 1 and dilation 1 only. The
phases cost one rearranging copy of the input, and their gradient one of the input gradient.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from . import conv_blocked
from .structure import SparseStructure


def blocked(form: Phases, images: int) -> bool:
    """Which stride-1 kernels compute the phases' convolution: the blocked ones where they pay
    (`conv_blocked.pays`), the NCHW ones otherwise."""
    return conv_blocked.pays(form.output_pixels, images)


def usable(geometry) -> bool:
    """Strided layers without groups or dilation."""
    return geometry.stride != (1, 1) and geometry.groups == 1 and geometry.dilation == (1, 1)


class Phases:
    """A strided layer's stride-1 form (see the module docstring): its geometry and structure, the
    order that takes the layer's values to it, and the size of its phases."""

    def __init__(self, geometry, structure: SparseStructure, height: int, width: int):
        (kh, kw), (sh, sw), (top, _, left, _) = geometry.kernel, geometry.stride, geometry.padding
        out_h, out_w = geometry.output_size(height, width)
        ka, kb = math.ceil(kh / sh), math.ceil(kw / sw)
        self.phase_size = (out_h + ka - 1, out_w + kb - 1)  # the rows and columns of each phase that are read
        # phase pixel (0, 0) of phase (r, q) is input pixel (r - top, q - left); only the phases some
        # kernel position reads are kept, r < min(kh, sh) and q < min(kw, sw) (one, for a 1x1 kernel)
        self.top_left, self.counts = (top, left), (min(kh, sh), min(kw, sw))
        channels = geometry.in_channels
        self.geometry = dataclasses.replace(
            geometry,
            in_channels=self.counts[0] * self.counts[1] * channels,
            kernel=(ka, kb),
            stride=(1, 1),
            padding=(0, 0, 0, 0),
            dilation=(1, 1),
        )
        rows = structure.positions.div(geometry.taps, rounding_mode="floor")
        rest = structure.positions - rows * geometry.taps
        channel, tap = rest.div(kh * kw, rounding_mode="floor"), rest.remainder(kh * kw)
        i, j = tap.div(kw, rounding_mode="floor"), tap.remainder(kw)
        phase_channel = (i.remainder(sh) * self.counts[1] + j.remainder(sw)) * channels + channel
        column = (phase_channel * ka + i.div(sh, rounding_mode="floor")) * kb + j.div(sw, rounding_mode="floor")
        positions, self.order = torch.sort(rows * self.geometry.taps + column)
        self.structure = SparseStructure(positions, (geometry.out_channels, self.geometry.taps))
        self.stride, self.channels, self.input_size = (sh, sw), channels, (height, width)
        self.output_pixels = out_h * out_w

    def split(self, x: Tensor) -> Tensor:
        """x (N, C, H, W) as its kept phases (N, phases * C, phase rows, phase columns), in one pass."""
        phases = torch.empty(x.shape[0], self.geometry.in_channels, *self.phase_size, dtype=x.dtype)
        _kernels().to_phases(x.detach().contiguous().numpy(), phases.numpy(), *self.stride, *self.counts, *self.top_left)
        return phases

    def split_blocked(self, x: Tensor, train: bool = True) -> Tensor:
        """x (N, C, H, W) as its kept phases in the blocked layout (`conv_blocked.to_blocked`: blocks
        of `conv_blocked.lanes` images innermost; the phases need no padding), in one pass."""
        phases = conv_blocked.empty_blocks(x.shape[0], self.geometry.in_channels, *self.phase_size, x.dtype, train)
        conv_blocked._pool()
        _kernels().to_blocked_phases(x.detach().contiguous().numpy(), phases.numpy(), *self.stride, *self.counts, *self.top_left)
        return phases

    def merge_blocked(self, grad_phases: Tensor, images: int) -> Tensor:
        """The adjoint of `split_blocked`: the input gradient of `images` images from the blocked
        phases' gradient, in one pass."""
        grad_x = torch.empty(images, self.channels, *self.input_size, dtype=grad_phases.dtype)
        _kernels().from_blocked_phases(grad_phases.numpy(), grad_x.numpy(), *self.stride, *self.counts, *self.top_left)
        return grad_x

    def merge(self, grad_phases: Tensor) -> Tensor:
        """The adjoint of `split`: the input gradient from the phases' gradient, in one pass."""
        grad_x = torch.empty(grad_phases.shape[0], self.channels, *self.input_size, dtype=grad_phases.dtype)
        _kernels().from_phases(grad_phases.contiguous().numpy(), grad_x.numpy(), *self.stride, *self.counts, *self.top_left)
        return grad_x


def _kernels():
    return conv_blocked._kernels()


def phases(geometry, structure: SparseStructure, height: int, width: int) -> Phases:
    """The layer's `Phases` for this input size, kept on the structure."""
    return structure.cached("phases", (height, width), lambda: Phases(geometry, structure, height, width))
