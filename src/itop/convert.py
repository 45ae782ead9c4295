"""Moving models between dense, masked and truly sparse Linear and Conv2d layers.

- `sparsify(model, density)`: in place, before the optimizer is built, the Linear and Conv2d
  layers chosen by the Sparsifier's selection rules become SparseLinear and SparseConv2d layers
  with the exact per-layer counts of a distribution (ER/ERK from the shapes alone), drawn as the
  masked Sparsifier draws its initial masks for the same seed.
- `export(model, sparsifier)`: a copy of a masked model whose sparse Linear and Conv2d layers are
  truly sparse (train masked on a GPU, run truly sparse on a CPU).
- `densify(model)`: a copy whose truly sparse layers are nn.Linear / nn.Conv2d with zeros off the
  active positions.

Only layers of type nn.Linear or nn.Conv2d itself are converted (a Conv2d only with
padding_mode="zeros", which SparseConv2d computes): subclasses such as MultiheadAttention's
out_proj are read as weights by their owners and stay as they are.

This module sits above both storages and the engine (it reads the engine's selection rules,
distributions and masks, and builds truly sparse layers); its functions are public as
`itop.sparse.sparsify`, `itop.sparse.export` and `itop.sparse.densify`, which `itop.sparse`
imports from here on first use, so the storage itself imports nothing of the engine.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from .sparse.base import SparseWeights
from .sparse.condensed import CondensedLinear, CondensedWeights
from .sparse.condensed_chain import CondensedSequential, fuse_chains
from .sparse.condensed_conv import CondensedConv2d
from .sparse.conv import SparseConv2d
from .sparse.layer import SparseLinear
from .sparse.sampling import random_k_positions
from .sparsity import kernels
from .sparsity.density import DISTRIBUTIONS, layer_counts
from .sparsity.params import Selector, sparse_parameters
from .sparsity.shards import is_sharded
from .sparsity.sparsifier import Sparsifier

__all__ = ["sparsify", "export", "densify"]


def _convertible(module: nn.Module) -> bool:
    """nn.Linear or nn.Conv2d itself (a Linear also as the masked engine's kernel class), not a
    subclass read by its owner; a Conv2d padding with zeros."""
    if type(module) is nn.Conv2d:
        return module.padding_mode == "zeros"
    return type(module) in (nn.Linear, kernels.MaskedCSRLinear)


def _owners(model: nn.Module, params) -> dict[str, nn.Module]:
    """The modules whose `weight` is one of `params`, by parameter name."""
    owners = {}
    for module_name, module in model.named_modules():
        name = f"{module_name}.weight" if module_name else "weight"
        if name in params and params[name] is getattr(module, "weight", None):
            owners[name] = module
    return owners


def _plain_layers(model: nn.Module, include, exclude) -> dict[str, tuple[str, nn.Module]]:
    """Sparse Linear and Conv2d weights (Sparsifier selection rules) by parameter name -> (module name, module)."""
    params = sparse_parameters(model, include, exclude)
    names = {id(m): n for n, m in model.named_modules()}
    return {p: (names[id(m)], m) for p, m in _owners(model, params).items() if _convertible(m)}


def _truly_sparse(module: nn.Module, positions: torch.Tensor) -> SparseWeights:
    """The truly sparse layer of `module` at `positions`."""
    if module.weight.is_meta:
        return _unallocated(module, positions)
    kind = SparseConv2d if isinstance(module, nn.Conv2d) else SparseLinear
    return kind.from_positions(module, positions)


def _kind(value) -> str:
    """How a wrong argument is named in a message: "None", or its type ("str", "Sparsifier")."""
    return "None" if value is None else type(value).__name__


def _check_model(call: str, model) -> None:
    """A one-line TypeError for a `model` argument that is not a module (None, swapped arguments)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{call}: model must be a torch.nn.Module, got {_kind(model)}.")


def _check_sparsifier(model: nn.Module, sparsifier) -> None:
    """`sparsifier` must be the itop.Sparsifier built on `model`: its masks say what to keep."""
    if not isinstance(sparsifier, Sparsifier):
        raise TypeError(
            f"export(model, sparsifier): sparsifier must be the itop.Sparsifier that trained the model, got {_kind(sparsifier)}."
        )
    if any(is_sharded(p) for p in sparsifier.params.values()):
        raise ValueError(
            "export(model, sparsifier): the model is sharded by FSDP2 and export needs whole weights; load its checkpoint "
            "(itop.load_sharded_state) into an unsharded model and Sparsifier in one process, then export that."
        )
    held = {id(p) for p in model.parameters()}
    if any(id(p) not in held for p in sparsifier.params.values()):
        raise ValueError(
            "export(model, sparsifier): the sparsifier was built on another model; pass the model it trained (not a copy of it)."
        )


def _replace(model: nn.Module, module_name: str, new: nn.Module) -> nn.Module:
    """Put `new` at `module_name` in `model` and return the model (`new` itself for the root)."""
    if not module_name:
        return new
    parent_name, _, child = module_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


@torch.no_grad()
def sparsify(
    model: nn.Module,
    density: float,
    distribution: str = "erk",
    seed: int | None = None,
    *,
    include: Sequence[Selector] | None = None,
    exclude: Sequence[Selector] = (),
    init_scale: str = "sparse",
) -> nn.Module:
    """Replace `model`'s sparse Linear and Conv2d layers by SparseLinear and SparseConv2d layers in
    place, and return `model`.

    Each layer keeps `round(d_i * N_i)` of its weights (at least one), at positions drawn uniformly
    without replacement from a generator seeded with `seed`, in layer order: the masks
    `itop.Sparsifier(model, ..., density, distribution, seed=seed)` would start from on the same
    layers. Layers the distribution makes dense stay as they are. A layer built on the meta device
    (`with torch.device("meta")`: too large to exist densely) gets its values drawn from its dense
    type's initial distribution at the chosen positions only; a meta layer that stays dense is
    left for the caller to materialise. Build the optimizer after this call.

    Args:
        model: the model whose Linear and Conv2d layers become truly sparse (changed in place).
        density: share of the sparse layers' weights kept, over all of them, in (0, 1].
        distribution: how the density is split over layers: "erk", "er" or "uniform".
        seed: the random seed that draws the positions (None: a random one).
        include: which layers are sparse, as for `itop.Sparsifier` (default: every Linear and Conv
            weight; `include=[nn.Linear]` keeps the convolutions dense).
        exclude: layers left dense (types or name patterns).
        init_scale: "sparse" (default) scales the kept weights by 1/sqrt(d_i), the dense layer's
            initialisation for the actual fan-in; "dense" keeps them as they are.

    Returns:
        `model`, with SparseLinear and SparseConv2d layers.

    Example:
        ```python
        model = itop.sparse.sparsify(model, density=0.01, distribution="er", seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        ```
    """
    _check_model("sparsify(model, density)", model)
    if not isinstance(density, (int, float)) or isinstance(density, bool) or not 0 < density <= 1:
        raise ValueError(f"density must be a number in (0, 1], got {density!r}.")
    if init_scale not in ("dense", "sparse"):
        raise ValueError(f"init_scale must be 'sparse' or 'dense', got {init_scale!r}.")
    if seed is not None and (not isinstance(seed, numbers.Integral) or isinstance(seed, bool)):
        raise TypeError(f"sparsify(..., seed): seed must be an int or None, got {_kind(seed)}.")
    for name, selectors in (("include", include), ("exclude", exclude)):
        if isinstance(selectors, str):
            raise TypeError(
                f"sparsify(..., {name}): {name} must be a list of selectors, e.g. {name}=[{selectors!r}], got {_kind(selectors)}."
            )
    layers = _plain_layers(model, include, exclude)
    if not layers:
        raise ValueError("the model has no Linear or Conv2d layer to make truly sparse (include/exclude left none).")
    shapes = {name: tuple(module.weight.shape) for name, (_, module) in layers.items()}
    counts = layer_counts(shapes, DISTRIBUTIONS.get(distribution)(shapes, float(density)))
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    generator = torch.Generator().manual_seed(int(seed))
    empty = torch.zeros(0, dtype=torch.int64)
    for name, (module_name, module) in layers.items():
        numel = math.prod(shapes[name])
        positions = random_k_positions(numel, empty, counts[name], generator)
        if counts[name] == numel:
            continue
        layer = _truly_sparse(module, positions)
        if init_scale == "sparse":
            layer.values.mul_(1.0 / math.sqrt(counts[name] / numel))
        _replace(model, module_name, layer)
    return model


def _unallocated(module: nn.Module, positions: torch.Tensor) -> SparseWeights:
    """A truly sparse layer at `positions` for a Linear or Conv2d built on the meta device (its
    dense weight was never allocated: too large to exist): the values and bias drawn from the dense
    layer's own distribution, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with torch's global generator as
    its initialisation would draw them."""
    fan_in = math.prod(module.weight.shape[1:])
    bound = 1.0 / math.sqrt(fan_in)
    dtype = module.weight.dtype
    values = torch.empty(positions.numel(), dtype=dtype).uniform_(-bound, bound)
    bias = None if module.bias is None else torch.empty(module.weight.shape[0], dtype=dtype).uniform_(-bound, bound)
    if isinstance(module, nn.Conv2d):
        return SparseConv2d.from_values(module, positions, values, bias)
    return SparseLinear.from_values(module.in_features, module.out_features, positions, values, bias)


def export(model: nn.Module, sparsifier: Sparsifier, *, structured: bool = True) -> nn.Module:
    """A copy of `model` whose masked Linear and Conv2d layers (of `sparsifier`, built on `model`)
    are SparseLinear and SparseConv2d layers with the active weights; dense layers stay as they are.

    A sparsifier with `structure="fan-in"` gives CondensedLinear and CondensedConv2d layers instead
    (each kept neuron's k weights and their input positions; ablated neurons output their bias):
    the fastest form for inference. An nn.Sequential of condensed layers and ReLUs becomes a
    `CondensedSequential` (same children and state dict), which runs one input in one kernel call. One with an N:M structure gives, on a CUDA device, nn.Linear
    layers whose weight is `torch.sparse.to_sparse_semi_structured` (2:4 and 1:4 in float16 or
    bfloat16, what PyTorch's semi-structured kernels take), and is refused on the CPU.

    Args:
        model: the masked model `sparsifier` trained (left unchanged).
        sparsifier: the `itop.Sparsifier` built on `model`; its masks say what to keep.
        structured: False exports every layer as SparseLinear / SparseConv2d, whatever the structure.

    Returns:
        The truly sparse copy (train masked on a GPU, run truly sparse on a CPU). Its
        `save_pretrained`, for a Hugging Face model, refuses: save it with `itop.save`.

    Example:
        ```python
        sparse_model = itop.sparse.export(model, sparsifier)
        itop.save(sparse_model, "model.pt")
        ```
    """
    _check_model("export(model, sparsifier)", model)
    _check_sparsifier(model, sparsifier)
    names = {id(m): n for n, m in model.named_modules()}
    owners = _owners(model, sparsifier.params)
    chosen = {names[id(m)]: sparsifier.masks[p] for p, m in owners.items() if _convertible(m) and not bool(sparsifier.masks[p].all())}
    structure = sparsifier.structure if structured else None
    if structure is not None and structure.kind != "fan-in":
        return semi_structured(model, chosen, structure.name)
    copied = copy.deepcopy(model)
    for module_name, mask in chosen.items():
        module = copied.get_submodule(module_name)
        if structure is not None:
            kind = CondensedConv2d if isinstance(module, nn.Conv2d) else CondensedLinear
        else:
            kind = SparseConv2d if isinstance(module, nn.Conv2d) else SparseLinear
        _replace(copied, module_name, kind.from_dense(module, mask))
    if structure is not None:
        copied = fuse_chains(copied)  # nn.Sequential chains of condensed layers: one kernel call at batch 1
    if chosen and callable(getattr(copied, "save_pretrained", None)):
        copied.save_pretrained = RefusedSavePretrained()  # this copy only; the trained model saves as before
    return copied


SEMI_STRUCTURED = ("2:4", "1:4")  # patterns whose every group of 4 fits PyTorch's 2:4 kernels


def semi_structured(model: nn.Module, chosen: dict, pattern: str) -> nn.Module:
    """A copy of `model` whose N:M Linear layers hold `to_sparse_semi_structured` weights (CUDA only)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type != "cuda":
        raise ValueError(
            f"an N:M ({pattern}) model exports to torch.sparse.to_sparse_semi_structured, which runs on CUDA devices only; "
            "move the model to a GPU first, or pass structured=False for SparseLinear / SparseConv2d layers on the CPU."
        )
    if pattern not in SEMI_STRUCTURED:
        raise ValueError(f"PyTorch's semi-structured kernels take 2:4 patterns (and 1:4, which fits them); {pattern} does not fit.")
    convs = [name for name in chosen if isinstance(model.get_submodule(name), nn.Conv2d)]
    if convs:
        raise ValueError(
            f"{convs[0]} is a convolution, which to_sparse_semi_structured cannot hold; export with structured=False, or exclude "
            "convolutions from the N:M structure."
        )
    from torch.sparse import to_sparse_semi_structured

    copied = copy.deepcopy(model)
    for module_name, mask in chosen.items():
        module = copied.get_submodule(module_name)
        try:
            weight = to_sparse_semi_structured(module.weight.detach() * mask.to(module.weight.device))
        except (RuntimeError, ValueError) as error:  # PyTorch's own shape and dtype rules
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"to_sparse_semi_structured refused {module_name}: {reason}") from None
        module.weight = nn.Parameter(weight, requires_grad=False)
    return copied


class RefusedSavePretrained:
    """`save_pretrained` of an exported Hugging Face model. transformers' `from_pretrained` builds
    nn.Linear layers, reports the SparseLinear layers' values and indices as unexpected keys and
    leaves those layers at random weights, without an error; so the exported copy refuses to write
    a checkpoint that would load that way. (A class, not a closure, so the model still pickles.)"""

    def __call__(self, *args, **kwargs):
        raise ValueError(
            "this exported model holds itop.sparse.SparseLinear layers, which from_pretrained cannot load "
            "(it would leave them at random weights); save it with itop.save(model, path) and load it with "
            "itop.load(path, model), or save itop.sparse.densify(model) with save_pretrained."
        )


def densify(model: nn.Module) -> nn.Module:
    """A copy of `model` whose truly sparse and condensed layers are nn.Linear / nn.Conv2d layers,
    with zeros off the active positions, and whose CondensedSequential chains are nn.Sequential
    again (the reverse of `export`).

    Args:
        model: a model holding SparseLinear, SparseConv2d or condensed layers (left unchanged).

    Returns:
        The dense copy, e.g. for `save_pretrained` or tools that expect nn.Linear.
    """
    _check_model("densify(model)", model)
    copied = copy.deepcopy(model)
    if isinstance(copied.__dict__.get("save_pretrained"), RefusedSavePretrained):
        del copied.save_pretrained  # dense again: the class's save_pretrained works
    for module_name, module in list(copied.named_modules()):
        if isinstance(module, (SparseWeights, CondensedWeights)):
            if not module_name:
                return module.to_dense()
            _replace(copied, module_name, module.to_dense())
    for module_name, module in list(copied.named_modules()):
        if isinstance(module, CondensedSequential):
            plain = nn.Sequential(OrderedDict(module.named_children())).train(module.training)
            if not module_name:
                return plain
            _replace(copied, module_name, plain)
    return copied
