"""What the engine does to truly sparse layers (`itop.sparse.SparseLinear`, `SparseConv2d`): find
them, record what gradient growth needs, and replace active positions with the optimizer state
following each surviving weight.

A truly sparse layer is keyed by `<module>.weight`, the name its weight has in the same model
built with nn.Linear or nn.Conv2d, so masked and truly sparse runs report the same layer names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from ..sparse.base import SparseWeights
from ..sparse.conv import SparseConv2d
from . import index_growth
from .distributed import gather_rows, is_distributed


def _stands_for(module: SparseWeights) -> type[nn.Module]:
    """The dense layer type a truly sparse layer stands for."""
    return nn.Conv2d if isinstance(module, SparseConv2d) else nn.Linear


def _selects(sel, names: tuple[str, str], module: SparseWeights) -> bool:
    """Does one include/exclude entry name this truly sparse layer? A pattern matching
    `<module>.weight` or `<module>.values`, or a module type it is (nn.Linear or nn.Conv2d
    included: a truly sparse layer stands for one)."""
    if isinstance(sel, str):
        return any(fnmatchcase(n, sel) for n in names)
    return isinstance(sel, type) and (isinstance(module, sel) or issubclass(_stands_for(module), sel))


def truly_sparse_layers(model: nn.Module, include: Sequence | None = None, exclude: Sequence = ()) -> dict[str, SparseWeights]:
    """Every truly sparse layer of `model` with trainable values, by `<module>.weight`, in model
    order, that `include` (default: all of them) chooses and `exclude` does not (see `_selects`)."""
    layers = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, SparseWeights) or not module.values.requires_grad:
            continue
        prefix = f"{module_name}." if module_name else ""
        names = (prefix + "weight", prefix + "values")
        if include is not None and not any(_selects(sel, names, module) for sel in include):
            continue
        if not any(_selects(sel, names, module) for sel in exclude):
            layers[names[0]] = module
    return layers


def selects_some(sel, model: nn.Module) -> bool:
    """Does an include entry choose at least one truly sparse layer of `model`?"""
    return bool(truly_sparse_layers(model, [sel]))


class Recorder:
    """Called by a truly sparse layer's backward with (inputs, output gradients): keeps the pairs of the
    current optimizer step (gradient accumulation gives several; the first backward after
    `zero_grad()` clears those of an earlier step)."""

    def __init__(self, layer: SparseWeights):
        self.layer = layer
        self.sources: list[tuple[Tensor, Tensor]] = []

    def __call__(self, inputs: Tensor, grads: Tensor) -> None:
        if self.layer.values.grad is None:
            self.sources.clear()
        self.sources.append((inputs.detach(), grads.detach()))


def gradient_rows(layer: SparseWeights):
    """How gradient growth computes `layer`'s dense weight gradient for a block of output rows
    from the recorded (inputs, output gradients) (see `index_growth`)."""
    return conv_rows(layer.geometry) if isinstance(layer, SparseConv2d) else index_growth.linear_rows


def conv_rows(geometry):
    """A convolution's dense weight gradient for output channels [first, last), flattened to
    (channels, in_channels/groups * kh * kw): PyTorch's convolution weight gradient per group
    (`torch.nn.grad.conv2d_weight`), on the input zero-padded as the layer pads it."""
    per_group_out, per_group_in = geometry.out_channels // geometry.groups, geometry.in_channels // geometry.groups
    top, bottom, left, right = geometry.padding

    def rows(inputs: Tensor, grads: Tensor, first: int, last: int) -> Tensor:
        padded = F.pad(inputs, (left, right, top, bottom))
        blocks = []
        while first < last:
            group = first // per_group_out
            stop = min(last, (group + 1) * per_group_out)
            source = padded[:, group * per_group_in : (group + 1) * per_group_in]
            shape = (stop - first, per_group_in, *geometry.kernel)
            block = torch.nn.grad.conv2d_weight(source, shape, grads[:, first:stop], geometry.stride, 0, geometry.dilation)
            blocks.append(block.reshape(stop - first, -1))
            first = stop
        return torch.cat(blocks)

    return rows


def state_tensors(optimizer: torch.optim.Optimizer, param: Tensor) -> dict[str, Tensor]:
    """The optimizer's per-weight state of `param` (tensors of its shape), by key."""
    state = optimizer.state.get(param, {})
    return {k: t for k, t in state.items() if isinstance(t, Tensor) and t.shape == param.shape}


@torch.no_grad()
def replace_positions(layer: SparseWeights, optimizer: torch.optim.Optimizer, survivors: Tensor, grown: Tensor) -> None:
    """Keep the active weights where `survivors` (bool, one per value) is True, add the sorted
    positions `grown` at zero, and reorder values and optimizer state so that every surviving
    weight keeps its own value and state; new weights start with zero state."""
    values = layer.values
    kept = layer.indices[survivors.to(layer.indices.device)]
    grown = grown.to(kept.device)
    merged = torch.cat([kept, grown])
    order = torch.sort(merged).indices  # kept and grown are disjoint, so the sort is a merge

    def follow(tensor: Tensor) -> Tensor:
        joined = torch.cat([tensor[survivors.to(tensor.device)], tensor.new_zeros(grown.numel())])
        return joined[order.to(tensor.device)]

    state = state_tensors(optimizer, values)
    new_state = {key: follow(t) for key, t in state.items()}
    layer.set_positions(merged[order], follow(values.detach()))
    for key, tensor in new_state.items():
        optimizer.state[values][key] = tensor


def check_truly_sparse_criteria(layers: Mapping[str, SparseWeights], grow, keeps_grad_average: bool, label) -> None:
    """Truly sparse layers (if `layers` has any) need grow criteria in index space and no dense running averages."""
    if not layers:
        return
    if keeps_grad_average:
        raise ValueError(
            "momentum growth and momentum redistribution need a dense running average of the gradients, which truly "
            "sparse layers never hold; use grow='gradient' (RigL) or 'random' (SET), and redistribution 'none', "
            "'magnitude' or 'nonzeros'."
        )
    if not callable(getattr(grow, "positions", None)):
        raise ValueError(
            f"grow criterion {label!r} works on dense masks only; give it an index-space form "
            "(fn.positions, see itop/sparsity/index_growth.py) to use it with truly sparse layers."
        )


def update_seed(seed: int) -> int:
    """The seed of the generator behind topology updates: another stream than the initial masks'
    (seeded with `seed` itself), so that a truly sparse model whose positions were drawn by
    `itop.sparse.sparsify` makes the same update draws as the masked model of the same seed."""
    return (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**63


def model_order(model: nn.Module, params: Mapping[str, Tensor], layers: Mapping[str, nn.Module]) -> list[str]:
    """Masked and truly sparse layer names in the order of their parameters in the model."""
    place = {id(p): i for i, p in enumerate(model.parameters())}
    keyed = [(place[id(p)], n) for n, p in params.items()] + [(place[id(m.values)], n) for n, m in layers.items()]
    return [n for _, n in sorted(keyed)]


def all_ranks(sources: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """A truly sparse layer's (inputs, output gradients) of this step from every rank, as one pair
    whose product is the DDP-averaged dense gradient (the gradients divided by the world size)."""
    if not is_distributed() or not sources:
        return list(sources)
    inputs = gather_rows(torch.cat([x for x, _ in sources]))
    grads = gather_rows(torch.cat([g for _, g in sources]))
    return [(inputs, grads / dist.get_world_size())]
