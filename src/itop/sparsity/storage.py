"""How the Sparsifier reaches one sparse layer's weights, whatever stores them.

A storage answers: which positions are active, what are their values and gradients, replace these
k by those k. The Sparsifier only speaks this interface:

    name, shape, numel, nnz      the layer's key, dense shape, number of positions, active count
    weight, active               the tensor criteria read (dense weight or values) and its active bool mask
    topology()                   what ranks must agree on and Rs explores (mask or sorted positions)
    initialize(count, generator) the initial topology (drawn for a mask, kept for positions)
    prune(rule, k, grad) -> kept  bool over `weight`: the active weights that survive
    grow(rule, count, evidence, generator, grad_average) -> grown: a bool mask or sorted positions,
                                 from the dense gradient (masked) or the recorded (inputs, output
                                 gradients) pairs (truly sparse)
    replace(kept, grown, nnz)    the new topology: survivors plus grown, with `nnz` active weights

`MaskedStorage` is a dense parameter and its bool mask (with the mask in the weight's dtype for the
multiply, the optimizer state masking, and the sparse Linear kernels where they pay);
`TrulySparseStorage` an `itop.sparse.SparseLinear`, its values at sorted positions, which grows in
index space (`index_growth`) and moves its optimizer state with its weights (`replace_positions`).
`MaskedLayers` holds the masked storages together for what every optimizer step does to all of
them in one foreach call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..sparse.base import SparseWeights
from . import index_growth, kernels, shards
from .density import layer_counts
from .optimizer import multiply_all
from .select import random_k_mask
from .truly_sparse import Recorder, gradient_rows, replace_positions, state_tensors


class Rule(NamedTuple):
    """A prune or grow criterion, its options, and the name its errors give it."""

    fn: Callable
    options: Mapping[str, Any]
    label: Any


def _pruned(rule: Rule, weight: Tensor, active: Tensor, k: int, grad: Tensor | None, nnz: int, name: str) -> Tensor:
    new = rule.fn(weight, active, k, grad=grad, **rule.options)
    count = nnz - shards.count(new)
    if new.shape != weight.shape or shards.any_true(new & ~active) or not 0 <= count <= k:
        raise RuntimeError(f"prune criterion {rule.label!r} must switch off at most {k} active weights of {name}; it changed {count}.")
    return new


class _Storage:
    """What both storages compute the same way from `shape` and `nnz`."""

    name: str
    shape: tuple[int, ...]
    nnz: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def stats(self) -> dict[str, Any]:
        """The layer's shape, numel, active count and density (`Sparsifier.layer_stats` adds the rest)."""
        return {"shape": self.shape, "numel": self.numel, "active": self.nnz, "density": self.nnz / self.numel}


