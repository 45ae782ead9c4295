"""Writing a trained sparse model to one file: `itop.save(model, path, sparsifier)`.

    itop.save(model, "model.pt", sparsifier)              # after training (masked or truly sparse)
    model = itop.load("model.pt", build_model())           # elsewhere: a fresh model of the same architecture

This module owns the writing side and the file's layout. Reading a file back (`itop.load`) is
`itop.loading`'s, which imports the layout from here (the header key, version and formats, and the
rules that decide which weights are stored as values and positions, `_storable_sparse` and `_tied`,
and what a layer's header entry holds, `_entry`), so that a file is read by the rules that wrote it.
`itop.saving.load`, `read`, `restore` and `best_sparse_as_save` still work: they resolve to `itop.loading`.

The file is a `torch.save` dict of tensors, numbers, strings, lists and dicts only, so
`torch.load(path, weights_only=True)` reads it without itop:

- `"itop_save"`: the header: `version` (of this layout, 1), `itop_version`, `format`, and `layers`:
  for each sparse layer, by the name of its weight (`"fc1.weight"`, as `Sparsifier.masks` names it),
  its `shape`, `nnz` (active weights), `density` and how it is `stored` ("values" or "dense").
- `"state_dict"`: the model's state dict. `format="sparse"` (default): each masked Linear or
  Conv2d layer (of type nn.Linear or nn.Conv2d) is stored as a truly sparse layer stores itself,
  `<module>.values` (the active weights) and `<module>.indices` (their sorted flat row-major
  positions, int64), exactly the state dict of `itop.sparse.export(model, sparsifier)`; truly
  sparse layers as they are; every other tensor dense (weights of other layer types keep their
  zeros). `format="masked"`: the dense state dict, as
  the model itself would give it (truly sparse layers written as dense `<module>.weight`).
- `"positions"` (format "sparse"): the sorted flat positions of the active weights of each sparse
  layer stored dense with inactive weights; or `"masks"` (format "masked"): a bool mask per
  sparse layer, as `torch.nn.utils.prune` keeps them.

A model pruned with `torch.nn.utils.prune` saves without a sparsifier: its masks are read from it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from .convert import _kind
from .sparse.base import SparseWeights
from .sparse.condensed import CondensedWeights
from .sparse.condensed_conv import CondensedConv2d
from .sparsity.kernels import MaskedCSRLinear
from .sparsity.sparsifier import Sparsifier

__all__ = ["save"]

HEADER = "itop_save"  # the key that makes a file an itop save
VERSION = 1  # of the file's layout; a reader refuses a newer one
FORMATS = ("sparse", "masked")


def save(model: nn.Module, path: str | os.PathLike, sparsifier: Sparsifier | None = None, *, format: str = "sparse") -> None:
    """Write `model` with its sparse layers to one file at `path`, atomically.

    Args:
        model: the trained model: masked by `sparsifier`, holding `itop.sparse.SparseLinear`
            layers, or pruned with `torch.nn.utils.prune` (all three may mix); a DDP, DataParallel
            or torch.compile wrapper is saved as the model inside it.
        path: the file to write (its directory is created); a crash leaves the old file or the new
            one, never half of one.
        sparsifier: the `itop.Sparsifier` that trained `model` (its masks say which weights are
            active); None for a model whose sparse layers are SparseLinear or pruned modules.
        format: "sparse" (default): masked Linear layers stored as active values and positions,
            as `itop.sparse.export` holds them; "masked": the dense state dict plus a bool mask per
            sparse layer.

    Raises:
        TypeError: in one line, for an argument of the wrong type (the path and the sparsifier
            swapped, for one).
        ValueError: in one line, for an unknown format, a sparsifier built on another model, or
            nonzero weights outside the sparsifier's masks (trained after `sparsifier.detach()`).
    """
    from .train.checkpoint import save_checkpoint  # the atomic writer; here, as `import itop` leaves itop.train unimported

    call = "itop.save(model, path, sparsifier=None, *, format='sparse')"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{call}: model must be a torch.nn.Module, got {_kind(model)}.")
    if not isinstance(path, (str, os.PathLike)):
        hint = "; the path comes second: itop.save(model, path, sparsifier)" if isinstance(path, Sparsifier) else ""
        raise TypeError(f"{call}: path must be a file path (str or os.PathLike), got {_kind(path)}{hint}.")
    if sparsifier is not None and not isinstance(sparsifier, Sparsifier):
        raise TypeError(f"{call}: sparsifier must be the itop.Sparsifier that trained the model or None, got {_kind(sparsifier)}.")
    if format not in FORMATS:
        raise ValueError(f"{call}: format must be 'sparse' or 'masked', got {format!r}.")
    from . import __version__

    state, header_layers, topology = _saved_tensors(_unwrapped(model), sparsifier, format)
    header = {
        "version": VERSION,
        "itop_version": str(__version__),
        "torch_version": str(torch.__version__),
        "format": format,
        "layers": header_layers,
    }
    saved = {HEADER: header, "state_dict": state, ("positions" if format == "sparse" else "masks"): topology}
    save_checkpoint(saved, Path(path))


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel and torch.compile wrappers, whose
    names (`module.`, `_orig_mod.`) a freshly built model does not have."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _split(name: str) -> tuple[str, str]:
    """'block.fc1.weight' -> ('block.fc1', 'weight'); the root module's 'weight' -> ('', 'weight')."""
    module_name, _, attr = name.rpartition(".")
    return module_name, attr


