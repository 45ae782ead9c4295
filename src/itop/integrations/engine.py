"""What the trainer callbacks share: checking the Sparsifier's arguments when the callback is made,
finding the torch optimizer inside a trainer's wrapper, building the Sparsifier (fresh, or over a
model and optimizer a trainer has just loaded from a checkpoint), and the figures to log.

The callbacks hold no engine of their own: the `Sparsifier` hooks the optimizer's steps exactly as
in a hand-written loop, so gradient accumulation (one optimizer step per accumulated batch), steps
a GradScaler skips (the optimizer's step never runs, so the schedule does not move) and the
trainers' own clipping, schedulers and weight decay need nothing special here.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..sparsity.sparsifier import Sparsifier
from ..sparsity.state import HORIZONS, built_over_loaded

logger = logging.getLogger("itop")

SPARSIFIER_FILE = "itop_sparsifier.pt"  # the Sparsifier's state beside a trainer's checkpoint files
SHARDED_SPARSIFIER_DIR = "itop_sparsifier"  # the same under FSDP2: a torch.distributed.checkpoint directory

# Arguments the callbacks fill in from the trainer; a user may still set total_steps.
_FROM_TRAINER = ("model", "optimizer")


def checked_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` if the Sparsifier accepts them all, else a one-line ValueError naming the first it does
    not, so a misspelt argument fails when the callback is made rather than when training starts."""
    accepted = [name for name in inspect.signature(Sparsifier).parameters if name not in _FROM_TRAINER]
    for name in options:
        if name in _FROM_TRAINER:
            raise ValueError(f"SparsityCallback takes the {name} from the trainer; remove {name}= from its arguments.")
        if name not in accepted:
            raise ValueError(f"SparsityCallback got an unknown Sparsifier argument {name!r}; accepted: {', '.join(accepted)}.")
    return dict(options)


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a trainer's wrapper (accelerate's AcceleratedOptimizer keeps it in
    `.optimizer`, Lightning's LightningOptimizer in `._optimizer`): the one whose steps the hooks see."""
    for _ in range(8):  # wrappers of wrappers, never a cycle
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            break
        optimizer = inner
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"the trainer's optimizer is a {type(optimizer).__name__}, not a torch.optim.Optimizer; "
            "SparsityCallback needs a PyTorch optimizer to hook."
        )
    return optimizer


def checked_horizon(horizon: str) -> str:
    """`horizon` if it is one the Sparsifier knows, else a one-line ValueError when the callback is made."""
    if horizon not in HORIZONS:
        raise ValueError(
            f"SparsityCallback(horizon={horizon!r}): choose 'stretch' (a resumed run of another length decays "
            "the prune rate over the new length) or 'keep' (over the saved run's)."
        )
    return horizon


def build_sparsifier(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    options: Mapping[str, Any],
    total_steps: int,
    saved: Mapping[str, Any] | None = None,
    horizon: str = "stretch",
) -> Sparsifier:
    """A Sparsifier for `model` and `optimizer` over `total_steps` optimizer steps (unless the options
    set total_steps), continuing from `saved` (a `state_dict()`) when resuming.

    A trainer loads a checkpoint's weights (and, in the Hugging Face Trainer, its optimizer state)
    before any callback can build a Sparsifier, whose constructor applies fresh random masks; on
    resume `built_over_loaded` keeps those tensors: the run continues with exactly the weights and
    masks it saved, after checking that they are the ones the state was saved with. A run resumed
    with another length (more epochs) follows `horizon`, and says so in one logged line.
    """
    options = {"total_steps": int(total_steps), **options}
    if saved is None:
        return Sparsifier(model, optimizer, **options)
    note_new_length(saved.get("config", {}).get("total_steps"), options["total_steps"], horizon)
    return built_over_loaded(lambda: Sparsifier(model, optimizer, **options), model, optimizer, saved, horizon=horizon)


def build_sparsifier_sharded(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    options: Mapping[str, Any],
    total_steps: int,
    checkpoint: str | Path,
    horizon: str = "stretch",
    loaded: dict[str, Any] | None = None,
) -> Sparsifier:
    """`build_sparsifier` continuing from a state saved with torch.distributed.checkpoint (under
    FSDP2 each rank reads its own shards of the masks, explored sets and running averages).

    DCP reads into a template of the same layout, the state of a Sparsifier over the sharded model,
    so the state is read right after the constructor, before `built_over_loaded` puts back the
    loaded weights and optimizer state and restores it. `loaded`, when given, receives the state
    read, for a caller's own account of a refused load. Call on every rank.
    """
    from ..sharded_checkpoint import load_safely, sparsifier_entries

    options = {"total_steps": int(total_steps), **options}
    state: dict[str, Any] = {} if loaded is None else loaded

    def build() -> Sparsifier:
        sparsifier = Sparsifier(model, optimizer, **options)
        entries = {"sparsifier": sparsifier_entries(sparsifier)}
        load_safely(entries, checkpoint)
        saved = entries["sparsifier"]
        state.update(saved, history=json.loads(saved["history"]) if isinstance(saved["history"], str) else saved["history"])
        note_new_length(state.get("config", {}).get("total_steps"), options["total_steps"], horizon)
        return sparsifier

    return built_over_loaded(build, model, optimizer, state, horizon=horizon)


def note_new_length(saved_total: int | None, total: int, horizon: str) -> None:
    """The line `build_sparsifier` logs when a run is resumed with another length."""
    ends = {"stretch": total, "keep": saved_total}
    if saved_total is not None and saved_total != total:
        other = "keep" if horizon == "stretch" else "stretch"
        logger.warning(
            f"itop: resuming a run of {saved_total} optimizer steps as one of {total}; the prune-rate decay now "
            f"ends at step {ends[horizon]} (SparsityCallback(horizon={horizon!r}); horizon={other!r} would end it at step {ends[other]})."
        )


def logged_figures(sparsifier: Sparsifier, layers: bool = False) -> dict[str, float]:
    """What the callbacks add to the trainers' logs: density, Rs and the last update's prune rate;
    with `layers`, every sparse layer's density and explored share too (as `itop train --tensorboard`)."""
    last = sparsifier.history[-1]
    figures = {
        "sparsity/density": float(sparsifier.density),
        "sparsity/itop_rate": float(sparsifier.itop_rate),
        "sparsity/prune_rate": float(last["prune_rate"]),
    }
    if layers:
        for name, stats in sparsifier.layer_stats().items():
            figures[f"layer_density/{name}"] = float(stats["density"])
            figures[f"layer_explored/{name}"] = float(stats["explored"])
    return figures


def layer_densities(sparsifier: Sparsifier) -> torch.Tensor:
    """Every sparse layer's density, for a histogram."""
    return torch.tensor([stats["density"] for stats in sparsifier.layer_stats().values()])


def read_state(path) -> dict[str, Any]:
    """A Sparsifier state written by a callback, loaded without executing code."""
    return torch.load(path, map_location="cpu", weights_only=True)
