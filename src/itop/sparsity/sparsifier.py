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

Under torch.distributed (DDP), build it on the unwrapped model on every rank: the random seed is shared,
the hooks see the averaged gradients, and `distributed.check_masks_agree` verifies after every
update that all ranks hold the same masks. Under FSDP2 (`fully_shard`), build it after sharding:
each rank keeps its shard of every mask (`sharded_storage.ShardedStorage`) and the selections run
across shards (`shards`), giving the masks one process would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import structured
from .arguments import GROW_ARGUMENTS, PRUNE_ARGUMENTS, check_numbers, checked_options
from .density import DISTRIBUTIONS
from .distributed import check_masks_agree, shared_seed
from .exploration import Exploration
from .gradual import check_gradual, gradual_schedule
from .grow import GROW
from .layers import sparse_storages
from .optimizer import closure_of, grad_scale, skipped_by_grad_scaler, zero_preserving
from .params import Selector
from .prune import PRUNE
from .redistribute import REDISTRIBUTE, allocate, prune_limits
from .schedule import PruneSchedule
from .shards import count, is_sharded
from .state import load_saved_state, looks_trained, saved_state
from .storage import MaskedLayers, Rule, initialize, use_given_masks
from .truly_sparse import all_ranks, check_truly_sparse_criteria, update_seed


def _criterion(registry, value):
    """A registered name (looked up) or a user's callable (used as is)."""
    return value if callable(value) else registry.get(value)


