"""The model, loss and sparsifier of a run, from its configuration.

Two storages serve one recipe. Masked (the default): the model is built densely and the
Sparsifier masks it. `--truly-sparse`: the model's Linear and Conv2d layers become
`itop.sparse.SparseLinear` and `SparseConv2d` layers (`itop.sparse.sparsify`) before the
optimizer is built, drawing the very positions the masked Sparsifier would draw for the same
seed, so both runs take the same decisions. A model
whose dense weights could not be allocated (the million-neuron SET-MLP holds 2.2e11) is built on
the meta device and only its active weights are ever created; masked, it is refused up front.
"""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist
from torch import nn

import itop
from itop.models import create_model, get_model_spec
from itop.sparsity import structured
from itop.sparsity.density import er_epsilon_density
from itop.sparsity.params import sparse_parameters

from .checkpoint import RunError
from .config import TrainConfig, UsageError

# Truly sparse runs whose dense weights would exceed this many (1 GiB of float32) are built on the
# meta device: their active weights are drawn directly instead of picked from a dense initialisation.
DENSE_BUILD_LIMIT = 1 << 28


def model_kwargs(cfg: TrainConfig) -> dict:
    """Family-specific options: the ImageNet conv init, the SET-MLP's layers and activation."""
    name = get_model_spec(cfg.model).name
    if name.startswith("imagenet-"):
        return {"init": cfg.model_config}
    if name == "set-mlp":
        return {"hidden": tuple(cfg.hidden), "activation": cfg.activation, "dropout": cfg.dropout, "allrelu_slope": cfg.allrelu_slope}
    return {}