class MaskedStorage(_Storage):
    """A dense parameter whose inactive weights (and their optimizer state) are kept at zero by a mask."""

    truly_sparse = False

    def __init__(self, name: str, param: Tensor, module: nn.Module | None = None):
        self.name, self.param, self.module = name, param, module  # module: the Linear owning it, if any
        self.mask: Tensor = torch.ones(param.shape, dtype=torch.bool, device=param.device)
        self.nnz = param.numel()
        self.multiplier: Tensor | None = None  # set by refresh()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    @property
    def weight(self) -> Tensor:
        return self.param

    @property
    def active(self) -> Tensor:
        return self.mask

    def topology(self) -> Tensor:
        return self.mask

    @property
    def shared_mask(self) -> Tensor:
        """The mask users and saved states see (a DTensor like the weight when it is sharded)."""
        return self.mask

    def initialize(self, count: int, generator: torch.Generator) -> None:
        """A random mask of exactly `count` active weights."""
        self.set_mask(random_k_mask(torch.ones_like(self.active), count, generator))

    def set_mask(self, mask: Tensor) -> None:
        self.mask, self.nnz = mask, int(torch.count_nonzero(mask))

    def shrink(self, kept: Tensor) -> None:
        """Keep only the active weights where `kept` is True (gradual pruning: nothing grows)."""
        self.set_mask(kept)

    def refresh(self) -> None:
        """The mask in the weight's dtype, for the multiply that applies it."""
        self.multiplier = self.mask.to(self.param.dtype)

    @property
    def partial(self) -> bool:
        return self.nnz < self.param.numel()

    def follows(self) -> bool:
        """Are the mask's tensors still on the weight's device and in its dtype?"""
        return self.multiplier is not None and self.param.device == self.multiplier.device and self.param.dtype == self.multiplier.dtype

    def prune(self, rule: Rule, k: int, grad: Tensor | None) -> Tensor:
        """The bool mask of the weights that survive: at most `k` active ones switched off."""
        return _pruned(rule, self.param, self.active, k, grad, self.nnz, self.name)

    def grow(self, rule: Rule, count: int, grad: Tensor | None, generator: torch.Generator, grad_average: Tensor | None = None) -> Tensor:
        """`count` new positions (a bool mask) among those inactive before the update."""
        candidates = ~self.active
        grown = rule.fn(candidates, count, weight=self.param, grad=grad, grad_average=grad_average, generator=generator, **rule.options)
        if shards.count(grown) != count or shards.any_true(grown & ~candidates):
            raise RuntimeError(f"grow criterion {rule.label!r} must switch on exactly {count} inactive weights of {self.name}.")
        return grown

    def replace(self, kept: Tensor, grown: Tensor, nnz: int) -> None:
        self.mask, self.nnz = kept | grown, nnz

    @torch.no_grad()
    def restart(self, positions: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Zero the weights at `positions` and their optimizer state: pruned and grown back in one
        update (structured growth, when a block has no other room), they start as new weights."""
        self.param.masked_fill_(positions, 0)
        for tensor in state_tensors(optimizer, self.param).values():
            tensor.masked_fill_(positions, 0)

    @torch.no_grad()
    def mask_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the optimizer state tensors of the weight's shape at the inactive positions."""
        inactive = None
        for tensor in state_tensors(optimizer, self.param).values():
            inactive = ~self.mask if inactive is None else inactive
            tensor.masked_fill_(inactive, 0)  # not a multiply: state left uninitialised may hold NaN

    def grad_looks_masked(self, grad: Tensor | None) -> bool | None:
        """None when nothing tells (no gradient, no inactive weight); else whether `grad` is zero on every inactive weight."""
        inactive = ~self.mask
        if grad is None or not bool(inactive.any()):
            return None
        return not bool(grad.masked_select(inactive).any())

    def use_kernels(self, wanted: bool) -> kernels.SparsePattern | None:
        """Give a Linear owner the sparse kernels of the current mask where it pays, else its dense class back."""
        if self.module is None:
            return None
        if wanted and kernels.pays_off(self.module, self.mask, self.nnz):
            return kernels.use_sparse(self.module, self.mask)
        kernels.use_dense(self.module)
        return None

    @torch.no_grad()
    def scale_for_fan_in(self) -> None:
        self.param.mul_(1.0 / math.sqrt(self.nnz / self.param.numel()))


class TrulySparseStorage(_Storage):
    """An `itop.sparse.SparseLinear` or `SparseConv2d`: only the active weights (values) exist, at
    sorted flat positions over the dense weight's shape."""

    truly_sparse = True

    def __init__(self, name: str, layer: SparseWeights, optimizer: torch.optim.Optimizer):
        self.name, self.layer, self.optimizer = name, layer, optimizer
        self.recorder = Recorder(layer)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.layer.weight_shape)

    @property
    def nnz(self) -> int:
        return self.layer.nnz

    @property
    def weight(self) -> Tensor:
        return self.layer.values

    @property
    def active(self) -> Tensor:
        return torch.ones(self.layer.values.shape, dtype=torch.bool, device=self.layer.values.device)

    def topology(self) -> Tensor:
        return self.layer.indices

    def initialize(self, count: int, generator: torch.Generator) -> None:
        """The layer keeps the positions it holds."""

    def prune(self, rule: Rule, k: int, grad: Tensor | None = None) -> Tensor:
        """The bool mask (one per value) of the weights that survive; reads the values' own gradient."""
        return _pruned(rule, self.layer.values, self.active, k, self.layer.values.grad, self.nnz, self.name)

    def grow(self, rule: Rule, count: int, sources: Sequence, generator: torch.Generator, grad_average: Tensor | None = None) -> Tensor:
        """`count` new sorted positions outside the active ones (the criterion's index-space form),
        from the (inputs, output gradients) pairs recorded on the update step."""
        excluded = self.layer.indices.cpu()
        grown = rule.fn.positions(
            self.shape,
            count,
            excluded=excluded,
            generator=generator,
            sources=sources,
            gradient_rows=gradient_rows(self.layer),
            **rule.options,
        )
        if grown.numel() != count or (count and (bool((grown.diff() <= 0).any()) or not index_growth.outside(grown, excluded))):
            raise RuntimeError(
                f"grow criterion {rule.label!r} must give exactly {count} distinct inactive positions of {self.name}, sorted."
            )
        return grown

    def replace(self, kept: Tensor, grown: Tensor, nnz: int) -> None:
        replace_positions(self.layer, self.optimizer, kept, grown)
        self.recorder.sources.clear()

    def shrink(self, kept: Tensor) -> None:
        """Keep only the values where `kept` is True: the layer's memory follows its count."""
        replace_positions(self.layer, self.optimizer, kept, torch.zeros(0, dtype=torch.int64))

    def record(self, on: bool) -> None:
        """Have the layer's backward record (inputs, output gradients) for gradient growth, or not."""
        self.layer._recorder = self.recorder if on else None


