"""The scores of pruning at initialisation (`itop.init_masks`): SNIP, GraSP and SynFlow.

Each function reads the model and returns one score tensor per sparse parameter, by name, on the
parameter's device, without writing to the model: gradients come from `torch.autograd.grad` (no
`.grad` is touched) and SynFlow runs on substituted tensors (`torch.func.functional_call`), never
on the weights themselves. `init_masks` keeps the model's mode, buffers and random state.

- SNIP (Lee, Ajanthan and Torr, "SNIP: Single-shot Network Pruning based on Connection
  Sensitivity", ICLR 2019): s = |g ⊙ θ| / Σ|g ⊙ θ|, g = ∂L/∂θ over the given batches; the
  largest are kept.
- GraSP (Wang, Zhang and Grosse, "Picking Winning Tickets Before Training by Preserving Gradient
  Flow", ICLR 2020): S(-θ) = -θ ⊙ Hg, normalised by |Σ S| + 1e-10 as in the authors' code; the
  largest scores are removed, so the lowest are kept.
- SynFlow (Tanaka, Kunin, Yamins and Ganguli, "Pruning neural networks without any data by
  iteratively conserving synaptic flow", NeurIPS 2020): S = |∂R/∂θ ⊙ θ| with every weight, bias
  and buffer replaced by its absolute value, R the sum of the outputs for an input of ones; the
  largest are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

Batch = tuple[Any, Any]


def to_device(value: Any, device: torch.device) -> Any:
    """`value` with every tensor in it (in lists, tuples and dicts too) moved to `device`."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def _grads(output: Tensor, tensors: Sequence[Tensor], create_graph: bool = False) -> list[Tensor | None]:
    """∂output/∂tensors without touching `.grad`; None for a tensor the output does not depend on."""
    if not output.requires_grad:
        return [None] * len(tensors)
    return list(torch.autograd.grad(output, tensors, create_graph=create_graph, allow_unused=True))


def _add(total: list[Tensor], grads: Sequence[Tensor | None]) -> list[Tensor]:
    return [t if g is None else t + g for t, g in zip(total, grads)]


def _normalised(scores: dict[str, Tensor], by: Callable[[Tensor], Tensor]) -> dict[str, Tensor]:
    """Every score divided by `by(sum of all scores)` when that is positive (one factor for all layers)."""
    first = next(iter(scores.values()))
    norm = by(torch.cat([s.reshape(-1).to(first.device) for s in scores.values()]).sum())
    if not bool(norm > 0) or not bool(torch.isfinite(norm)):
        return scores
    return {n: s / norm.to(s.device) for n, s in scores.items()}


def _loss_gradients(model: nn.Module, tensors: list[Tensor], batches: Sequence[Batch], loss_fn: Callable) -> list[Tensor]:
    """g = Σ_b ∂L_b/∂θ over the batches (detached)."""
    device = tensors[0].device
    total = [torch.zeros_like(t) for t in tensors]
    for inputs, targets in batches:
        loss = loss_fn(model(to_device(inputs, device)), to_device(targets, device))
        total = _add(total, _grads(loss, tensors))
    return total


def snip_scores(model: nn.Module, params: Mapping[str, Tensor], batches: Sequence[Batch], loss_fn: Callable) -> dict[str, Tensor]:
    """SNIP's connection sensitivity |g ⊙ θ| / Σ|g ⊙ θ| (float32), g summed over `batches`."""
    names, tensors = list(params), list(params.values())
    grads = _loss_gradients(model, tensors, batches, loss_fn)
    scores = {n: (g * t.detach()).abs().float() for n, g, t in zip(names, grads, tensors)}
    return _normalised(scores, lambda total: total)


def grasp_scores(model: nn.Module, params: Mapping[str, Tensor], batches: Sequence[Batch], loss_fn: Callable) -> dict[str, Tensor]:
    """GraSP's S(-θ) = -θ ⊙ Hg / (|Σ S| + 1e-10) (float32): g summed over `batches` (held
    constant), Hg = Σ_b ∂(gᵀ ∂L_b/∂θ)/∂θ by double backpropagation, as the authors' code does.
    The lowest scores are the ones to keep."""
    names, tensors = list(params), list(params.values())
    device = tensors[0].device
    g = _loss_gradients(model, tensors, batches, loss_fn)
    hg = [torch.zeros_like(t) for t in tensors]
    for inputs, targets in batches:
        loss = loss_fn(model(to_device(inputs, device)), to_device(targets, device))
        grads = _grads(loss, tensors, create_graph=True)
        products = [(a * b).sum() for a, b in zip(g, grads) if b is not None]
        if products:
            hg = _add(hg, _grads(torch.stack([p.to(device) for p in products]).sum(), tensors))
    scores = {n: (-(t.detach() * h)).float() for n, t, h in zip(names, tensors, hg)}
    return _normalised(scores, lambda total: total.abs() + 1e-10)


def linearized_state(model: nn.Module) -> dict[str, Tensor]:
    """SynFlow's network: every parameter and buffer by name, floating ones as their absolute
    values in float64 (the sums over paths overflow float32 in deep networks), detached copies."""
    state = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        tensor = tensor.detach()
        state[name] = tensor.abs().double() if tensor.is_floating_point() else tensor.clone()
    return state


def synflow_scores(
    model: nn.Module, state: Mapping[str, Tensor], masks: Mapping[str, Tensor], input_shape: Sequence[int]
) -> dict[str, Tensor]:
    """SynFlow's S = |∂R/∂θ ⊙ θ| (float64) on the kept weights: θ = |w| ⊙ mask for each masked
    parameter of `masks`, the rest of `state` (from `linearized_state`) as it is, R = Σ model(1)
    for an input of ones of `input_shape` in float64. Call with the model in eval mode."""
    from torch.func import functional_call  # loads functorch: only when SynFlow runs

    kept = {n: (state[n] * m).requires_grad_() for n, m in masks.items()}
    device = next(iter(kept.values())).device
    output = functional_call(model, {**state, **kept}, (torch.ones(tuple(input_shape), dtype=torch.float64, device=device),))
    if not isinstance(output, Tensor):
        raise ValueError(f"SynFlow sums the model's output, which must be one tensor; the model returned a {type(output).__name__}.")
    tensors = list(kept.values())
    grads = _grads(output.sum(), tensors)
    return {n: torch.zeros_like(t) if g is None else (g * t).detach().abs() for (n, t), g in zip(kept.items(), grads)}