def dense_weight_count(model: nn.Module) -> int:
    """Weights the model's parameters hold in their dense form (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def build_model(cfg: TrainConfig, **shape) -> tuple[nn.Module, float]:
    """(the run's model, the global density of its sparse layers), `shape` being num_classes and,
    except for ImageNet, in_channels and image_size; truly sparse when asked.

    The model is first built on the meta device to learn its size without allocating it.
    """
    kwargs = {**shape, **model_kwargs(cfg)}
    with torch.device("meta"):
        sizing = create_model(cfg.model, **kwargs)
    weights = dense_weight_count(sizing)
    density = target_density(cfg, sizing)
    if not cfg.truly_sparse:
        memory = physical_memory()
        needed = 4 * weights * (3 if cfg.sparse else 2)  # weights, gradients, momentum (and masks) in float32
        if memory is not None and needed > memory:
            raise RunError(
                f"the dense form of this model holds {weights:,} weights ({needed / 2**30:,.0f} GiB to train, this machine has "
                f"{memory / 2**30:,.0f} GiB); train it with --sparse --truly-sparse, which stores only the active weights."
            )
        return create_model(cfg.model, **kwargs), density
    if weights <= DENSE_BUILD_LIMIT:
        model = create_model(cfg.model, **kwargs)
    else:
        model = sizing
    start = cfg.initial_density if cfg.gradual else density  # gradual pruning: the layers shrink from there
    itop.sparse.sparsify(model, start, cfg.sparse_init.lower(), seed=cfg.seed, init_scale=init_scale(cfg))
    _materialise(model)
    return model, density


def _materialise(model: nn.Module) -> None:
    """Give the modules still on the meta device (layers left dense, activations with
    parameters) real tensors, initialised by their own `reset_parameters()`."""
    for module in model.modules():
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if any(t.is_meta for t in own):
            module.to_empty(device="cpu", recurse=False)
            if not callable(getattr(module, "reset_parameters", None)):
                raise RunError(f"{type(module).__name__} has parameters but no reset_parameters(); it cannot be built truly sparse.")
            module.reset_parameters()


def init_scale(cfg: TrainConfig) -> str:
    """--init-scale, or its default: 'sparse' for the SET-MLP (its recipes initialise for the
    actual fan-in), 'dense' elsewhere (the original's recipes were tuned with it)."""
    if cfg.init_scale:
        return cfg.init_scale
    return "sparse" if get_model_spec(cfg.model).name == "set-mlp" else "dense"


def target_density(cfg: TrainConfig, model: nn.Module) -> float:
    """--density, or the global density that SET's --epsilon gives this model's sparse layers."""
    if cfg.epsilon is None:
        return cfg.density
    shapes = {name: tuple(p.shape) for name, p in sparse_parameters(model).items()}
    if not shapes:
        raise RunError(f"--epsilon sets the density of sparse layers, but {cfg.model} has none.")
    return er_epsilon_density(shapes, cfg.epsilon)


def build_sparsifier(
    cfg: TrainConfig, model: nn.Module, optimizer, total_steps: int, steps_per_epoch: int, density: float, init_batch=None
) -> itop.Sparsifier | None:
    """The run's Sparsifier (None for a dense run). `init_batch`: the (inputs, targets) batch that
    --init snip / grasp score the weights on (the same on every rank)."""
    if not cfg.sparse:
        return None
    every = steps_per_epoch if cfg.update_every == "epoch" else cfg.update_frequency
    extra: dict = {}
    if cfg.gradual:  # epochs to optimizer steps
        end = 0.75 * cfg.total_epochs if cfg.prune_end is None else cfg.prune_end
        extra = dict(
            initial_density=cfg.initial_density,
            prune_start=round(cfg.prune_start * steps_per_epoch),
            prune_end=round(end * steps_per_epoch),
        )
    if cfg.init:
        extra = dict(masks=initial_masks(cfg, model, density, init_batch))
    try:
        return _sparsifier(cfg, model, optimizer, total_steps, density, every, extra)
    except ValueError as error:  # settings the engine refuses (a gradual schedule without an update after its end, ...)
        raise UsageError(str(error).splitlines()[0]) from None


def initial_masks(cfg: TrainConfig, model: nn.Module, density: float, batch) -> dict:
    """--init: SNIP / GraSP / SynFlow masks, ranked over all layers as in the papers; rank 0's on every rank."""
    masks = itop.init_masks(model, density, cfg.init, data=[batch], loss_fn=loss_function(cfg))
    if dist.is_initialized() and dist.get_world_size() > 1:
        for mask in masks.values():
            as_bytes = mask.to(torch.uint8)
            dist.broadcast(as_bytes, src=0)
            mask.copy_(as_bytes.bool())
    return masks


def _sparsifier(cfg: TrainConfig, model: nn.Module, optimizer, total_steps: int, density: float, every, extra: dict) -> itop.Sparsifier:
    return itop.Sparsifier(
        model,
        optimizer,
        density=density,
        distribution=cfg.sparse_init.lower(),
        prune=cfg.death.lower(),
        grow=cfg.growth,
        redistribution=cfg.redistribution,
        prune_rate=cfg.death_rate,
        update_frequency=None if cfg.fix else every,
        total_steps=total_steps,
        seed=cfg.seed,
        prune_options={"threshold": cfg.threshold} if cfg.death.lower() == "threshold" else None,
        decay_schedule=cfg.decay_schedule,
        init_scale=init_scale(cfg),
        structure=cfg.structure or None,
        ablation=cfg.ablation,
        ablation_threshold=cfg.ablation_threshold,
        exclude=uncut_layers(cfg, model),
        **extra,
    )


def uncut_layers(cfg: TrainConfig, model: nn.Module) -> list[str]:
    """With --structure N:M, the sparse layers whose rows are not a multiple of M (LeNet-5's first
    convolution: 25 inputs): they stay dense (`uncut_note` says so)."""
    structure = structured.parse(cfg.structure or None)
    if structure is None:
        return []
    return [name for name, p in sparse_parameters(model).items() if not structure.cuts(tuple(p.shape))]


def uncut_note(cfg: TrainConfig, model: nn.Module) -> str | None:
    """The run's note on the layers `uncut_layers` leaves dense, or None."""
    uncut = uncut_layers(cfg, model)
    if not uncut:
        return None
    return f"--structure {cfg.structure}: {', '.join(uncut)} stay dense (rows not a multiple of {cfg.structure.split(':')[1]})."


class SigmoidMSE(nn.Module):
    """The SET code's loss: sigmoid outputs against one-hot targets, 0.5 * squared error summed
    over classes and averaged over the batch (the gradient its backward applies)."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(target, logits.shape[-1]).to(logits.dtype)
        per_example = 0.5 * (torch.sigmoid(logits) - onehot).pow(2).sum(-1)
        return per_example.sum() if self.reduction == "sum" else per_example.mean()


def loss_function(cfg: TrainConfig, reduction: str = "mean") -> nn.Module:
    if cfg.loss == "mse":
        return SigmoidMSE(reduction)
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction=reduction)


def describe_density(density: float, cfg: TrainConfig) -> str:
    """How the run's density was set, for its first line."""
    if cfg.gradual:
        end = 0.75 * cfg.total_epochs if cfg.prune_end is None else cfg.prune_end
        return f"density {cfg.initial_density:g} -> {density:g} over epochs {cfg.prune_start:g}-{end:g}"
    if cfg.epsilon is None:
        return f"density {density:g}"
    return f"density {density:.5g} (from --epsilon {cfg.epsilon:g}, {math.floor(10000 * (1 - density)) / 100:g}% sparse)"
