"""2x2 max pooling for the zoo's CNNs (VGG, LeNet-5), fast in CPU inference.

PyTorch's `max_pool2d` on a contiguous NCHW tensor on the CPU runs a scalar loop per window: on
(128, 64, 32, 32) it took 22 ms where two elementwise maxima, over row pairs then column pairs,
took 2 ms (AMD EPYC AVX-512, 2 threads), with the same numbers (a maximum is exact, NaN propagates
in both). In a VGG-C at ERK 0.02 its four pools were 30% of the truly sparse model's inference.
The two maxima serve wherever no gradient is recorded; where one is, `max_pool2d` runs, so that the
gradient goes to the first maximum of each window as in the original ITOP code's models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def max_pool_2x2(x: Tensor) -> Tensor:
    """F.max_pool2d(x, 2) for an (N, C, H, W) or (C, H, W) tensor, by two elementwise maxima where
    no gradient is recorded (odd rows and columns dropped, as floor mode does). TorchScript,
    `torch.jit.trace` and `torch.fx` get `F.max_pool2d` itself, as the models had before: a graph
    holds one path, whatever grad mode it runs in."""
    if torch.jit.is_scripting():
        return F.max_pool2d(x, 2)
    else:  # TorchScript compiles only the branch above: what follows need not be scriptable
        if torch.jit.is_tracing() or isinstance(x, torch.fx.Proxy) or x.dim() not in (3, 4):
            return F.max_pool2d(x, 2)
        if torch.is_grad_enabled() and x.requires_grad:
            return F.max_pool2d(x, 2)
        height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        if not height or not width:
            return F.max_pool2d(x, 2)  # its own error for a plane smaller than the window
        rows = torch.maximum(x[..., 0:height:2, :width], x[..., 1:height:2, :width])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class MaxPool2x2(nn.MaxPool2d):
    """nn.MaxPool2d(kernel_size=2, stride=2) computed by `max_pool_2x2`."""

    def __init__(self):
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return max_pool_2x2(x)
