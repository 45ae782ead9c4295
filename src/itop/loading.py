"""Reading a file of `itop.save` back into a model: `itop.load(path, model)`.

    model = itop.load("model.pt", build_model())           # a fresh model of the architecture that was saved

This module owns the reading side: `read` checks a file and gives its saved dict (a best_sparse.pt
of `itop train` translated by `best_sparse_as_save`), `restore` loads that dict into a model, and
`load` is the two together; `itop train` calls `restore` and `best_sparse_as_save` for its best
sparse model. The file's layout, and the rules that wrote it, are `itop.saving`'s (its docstring
describes the file): they are imported from there, so both sides share one definition of the format.

`load` rebuilds the layers in a freshly built model of the same architecture: `layout="sparse"`
gives `itop.sparse.SparseLinear` and `SparseConv2d` layers, `"dense"` plain layers with zeros off the masks, `"masked"`
dense layers with `torch.nn.utils.prune` masks (`weight_orig` and `weight_mask` in the state dict).
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from .convert import _kind, _replace
from .saving import FORMATS, HEADER, VERSION, _entry, _prefix, _split, _storable_sparse, _tied
from .sparse import SparseConv2d, SparseLinear
from .sparse.base import SparseWeights

__all__ = ["load"]

LAYOUTS = ("sparse", "dense", "masked")
ADVICE = "save the model again with itop.save(model, path, sparsifier)"
ARCHITECTURE = "load into a freshly built model of the architecture that was saved"


def load(path: str | os.PathLike, model: nn.Module, *, layout: str | None = None) -> nn.Module:
    """Load a file of `itop.save` into `model`, a freshly built model of the saved architecture.

    Args:
        path: a file written by `itop.save` (or a best_sparse.pt of `itop train`).
        model: a new instance of the saved model (its weights are replaced; on the meta device,
            `with torch.device("meta")`, the file's tensors are taken as they are, on the CPU).
        layout: what the sparse layers become: "sparse" (truly sparse `itop.sparse.SparseLinear`
            for every sparse nn.Linear layer; Conv layers dense with zeros), "dense" (plain
            layers, zeros off the masks), "masked" (dense, with `torch.nn.utils.prune` masks:
            `weight_orig` and `weight_mask` in the state dict). None: "sparse" for a file saved
            with format="sparse", "masked" for format="masked".

    Returns:
        The model with the file's weights (the same object, unless the model itself is a single
        Linear layer that had to be replaced).

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: in one line, for a file that is not an itop save (with the way to load it) or
            is corrupt, or a model whose layers do not match the file's (the first one is named).
    """
    call = "itop.load(path, model, *, layout=None)"
    if not isinstance(model, nn.Module):
        swapped = "; the path comes first: itop.load(path, model)" if isinstance(path, nn.Module) else ""
        raise TypeError(f"{call}: model must be a torch.nn.Module, got {_kind(model)}{swapped}.")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{call}: path must be a file path (str or os.PathLike), got {_kind(path)}.")
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"{call}: layout must be 'sparse', 'dense', 'masked' or None, got {layout!r}.")
    return restore(read(path), model, layout=layout, source=str(path))


def plain_message(error: Exception) -> str:
    """The message of an error `torch.load` raised, without the colour codes torch puts in part of it."""
    return re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()


def first_line(error: Exception) -> str:
    """That message's first line, at most 120 characters (the error's type where it has none), for a one-line error."""
    text = plain_message(error)
    return (text.splitlines()[0] if text else type(error).__name__)[:120]


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The saved dict of an `itop.save` file (a best_sparse.pt of `itop train` is translated), with
    one-line errors for a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"itop.load: no file at {path}.")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        text = plain_message(error)
        if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in text:
            raise ValueError(
                f"itop.load: {path} is not an itop save: it holds Python objects (a torch.save(model) file?), "
                f"which weights_only=True loading refuses; {ADVICE}."
            ) from None
        raise ValueError(f"itop.load: {path} is corrupt or not a PyTorch file ({first_line(error)}); {ADVICE}.") from None
    if isinstance(saved, dict) and HEADER not in saved and isinstance(saved.get("truly_sparse_layers"), dict):
        saved = best_sparse_as_save(saved)
    if not isinstance(saved, dict) or HEADER not in saved:
        raise ValueError(_foreign(path, saved))
    header = saved[HEADER]
    version = header.get("version") if isinstance(header, dict) else None
    if isinstance(version, int) and version > VERSION:
        raise ValueError(
            f"itop.load: {path} was written by a newer itop ({header.get('itop_version')}, file layout {version}; "
            f"this one reads {VERSION}); upgrade itop."
        )
    if not _well_formed(saved):
        raise ValueError(f"itop.load: {path} is corrupt (its itop header or tensors are malformed); {ADVICE}.")
    return saved


def _foreign(path: Path, saved) -> str:
    """The one-line error for a file torch reads that is not an itop save, with the way to load it."""
    if isinstance(saved, dict) and saved and all(isinstance(v, Tensor) for v in saved.values()):
        return (
            f"itop.load: {path} is a plain state dict, not an itop save; load it with "
            "model.load_state_dict(torch.load(path, weights_only=True))."
        )
    if isinstance(saved, dict) and saved.get("format") == 1 and isinstance(saved.get("model"), dict):
        return (
            f"itop.load: {path} is a checkpoint of itop train, not an itop save; its dense weights load with "
            "model.load_state_dict(torch.load(path, weights_only=True)['model'])."
        )
    return f"itop.load: {path} is not an itop save (it holds a {type(saved).__name__} without an {HEADER!r} header); {ADVICE}."


def _well_formed(saved: dict) -> bool:
    header, state = saved[HEADER], saved.get("state_dict")
    if not isinstance(header, dict) or header.get("version") != VERSION or header.get("format") not in FORMATS:
        return False
    layers = header.get("layers")
    if not isinstance(layers, dict) or not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        return False
    topology = saved.get("positions" if header["format"] == "sparse" else "masks", {})
    if not isinstance(topology, dict) or not all(isinstance(v, Tensor) for v in topology.values()):
        return False
    for entry in layers.values():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("shape"), list)
            and isinstance(entry.get("nnz"), int)
            and entry.get("stored") in ("values", "dense")
        ):
            return False
    return True


def best_sparse_as_save(state: dict) -> dict[str, Any]:
    """A best_sparse.pt of `itop train` ({"format": 1, "model", "truly_sparse_layers": module ->
    {"shape", "nnz"}, or [in_features, out_features, nnz] as Linear layers were written before
    convolutions could be truly sparse}) as the dict of an itop save (format "sparse")."""
    layers = {}
    for module_name, sizes in state.get("truly_sparse_layers", {}).items():
        if isinstance(sizes, Mapping):
            shape, nnz = tuple(int(s) for s in sizes["shape"]), int(sizes["nnz"])
        else:
            in_features, out_features, nnz = (int(s) for s in sizes)
            shape = (out_features, in_features)
        layers[_prefix(module_name) + "weight"] = _entry(shape, nnz, "values")
    header = {"version": VERSION, "itop_version": "itop train", "format": "sparse", "layers": layers}
    return {HEADER: header, "state_dict": state.get("model"), "positions": {}}


def restore(saved: Mapping[str, Any], model: nn.Module, *, layout: str | None = None, source: str = "the file") -> nn.Module:
    """Load the dict `read` gives into `model` (see `load`)."""
    header = saved[HEADER]
    layout = layout or ("sparse" if header["format"] == "sparse" else "masked")
    state = dict(saved["state_dict"])
    topology = saved.get("positions" if header["format"] == "sparse" else "masks", {})
    assign = any(t.is_meta for t in model.state_dict().values())
    tied = _tied(model)
    targets: dict[str, str] = {}  # module name -> "sparse" or "dense": the Linear layers whose class changes or stays
    masks: dict[str, Tensor] = {}

    def mismatch(detail: str) -> ValueError:
        return ValueError(f"itop.load: the model does not match {source}: {detail}; {ARCHITECTURE}.")

    for name, entry in header["layers"].items():
        module_name, attr = _split(name)
        prefix, shape = _prefix(module_name), tuple(entry["shape"])
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise mismatch(f"it has no layer {module_name!r} (the file's sparse layer {name})") from None
        mine = _shape_in_model(module, attr)
        if mine is None:
            raise mismatch(f"layer {module_name!r} ({type(module).__name__}) has no tensor {attr!r}")
        if mine != shape:
            raise mismatch(f"layer {module_name!r}: {attr} is {_dims(shape)} in the file, {_dims(mine)} in the model")
        stored_sparse = entry["stored"] == "values"
        if stored_sparse and (prefix + "values" not in state or prefix + "indices" not in state):
            raise ValueError(f"itop.load: {source} is corrupt (layer {name} has no values or indices); {ADVICE}.")
        positions = _positions(state, topology, prefix, name, entry)
        if len(positions) != entry["nnz"]:
            raise ValueError(
                f"itop.load: {source} is corrupt (layer {name} holds {len(positions)} positions, its header says {entry['nnz']}); {ADVICE}."
            )
        sparse_here = (
            layout == "sparse"
            and entry["nnz"] < math.prod(shape)
            and (
                stored_sparse
                or (
                    isinstance(module, (nn.Linear, nn.Conv2d, SparseWeights))
                    and _storable_sparse(module, attr, getattr(module, attr, None), tied)
                )
            )
        )
        if stored_sparse and not sparse_here:  # values + indices -> a dense weight with zeros off the positions
            values = state.pop(prefix + "values")
            state.pop(prefix + "indices")
            dense = torch.zeros(math.prod(shape), dtype=values.dtype)
            dense[positions] = values
            state[name] = dense.reshape(shape)
        elif sparse_here and not stored_sparse:  # a dense weight -> its active values + positions
            weight = state.pop(name)
            state[prefix + "values"], state[prefix + "indices"] = weight.reshape(-1)[positions], positions
        if isinstance(module, SparseWeights) or sparse_here:
            targets[module_name] = "sparse" if sparse_here else "dense"
        if layout == "masked":
            mask = torch.zeros(math.prod(shape), dtype=torch.bool)
            mask[positions] = True
            masks[name] = mask.reshape(shape)

    _check_keys(model, state, targets, mismatch)
    for module_name, target in targets.items():
        module = model.get_submodule(module_name)
        entry = header["layers"][_prefix(module_name) + "weight"]
        new = _empty_layer(module, target, entry, _prefix(module_name), state)
        if new is not module:
            model = _replace(model, module_name, new)
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as error:  # the checks above should leave nothing here; keep it to one line all the same
        text = " ".join(str(error).split())
        raise ValueError(f"itop.load: {source} does not load into the model ({text[:200]}); {ARCHITECTURE}.") from None
    for name, mask in masks.items():
        module_name, attr = _split(name)
        module = model.get_submodule(module_name)
        torch_prune.custom_from_mask(module, attr, mask.to(getattr(module, attr).device))
    return model


def _dims(shape) -> str:
    return "x".join(str(s) for s in shape) if len(shape) else "a scalar"


def _shape_in_model(module: nn.Module, attr: str) -> tuple[int, ...] | None:
    if isinstance(module, SparseWeights) and attr == "weight":
        return tuple(module.weight_shape)
    tensor = getattr(module, attr, None)
    return tuple(tensor.shape) if isinstance(tensor, Tensor) else None


def _positions(state: Mapping[str, Tensor], topology: Mapping[str, Tensor], prefix: str, name: str, entry: Mapping) -> Tensor:
    """The sorted flat positions of a saved layer's active weights, whichever way it was stored."""
    numel = math.prod(entry["shape"])
    if entry["stored"] == "values":
        return state[prefix + "indices"]
    if name in topology:
        mask_or_positions = topology[name]
        return mask_or_positions.reshape(-1).nonzero().squeeze(1) if mask_or_positions.dtype == torch.bool else mask_or_positions
    if entry["nnz"] == numel:
        return torch.arange(numel)
    raise ValueError(f"itop.load: the file is corrupt (no positions for {name}, {entry['nnz']} of {numel} weights active); {ADVICE}.")


