"""Which weights a saved sparse state belongs to.

A Sparsifier's state (masks, explored sets, schedule) means nothing on other weights: restored over
freshly initialised ones, a resumed run silently restarts from random weights with a trained run's
masks and Rs. That happens when a trainer fails to load a checkpoint's weights and only warns (the
Hugging Face Trainer under transformers 5 did, for models whose parameters it renames on loading).
So a saved state carries a fingerprint of its active weights, and a load checks the weights in hand:

- every weight outside the saved masks is exactly zero after a correct load (the engine keeps
  inactive weights at zero, and checkpoints are written between steps);
- each layer's active weights have the saved count, sum of magnitudes and sum of squares (summed
  in float64, so a load on another device or process agrees to far better than the tolerance).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from . import shards

RELATIVE_TOLERANCE = 1e-6  # float64 sums of the same float32 values agree to ~1e-12 in any order


@torch.no_grad()
def fingerprint(weight: Tensor, mask: Tensor | None = None) -> Tensor:
    """(active count, sum of |w|, sum of w^2) over the active weights, in float64 on the CPU.
    `mask` selects them in a masked layer; a truly sparse layer's values are all active. A weight
    sharded by FSDP2 sums its shards (all-reduced), so every rank gets the whole layer's."""
    mine = shards.local(weight.detach())
    active = mine if mask is None else mine[shards.local_like(mask, weight).to(mine.device)]
    values = active.double()
    sums = torch.stack(
        [torch.tensor(float(values.numel()), dtype=torch.float64, device=values.device), values.abs().sum(), values.square().sum()]
    ).cpu()
    return shards.all_sum(sums, weight)


def fingerprints(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A fingerprint per layer: masked layers over their masks, the others (values vectors) whole."""
    return {name: fingerprint(weight, masks.get(name)) for name, weight in weights.items()}


@torch.no_grad()
def weights_problem(weights: Mapping[str, Tensor], state: Mapping) -> str | None:
    """None when `weights` (name -> the current weight of each masked layer, or the values of each
    truly sparse layer) are those `state` (a `Sparsifier.state_dict()`) was saved with; otherwise
    what differs, in a few words, for a one-line error."""
    for name, mask in state["masks"].items():
        weight = shards.local(weights[name].detach())
        outside = ~shards.local_like(mask, weights[name]).to(device=weight.device, dtype=torch.bool)
        stray = int(shards.all_sum(torch.count_nonzero(weight[outside]).reshape(1).cpu(), weights[name]))
        if stray:
            return f"{stray} weights of {name} outside its saved mask are nonzero"
    for name, saved in state.get("fingerprint", {}).items():
        mine = fingerprint(weights[name], state["masks"].get(name))
        if not torch.allclose(mine, saved.to(torch.float64), rtol=RELATIVE_TOLERANCE, atol=0.0):
            return (
                f"the active weights of {name} differ from the saved ones (sum of squares "
                f"{float(mine[2]):.6g}, saved {float(saved[2]):.6g})"
            )
    return None


def weights_in_model(model: torch.nn.Module, state: Mapping) -> dict[str, Tensor]:
    """The tensors of `model` that `state` describes: each masked layer's parameter by name, each
    truly sparse layer's values vector by module name. A name the model lacks raises a one-line
    ValueError (the state comes from another model)."""
    params, modules = dict(model.named_parameters()), dict(model.named_modules())
    weights = {}
    for name in state["masks"]:
        if name not in params:
            raise ValueError(
                f"the saved sparse state names a parameter {name!r} that this model lacks; load a state saved from the same model."
            )
        weights[name] = params[name]
    for name in state.get("positions", {}):
        values = getattr(modules.get(name), "values", None)
        if not isinstance(values, Tensor):
            raise ValueError(
                f"the saved sparse state names a truly sparse layer {name!r} that this model lacks; load a state saved from the same model."
            )
        weights[name] = values
    return weights
