"""`Sparsifier`: adds dynamic sparse training to any model and optimizer.

It owns the masks and every piece of state the engine has (masks, explored masks, step counter,
schedule, random generator), applies the masks, and runs topology updates on schedule. The
criteria it calls are pure functions from `prune`, `grow` and `redistribute`.

How masks stay exact at the cost of one multiply per step: a hook that runs just before
`optimizer.step()` multiplies the gradients by the masks (`multiply_all`, one foreach op on GPUs).
With a zero gradient, a zero weight and zero optimizer state, the optimizers listed in
`optimizer.ZERO_PRESERVING` leave all three at zero, so inactive weights and their state stay exactly zero
without being touched again. Any other optimizer gets its weights and state tensors masked after
every step as well, and so does every sparse weight after a step whose closure computed the
gradients inside `optimizer.step()` (too late for the first hook). A hook after `optimizer.step()`
counts real steps, so a step that a GradScaler skips neither advances the schedule nor changes
the topology (with fused optimizers, which a GradScaler calls even on a step it skips, the hooks
read its inf flag and the loss scale the gradients still carry).

Under torch.distributed (DDP), build it on the unwrapped model on every rank: the seed is shared,
the hooks see the averaged gradients, and `distributed.check_masks_agree` verifies after every
update that all ranks hold the same masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..sparse.layer import SparseLinear
from . import index_growth, kernels
from .arguments import GROW_ARGUMENTS, PRUNE_ARGUMENTS, check_numbers, checked_options
from .density import DISTRIBUTIONS, layer_counts
from .distributed import check_masks_agree, shared_seed
from .exploration import Exploration
from .grow import GROW
from .optimizer import closure_of, grad_scale, multiply_all, skipped_by_grad_scaler, zero_preserving
from .params import Selector, sparse_parameters
from .prune import PRUNE
from .redistribute import REDISTRIBUTE, allocate, prune_limits
from .schedule import PruneSchedule
from .select import random_k_mask
from .state import load_saved_state, saved_state
from .truly_sparse import Recorder, all_ranks, model_order, replace_positions, selects_some, truly_sparse_layers, update_seed


def _criterion(registry, value):
    """A registered name (looked up) or a user's callable (used as is)."""
    return value if callable(value) else registry.get(value)