Storage = MaskedStorage | TrulySparseStorage


def initialize(storages: Mapping[str, Storage], distribution: Callable, density: float, seed: int, structure=None) -> dict[str, int]:
    """Random masks of exact per-layer counts (`distribution` splits `density` over the layers), drawn
    from a generator seeded with `seed` alone, in layer order (what `itop.sparse.sparsify` draws
    too); truly sparse layers keep their own positions. With a `structured.Structure`, each
    masked layer's count is rounded to the structure and drawn block by block. Returns each
    layer's count (its budget under structure)."""
    shapes = {n: s.shape for n, s in storages.items()}
    counts = layer_counts(shapes, distribution(shapes, density))
    generator = torch.Generator().manual_seed(seed)
    for name, storage in storages.items():
        if structure is None or storage.truly_sparse:
            storage.initialize(counts[name], generator)
        else:
            storage.set_mask(structure.initial_mask(storage.shape, counts[name], generator, storage.param.device))
    return {name: storage.nnz for name, storage in storages.items()}


def use_given_masks(storages: Mapping[str, Storage], masks: Mapping[str, Tensor]) -> dict[str, int]:
    """Start every masked layer from `masks` (name -> bool tensor of its weight's shape, e.g. from
    `itop.init_masks`); returns each layer's count. One-line ValueErrors for masks that do not
    name exactly the masked layers or do not fit their shapes."""
    masked = {n: s for n, s in storages.items() if not s.truly_sparse}
    if len(masked) < len(storages):
        raise ValueError("masks= starts masked layers; this model has truly sparse layers, which hold their own positions.")
    if set(masks) != set(masked):
        missing, extra = sorted(set(masked) - set(masks)), sorted(set(masks) - set(masked))
        problem = f"lacks {missing[0]!r}" if missing else f"names {extra[0]!r}, which is not a sparse parameter"
        raise ValueError(
            f"masks= must hold one mask per sparse parameter ({len(masked)}), but it {problem}; build it with the same include/exclude."
        )
    for name, storage in masked.items():
        mask = masks[name]
        if not isinstance(mask, Tensor) or tuple(mask.shape) != storage.shape:
            shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"the mask of {name} has shape {shape}, the parameter {storage.shape}; pass masks of the parameters' shapes.")
        storage.set_mask(mask.to(device=storage.param.device, dtype=torch.bool))
        if storage.nnz == 0:
            raise ValueError(f"the mask of {name} keeps no weight; a sparse layer needs at least one (exclude the layer to leave it out).")
    return {name: storage.nnz for name, storage in storages.items()}


