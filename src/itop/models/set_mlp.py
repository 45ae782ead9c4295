"""The multilayer perceptron of the SET papers: any number of hidden layers, ReLU, SReLU or All-ReLU.

Their recipes are 784-1000-1000-1000-10 (the SET tutorial; Curci et al. 2021), 3312-3000-3000-3000-5
(lung) and 3072-4000-1000-4000-10 with SReLU (Keras), both in the SET code of Mocanu et al. 2018
(github.com/dcmocanu/sparse-evolutionary-artificial-neural-networks); the default here is the first.
Layer names are stable and readable, so the sparsity engine can pick weights by name:
`fc1 .. fc{L+1}` are the Linear layers (fc1 the first, fc{L+1} the classifier, as in LeNet-300-100),
`act1 .. actL` their activations, `drop1 .. dropL` the dropouts (present only when dropout > 0).
They are registered in forward order, so `named_parameters()` goes layer by layer. The input is
flattened (tabular data arrives as N x F x 1 x 1) and the model returns logits.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable

import torch
from torch import nn

from ..sparse import chain
from .activations import AllReLU, SReLU
from .registry import register_model

ACTIVATIONS = ("allrelu", "relu", "srelu")
DEFAULT_HIDDEN = (1000, 1000, 1000)


def parse_hidden(text: str) -> tuple[int, ...]:
    """Hidden widths from the command line: "3000,3000,3000" (spaces allowed) -> (3000, 3000, 3000)."""
    parts = [part.strip() for part in text.split(",")]
    if not all(re.fullmatch(r"[0-9]+", part) for part in parts) or any(int(part) < 1 for part in parts):
        raise ValueError(f"hidden widths must be positive integers separated by commas, like '1000,1000,1000'; got {text!r}.")
    return tuple(int(part) for part in parts)


def _check_hidden(hidden: Iterable[int] | str) -> tuple[int, ...]:
    if isinstance(hidden, str):
        return parse_hidden(hidden)
    widths = tuple(hidden)
    # operator.index takes Python and NumPy integers, refuses floats; bools are refused by name.
    if not widths or any(isinstance(w, bool) or not hasattr(w, "__index__") or operator.index(w) < 1 for w in widths):
        raise ValueError(f"hidden must be one or more positive integer widths, got {hidden!r}.")
    return tuple(operator.index(w) for w in widths)


def _activation(name: str, layer: int, width: int, allrelu_slope: float) -> nn.Module:
    """Activation of hidden layer `layer` (1-based); All-ReLU's slope is -alpha on odd layers, +alpha on even."""
    if name == "relu":
        return nn.ReLU()
    if name == "srelu":
        return SReLU(width)
    return AllReLU(-allrelu_slope if layer % 2 else allrelu_slope)


class SetMLP(nn.Module):
    """Flatten, then (Linear, activation, dropout) per hidden width, then a Linear to the classes."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Iterable[int] | str = DEFAULT_HIDDEN,
        activation: str = "relu",
        dropout: float = 0.0,
        allrelu_slope: float = 0.6,
    ):
        super().__init__()
        widths = _check_hidden(hidden)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}.")
        if in_features < 1 or num_classes < 1:
            raise ValueError(f"SetMLP needs in_features and num_classes >= 1, got {in_features} and {num_classes}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.hidden = widths
        self.activation = activation
        self.dropout = dropout
        sizes = (in_features, *widths)
        for layer, (fan_in, width) in enumerate(zip(sizes, widths), start=1):
            self.add_module(f"fc{layer}", nn.Linear(fan_in, width))
            self.add_module(f"act{layer}", _activation(activation, layer, width, allrelu_slope))
            if dropout > 0:
                self.add_module(f"drop{layer}", nn.Dropout(dropout))
        self.add_module(f"fc{len(widths) + 1}", nn.Linear(widths[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Children are registered in forward order: fc1, act1, [drop1], fc2, ..., fc{L+1}. Truly sparse
        # layers with ReLUs between them train through one node where that computes the same numbers.
        x = torch.flatten(x, 1)
        modules = list(self.children())
        i = 0
        while i < len(modules):
            length = chain.run_length(modules, i)
            if length and chain.usable(modules[i : i + length : 2], x):
                x = chain.forward_run(modules[i : i + length : 2], x)
                i += length
            else:
                x = modules[i](x)
                i += 1
        return x


@register_model("set-mlp", in_channels=1, image_size=28, aliases=("setmlp",))
def set_mlp(num_classes: int, in_channels: int, image_size: int, **options) -> nn.Module:
    """The registry's factory: the input width from the input shape; `options` are SetMLP's
    (hidden, activation, dropout, allrelu_slope)."""
    return SetMLP(in_features=in_channels * image_size * image_size, num_classes=num_classes, **options)
