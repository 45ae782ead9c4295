"""The activations of the SET multilayer perceptrons: SReLU (SET's Keras code) and All-ReLU.

Both are written with plain tensor ops so autograd supplies every gradient, and SReLU draws its
initial values in `reset_parameters()` from torch's global RNG, so it can be built on the meta
device and materialised later (`to_empty(device=...)`, then `reset_parameters()`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SReLU(nn.Module):
    """S-shaped ReLU (Jin et al. 2016) with four learnable parameters per neuron.

    Identity between the thresholds, lines of slope `a_left` / `a_right` outside them. As in
    keras-contrib's layer (which the SET Keras code uses), the right threshold actually used is
    `t_left + |t_right|`, so it never crosses the left one, and the initial values are theirs:
    t_left = 0, a_left ~ U(0, 1), t_right ~ U(0, 5), a_right = 1. Inputs are (N, num_features)
    or (N, num_features, *rest); the parameters broadcast over the trailing dimensions.
    """

    def __init__(self, num_features: int, device=None, dtype=None):
        super().__init__()
        if num_features < 1:
            raise ValueError(f"SReLU needs num_features >= 1, got {num_features}.")
        self.num_features = num_features
        factory = {"device": device, "dtype": dtype}
        self.t_left = nn.Parameter(torch.empty(num_features, **factory))
        self.a_left = nn.Parameter(torch.empty(num_features, **factory))
        self.t_right = nn.Parameter(torch.empty(num_features, **factory))
        self.a_right = nn.Parameter(torch.empty(num_features, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.t_left.zero_()
            self.a_left.uniform_(0.0, 1.0)
            self.t_right.uniform_(0.0, 5.0)
            self.a_right.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"SReLU expects inputs (N, {self.num_features}, ...), got {tuple(x.shape)}.")
        shape = (self.num_features,) + (1,) * (x.dim() - 2)  # broadcast over trailing dims
        t_left, a_left = self.t_left.view(shape), self.a_left.view(shape)
        t_right = t_left + self.t_right.abs().view(shape)
        a_right = self.a_right.view(shape)
        left = t_left + a_left * (x - t_left)
        right = t_right + a_right * (x - t_right)
        return torch.where(x >= t_right, right, torch.where(x <= t_left, left, x))

    def extra_repr(self) -> str:
        return f"{self.num_features}"


class AllReLU(nn.Module):
    """All-ReLU (Curci, Mocanu & Pechenizkiy 2021): x for x > 0, `slope * x` otherwise.

    A leaky ReLU whose slope may be negative; the SET-MLP alternates its sign by layer
    (-alpha, +alpha, -alpha, ...), which is what sets it apart from a plain leaky ReLU.
    """

    def __init__(self, slope: float):
        super().__init__()
        self.slope = float(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, negative_slope=self.slope)

    def extra_repr(self) -> str:
        return f"slope={self.slope}"
