"""FLOPs of a sparse model relative to its dense version, for inference and for a whole run.

Dense per-layer forward FLOPs are counted once with `torch.utils.flop_counter.FlopCounterMode`
(matrix multiplications and convolutions; elementwise work is not counted). A layer whose weight is
sparse costs its density times its dense FLOPs. Training follows the accounting of the RigL paper
(Evci et al. 2020, appendix H): a dense step costs 3 f_D (forward f_D, backward 2 f_D); a sparse
step 3 f_S; a step that also needs the dense gradient of the weights costs 2 f_S + f_D, which is
every topology update for gradient growth (RigL) and every step for momentum-based criteria.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..sparse.base import SparseWeights
from .kernels import dense_compute

if TYPE_CHECKING:  # the Sparsifier imports nothing of this module; the type is for readers and the docs
    from .sparsifier import Sparsifier


@dataclass(frozen=True)
class LayerFlops:
    """Dense forward FLOPs of one example batch: per module (by name), and in all."""

    per_module: dict[str, int]
    total: int

    def sparse_forward(self, densities: Mapping[str, float]) -> float:
        """Forward FLOPs when the named parameters have the given densities (the rest dense).

        A module's FLOPs scale with the mean density of its sparse parameters.
        """
        by_module: dict[str, list[float]] = {}
        for name, density in densities.items():
            by_module.setdefault(name.rpartition(".")[0], []).append(density)
        saved = sum(self.per_module.get(m, 0) * (1 - sum(d) / len(d)) for m, d in by_module.items())
        return self.total - saved


def count_flops(model: nn.Module, *example_inputs: Any, **example_kwargs: Any) -> LayerFlops:
    """Dense forward FLOPs of `model` on one example batch, per module name.

    Truly sparse layers (`itop.sparse.SparseLinear`, `SparseConv2d`), whose sparse products the
    counter does not see, are counted as the dense layer they stand for (2 x outputs x fan-in: for a
    Linear 2 x rows x in x out), so that densities scale them like masked layers.

    Args:
        model: the model, masked or truly sparse; it is run once, without gradients.
        *example_inputs: positional inputs of one forward call (e.g. one batch).
        **example_kwargs: keyword inputs of that call.

    Returns:
        The FLOPs per module name (`per_module`) and in all (`total`), for `inference_ratio` and
        `training_ratio`.

    Example:
        ```python
        f = itop.flops.count_flops(model, torch.randn(1, 784))
        itop.flops.inference_ratio(f, {n: s["density"] for n, s in sparsifier.layer_stats().items()})
        ```
    """
    sparse_flops: dict[str, int] = {}

    def counted(name):
        def hook(module, inputs, output):
            fan_in = math.prod(module.weight_shape[1:])  # a Linear's in_features; a convolution's in/groups x kh x kw
            sparse_flops[name] = sparse_flops.get(name, 0) + 2 * output.numel() * fan_in

        return hook

    hooks = [m.register_forward_hook(counted(n)) for n, m in model.named_modules() if isinstance(m, SparseWeights)]
    try:
        with torch.no_grad(), dense_compute(), FlopCounterMode(display=False) as counter:
            model(*example_inputs, **example_kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    counts = {key: sum(ops.values()) for key, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    per_module = {name: counts.get(f"{root}.{name}" if name else root, 0) for name, _ in model.named_modules()}
    for name, flops in sparse_flops.items():  # the layer itself and every module that holds it
        for holder in per_module:
            if holder == "" or name == holder or name.startswith(holder + "."):
                per_module[holder] += flops
    return LayerFlops(per_module, counts.get("Global", 0) + sum(sparse_flops.values()))


def inference_ratio(flops: LayerFlops, densities: Mapping[str, float]) -> float:
    """Test FLOPs of the sparse model as a fraction of the dense model's.

    Args:
        flops: the dense model's FLOPs from `count_flops`.
        densities: parameter name -> density of each sparse weight (the others count as dense),
            e.g. `{n: s["density"] for n, s in sparsifier.layer_stats().items()}`.

    Returns:
        The ratio, 1.0 for a dense model (the original ITOP code's "Test FLOPs" column).
    """
    return flops.sparse_forward(densities) / flops.total if flops.total else 1.0


def dense_gradient_every(sparsifier) -> str:
    """When a run computes dense weight gradients: "never", "update" (RigL: on each topology
    update) or "step" (momentum criteria: on every step), from the sparsifier's settings."""
    config = sparsifier.config
    if config["grow"] == "momentum" or config["redistribution"] == "momentum":
        return "step"
    if config["grow"] == "gradient" and config["update_frequency"] is not None:
        return "update"
    return "never"


def training_ratio(flops: LayerFlops, sparsifier: Sparsifier, total_steps: int | None = None) -> float:
    """Training FLOPs of a whole run of `total_steps` relative to a dense run of as many steps.

    Integrates the sparsifier's history of per-layer active counts, so densities that change with
    redistribution count for the steps they held; steps not run yet keep the latest densities.

    Args:
        flops: the dense model's FLOPs from `count_flops`.
        sparsifier: the `itop.Sparsifier` of the run (its history, criteria and schedule).
        total_steps: the run's length in optimizer steps; default the sparsifier's `total_steps`.

    Returns:
        The ratio (the original ITOP code's "Training FLOPs" column, for a run at multiplier 1).
    """
    steps = sparsifier.config["total_steps"] if total_steps is None else total_steps
    sizes = {n: stats["numel"] for n, stats in sparsifier.layer_stats().items()}
    history = sparsifier.history
    forward = [flops.sparse_forward({n: h["nnz"][n] / sizes[n] for n in sizes}) for h in history]
    starts = [h["step"] for h in history] + [max(steps, history[-1]["step"])]
    mode = dense_gradient_every(sparsifier)
    cost = 0.0
    for f_sparse, start, end in zip(forward, starts, starts[1:]):
        per_step = 2 * f_sparse + flops.total if mode == "step" else 3 * f_sparse
        cost += per_step * (min(end, steps) - min(start, steps))
    if mode == "update":
        frequency = sparsifier.config["update_frequency"]
        for update in range(frequency, steps + 1, frequency):
            before = max(i for i, h in enumerate(history) if h["step"] < update)
            cost += flops.total - forward[before]
    return cost / (3 * flops.total * steps) if flops.total and steps else 1.0