class Sparsifier:
    """Dynamic sparse training for `model`, driven by `optimizer`'s steps.

    Build it after the model and optimizer (on the unwrapped model under DDP, before
    `torch.compile`), then call `step()` after every `optimizer.step()`:

        sparsifier = itop.Sparsifier(model, optimizer, density=0.05, grow="gradient",  # RigL
                                     update_frequency=100, total_steps=epochs * len(loader))
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            sparsifier.step()      # schedule, topology updates
        print(sparsifier.density, sparsifier.itop_rate)   # 0.05, Rs

    Args:
        model: any `nn.Module`; its Linear and Conv weights (and `itop.sparse.SparseLinear` layers)
            are sparse unless `include` / `exclude` say otherwise.
        optimizer: the `torch.optim.Optimizer` over the model's parameters; hooks on its steps keep
            inactive weights and their optimizer state exactly zero.
        density: share of the sparse weights that are active, over all sparse layers, in (0, 1].
        distribution: how the density is split over layers: "erk" (default), "er", "uniform", or a
            registered name; ERK and ER are capped (a layer that would exceed 1 is dense).
        prune: which active weights an update removes: "magnitude" (default), "set" (SET's rule:
            the same share of each sign, the weights closest to zero), "threshold" (every weight
            with |w| < `prune_options["threshold"]`), a registered name, or a function.
        grow: which inactive weights an update adds back: "random" (SET, default), "gradient"
            (RigL: the largest dense-gradient magnitudes), "momentum" (sparse momentum: a running
            average of the dense gradients), "none" (prune only), a registered name, or a function.
        redistribution: how many weights each layer gets back: "none" (default: its own losses),
            "magnitude", "nonzeros", "momentum", a registered name, or a function.
        prune_rate: share of each layer's active weights replaced by the first update; later
            updates use it decayed by `decay_schedule` over `total_steps`, down to
            min(0.005, prune_rate).
        update_frequency: optimizer steps between topology updates; None trains static sparse.
        total_steps: the run's length in optimizer steps (the decay horizon).
        seed: the same seed gives the same masks and update draws (None: a random seed, shared
            across ranks under torch.distributed).
        include: module types or parameter-name patterns that are sparse (default: Linear and Conv
            weights, first and last layers included; frozen parameters never are).
        exclude: module types or name patterns left dense.
        prune_options: options of the prune criterion, e.g. {"threshold": 1e-3}.
        grow_options: options of the grow criterion.
        grad_average_beta: decay of the running gradient average the momentum criteria read (0.9).
        decay_schedule: "cosine" (default, as the original ITOP code), "linear" or "constant".
        sparse_linear: on the CPU in float32, let large low-density Linear layers multiply by
            their active weights only (results equal to rounding); False keeps plain masking.
        init_scale: "dense" (default) keeps the initial weights; "sparse" scales each layer's
            active weights by 1/sqrt(its density), the initialisation for the actual fan-in.

    After construction: `masks` (name -> bool tensor), `layers` (truly sparse layers by name),
    `density`, `itop_rate` (Rs: the share of weights ever active), `layer_stats()`, `history`
    (one entry per update), `update_topology()`, `state_dict()` / `load_state_dict()` (exact
    resume; the load checks that the model holds the weights the state was saved with),
    `detach()` / `attach()`.

    Raises:
        ValueError: in one line, for an argument out of range, an unknown criterion name, or a
            model with no sparse parameter or with parameters the optimizer does not hold.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        density: float = 0.05,
        distribution: str = "erk",
        prune: str | Callable = "magnitude",
        grow: str | Callable = "random",
        redistribution: str | Callable = "none",
        prune_rate: float = 0.5,
        update_frequency: int | None = 100,
        total_steps: int = 10_000,
        seed: int | None = None,
        *,
        include: Sequence[Selector] | None = None,
        exclude: Sequence[Selector] = (),
        prune_options: Mapping[str, Any] | None = None,
        grow_options: Mapping[str, Any] | None = None,
        grad_average_beta: float = 0.9,
        decay_schedule: str = "cosine",
        sparse_linear: bool = True,
        init_scale: str = "dense",
    ):
        check_numbers(density, prune_rate, update_frequency, total_steps, grad_average_beta, init_scale)
        density, prune_rate = float(density), float(prune_rate)
        update_frequency = None if update_frequency is None else int(update_frequency)
        total_steps = int(total_steps)
        self.config = dict(
            density=float(density),
            distribution=distribution,
            prune=prune,
            grow=grow,
            redistribution=redistribution,
            prune_rate=prune_rate,
            update_frequency=update_frequency,
            total_steps=total_steps,
            decay_schedule=decay_schedule,
        )
        self._density_fn = _criterion(DISTRIBUTIONS, distribution)
        self._prune = _criterion(PRUNE, prune)
        self._grow = _criterion(GROW, grow)
        self._redistribute = _criterion(REDISTRIBUTE, redistribution)
        self._grows = self._grow is not GROW.get("none")
        self._per_layer = self._redistribute is REDISTRIBUTE.get("none")
        self._prune_options = checked_options(self._prune, prune_options, "prune_options", PRUNE_ARGUMENTS)
        self._grow_options = checked_options(self._grow, grow_options, "grow_options", GROW_ARGUMENTS)
        self.schedule = PruneSchedule(prune_rate, update_frequency, total_steps, min(0.005, prune_rate), decay_schedule)

        self.layers = truly_sparse_layers(model, include, exclude)  # itop.sparse.SparseLinear: values + indices, no mask
        values = {id(m.values) for m in model.modules() if isinstance(m, SparseLinear)}
        chosen = sparse_parameters(model, include, exclude, matched_elsewhere=lambda sel: selects_some(sel, model))
        self.params = {n: p for n, p in chosen.items() if id(p) not in values}
        if not self.params and not self.layers:
            raise ValueError(
                "the model has no sparse parameter (no trainable Linear/Conv weight, or include/exclude left none); pass include= to choose some."
            )
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [n for n, p in self.params.items() if id(p) not in held]
        missing += [n for n, layer in self.layers.items() if id(layer.values) not in held]
        if missing:
            raise ValueError(
                f"the optimizer does not hold the model's parameter {missing[0]!r}; build the optimizer from model.parameters()."
            )
        self.model, self.optimizer = model, optimizer
        self._names = list(self.params)  # masked layers; self._weights and the mask lists follow this order
        self._weights = [self.params[n] for n in self._names]
        self._order = model_order(model, self.params, self.layers)  # every sparse layer, masked or truly sparse

        seed = shared_seed(seed)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.seed = seed
        self._generator = torch.Generator().manual_seed(update_seed(seed))
        self.steps = 0
        self._optimizer_steps = 0
        self._counted_steps = 0
        self._skipping = False
        self._dense_grads: dict[str, Tensor] | None = None
        self._keep_grad_average = self._grow is GROW.get("momentum") or self._redistribute is REDISTRIBUTE.get("momentum")
        self._grad_average_beta = grad_average_beta
        self.grad_average = {n: torch.zeros_like(p) for n, p in self.params.items()} if self._keep_grad_average else {}
        self._mask_every_step = not zero_preserving(optimizer)
        no_grad_criteria = (
            (PRUNE.get("magnitude"), PRUNE.get("set"), PRUNE.get("threshold")),
            (GROW.get("random"), GROW.get("none")),
            (REDISTRIBUTE.get("none"), REDISTRIBUTE.get("magnitude"), REDISTRIBUTE.get("nonzeros")),
        )
        self._uses_grads = any(fn not in allowed for fn, allowed in zip((self._prune, self._grow, self._redistribute), no_grad_criteria))
        self._check_truly_sparse_criteria()
        self._linears = kernels.linear_owners(model, self.params)
        self._sparse_linear, self._patterns = bool(sparse_linear), {}

        self._built_on_trained = self._looks_trained()
        self.masks = self._initial_masks()
        check_masks_agree(self._topology())
        self._nnz = self._count_active()
        self.exploration = Exploration(self._topology(), sizes={n: self._numel(n) for n in self._order})
        self._recorders = {n: Recorder(layer) for n, layer in self.layers.items()}
        self._sources: dict[str, list] | None = None
        self.history: list[dict[str, Any]] = []
        self._record(removed=0, rate=0.0)
        self._hooks = []
        self.attach()
        self.apply_masks()
        if init_scale == "sparse":
            self._scale_for_fan_in()

    # ----------------------------------------------------------------------------- masks
    def _shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.params[name].shape) if name in self.params else self.layers[name].shape

    def _numel(self, name: str) -> int:
        return math.prod(self._shape(name))

    def _initial_masks(self) -> dict[str, Tensor]:
        """Random masks of exact per-layer counts, drawn from a generator seeded with `seed` alone,
        in layer order (what `itop.sparse.sparsify` draws too); truly sparse layers keep their own."""
        shapes = {n: self._shape(n) for n in self._order}
        counts = layer_counts(shapes, self._density_fn(shapes, self.config["density"]))
        generator = torch.Generator().manual_seed(self.seed)
        masks = {}
        for name, param in self.params.items():
            everywhere = torch.ones(param.shape, dtype=torch.bool, device=param.device)
            masks[name] = random_k_mask(everywhere, counts[name], generator)
        return masks

    @torch.no_grad()
    def _scale_for_fan_in(self) -> None:
        """Scale each masked layer's initial weights by 1/sqrt(its density): the variance nn.Linear
        and nn.Conv give for the dense fan-in becomes the one for the actual fan-in."""
        for name, param in self.params.items():
            param.mul_(1.0 / math.sqrt(self._nnz[name] / param.numel()))

    def _check_truly_sparse_criteria(self) -> None:
        """Truly sparse layers need grow criteria in index space and no dense running averages."""
        if not self.layers:
            return
        if self._keep_grad_average:
            raise ValueError(
                "momentum growth and momentum redistribution need a dense running average of the gradients, which truly "
                "sparse layers never hold; use grow='gradient' (RigL) or 'random' (SET), and redistribution 'none', "
                "'magnitude' or 'nonzeros'."
            )
        if not callable(getattr(self._grow, "positions", None)):
            raise ValueError(
                f"grow criterion {self.config['grow']!r} works on dense masks only; give it an index-space form "
                "(fn.positions, see itop/sparsity/index_growth.py) to use it with truly sparse layers."
            )

    def _count_active(self) -> dict[str, int]:
        return {n: int(torch.count_nonzero(self.masks[n])) if n in self.masks else self.layers[n].nnz for n in self._order}

    def _topology(self) -> dict[str, Tensor]:
        """What must agree across ranks: masks, and the active positions of truly sparse layers."""
        return {n: self.masks[n] if n in self.masks else self.layers[n].indices for n in self._order}

    @torch.no_grad()
    def _looks_trained(self) -> bool:
        """True when, before the constructor applies its random masks, the optimizer already holds
        state for a sparse weight or most sparse weights are exactly zero: the model and optimizer
        were loaded from a sparse run. `load_state_dict` then refuses, as the random masks have
        just zeroed some of the loaded weights."""
        if any(self.optimizer.state.get(p) for p in self._weights + [layer.values for layer in self.layers.values()]):
            return True
        zeros = sum(int(p.numel() - torch.count_nonzero(p)) for p in self._weights)
        return zeros > 0.5 * sum(p.numel() for p in self._weights)

    def _refresh_multipliers(self) -> None:
        """Masks in each weight's dtype and device, in one list, for the foreach multiply; and the
        positions of the layers that have inactive weights, the only gradients worth masking."""
        self._multipliers = [self.masks[n].to(self.params[n].dtype) for n in self._names]
        self._partial = [i for i, (n, p) in enumerate(zip(self._names, self._weights)) if self._nnz[n] < p.numel()]
        self._refresh_kernels()

    def _refresh_kernels(self) -> None:
        """Give the Linear layers where it pays the sparse kernels of the current masks."""
        self._patterns = {}
        for name, module in self._linears.items():
            if self._sparse_linear and self._hooks and kernels.pays_off(module, self.masks[name], self._nnz[name]):
                self._patterns[name] = kernels.use_sparse(module, self.masks[name])
            else:
                kernels.use_dense(module)
        self._ask_for_dense_grads()

    def _ask_for_dense_grads(self) -> None:
        """Sparse kernels give the dense weight gradient only on steps whose criteria read it."""
        dense = self._keep_grad_average or (self._uses_grads and (self.config["update_frequency"] is None or self.update_due))
        for pattern in self._patterns.values():
            pattern.dense_grad = dense
        record = self._uses_grads and bool(self._hooks) and self.update_due
        for name, layer in self.layers.items():
            layer._recorder = self._recorders[name] if record else None

    def _follow_parameters(self) -> None:
        """Move the engine's tensors to the parameters' devices and dtypes if the model was moved
        (`model.to(...)`) after the sparsifier was built; otherwise a cheap check."""
        if all(w.device == m.device and w.dtype == m.dtype for w, m in zip(self._weights, self._multipliers)):
            return
        self.masks = {n: m.to(self.params[n].device) for n, m in self.masks.items()}
        self.exploration.to({n: p.device for n, p in self.params.items()})
        self.grad_average = {n: t.to(self.params[n]) for n, t in self.grad_average.items()}
        self._refresh_multipliers()

    def _state_tensors(self, param: Tensor) -> list[Tensor]:
        state = self.optimizer.state.get(param, {})
        return [t for t in state.values() if isinstance(t, Tensor) and t.shape == param.shape]

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero every inactive weight and every optimizer state tensor of a sparse weight's shape."""
        self._follow_parameters()
        multiply_all(self._weights, self._multipliers)
        for name, param in self.params.items():
            inactive = None
            for tensor in self._state_tensors(param):
                inactive = ~self.masks[name] if inactive is None else inactive
                tensor.masked_fill_(inactive, 0)  # not a multiply: state left uninitialised may hold NaN

    # ----------------------------------------------------------------------------- hooks
    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        """Mask the gradients, unless a closure will compute them inside `optimizer.step()` or a
        GradScaler has told a fused optimizer to skip this step."""
        self._follow_parameters()
        self._skipping = skipped_by_grad_scaler(optimizer)
        if closure_of(optimizer, args, kwargs) is None and not self._skipping:
            self._take_sources()
        if closure_of(optimizer, args, kwargs) is not None:
            for pattern in self._patterns.values():  # inside the step the closure computes densely, kernels or not
                pattern.enabled = False
        elif not self._skipping:
            self._take_gradients(mask=True, scale=grad_scale(optimizer))

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        """Count the step; after a step whose closure made the gradients, zero what they moved."""
        if self._skipping:  # nothing moved, but a fused kernel skipping its first step leaves new state uninitialised
            self._skipping = False
            self.apply_masks()
            return
        self._optimizer_steps += 1
        if closure_of(optimizer, args, kwargs) is not None:
            self._take_gradients(mask=False)
            self._take_sources()  # the closure ran the backward inside the step
            self.apply_masks()
            for pattern in self._patterns.values():
                pattern.enabled = True

    def _take_sources(self) -> None:
        """On a step that ends with an update, keep what the truly sparse layers recorded for RigL."""
        if self.layers and self.update_due:
            self._sources = {n: all_ranks(r.sources) for n, r in self._recorders.items()}

    def _take_gradients(self, mask: bool, scale: Tensor | None = None) -> None:
        """Fold the gradients into the running average and, when an update follows this step,
        keep a copy of the dense ones (both divided by `scale`, the loss scale a fused optimizer
        removes inside its own kernel); then mask them in place if asked."""
        grads = [p.grad for p in self._weights]
        present = [i for i, g in enumerate(grads) if g is not None]
        if not present:
            return
        if self._keep_grad_average:
            averages = [self.grad_average[self._names[i]] for i in present]
            taken = [grads[i] for i in present]
            if scale is not None:
                taken = torch._foreach_div(taken, scale)
            torch._foreach_lerp_(averages, taken, 1 - self._grad_average_beta)
        if self.update_due:
            self._dense_grads = {self._names[i]: grads[i].clone() if scale is None else grads[i] / scale for i in present}
        if mask:
            masked = [i for i in self._partial if grads[i] is not None]
            multiply_all([grads[i] for i in masked], [self._multipliers[i] for i in masked])

    @property
    def update_due(self) -> bool:
        """True when the next real optimizer step ends with a topology update."""
        return self.schedule.is_update(self.steps + 1)

    def step(self) -> bool:
        """Call after `optimizer.step()`. Advances the schedule; returns True if the topology changed.

        Does nothing when no optimizer step happened since the last call (a GradScaler skip).
        """
        if self._optimizer_steps == self._counted_steps:
            self._dense_grads = self._sources = None
            return False
        self._counted_steps = self._optimizer_steps
        self.steps += 1
        if self._mask_every_step:
            self.apply_masks()
        if self.schedule.is_update(self.steps):
            self.update_topology()
            return True
        self._ask_for_dense_grads()
        return False

    # ----------------------------------------------------------------------------- topology
    @torch.no_grad()
    def update_topology(self) -> None:
        """One prune-and-grow now, at the prune rate of the current step.

        Gradient-based criteria use the dense gradient of the step that triggered the update; when
        called by hand, the parameters' `.grad` (dense if called before `optimizer.step()`; with
        sparse Linear kernels between scheduled updates, only with `sparse_linear=False`).
        """
        self._follow_parameters()
        if self._dense_grads is not None:  # scheduled update: a layer without gradient had none
            stash = self._dense_grads
            grads = {n: stash[n] if n in stash else torch.zeros_like(p) for n, p in self.params.items()}
        else:
            grads = {n: p.grad for n, p in self.params.items()}
            sampled = [n for n, pattern in self._patterns.items() if pattern.sampled_last]
            if self._uses_grads and sampled:
                raise RuntimeError(
                    f"the sparse Linear kernels computed the gradient of {sampled[0]} at its active weights only (only "
                    "scheduled updates get dense gradients); build the Sparsifier with sparse_linear=False to call "
                    "update_topology() by hand with a gradient-based criterion."
                )
            if self._grow is GROW.get("gradient") and self._gradients_look_masked(grads):
                raise RuntimeError(
                    "gradient growth needs the dense gradient, but the gradients are already masked by optimizer.step(); "
                    "call update_topology() after loss.backward() and before optimizer.step()."
                )
        self._dense_grads = None
        sources, self._sources = self._sources, None
        rate = self.schedule.rate(self.steps)
        nnz = [self._nnz[n] for n in self._order]
        limits, room = prune_limits(
            nnz,
            [self._numel(n) for n in self._order],
            rate,
            own_count=getattr(self._prune, "own_count", False),
            grows=self._grows,
            per_layer=self._per_layer,
        )
        kept, removed = {}, []
        for name, k in zip(self._order, limits):
            kept[name] = self._prune_layer(name, k, grads.get(name))
            removed.append(self._nnz[name] - int(torch.count_nonzero(kept[name])))
        total = sum(removed)
        if not self._grows:
            grown_counts = [0] * len(removed)
        elif self._per_layer:
            grown_counts = removed
        else:
            shares = [
                self._redistribute(self._weight_of(n), kept[n], removed=r, grad_average=self.grad_average.get(n))
                for n, r in zip(self._order, removed)
            ]
            grown_counts = allocate(total, shares, room)
        masks, positions = {}, {}
        for name, count in zip(self._order, grown_counts):
            if name in self.layers:
                positions[name] = (kept[name], self._grow_positions(name, count, (sources or {}).get(name, [])))
            else:
                masks[name] = kept[name] | self._grow_mask(name, count, grads.get(name))
        for name, (survivors, grown) in positions.items():
            replace_positions(self.layers[name], self.optimizer, survivors, grown)
        for recorder in self._recorders.values():
            recorder.sources.clear()
        self.masks = masks
        active = self._topology()
        check_masks_agree(active)
        self._nnz = {n: self._nnz[n] - r + g for n, r, g in zip(self._order, removed, grown_counts)}
        self.exploration.update(active)
        self._refresh_multipliers()
        self.apply_masks()
        self._record(removed=total, rate=rate)

    def _weight_of(self, name: str) -> Tensor:
        """The tensor criteria read as the layer's weights: the dense weight, or a truly sparse
        layer's values (its active weights, in position order)."""
        return self.params[name] if name in self.params else self.layers[name].values

    def _prune_layer(self, name: str, k: int, grad: Tensor | None) -> Tensor:
        """The bool mask of the layer's weights that survive pruning: over the dense weight for a
        masked layer, over the values (all active) for a truly sparse one."""
        if name in self.params:
            weight, active = self.params[name], self.masks[name]
        else:
            weight = self.layers[name].values
            active, grad = torch.ones(weight.shape, dtype=torch.bool, device=weight.device), weight.grad
        new = self._prune(weight, active, k, grad=grad, **self._prune_options)
        count = self._nnz[name] - int(torch.count_nonzero(new))
        if new.shape != weight.shape or bool((new & ~active).any()) or not 0 <= count <= k:
            raise RuntimeError(
                f"prune criterion {self.config['prune']!r} must switch off at most {k} active weights of {name}; it changed {count}."
            )
        return new

    def _grow_mask(self, name: str, count: int, grad: Tensor | None) -> Tensor:
        """`count` new positions of a masked layer, among those inactive before the update."""
        param, candidates = self.params[name], ~self.masks[name]
        grown = self._grow(
            candidates,
            count,
            weight=param,
            grad=grad,
            grad_average=self.grad_average.get(name),
            generator=self._generator,
            **self._grow_options,
        )
        if int(torch.count_nonzero(grown)) != count or bool((grown & ~candidates).any()):
            raise RuntimeError(f"grow criterion {self.config['grow']!r} must switch on exactly {count} inactive weights of {name}.")
        return grown

    def _grow_positions(self, name: str, count: int, sources: list) -> Tensor:
        """`count` new sorted positions of a truly sparse layer, outside its active ones."""
        layer = self.layers[name]
        excluded = layer.indices.cpu()
        grown = self._grow.positions(
            layer.shape, count, excluded=excluded, generator=self._generator, sources=sources, **self._grow_options
        )
        if grown.numel() != count or (count and (bool((grown.diff() <= 0).any()) or not index_growth.outside(grown, excluded))):
            raise RuntimeError(
                f"grow criterion {self.config['grow']!r} must give exactly {count} distinct inactive positions of {name}, sorted."
            )
        return grown

    def _gradients_look_masked(self, grads: Mapping[str, Tensor | None]) -> bool:
        """True when every layer with inactive weights has a gradient that is zero on all of them:
        what `optimizer.step()` leaves behind, useless for choosing where to grow."""
        seen_inactive = False
        for name, grad in grads.items():
            inactive = ~self.masks[name]
            if grad is None or not bool(inactive.any()):
                continue
            seen_inactive = True
            if bool(grad.masked_select(inactive).any()):
                return False
        return seen_inactive

    def _record(self, removed: int, rate: float) -> None:
        self.history.append(
            {
                "step": self.steps,
                "prune_rate": rate,
                "removed": removed,
                "density": self.density,
                "itop_rate": self.itop_rate,
                "nnz": dict(self._nnz),
            }
        )

    # ----------------------------------------------------------------------------- statistics
    @property
    def density(self) -> float:
        """Realised global density over all sparse parameters."""
        return sum(self._nnz.values()) / sum(self._numel(n) for n in self._order)

    @property
    def itop_rate(self) -> float:
        """Rs: the share of all sparse weights that have been active at some point."""
        return self.exploration.rate

    def layer_stats(self) -> dict[str, dict[str, Any]]:
        """Per sparse parameter: shape, numel, active count, density, explored share."""
        return {
            name: {
                "shape": self._shape(name),
                "numel": self._numel(name),
                "active": self._nnz[name],
                "density": self._nnz[name] / self._numel(name),
                "explored": self.exploration.layer_rate(name),
                "sparse_kernel": name in self._patterns,
                "truly_sparse": name in self.layers,
            }
            for name in self._order
        }

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically: masks, explored masks, counters, RNG."""
        return saved_state(self)

    def state_dict_config(self) -> dict[str, Any]:
        """The settings a saved state depends on (criteria given as callables are left out)."""
        return {k: v for k, v in self.config.items() if isinstance(v, (str, int, float, type(None)))}

    def load_state_dict(self, state: Mapping[str, Any], *, check_weights: bool = True, horizon: str | None = None) -> None:
        """Restore a `state_dict()`; the masks must name and shape the same parameters.

        To resume, build model, optimizer and Sparsifier first, then load the three states in that
        order: the constructor applies fresh random masks, which would zero weights loaded before it.

        Args:
            state: a `state_dict()` of a Sparsifier with the same settings over the same model.
            check_weights: refuse (ValueError) when the model's weights are not those the state was
                saved with: a weight outside the saved masks is nonzero, or the active weights'
                fingerprint (count, sum of magnitudes, sum of squares) differs. A model whose
                trained weights were not loaded would otherwise continue from random weights.
            horizon: for a state saved by a run of another `total_steps` (training extended or
                cut short): `None` refuses, `"stretch"` decays the prune rate over this
                Sparsifier's `total_steps`, `"keep"` over the saved run's (the rate then stays at
                its floor after the saved run's end). Updates continue every `update_frequency`
                steps either way.
        """
        load_saved_state(self, state, check_weights=check_weights, horizon=horizon)

    def attach(self) -> None:
        """Hook into the optimizer's steps and give the Linear layers where it pays their sparse
        kernels (done by the constructor)."""
        if not self._hooks:
            self._hooks = [
                self.optimizer.register_step_pre_hook(self._before_optimizer_step),
                self.optimizer.register_step_post_hook(self._after_optimizer_step),
            ]
        self._refresh_multipliers()

    def detach(self) -> None:
        """Unhook from the optimizer and give every layer its dense compute back: the masks stop
        being applied (e.g. to fine-tune densely)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._refresh_kernels()  # also stops the truly sparse layers' recording

    def __repr__(self) -> str:
        return (
            f"Sparsifier(layers={len(self.params)}, density={self.density:.4f}, itop_rate={self.itop_rate:.4f}, "
            f"steps={self.steps}, prune={self.config['prune']!r}, grow={self.config['grow']!r})"
        )
