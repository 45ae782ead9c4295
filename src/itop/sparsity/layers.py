"""Finding a model's sparse layers and giving each the storage that reaches its weights: a
`MaskedStorage` for a dense parameter, a `ShardedStorage` for one FSDP2 sharded, a
`TrulySparseStorage` for an `itop.sparse` layer (see `storage.py` for what they answer)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..sparse.base import SparseWeights
from . import kernels, shards
from .params import sparse_parameters
from .sharded_storage import ShardedStorage
from .storage import MaskedStorage, Storage, TrulySparseStorage
from .truly_sparse import model_order, selects_some, truly_sparse_layers


def chosen_layers(model: nn.Module, include, exclude) -> tuple[dict[str, Tensor], dict[str, SparseWeights]]:
    """(the parameters to mask, the truly sparse layers), each by name, for `include` / `exclude`
    (`params.sparse_parameters`; a truly sparse layer's values are never masked). Refuses FSDP1."""
    shards.refuse_flat_sharding(model)
    layers = truly_sparse_layers(model, include, exclude)  # itop.sparse.SparseLinear: values + indices, no mask
    values = {id(m.values) for m in model.modules() if isinstance(m, SparseWeights)}
    chosen = sparse_parameters(model, include, exclude, matched_elsewhere=lambda sel: selects_some(sel, model))
    return {n: p for n, p in chosen.items() if id(p) not in values}, layers


def sparse_storages(model: nn.Module, optimizer: torch.optim.Optimizer, include, exclude) -> dict[str, Storage]:
    """Every sparse layer of `model` as a storage, by name, in the order of its weights in the model:
    the truly sparse layers (`truly_sparse.truly_sparse_layers`) and the other chosen parameters
    (`params.sparse_parameters`), masked (sharded when FSDP2 split them). Raises ValueError for
    none, for one `optimizer` does not hold, or for a model wrapped in FSDP1."""
    params, layers = chosen_layers(model, include, exclude)
    if not params and not layers:
        raise ValueError(
            "the model has no sparse parameter (no trainable Linear/Conv weight, or include/exclude left none); pass include= to choose some."
        )
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [n for n, p in params.items() if id(p) not in held]
    missing += [n for n, layer in layers.items() if id(layer.values) not in held]
    if missing:
        after = " after fully_shard" if any(shards.is_sharded(p) for p in params.values()) else ""
        raise ValueError(
            f"the optimizer does not hold the model's parameter {missing[0]!r}; build the optimizer{after} from model.parameters()."
        )
    linears = kernels.linear_owners(model, params)
    sharded = [n for n, layer in layers.items() if shards.is_sharded(layer.values)]
    if sharded:
        raise ValueError(
            f"the truly sparse layer {sharded[0]} is sharded by FSDP, which splits its values but not its positions (buffers); "
            "shard masked layers only: convert with itop.sparse.densify before fully_shard, or train it without FSDP."
        )
    made: dict[str, Storage] = {
        n: (ShardedStorage if shards.is_sharded(p) else MaskedStorage)(n, p, linears.get(n)) for n, p in params.items()
    }
    made.update({n: TrulySparseStorage(n, layer, optimizer) for n, layer in layers.items()})
    return {n: made[n] for n in model_order(model, params, layers)}