def _check_keys(model: nn.Module, state: Mapping[str, Tensor], targets: Mapping[str, str], mismatch) -> None:
    """Every tensor of the model (after the planned layer changes) is in `state` with its shape, and
    nothing else is; the first difference in model order is raised."""
    expected: dict[str, tuple[int, ...] | None] = {}
    changed = {_prefix(m): t for m, t in targets.items()}
    for key, tensor in model.state_dict().items():
        prefix, _, attr = key.rpartition(".")
        prefix = _prefix(prefix)
        target = changed.get(prefix)
        if target == "sparse" and attr in ("weight", "values", "indices"):
            expected.setdefault(prefix + "values", None)  # any number of active weights
            expected.setdefault(prefix + "indices", None)
        elif target == "dense" and attr in ("values", "indices"):
            module = model.get_submodule(prefix[:-1]) if prefix else model
            expected.setdefault(prefix + "weight", tuple(module.weight_shape))
        else:
            expected[key] = tuple(tensor.shape)
    for key, shape in expected.items():
        layer = key.rpartition(".")[0] or "(the model itself)"
        if key not in state:
            raise mismatch(f"the file has no {key} (layer {layer!r})")
        if shape is not None and tuple(state[key].shape) != shape:
            raise mismatch(
                f"layer {layer!r}: {key.rpartition('.')[2]} is {_dims(tuple(state[key].shape))} in the file, {_dims(shape)} in the model"
            )
    for key in state:
        if key not in expected:
            raise mismatch(f"the file holds {key}, which the model has no place for (layer {key.rpartition('.')[0]!r})")


