"""`itop.init_masks`: masks chosen before training by SNIP, GraSP or SynFlow (`init_scores`).

    masks = itop.init_masks(model, density=0.05, method="snip", data=[(x, y)])

The result maps each sparse parameter's name (the keys of `Sparsifier.masks` for the same
include/exclude) to its bool mask, on the parameter's device. The model is left as it was: its
weights, gradients, train/eval mode, buffers (BatchNorm statistics), requires_grad flags and the
global random state (CPU and the CUDA devices holding its parameters) are those it had before.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from numbers import Integral, Real
from typing import Any

import torch
from torch import Tensor, nn

from . import shards
from .density import DISTRIBUTIONS, layer_counts
from .init_scores import grasp_scores, linearized_state, snip_scores, synflow_scores
from .layers import chosen_layers
from .params import Selector
from .select import bottom_k_mask, top_k_mask

METHODS = ("snip", "grasp", "synflow")


def init_masks(
    model: nn.Module,
    density: float,
    method: str = "snip",
    data: Iterable | None = None,
    loss_fn: Callable[[Any, Any], Tensor] | None = None,
    distribution: str | Callable | None = None,
    *,
    include: Sequence[Selector] | None = None,
    exclude: Sequence[Selector] = (),
    rounds: int = 100,
    batches: int | None = None,
    input_shape: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """Bool masks keeping a fraction `density` of `model`'s sparse weights, chosen at initialisation.

    method:
        "snip" (Lee, Ajanthan and Torr, "SNIP: Single-shot Network Pruning based on Connection
        Sensitivity", ICLR 2019): the connection sensitivity s = |g ⊙ θ| / Σ|g ⊙ θ|, g the
        gradient of the loss summed over the batches of `data`; the largest scores are kept.

        "grasp" (Wang, Zhang and Grosse, "Picking Winning Tickets Before Training by Preserving
        Gradient Flow", ICLR 2020): S(-θ) = -θ ⊙ Hg, with g the gradient of the loss over `data`
        held constant and Hg the Hessian-gradient product by double backpropagation. As in the
        authors' code, which removes the weights of highest score, the LOWEST scores are kept
        (removing them would reduce the gradient flow most). Their code also divides the logits
        by a temperature of 200: pass `loss_fn=lambda out, y: F.cross_entropy(out / 200, y)` for that.

        "synflow" (Tanaka, Kunin, Yamins and Ganguli, "Pruning neural networks without any data by
        iteratively conserving synaptic flow", NeurIPS 2020): data-free. Every parameter and buffer
        is replaced by its absolute value (in float64; the model's own tensors are not touched),
        the model runs in eval mode on an input of ones, R is the sum of its outputs and the score
        is S = |∂R/∂θ ⊙ θ| on the weights still kept; the largest are kept. Iterative: `rounds`
        rounds (100 by default, as in the paper), after round k the kept density is
        density^(k/rounds) (the exponential schedule), pruned weights stay zero in later rounds.

    density: the fraction of sparse weights kept, in (0, 1]. Without a distribution the ranking is
        global over all sparse layers, as in the papers, and keeps round(density * total) weights
        (at least one); a layer can then lose all its weights (a warning names it).
    distribution: None (global ranking), "erk", "er", "uniform", a registered name or a function
        like those of `itop.register_distribution`: each layer then keeps the count the
        Sparsifier gives it at this density and distribution, chosen by rank within the layer.
    data: an iterable of (inputs, targets) batches (a DataLoader, a list); SNIP and GraSP need it,
        reading `batches` of them (default: all) and moving tensors to the first sparse
        parameter's device. The model is called as `model(inputs)`, the loss is
        `loss_fn(outputs, targets)` (default `torch.nn.functional.cross_entropy`).
        SNIP and GraSP run the model in the mode it is in (train mode uses batch statistics in
        BatchNorm, as the authors' code does); buffers are restored afterwards.
    input_shape: SynFlow's input, the full shape of the tensor the model is called with, batch
        dimension included (e.g. (1, 3, 32, 32)). Default: one example of the first batch of `data`,
        (1, *inputs.shape[1:]). One of the two is required.
    include, exclude: which parameters are sparse, as for `itop.Sparsifier`.

    Ties are broken towards the lowest index (`itop.sparsity.select`), so the same model and data
    give the same masks. Raises a one-line ValueError for an unknown method, a density outside
    (0, 1], SNIP or GraSP without data, an empty `data` and SynFlow with neither `data` nor
    `input_shape`.
    """
    method = _checked(density, method, rounds, batches)
    params = sparse_weights(model, include, exclude)
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    densities = None if distribution is None else _distribution(distribution)(shapes, density)
    counts = _total(shapes, density) if densities is None else layer_counts(shapes, densities)
    with _preserved(model), torch.enable_grad():
        if method == "synflow":
            shape = _input_shape(data, input_shape)
            masks = _synflow(model, params, shape, counts, densities, density, rounds)
        else:
            taken = _batches(data, batches, method)
            loss = torch.nn.functional.cross_entropy if loss_fn is None else loss_fn
            scores = (snip_scores if method == "snip" else grasp_scores)(model, params, taken, loss)
            masks = _select(scores, counts, lowest=method == "grasp")
    masks = {n: m.to(params[n].device) for n, m in masks.items()}
    if densities is None:
        for name, mask in masks.items():
            if not bool(mask.any()):
                warnings.warn(
                    f'itop.init_masks: {method} keeps no weight of {name}; pass distribution="erk" to keep a share of every layer.',
                    stacklevel=2,
                )
    return masks


def sparse_weights(
    model: nn.Module, include: Sequence[Selector] | None = None, exclude: Sequence[Selector] = ()
) -> dict[str, nn.Parameter]:
    """The parameters the Sparsifier masks for `include`/`exclude`, by name, in model order
    (truly sparse layers hold positions, not masks, and are left out)."""
    params, _ = chosen_layers(model, include, exclude)
    if not params:
        raise ValueError("the model has no masked sparse parameter (no trainable Linear/Conv weight, or include/exclude left none).")
    if any(shards.is_sharded(p) for p in params.values()):
        raise ValueError("init_masks needs whole weights; call it before fully_shard and pass the masks on.")
    return params


def _checked(density: Any, method: Any, rounds: Any, batches: Any) -> str:
    name = method.lower() if isinstance(method, str) else method
    if name not in METHODS:
        raise ValueError(f"unknown init_masks method {method!r}; choose one of {', '.join(METHODS)}.")
    if isinstance(density, bool) or not isinstance(density, Real) or not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density!r}.")
    if isinstance(rounds, bool) or not isinstance(rounds, Integral) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}.")
    if batches is not None and (isinstance(batches, bool) or not isinstance(batches, Integral) or batches < 1):
        raise ValueError(f"batches must be a positive integer or None, got {batches!r}.")
    return name


def _distribution(distribution: str | Callable) -> Callable:
    return distribution if callable(distribution) else DISTRIBUTIONS.get(distribution)


def _total(shapes: Mapping[str, Sequence[int]], density: float) -> int:
    """The global count: round(density * total sparse weights), at least one."""
    return max(1, round(density * sum(math.prod(s) for s in shapes.values())))


@contextmanager
def _preserved(model: nn.Module):
    """Restores on exit every module's train/eval flag, every buffer (the same tensor, bit for
    bit) and the random state of the CPU and of the CUDA devices holding the model's parameters."""
    cuda_devices = sorted(
        {
            p.device.index if p.device.index is not None else torch.cuda.current_device()
            for p in model.parameters()
            if p.device.type == "cuda"
        }
    )
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(m, n, b, b.clone()) for m in model.modules() for n, b in m.named_buffers(recurse=False)]
    with torch.random.fork_rng(devices=cuda_devices):
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training
            with torch.no_grad():
                for module, name, buffer, saved in buffers:
                    if getattr(module, name, None) is not buffer:
                        setattr(module, name, buffer)
                    buffer.copy_(saved)


def _batches(data: Iterable | None, batches: int | None, method: str) -> list:
    """The (inputs, targets) batches read once (GraSP goes over them twice)."""
    if data is None:
        raise ValueError(f"{method} scores weights by the loss's gradient and needs data=, an iterable of (inputs, targets) batches.")
    taken = list(itertools.islice(data, batches))
    if not taken:
        raise ValueError("init_masks got an empty data iterable; give at least one (inputs, targets) batch.")
    for batch in taken:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"each batch of data must be an (inputs, targets) pair, got a {type(batch).__name__}.")
    return taken


def _input_shape(data: Iterable | None, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """SynFlow's input shape: `input_shape` as given, else (1, *shape of one example of the first batch)."""
    if input_shape is not None:
        return tuple(int(s) for s in input_shape)
    if data is None:
        raise ValueError("synflow needs input_shape= (the shape the model is called with, e.g. (1, 3, 32, 32)) or data= to take it from.")
    first = next(iter(data), None)
    if first is None:
        raise ValueError("init_masks got an empty data iterable; give at least one (inputs, targets) batch.")
    inputs = first[0] if isinstance(first, (tuple, list)) else first
    if not isinstance(inputs, Tensor) or inputs.dim() == 0:
        raise ValueError("synflow takes its input shape from a batch of tensors; pass input_shape= instead.")
    return (1, *inputs.shape[1:])


def _select(
    scores: Mapping[str, Tensor], counts: int | Mapping[str, int], lowest: bool = False, allowed: Mapping[str, Tensor] | None = None
):
    """Exactly `counts` kept: per layer (a dict) or over all layers together (an int), the largest
    scores (the lowest with `lowest`), among `allowed` positions only if given."""
    pick = bottom_k_mask if lowest else top_k_mask
    if not isinstance(counts, int):
        return {n: pick(s, counts[n], None if allowed is None else allowed[n]) for n, s in scores.items()}
    device = next(iter(scores.values())).device
    flat = torch.cat([s.reshape(-1).to(device) for s in scores.values()])
    where = None if allowed is None else torch.cat([allowed[n].reshape(-1).to(device) for n in scores])
    chosen = pick(flat, counts, where)
    parts = chosen.split([s.numel() for s in scores.values()])
    return {n: part.view(s.shape).to(s.device) for (n, s), part in zip(scores.items(), parts)}


def _round_counts(k: int, rounds: int, counts: int | Mapping[str, int], densities, density: float, shapes) -> int | dict[str, int]:
    """The counts kept after round k of `rounds`: density^(k/rounds) of the weights (per layer with
    a distribution), never below the final counts and exactly them after the last round."""
    if k == rounds:
        return counts
    if densities is None:
        return max(counts, round(density ** (k / rounds) * sum(math.prod(s) for s in shapes.values())))
    out = {}
    for name, shape in shapes.items():
        n = math.prod(shape)
        out[name] = max(counts[name], min(n, round(min(1.0, densities[name]) ** (k / rounds) * n)))
    return out


def _synflow(model: nn.Module, params, input_shape, counts, densities, density: float, rounds: int) -> dict[str, Tensor]:
    """Iterative SynFlow pruning with the exponential schedule, the model in eval mode."""
    model.eval()
    state = linearized_state(model)
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    masks = {n: torch.ones(p.shape, dtype=torch.bool, device=p.device) for n, p in params.items()}
    for k in range(1, rounds + 1):
        scores = synflow_scores(model, state, masks, input_shape)
        largest = max(float(s.max()) for s in scores.values())
        if largest > 0 and math.isfinite(largest):
            scores = {n: s / largest for n, s in scores.items()}  # float64 scores kept in float32's range
        scores = {n: s.float() for n, s in scores.items()}
        masks = _select(scores, _round_counts(k, rounds, counts, densities, density, shapes), allowed=masks)
    return masks