class Sparsifier:
    """Dynamic sparse training for `model`, driven by `optimizer`'s steps.

    Build it after the model and optimizer (on the unwrapped model under DDP, after `fully_shard`
    under FSDP2, before `torch.compile`), then call `step()` after every `optimizer.step()`:

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
        density: share of the sparse weights that are active, over all sparse layers, in (0, 1]
            (default 0.05; N/M with an N:M `structure`).
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
        structure: None (unstructured, default); "fan-in": every neuron (output channel) of a layer
            holds the same number of active weights, the distribution's density rounded to a whole
            fan-in (SRigL, Lasby et al. 2024); "N:M" (e.g. "2:4"): every M consecutive inputs of a
            row hold exactly N active weights (density N/M). Updates prune as without structure
            and regrow each row or group to its count by the grow criterion ("random",
            "gradient" or "momentum"); redistribution must be "none". See `structured.py`.
        ablation: with structure="fan-in", SRigL's neuron ablation: a neuron with fewer salient
            weights than `ablation_threshold` x its fan-in loses them all, and the layer's other
            neurons share its budget.
        ablation_threshold: SRigL's gamma_sal, 0.3 as in the paper.
        masks: start from these masks (parameter name -> bool tensor, e.g. from `itop.init_masks`:
            SNIP, GraSP, SynFlow) instead of random ones; their per-layer counts are kept, and
            `density` defaults to theirs. With update_frequency=None they stay fixed.
        initial_density: gradual pruning (`gradual.py`): start at this density (1.0: dense) and
            lower each layer's count on Zhu & Gupta's cubic schedule at the updates between
            `prune_start` and `prune_end`, down to `density`; with grow="none" this is GMP, with
            regrowth GraNet (each update also replaces a share of the remaining weights).
        prune_start: the optimizer step where gradual pruning starts (default 0).
        prune_end: the optimizer step where gradual pruning ends (default three quarters of
            `total_steps`); the first update from then on holds the final density.

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
        density: float | None = None,
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
        structure: str | None = None,
        ablation: bool = False,
        ablation_threshold: float = structured.ABLATION_THRESHOLD,
        masks: Mapping[str, Tensor] | None = None,
        initial_density: float | None = None,
        prune_start: int = 0,
        prune_end: int | None = None,
    ):
        self.structure = structured.parse(structure, ablation, ablation_threshold)
        given_density = density
        density = self.structure.density(density) if self.structure else 0.05 if density is None else density
        check_numbers(density, prune_rate, update_frequency, total_steps, grad_average_beta, init_scale)
        density, prune_rate = float(density), float(prune_rate)
        update_frequency, total_steps = None if update_frequency is None else int(update_frequency), int(total_steps)
        self.config = dict(density=density, distribution=distribution, prune=prune, grow=grow, redistribution=redistribution)
        self.config.update(prune_rate=prune_rate, update_frequency=update_frequency, total_steps=total_steps, decay_schedule=decay_schedule)
        self.config.update(structure=self.structure.label if self.structure else None)
        if initial_density is not None:
            prune_end = 3 * total_steps // 4 if prune_end is None else prune_end
            check_gradual(initial_density, density, prune_start, prune_end, update_frequency, total_steps)
            self.config.update(initial_density=float(initial_density), prune_start=int(prune_start), prune_end=int(prune_end))
        elif prune_start or prune_end is not None:
            raise ValueError("prune_start and prune_end set gradual pruning's schedule; give initial_density= (1.0: from dense) too.")
        chosen = [
            name
            for name, given in (("masks=", masks), ("initial_density=", initial_density), ("structure=", structure))
            if given is not None
        ]
        if len(chosen) > 1:
            raise ValueError(f"{chosen[0]} and {chosen[1]} each choose the initial topology; give one of them.")
        self._density_fn = _criterion(DISTRIBUTIONS, distribution)
        self._prune = _criterion(PRUNE, prune)
        self._grow = _criterion(GROW, grow)
        self._redistribute = _criterion(REDISTRIBUTE, redistribution)
        self._grows = self._grow is not GROW.get("none")
        self._per_layer = self._redistribute is REDISTRIBUTE.get("none")
        self._prune_options = checked_options(self._prune, prune_options, "prune_options", PRUNE_ARGUMENTS)
        self._grow_options = checked_options(self._grow, grow_options, "grow_options", GROW_ARGUMENTS)
        self.schedule = PruneSchedule(prune_rate, update_frequency, total_steps, min(0.005, prune_rate), decay_schedule)

        self._storages = sparse_storages(model, optimizer, include, exclude)  # every sparse layer, in model order
        self._masked = MaskedLayers([s for s in self._storages.values() if not s.truly_sparse])
        self._truly_sparse = [s for s in self._storages.values() if s.truly_sparse]
        self.params = {s.name: s.param for s in self._masked.storages}
        self.layers = {s.name: s.layer for s in self._truly_sparse}  # itop.sparse.SparseLinear: values + indices, no mask
        self.model, self.optimizer = model, optimizer
        self._names, self._weights = self._masked.names, self._masked.weights  # the masked layers' order

        seed = shared_seed(seed)
        self.seed = seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else seed
        self._generator = torch.Generator().manual_seed(update_seed(seed))
        self.steps = self._optimizer_steps = self._counted_steps = 0
        self._skipping, self._dense_grads, self._sources = False, None, None  # _dense_grads, _sources: what an update reads
        self._keep_grad_average = self._grow is GROW.get("momentum") or self._redistribute is REDISTRIBUTE.get("momentum")
        self._grad_average_beta = grad_average_beta
        self.grad_average = {n: torch.zeros_like(p) for n, p in self.params.items()} if self._keep_grad_average else {}
        self._mask_every_step = not zero_preserving(optimizer)
        free = {PRUNE: ("magnitude", "set", "threshold"), GROW: ("random", "none"), REDISTRIBUTE: ("none", "magnitude", "nonzeros")}
        criteria = zip((self._prune, self._grow, self._redistribute), free.items())  # the criteria that never read gradients
        self._uses_grads = any(fn not in [registry.get(n) for n in names] for fn, (registry, names) in criteria)
        check_truly_sparse_criteria(self.layers, self._grow, self._keep_grad_average, self.config["grow"])
        self._sparse_linear = bool(sparse_linear)
        self._prune_rule, self._grow_rule = Rule(self._prune, self._prune_options, prune), Rule(self._grow, self._grow_options, grow)

        self._built_on_trained = looks_trained(optimizer, self._weights, self.layers.values())
        if self.structure is not None and any(is_sharded(p) for p in self._weights):
            raise ValueError("structure= is not supported on weights sharded by FSDP2 yet; train structured sparsity with DDP.")
        structured.check_usable(self.structure, self._storages, self._grow, self._per_layer, self.config)
        if masks is not None:  # e.g. itop.init_masks: the run starts from them and keeps their per-layer counts
            self._budgets = use_given_masks(self._storages, masks)
            self.config["density"] = self._given_density(given_density)
        else:
            start = self.config.get("initial_density", self.config["density"])
            self._budgets = initialize(self._storages, self._density_fn, start, self.seed, self.structure)
        self._gradual = gradual_schedule(self.config, self._storages, self._density_fn, self._prune, self._per_layer)
        check_masks_agree(self._topology(), self._generator)
        self.exploration = Exploration(self._topology(), sizes={n: s.numel for n, s in self._storages.items()})
        self.history, self._hooks = [], []  # history: one entry per update (and the start)
        self._record(removed=0, rate=0.0)
        self.attach()
        self.apply_masks()
        if init_scale == "sparse":  # each masked layer's weights by 1/sqrt(its density): the variance for the actual fan-in
            self._masked.scale_for_fan_in()

    def _given_density(self, density: float | None) -> float:
        """The density of masks given to the constructor; a `density` given with them must agree."""
        realized = self.density
        total = sum(s.numel for s in self._storages.values())
        if density is not None and abs(density - realized) * total >= 1:
            raise ValueError(f"the masks given hold density {realized:.6g}, not the density={density} given with them; leave density out.")
        return realized

    # ----------------------------------------------------------------------------- storages
    @property
    def masks(self) -> dict[str, Tensor]:
        """The masked layers' bool masks by name (truly sparse layers hold positions instead); under
        FSDP2, DTensors of each weight's mesh and placements (each rank holds its shard)."""
        return {s.name: s.shared_mask for s in self._masked.storages}

    @masks.setter
    def masks(self, masks: Mapping[str, Tensor]) -> None:
        for storage in self._masked.storages:
            storage.set_mask(masks[storage.name])

    @property
    def _nnz(self) -> dict[str, int]:
        return {n: s.nnz for n, s in self._storages.items()}

    def _topology(self) -> dict[str, Tensor]:
        """What must agree across ranks: masks, and the active positions of truly sparse layers."""
        return {n: s.topology() for n, s in self._storages.items()}

    def _refresh_multipliers(self) -> None:
        self._multipliers = self._masked.refresh()
        self._refresh_kernels()

    def _refresh_kernels(self) -> None:
        """Give the Linear layers where it pays the sparse kernels of the current masks."""
        self._patterns = self._masked.use_kernels(self._sparse_linear and bool(self._hooks))
        self._ask_for_dense_grads()

    def _ask_for_dense_grads(self) -> None:
        """Sparse kernels give the dense weight gradient only on steps whose criteria read it."""
        dense = self._keep_grad_average or (self._uses_grads and (self.config["update_frequency"] is None or self.update_due))
        for pattern in self._patterns.values():
            pattern.dense_grad = dense
        for storage in self._truly_sparse:
            storage.record(self._uses_grads and bool(self._hooks) and self.update_due)

    def _follow_parameters(self) -> None:
        """Move the engine's tensors to the parameters if the model was moved (`model.to(...)`) since."""
        if self._masked.follow():
            return
        self.masks = {n: m.to(self.params[n].device) for n, m in self.masks.items()}
        self.exploration.to({n: p.device for n, p in self.params.items()})
        self.grad_average = {n: t.to(self.params[n]) for n, t in self.grad_average.items()}
        self._refresh_multipliers()

    def apply_masks(self) -> None:
        """Zero every inactive weight and every optimizer state tensor of a sparse weight's shape."""
        self._follow_parameters()
        self._masked.apply(self.optimizer)

    # ----------------------------------------------------------------------------- hooks
    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        """Mask the gradients, unless a closure will compute them inside `optimizer.step()` or a
        GradScaler has told a fused optimizer to skip this step."""
        self._follow_parameters()
        self._skipping = skipped_by_grad_scaler(optimizer)
        if closure_of(optimizer, args, kwargs) is not None:
            self._masked.enable_kernels(False)  # inside the step the closure computes densely, kernels or not
        elif not self._skipping:
            self._take_sources()
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
            self._masked.enable_kernels(True)

    def _take_sources(self) -> None:
        """On a step that ends with an update, keep what the truly sparse layers recorded for RigL."""
        if self.layers and self.update_due:
            self._sources = {s.name: all_ranks(s.recorder.sources) for s in self._truly_sparse}

    def _take_gradients(self, mask: bool, scale: Tensor | None = None) -> None:
        """Average the gradients, keep the dense ones for an update, mask them (`MaskedLayers.take_gradients`)."""
        dense = self._masked.take_gradients(self.grad_average, self._grad_average_beta, self.update_due, mask, scale)
        self._dense_grads = self._dense_grads if dense is None else dense

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
        grads = self._masked.update_grads(self._dense_grads, self._uses_grads, self._grow is GROW.get("gradient"))
        sources, self._sources, self._dense_grads = self._sources or {}, None, None
        rate = self.schedule.rate(self.steps)
        storages = list(self._storages.values())
        total = 0 if self._gradual is None else self._gradual.prune(storages, self._prune_rule, grads, self.steps)
        if self._gradual is None or self._grows:  # GMP only prunes on its schedule; GraNet also regenerates
            total += self._prune_and_grow(storages, grads, sources, rate)
        active = self._topology()
        check_masks_agree(active, self._generator)
        self.exploration.update(active)
        self._refresh_multipliers()
        self.apply_masks()
        self._record(removed=total, rate=rate)

    def _prune_and_grow(self, storages, grads, sources, rate: float) -> int:
        """The topology update proper: prune each layer at `rate`, grow the weights back; returns how many were replaced."""
        avg = self.grad_average
        nnz, numel, own_count = [s.nnz for s in storages], [s.numel for s in storages], getattr(self._prune, "own_count", False)
        limits, room = prune_limits(nnz, numel, rate, own_count=own_count, grows=self._grows, per_layer=self._per_layer)
        kept = [s.prune(self._prune_rule, k, grads.get(s.name)) for s, k in zip(storages, limits)]
        removed = [s.nnz - count(survivors) for s, survivors in zip(storages, kept)]
        total = sum(removed)
        if not self._grows or self._per_layer:
            counts = removed if self._grows else [0] * len(removed)
        else:
            shares = [self._redistribute(s.weight, m, removed=r, grad_average=avg.get(s.name)) for s, m, r in zip(storages, kept, removed)]
            counts = allocate(total, shares, room)
        evidence = {**sources, **grads}  # what each storage grows from: its dense gradient or recorded sources
        if self.structure is not None:
            total = sum(
                self._regrow_structured(s, survivors, evidence.get(s.name), avg.get(s.name)) for s, survivors in zip(storages, kept)
            )
        else:
            grown = [
                s.grow(self._grow_rule, c, evidence.get(s.name, []), self._generator, avg.get(s.name)) for s, c in zip(storages, counts)
            ]
            for s, survivors, new, r, c in zip(storages, kept, grown, removed, counts):
                s.replace(survivors, new, s.nnz - r + c)
        return total

    def _regrow_structured(self, storage, kept: Tensor, grad: Tensor | None, grad_average: Tensor | None) -> int:
        """Regrow each row or N:M group of a masked layer to its count (after SRigL's ablation, if
        on); returns how many active weights the layer lost."""
        structure, active, budget = self.structure, storage.mask, self._budgets[storage.name]
        options = dict(weight=storage.param, grad=grad, grad_average=grad_average, generator=self._generator)
        scores = self._grow.scores(**options, **self._grow_options)
        kept, quota = structure.quotas(kept, active, scores, storage.param, budget)
        grown = structure.grow(kept, active, quota, scores)
        storage.restart(grown & active, self.optimizer)
        survivors = int(torch.count_nonzero(kept))
        lost = storage.nnz - survivors
        storage.replace(kept, grown, survivors + int(torch.count_nonzero(grown)))
        structure.check(storage.name, storage.mask, budget)
        return lost

    def _record(self, removed: int, rate: float) -> None:
        entry = {"step": self.steps, "prune_rate": rate, "removed": removed, "density": self.density, "itop_rate": self.itop_rate}
        self.history.append({**entry, "nnz": self._nnz})

    # ----------------------------------------------------------------------------- statistics
    @property
    def density(self) -> float:
        """Realised global density over all sparse parameters."""
        return sum(s.nnz for s in self._storages.values()) / sum(s.numel for s in self._storages.values())

    @property
    def at_final_density(self) -> bool:
        """False while gradual pruning has not reached the final density yet (a model saved then
        is denser than the run's result); True otherwise."""
        return self._gradual is None or self.history[-1]["step"] >= self._gradual.end

    @property
    def itop_rate(self) -> float:
        """Rs: the share of all sparse weights that have been active at some point."""
        return self.exploration.rate

    def layer_stats(self) -> dict[str, dict[str, Any]]:
        """Per sparse parameter: shape, numel, active count, density, explored share."""
        explored = {n: {"explored": self.exploration.layer_rate(n), "sparse_kernel": n in self._patterns} for n in self._storages}
        stats = {n: {**s.stats(), **explored[n], "truly_sparse": s.truly_sparse} for n, s in self._storages.items()}
        if self.structure is not None:
            for storage in self._masked.storages:
                stats[storage.name].update(self.structure.stats(storage.mask))
        return stats

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
            opt = self.optimizer
            self._hooks = [opt.register_step_pre_hook(self._before_optimizer_step), opt.register_step_post_hook(self._after_optimizer_step)]
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
            f"steps={self.steps}, prune={self.config['prune']!r}, grow={self.config['grow']!r}"
            + (f", structure={self.structure.label!r})" if self.structure else ")")
        )
