"""A Sparsifier's saved state: what `state_dict()` holds and how `load_state_dict()` checks and
restores it (masks, truly sparse positions, explored sets, step, seed, generator, averages, and a
fingerprint of the active weights the state belongs to)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .distributed import check_masks_agree
from .fingerprint import fingerprints, weights_problem
from .shards import count, local, local_like

HORIZONS = ("stretch", "keep")  # what a resumed run of another length does with the prune-rate decay


def saved_state(sp) -> dict[str, Any]:
    """Everything needed to continue bit-identically: masks, explored masks, counters, RNG."""
    return {
        "masks": {n: m.clone() for n, m in sp.masks.items()},
        "positions": {n: layer.indices.clone() for n, layer in sp.layers.items()},
        "explored": sp.exploration.state_dict(),
        "steps": sp.steps,
        "seed": sp.seed,
        "generator": sp._generator.get_state(),
        "grad_average": {n: t.clone() for n, t in sp.grad_average.items()},
        "history": [dict(h, nnz=dict(h["nnz"])) for h in sp.history],
        "config": sp.state_dict_config(),
        "fingerprint": fingerprints(current_weights(sp), sp.masks),
    }


def current_weights(sp) -> dict[str, torch.Tensor]:
    """Each sparse layer's weight tensor by name: masked layers' parameters, truly sparse layers' values."""
    return {**sp.params, **{name: layer.values for name, layer in sp.layers.items()}}


@torch.no_grad()
def looks_trained(optimizer: torch.optim.Optimizer, weights: list[torch.Tensor], layers) -> bool:
    """True when, before the constructor applies its random masks, the optimizer already holds
    state for a sparse weight or most masked weights are exactly zero: the model and optimizer
    were loaded from a sparse run. `load_state_dict` then refuses, as the random masks have
    just zeroed some of the loaded weights."""
    if any(optimizer.state.get(p) for p in weights + [layer.values for layer in layers]):
        return True
    zeros = sum(p.numel() - count(p) for p in weights)
    return zeros > 0.5 * sum(p.numel() for p in weights)


@torch.no_grad()
def load_saved_state(sp, state: Mapping[str, Any], check_weights: bool = True, horizon: str | None = None) -> None:
    """Check `state` against the sparsifier `sp` (one-line ValueErrors naming the mismatch) and restore it.

    `check_weights`: refuse when the model's weights are not the ones the state was saved with
    (`fingerprint.weights_problem`). `horizon`: what to do when the state was saved by a run of
    another total_steps (a trainer's run extended or shortened): None refuses, "stretch" decays the
    prune rate over this Sparsifier's total_steps, "keep" over the saved run's.
    """
    if horizon not in (None, *HORIZONS):
        raise ValueError(f"horizon must be None, 'stretch' or 'keep', got {horizon!r}.")
    if sp._built_on_trained and sp.steps == 0 and sp._optimizer_steps == 0 and int(state.get("steps", 0)) > 0:
        raise ValueError(
            "this Sparsifier was built after a trained sparse model or optimizer state was loaded, so its fresh random "
            "masks zeroed some loaded weights; build the Sparsifier first, then load the model, optimizer and sparsifier states."
        )
    saved = state.get("config", {})
    mine = sp.state_dict_config()
    changed = sorted(k for k in saved.keys() & mine.keys() if saved[k] != mine[k])
    if changed == ["total_steps"] and horizon is None:
        raise ValueError(
            f"the saved state was made for a run of total_steps={saved['total_steps']} but this sparsifier has "
            f"total_steps={mine['total_steps']}; to change the run's length pass horizon='stretch' (the prune-rate "
            "decay spans the new length) or horizon='keep' (it ends where the saved run's did)."
        )
    if horizon is not None:
        changed = [k for k in changed if k != "total_steps"]
    if changed:
        key = changed[0]
        raise ValueError(
            f"the saved state was made with {key}={saved[key]!r} but this sparsifier has {key}={mine[key]!r}; "
            "build the Sparsifier with the settings of the run being resumed."
        )
    masks = state["masks"]
    if set(masks) != set(sp.params) or set(state.get("positions", {})) != set(sp.layers):
        saved, mine = sorted(masks) + sorted(state.get("positions", {})), sorted(sp.params) + sorted(sp.layers)
        raise ValueError(
            f"the saved state covers layers {saved} but this model's sparse layers are {mine}; load a state saved from the same model."
        )
    for name, positions in state.get("positions", {}).items():
        if not torch.equal(positions.cpu(), sp.layers[name].indices.cpu()):
            raise ValueError(
                f"the truly sparse layer {name} holds other active positions than the saved state; load the model's "
                "state_dict (which holds them) before the sparsifier's."
            )
    for name, mask in masks.items():
        if tuple(mask.shape) != tuple(sp.params[name].shape):
            raise ValueError(
                f"the saved mask of {name} has shape {tuple(mask.shape)}, the parameter {tuple(sp.params[name].shape)}; load a state saved from the same model."
            )
    if check_weights:
        problem = weights_problem(current_weights(sp), state)
        if problem:
            raise ValueError(
                f"the model's weights are not the ones this sparse state was saved with ({problem}): the model's "
                "trained weights were not restored; load the model's state_dict (the same checkpoint) before the "
                "Sparsifier's, or pass check_weights=False to keep these weights on purpose."
            )
    if horizon == "keep" and "total_steps" in saved:
        sp.config["total_steps"] = int(saved["total_steps"])
        sp.schedule = dataclasses.replace(sp.schedule, total_steps=int(saved["total_steps"]))
    sp.masks = {n: masks[n].to(device=sp.params[n].device, dtype=torch.bool).clone() for n in sp._names}
    sp.exploration.load_state_dict(state["explored"])
    sp.steps = int(state["steps"])
    sp.seed = int(state["seed"])
    sp._generator.set_state(state["generator"])
    for name, tensor in state.get("grad_average", {}).items():
        if name in sp.grad_average:
            mine = sp.grad_average[name]
            local(mine).copy_(local_like(tensor, mine))
    sp.history = [dict(h, nnz=dict(h["nnz"])) for h in state.get("history", [])]
    sp._counted_steps = sp._optimizer_steps
    sp._dense_grads = sp._sources = None
    check_masks_agree(sp._topology(), sp._generator)
    sp._refresh_multipliers()
    sp.apply_masks()


def built_over_loaded(
    build: Callable[[], Any], model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any], horizon: str | None = None
):
    """`build()` (a Sparsifier of `model` and `optimizer`) continuing from `state`, when the model and
    optimizer already hold the resumed run's weights and optimizer state (a trainer loaded them
    before the Sparsifier could be built). The constructor's fresh random masks would zero some of
    them, so every tensor it may touch (weights of two or more dimensions and optimizer state of
    their shape) is kept aside and put back before the saved masks are applied."""
    kept = []
    for param in model.parameters():
        if param.dim() >= 2:
            state_tensors = [v for v in optimizer.state.get(param, {}).values() if isinstance(v, torch.Tensor) and v.shape == param.shape]
            kept += [(t, t.detach().clone()) for t in (param.data, *state_tensors)]
    sp = build()
    with torch.no_grad():
        for tensor, copy in kept:
            tensor.copy_(copy)
    sp._built_on_trained = False  # nothing the loaded run holds was lost: the tensors are back
    load_saved_state(sp, state, horizon=horizon)
    return sp
