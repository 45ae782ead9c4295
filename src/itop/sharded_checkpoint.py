"""Checkpoints of FSDP2 runs with `torch.distributed.checkpoint` (DCP): every rank writes its own
shards of the weights, the optimizer state and the Sparsifier's masks, explored sets and running
averages, and a load reshards them onto any number of ranks (or one process without FSDP).

    itop.save_sharded_state(model, optimizer, sparsifier, "ckpt/step-600")      # on every rank
    ...
    itop.load_sharded_state(model, optimizer, sparsifier, "ckpt/step-600")      # build all three first

`sharded_state` gives the dictionary `dcp.save` takes, for users who add their own entries.
Loading reads tensors, numbers and strings only (`weights_only=True`, where DCP's default
planner would unpickle anything), and the save writes to a temporary directory that is renamed
into place once every rank has finished, so an interrupted save never leaves a checkpoint that
looks complete.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

__all__ = [
    "sharded_state",
    "save_sharded_state",
    "load_sharded_state",
    "sparsifier_entries",
    "restore_sparsifier",
    "save_atomically",
    "load_safely",
    "SafeLoadPlanner",
]


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, except that the non-tensor entries (numbers, strings, lists)
    are read with `torch.load(weights_only=True)`: loading a checkpoint runs no pickled code."""

    def load_bytes(self, read_item, value) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element  # what the default planner calls

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def sparsifier_entries(sparsifier) -> dict[str, Any]:
    """The Sparsifier's state as `dcp.save` takes it: its history as one JSON string (DCP matches
    entries by key, so a list whose length grows during training cannot be loaded into a fresh
    run's shorter one). Also the template `dcp.load` fills in."""
    state = sparsifier.state_dict()
    return {**state, "history": json.dumps(state["history"])}


def restore_sparsifier(sparsifier, entries: Mapping[str, Any], horizon: str | None = None) -> None:
    """`sparsifier.load_state_dict` of entries that `dcp.load` filled in (see `sparsifier_entries`)."""
    saved = dict(entries)
    saved["history"] = json.loads(saved["history"]) if isinstance(saved["history"], str) else saved["history"]
    sparsifier.load_state_dict(saved, horizon=horizon)


def sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer, sparsifier=None) -> dict[str, Any]:
    """{"model", "optimizer", "sparsifier"}: what `dcp.save` writes of a run, sharded tensors as
    DTensors (under FSDP2) or whole (in one process); no "sparsifier" for a dense run (None)."""
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    return state if sparsifier is None else {**state, "sparsifier": sparsifier_entries(sparsifier)}


def save_sharded_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, sparsifier, checkpoint_id: str | Path, extra: Mapping[str, Any] | None = None
) -> None:
    """Write `sharded_state` (plus `extra` entries) to the directory `checkpoint_id` on every rank,
    through a temporary directory renamed into place when all ranks are done."""
    save_atomically({**sharded_state(model, optimizer, sparsifier), **(extra or {})}, checkpoint_id)


def save_atomically(state: Mapping[str, Any], checkpoint_id: str | Path) -> None:
    """`dcp.save(state)` on every rank into `checkpoint_id`.partial; once all ranks have written,
    rank 0 moves the previous checkpoint to `checkpoint_id`.old, the new one into place, and deletes
    the old one. A crash at any moment leaves a whole checkpoint (`load_safely` falls back to .old)."""
    final = Path(checkpoint_id)
    partial, old = final.with_name(final.name + ".partial"), final.with_name(final.name + ".old")
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if rank0:
        shutil.rmtree(partial, ignore_errors=True)
    _barrier()
    with warnings.catch_warnings():  # saving in one process without torch.distributed is intended here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(dict(state), checkpoint_id=str(partial))
    _barrier()
    if rank0:
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()


def load_safely(state: dict[str, Any], checkpoint_id: str | Path) -> None:
    """`dcp.load(state)` in place with `SafeLoadPlanner`, in one process or on every rank; a
    ValueError in one line when `checkpoint_id` is not a complete checkpoint or does not fit `state`."""
    path = Path(checkpoint_id)
    if not path.exists() and (path.with_name(path.name + ".old") / ".metadata").is_file():
        path = path.with_name(path.name + ".old")  # a save stopped between its two renames
    if not (path / ".metadata").is_file():
        raise ValueError(f"{path} is not a complete sharded checkpoint (no .metadata); pass the directory a save wrote.")
    try:
        with warnings.catch_warnings():  # loading in one process without torch.distributed is intended here
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(path), planner=SafeLoadPlanner())
    except (Exception, CheckpointException) as error:  # DCP's (a BaseException) gathers every rank's traceback
        first = _last_line(error)
        raise ValueError(f"the sharded checkpoint {path} does not fit this model and sparsifier ({first[:300]}).") from error


def load_sharded_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sparsifier,
    checkpoint_id: str | Path,
    extra: Mapping[str, Any] | None = None,
    horizon: str | None = None,
) -> dict[str, Any]:
    """Restore model, optimizer and Sparsifier (built in that order, sharded or not) from a DCP
    checkpoint saved on any number of ranks; returns the loaded dictionary (with `extra`'s entries
    filled in). Raises ValueError in one line when the directory is not such a checkpoint or does
    not fit this model."""
    state = {**sharded_state(model, optimizer, sparsifier), **dict(extra or {})}
    load_safely(state, checkpoint_id)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    if sparsifier is not None:
        restore_sparsifier(sparsifier, state["sparsifier"], horizon)
    return state


def _last_line(error: BaseException) -> str:
    """The line of a DCP error that says what is wrong: after every rank's traceback, the last one."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
