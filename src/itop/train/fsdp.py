"""`itop train --fsdp`: the model sharded with FSDP2 and the run's checkpoints written with DCP.

Under torchrun, `--fsdp` applies `torch.distributed.fsdp.fully_shard` to every Linear and Conv
layer and then to the whole model, so each rank holds 1/world of every weight, of its optimizer
state and of the Sparsifier's masks. The run directory then holds DCP directories instead of
files: `checkpoint/` (model, optimizer, Sparsifier and the run's counters, generators and AMP
scaler, written by every rank after each epoch) and `best/` (the best model so far). Both load
onto any number of ranks, so a run can resume with another process count that divides its global
batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import RunError

CHECKPOINT_DIR = "checkpoint"  # the last finished epoch's state, a DCP directory
BEST_DIR = "best"  # the best model so far, a DCP directory


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with every Linear and Conv layer, then the whole model, sharded over all ranks
    (one mesh dimension: FSDP2's plain data-parallel sharding). In one process (a run resumed
    without torchrun) the model stays whole; its checkpoints are still DCP directories."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():
        return model
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module is not model:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def grad_scaler(device: torch.device, enabled: bool):
    """FSDP2's GradScaler: each rank sees only its gradient shards, so an overflow found on one rank
    must skip the step on all of them (the sharded scaler all-reduces its flag)."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    return ShardedGradScaler(device.type, enabled=enabled)


def save_run(path: Path, model: nn.Module, optimizer, sparsifier, run_state: dict[str, Any]) -> None:
    """The run's checkpoint, on every rank: sharded model, optimizer and Sparsifier, plus
    `run_state` (counters, generator states, the scaler's state, the configuration)."""
    from ..sharded_checkpoint import save_atomically, sharded_state

    save_atomically({**sharded_state(model, optimizer, sparsifier), "run": run_state}, path)


def load_run(path: Path, model: nn.Module, optimizer, sparsifier, run_template: dict[str, Any]) -> dict[str, Any]:
    """Load the model's and optimizer's shards from `path` and return the run's state (filled into
    `run_template`, this run's own) with "sparsifier": the saved Sparsifier state, for
    `Sparsifier.load_state_dict`. RunError in one line when the checkpoint does not fit."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    from ..sharded_checkpoint import load_safely, sharded_state

    state = {**sharded_state(model, optimizer, sparsifier), "run": run_template}
    try:
        load_safely(state, path)
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
    except (ValueError, RuntimeError, KeyError) as error:
        raise RunError(f"cannot resume from {path}: {str(error).splitlines()[0]}") from None
    saved = state.get("sparsifier")
    return {**state["run"], "sparsifier": None if saved is None else {**saved, "history": json.loads(saved["history"])}}


def save_best(path: Path, model: nn.Module) -> None:
    from ..sharded_checkpoint import save_atomically

    save_atomically({"model": sharded_state_of_model(model)}, path)


def load_best(path: Path, model: nn.Module) -> dict[str, Any]:
    """The best model's sharded state dict (to `model.load_state_dict`), read from `path` into
    copies of the model's own shards."""
    from ..sharded_checkpoint import load_safely

    state = {"model": {k: v.detach().clone() for k, v in sharded_state_of_model(model).items()}}
    try:
        load_safely(state, path)
    except ValueError as error:
        raise RunError(
            f"{str(error).splitlines()[0]}; delete {path} and resume again (the best model then restarts from the checkpoint)."
        ) from None
    return state["model"]


def sharded_state_of_model(model: nn.Module) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model)