def _prefix(module_name: str) -> str:
    return f"{module_name}." if module_name else ""


def _pruned(module: nn.Module) -> list[str]:
    """The tensors of `module` that torch.nn.utils.prune reparametrises (`<name>_orig` * `<name>_mask`)."""
    return [hook._tensor_name for hook in module._forward_pre_hooks.values() if isinstance(hook, torch_prune.BasePruningMethod)]


def _tied(model: nn.Module) -> set[int]:
    """Ids of the parameters held under more than one name (tied weights): they stay dense."""
    seen: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        seen[id(param)] = seen.get(id(param), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def _storable_sparse(module: nn.Module, attr: str, weight: Tensor, tied: set[int]) -> bool:
    """Can this weight be written as values + indices (and rebuilt as a SparseLinear or
    SparseConv2d)? The weight of an nn.Linear or nn.Conv2d itself (not a subclass its owner reads as
    a tensor, such as attention's out_proj; a Conv2d padding with zeros), held by that layer alone."""
    if isinstance(module, SparseWeights):
        return attr == "weight"
    convertible = type(module) in (nn.Linear, MaskedCSRLinear) or (type(module) is nn.Conv2d and module.padding_mode == "zeros")
    return attr == "weight" and convertible and id(weight) not in tied


@torch.no_grad()
def _masked_layers(model: nn.Module, sparsifier) -> dict[str, tuple[nn.Module, Tensor, Tensor]]:
    """Every masked weight of `model`, by its name in `model`: (owning module, weight, bool mask),
    from the sparsifier's masks and from torch.nn.utils.prune's reparametrisations."""
    modules = dict(model.named_modules())
    layers: dict[str, tuple[nn.Module, Tensor, Tensor]] = {}
    if sparsifier is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        for sp_name, param in sparsifier.params.items():
            if id(param) not in names:
                raise ValueError(
                    f"itop.save: the sparsifier was built on another model (it masks {sp_name!r}, which this model "
                    "does not hold); pass the model it trained (an exported copy needs no sparsifier)."
                )
            name = names[id(param)]
            layers[name] = (modules[_split(name)[0]], param, sparsifier.masks[sp_name].to(param.device))
        held = {id(m) for m in modules.values()}
        if any(id(layer) not in held for layer in sparsifier.layers.values()):
            raise ValueError(
                "itop.save: the sparsifier was built on another model (its truly sparse layers are not this model's); "
                "pass the model it trained (an exported copy needs no sparsifier)."
            )
    for module_name, module in modules.items():
        for attr in _pruned(module):
            name = _prefix(module_name) + attr
            if name not in layers:
                layers[name] = (module, getattr(module, attr), getattr(module, attr + "_mask") != 0)
    return layers


def _condensed_as_values(module: CondensedWeights, prefix: str, format: str, replaced: dict, topology: dict) -> None:
    """A CondensedLinear / CondensedConv2d in the file: `values` and `indices` (flat positions) as a
    SparseLinear / SparseConv2d of the same weights stores itself, so that `load` rebuilds it as one
    (format "sparse"), or its dense weight and mask (format "masked")."""
    index_key = prefix + ("taps" if isinstance(module, CondensedConv2d) else "indices")
    if format == "sparse":
        replaced[prefix + "values"] = {prefix + "values": module.values.detach().reshape(-1)}
        replaced[index_key] = {prefix + "indices": module.positions()}
    else:
        weight = module.to_dense().weight.detach()
        replaced[prefix + "values"] = {prefix + "weight": weight}
        replaced[index_key] = {}
        mask = torch.zeros(weight.numel(), dtype=torch.bool)
        mask[module.positions().cpu()] = True
        topology[prefix + "weight"] = mask.reshape(weight.shape)
    replaced[prefix + "rows"] = {}


@torch.no_grad()
def _saved_tensors(model: nn.Module, sparsifier, format: str):
    """(state dict, header layers, positions or masks) of the file, all on the CPU."""
    masked = _masked_layers(model, sparsifier)
    tied = _tied(model)
    replaced: dict[str, dict[str, Tensor]] = {}  # a key of model.state_dict() -> what the file holds instead
    layers: dict[str, tuple[int, dict[str, Any]]] = {}  # name -> (order, header entry)
    topology: dict[str, Tensor] = {}
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}

    for name, (module, weight, mask) in masked.items():
        module_name, attr = _split(name)
        prefix, shape, numel = _prefix(module_name), tuple(weight.shape), weight.numel()
        if tuple(mask.shape) != shape:
            raise ValueError(f"itop.save: the mask of {name} has shape {tuple(mask.shape)}, its weight {shape}.")
        stray = int(torch.count_nonzero(weight.detach()[~mask]))
        if stray:
            raise ValueError(
                f"itop.save: {stray} weights of {name} outside its mask are nonzero, so the mask no longer describes "
                "the model (trained after sparsifier.detach()?); call sparsifier.apply_masks() to zero them, or save "
                "without the sparsifier to keep every weight."
            )
        nnz = int(torch.count_nonzero(mask))
        positions = mask.reshape(-1).nonzero().squeeze(1)
        # a pruned module's state dict holds <attr>_orig and <attr>_mask: the file holds <attr> (= orig * mask)
        keys = [prefix + attr + "_orig", prefix + attr + "_mask"] if attr in _pruned(module) else [prefix + attr]
        if format == "sparse" and nnz < numel and _storable_sparse(module, attr, weight, tied):
            new = {prefix + "values": weight.reshape(-1)[positions], prefix + "indices": positions}
            stored = "values"
        else:
            new, stored = {prefix + attr: weight.detach()}, "dense"
            if format == "masked":
                topology[name] = mask
            elif nnz < numel:
                topology[name] = positions
        replaced[keys[0]] = new
        for key in keys[1:]:
            replaced[key] = {}
        layers[name] = (order[module_name], _entry(shape, nnz, stored))

    for module_name, module in model.named_modules():
        if isinstance(module, CondensedWeights):  # stored as values + positions, as a SparseLinear / SparseConv2d stores itself
            _condensed_as_values(module, _prefix(module_name), format, replaced, topology)
            layers[_prefix(module_name) + "weight"] = (
                order[module_name],
                _entry(module.weight_shape, module.nnz, "values" if format == "sparse" else "dense"),
            )
            continue
        if not isinstance(module, SparseWeights):
            continue
        prefix, name = _prefix(module_name), _prefix(module_name) + "weight"
        if format == "masked":
            mask = torch.zeros(math.prod(module.weight_shape), dtype=torch.bool, device=module.values.device)
            mask[module.indices] = True
            replaced[prefix + "values"] = {name: module.to_dense().weight.detach()}
            replaced[prefix + "indices"] = {}
            topology[name] = mask.reshape(module.weight_shape)
        layers[name] = (order[module_name], _entry(module.weight_shape, module.nnz, "values" if format == "sparse" else "dense"))

    state: dict[str, Tensor] = {}
    for key, tensor in model.state_dict().items():
        for new_key, new_tensor in replaced.get(key, {key: tensor}).items():
            state[new_key] = new_tensor.detach().to("cpu")
    header_layers = {name: entry for name, (_, entry) in sorted(layers.items(), key=lambda item: item[1][0])}
    return state, header_layers, {name: t.to("cpu") for name, t in topology.items()}


def _entry(shape: tuple[int, ...], nnz: int, stored: str) -> dict[str, Any]:
    numel = math.prod(shape)
    return {"shape": [int(s) for s in shape], "nnz": int(nnz), "density": nnz / numel, "stored": stored}


# The reading side moved to itop.loading; its public names stay importable from here, resolved on
# first use (PEP 562): a module-level import would be a cycle, as itop.loading imports the layout from here.
_MOVED_TO_LOADING = ("load", "read", "restore", "best_sparse_as_save")


def __getattr__(name: str):
    if name in _MOVED_TO_LOADING:
        from . import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