class MaskedLayers:
    """The masked storages together, in one order (the Sparsifier's `_names`), for what every
    optimizer step does to all of them: one foreach multiply by the masks, one running average."""

    def __init__(self, storages: list[MaskedStorage]):
        self.storages = storages
        self.names = [s.name for s in storages]
        self.weights = [s.param for s in storages]
        self.multipliers: list[Tensor] = []
        self.partial: list[int] = []  # the layers that have inactive weights, the only gradients worth masking
        self.patterns: dict[str, kernels.SparsePattern] = {}

    def refresh(self) -> list[Tensor]:
        """The masks in each weight's dtype and device, in one list, for the foreach multiply."""
        for storage in self.storages:
            storage.refresh()
        self.multipliers = [s.multiplier for s in self.storages]
        self.partial = [i for i, s in enumerate(self.storages) if s.partial]
        return self.multipliers

    def use_kernels(self, wanted: bool) -> dict[str, kernels.SparsePattern]:
        """Give the Linear layers where it pays (and `wanted`) the sparse kernels of their masks."""
        patterns = {s.name: s.use_kernels(wanted) for s in self.storages}
        self.patterns = {n: p for n, p in patterns.items() if p is not None}
        return self.patterns

    def enable_kernels(self, on: bool) -> None:
        """Let the sparse kernels run, or not (inside a step whose closure computes the gradients)."""
        for pattern in self.patterns.values():
            pattern.enabled = on

    def scale_for_fan_in(self) -> None:
        """Scale each layer's initial weights by 1/sqrt(its density): the variance nn.Linear and
        nn.Conv give for the dense fan-in becomes the one for the actual fan-in."""
        for storage in self.storages:
            storage.scale_for_fan_in()

    def follow(self) -> bool:
        """Are the masks still on their weights' devices and in their dtypes?"""
        return all(s.follows() for s in self.storages)

    @torch.no_grad()
    def apply(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero every inactive weight and every optimizer state tensor of a masked weight's shape."""
        multiply_all([shards.local(w) for w in self.weights], self.multipliers)
        for storage in self.storages:
            storage.mask_state(optimizer)

    def take_gradients(self, averages: Mapping[str, Tensor], beta: float, keep: bool, mask: bool, scale: Tensor | None):
        """Fold the gradients into the running `averages` (if any) and, if `keep`, return a copy of
        the dense ones by name (both divided by `scale`, the loss scale a fused optimizer removes
        inside its own kernel; None when no layer has a gradient); then mask them in place if asked."""
        grads = [p.grad for p in self.weights]
        present = [i for i, g in enumerate(grads) if g is not None]
        if not present:
            return None
        dense = {self.names[i]: grads[i].clone() if scale is None else grads[i] / scale for i in present} if keep else None
        grads = [None if g is None else shards.local(g) for g in grads]  # what the multiplies act on: local shards
        if averages:
            taken = [grads[i] for i in present]
            if scale is not None:
                taken = torch._foreach_div(taken, scale)
            torch._foreach_lerp_([shards.local(averages[self.names[i]]) for i in present], taken, 1 - beta)
        if mask:
            patterns = [self.patterns.get(name) for name in self.names]
            masked = [i for i in self.partial if grads[i] is not None and not (patterns[i] is not None and patterns[i].grad_clean)]
            multiply_all([grads[i] for i in masked], [self.multipliers[i] for i in masked])
            for i in masked:
                if patterns[i] is not None:
                    patterns[i].grad_clean = True
        return dense

    def update_grads(self, stash: Mapping[str, Tensor] | None, reads_grads: bool, gradient_growth: bool) -> dict[str, Tensor | None]:
        """The gradients an update reads, by name: `stash`, those kept on the step that triggered it
        (zero for a layer that had none), or for an update called by hand the weights' `.grad`,
        refused (RuntimeError) where they cannot be the dense gradients the criteria need."""
        if stash is not None:
            return {n: stash[n] if n in stash else torch.zeros_like(p) for n, p in zip(self.names, self.weights)}
        grads = {n: p.grad for n, p in zip(self.names, self.weights)}
        sampled = [n for n, pattern in self.patterns.items() if pattern.sampled_last]
        if reads_grads and sampled:
            raise RuntimeError(
                f"the sparse Linear kernels computed the gradient of {sampled[0]} at its active weights only (only "
                "scheduled updates get dense gradients); build the Sparsifier with sparse_linear=False to call "
                "update_topology() by hand with a gradient-based criterion."
            )
        if gradient_growth and self.gradients_look_masked(grads):
            raise RuntimeError(
                "gradient growth needs the dense gradient, but the gradients are already masked by optimizer.step(); "
                "call update_topology() after loss.backward() and before optimizer.step()."
            )
        return grads

    def gradients_look_masked(self, grads: Mapping[str, Tensor | None]) -> bool:
        """True when every layer with inactive weights has a gradient that is zero on all of them:
        what `optimizer.step()` leaves behind, useless for choosing where to grow."""
        seen_inactive = False
        for storage in self.storages:
            masked = storage.grad_looks_masked(grads[storage.name])
            if masked is False:
                return False
            seen_inactive = seen_inactive or masked is not None
        return seen_inactive