def _empty_layer(module: nn.Module, target: str, entry: Mapping, prefix: str, state: Mapping[str, Tensor]) -> nn.Module:
    """The layer to load into: `module` when it has the target type already, else a new truly
    sparse layer (SparseLinear, SparseConv2d) or dense one (nn.Linear, nn.Conv2d) with the module's
    geometry, dtype, device and trainability, holding uninitialised tensors."""
    if (target == "sparse") == isinstance(module, SparseWeights):
        return module
    weight = module.values if isinstance(module, SparseWeights) else module.weight
    dtype, device = weight.dtype, weight.device
    has_bias = prefix + "bias" in state
    out_features = entry["shape"][0]
    if target == "sparse":
        nnz = state[prefix + "indices"].numel()
        positions, values = torch.empty(nnz, dtype=torch.int64, device=device), torch.empty(nnz, dtype=dtype, device=device)
        bias = torch.empty(out_features, dtype=dtype, device=device) if has_bias else None
        if isinstance(module, nn.Conv2d):
            new = SparseConv2d.from_values(module, positions, values, bias)
        else:
            new = SparseLinear.from_values(entry["shape"][1], out_features, positions, values, bias)
        new.values.requires_grad_(weight.requires_grad)
    else:
        if isinstance(module, SparseConv2d):
            new = module.to_dense()  # the geometry; every tensor is loaded over
            new.bias = new.bias if has_bias else None
        else:
            new = nn.Linear(entry["shape"][1], out_features, bias=has_bias, device=device, dtype=dtype)
        new.weight.requires_grad_(weight.requires_grad)
    if has_bias and getattr(module, "bias", None) is not None:
        new.bias.requires_grad_(module.bias.requires_grad)
    return new
