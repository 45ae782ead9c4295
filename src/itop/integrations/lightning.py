"""Dynamic sparse training in PyTorch Lightning (`lightning.pytorch.Trainer`).

    from itop.integrations.lightning import SparsityCallback
    trainer = L.Trainer(max_epochs=10, callbacks=[SparsityCallback(density=0.1, grow="gradient"),
                                                  ModelCheckpoint(save_last=True)])  # writes last.ckpt
    trainer.fit(module, data)                       # or trainer.fit(module, data, ckpt_path="last")

How it fits the Trainer:
- `on_fit_start` builds the `Sparsifier` (then `callback.sparsifier`) on the LightningModule and the
  torch optimizer its `configure_optimizers` returned, over `trainer.estimated_stepping_batches`
  optimizer steps (accumulation, devices, max_steps and max_epochs counted by Lightning itself).
- The Sparsifier's hooks on that optimizer see each real step: one per accumulated batch, none when a
  step is skipped (a GradScaler that found inf, or a module's own `optimizer_step` that did not step).
  Lightning steps through a closure that runs the backward inside `optimizer.step()`, so weights and
  optimizer state are masked just after each step; RigL reads that step's accumulated gradients.
- The Sparsifier's state is the callback's `state_dict()`, saved in every Lightning checkpoint;
  `Trainer.fit(ckpt_path=...)` restores it, with the module's weights kept as loaded (and checked to
  be the ones the state was saved with). A run resumed with a raised max_epochs decays the prune rate
  over the new length (`horizon="stretch"`, the default) or over the saved run's (`"keep"`).
- `on_train_batch_end` logs sparsity/density, sparsity/itop_rate (Rs) and sparsity/prune_rate through
  the module's `log_dict`, so they reach every logger (TensorBoard, CSV, ...) on the step axis.
- Under DDP every rank builds the same masks (rank 0's random state is shared) and the Sparsifier
  checks after each update that they agree.

Sharded training (FSDP2) goes through `ModelParallelStrategy`, with `fully_shard` applied in the
module's `configure_model` on the data-parallel mesh:

    class Module(L.LightningModule):
        def configure_model(self):
            mesh = self.device_mesh["data_parallel"]
            for block in self.blocks:
                fully_shard(block, mesh=mesh)
            fully_shard(self, mesh=mesh)

    strategy = ModelParallelStrategy(data_parallel_size=8, tensor_parallel_size=1)
    trainer = L.Trainer(devices=8, strategy=strategy, callbacks=[SparsityCallback(density=0.1)])

- Under this strategy the Sparsifier is built after `configure_model` has sharded the weights and the
  optimizer exists; each rank holds its shard of every mask, and the topology decisions are those
  one process would take on the whole weights. Only FSDP2's layout is followed (a 1-D mesh, weights
  sharded on their first dimension): other layouts (a 2-D mesh, or weights split on another
  dimension, as row-wise tensor parallelism does) are refused in one line when fitting begins.
- Checkpoints: Lightning writes a distributed checkpoint (a directory, `save_distributed_checkpoint=True`,
  the default) by sharding the weights and optimizer state only; everything else, the callbacks'
  states included, is saved by rank 0 alone, where a sharded mask would keep rank 0's rows only and
  give them to every rank on resume. So the callback writes
  the Sparsifier's sharded state itself, with `torch.distributed.checkpoint`, into an `itop_sparsifier`
  folder inside the checkpoint's directory (removed, copied or moved with it), and reads it back on
  resume, resharded onto any number of ranks. A single-file checkpoint (`save_distributed_checkpoint=False`)
  gathers the full masks, explored sets and averages into the file, as Lightning gathers the weights.
- Lightning's `FSDPStrategy` (FSDP1) and `DeepSpeedStrategy` flatten the weights the masks cover:
  the callback refuses them at set-up.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist

from ..sparsity.shards import is_sharded
from .engine import build_sparsifier, checked_horizon, checked_options, layer_densities, logged_figures, note_new_length, torch_optimizer

__all__ = ["SparsityCallback"]

logger = logging.getLogger("itop")

SHARDED_FOLDER = "itop_sparsifier"  # inside a distributed checkpoint's directory: the Sparsifier's shards


class SparsityCallback(pl.Callback):
    """Keeps a LightningModule sparse with a `Sparsifier(**options)`.

        sparsity = SparsityCallback(density=0.05, grow="gradient", update_frequency=50)  # RigL
        trainer = pl.Trainer(max_epochs=10, callbacks=[sparsity])
        trainer.fit(module, train_loader, val_loader)
        print(sparsity.sparsifier.density, sparsity.sparsifier.itop_rate)

    Args:
        log_layers: True adds each sparse layer's density and explored share to the logs and, for
            a TensorBoardLogger, a histogram of the layer densities at each topology update.
        horizon: applies when a run is resumed with another length (max_epochs raised): "stretch"
            decays the prune rate over the new length, "keep" over the saved run's.
        **options: any `itop.Sparsifier` arguments but the model and optimizer (the module and
            the optimizer it configures); total_steps defaults to
            `trainer.estimated_stepping_batches`.

    Attributes:
        sparsifier: the `itop.Sparsifier`, built when fitting begins (None before).
    """

    def __init__(self, *, log_layers: bool = False, horizon: str = "stretch", **options: Any):
        self.options = checked_options(options)
        self.log_layers, self.horizon = log_layers, checked_horizon(horizon)
        self.sparsifier = None
        self._saved: dict[str, Any] | None = None
        self._figures: dict[str, float] = {}
        self._layout: str | None = None  # under ModelParallelStrategy: "sharded" (a directory) or "full" (one file)
        self._restore_after_setup = False  # the strategy restores the checkpoint after on_fit_start
        self._restoring_from: Path | None = None
        self._strategy = None  # the strategy whose save_checkpoint also writes the sharded state

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._layout = checkpoint_layout(trainer.strategy)
        self._saved, self._restore_after_setup = None, False  # nothing left from an earlier restore (validate, test)
        if self._layout == "sharded" and self._strategy is not trainer.strategy:
            self._save_shards_with(trainer.strategy)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"SparsityCallback drives one optimizer, but configure_optimizers returned {len(trainer.optimizers)}; "
                "return a single optimizer over all of the module's parameters."
            )
        total = self.options.get("total_steps", trainer.estimated_stepping_batches)
        if not math.isfinite(total):
            raise ValueError(
                "SparsityCallback needs the length of training for its schedule; set max_steps or max_epochs, or pass total_steps=."
            )
        if self._saved is not None and "sharded" in self._saved:
            raise ValueError(
                "this checkpoint holds the sparsifier's state in shards (a ModelParallelStrategy run's distributed checkpoint); "
                "resume it under ModelParallelStrategy."
            )
        if self.sparsifier is not None:  # a second fit() with the same callback: the old hooks go
            self.sparsifier.detach()
        saved = None if self._saved is None else self._saved.get("sparsifier")
        self.sparsifier = build_sparsifier(pl_module, torch_optimizer(trainer.optimizers[0]), self.options, int(total), saved, self.horizon)
        self._saved = None
        self._figures = logged_figures(self.sparsifier, self.log_layers)
        # ModelParallelStrategy loads a checkpoint's weights, optimizer state and callback states only
        # after on_fit_start: then load_state_dict restores this Sparsifier over the loaded weights.
        self._restore_after_setup = bool(getattr(trainer.strategy, "restore_checkpoint_after_setup", False))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_after_setup = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.sparsifier.step():  # False on a batch that only accumulated, or whose step was skipped
            self._figures = logged_figures(self.sparsifier, self.log_layers)  # they change at updates only
            if self.log_layers:
                self._histogram(trainer)
        pl_module.log_dict(self._figures, on_step=True, on_epoch=False)

    def _histogram(self, trainer: pl.Trainer) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger_ in trainer.loggers:
            if isinstance(logger_, TensorBoardLogger):
                logger_.experiment.add_histogram("sparsity/layer_densities", layer_densities(self.sparsifier), trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        """The Sparsifier's state for Lightning's checkpoint. Under ModelParallelStrategy: a marker of
        the shards this callback writes into a distributed checkpoint's directory, or, for a single-file one,
        the state with every sharded tensor gathered whole (called on every rank; rank 0's is saved,
        the other ranks get `{}`, as Lightning's own full state)."""
        if self.sparsifier is None:
            return {}
        if self._layout == "sharded":
            return {"sharded": SHARDED_FOLDER, "steps": self.sparsifier.steps}
        if self._layout == "full":
            state = _gathered(self.sparsifier.state_dict())
            return {"sparsifier": state} if not dist.is_initialized() or dist.get_rank() == 0 else {}
        return {"sparsifier": self.sparsifier.state_dict()}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        path = trainer.ckpt_path
        if self._restore_after_setup and path is not None:  # rank 0's path, as the strategy loads from
            path = trainer.strategy.broadcast(str(path))
        self._restoring_from = None if path is None else Path(path)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called by Lightning while restoring a checkpoint. Most strategies restore before the
        optimizer exists: the state waits for `on_fit_start`, which builds the Sparsifier over the
        restored weights. ModelParallelStrategy restores after `on_fit_start`, having loaded the
        weights and optimizer state into the model and optimizer the Sparsifier was built on: the
        state is restored into it at once."""
        if not (self._restore_after_setup and self.sparsifier is not None):
            self._saved = dict(state_dict) if state_dict else None
            return
        if "sharded" in state_dict:
            self._load_shards(state_dict["sharded"], int(state_dict["steps"]))
        elif state_dict.get("sparsifier") is not None:
            saved = state_dict["sparsifier"]
            _note_length(saved, self.sparsifier.config["total_steps"], self.horizon)
            self.sparsifier.load_state_dict(saved, horizon=self.horizon)
        self._figures = logged_figures(self.sparsifier, self.log_layers)

    # --------------------------------------------------------- distributed checkpoints (FSDP2)
    def _save_shards_with(self, strategy) -> None:
        """Make `strategy.save_checkpoint` (called on every rank) also write the Sparsifier's shards
        into the checkpoint's directory, when the checkpoint holds this callback's marker."""
        original = strategy.save_checkpoint

        def save_checkpoint(checkpoint: dict[str, Any], filepath, storage_options: Any = None) -> None:
            mine = checkpoint.get("callbacks", {}).get(self.state_key, {})
            if "sharded" in mine and self.sparsifier is not None:  # first: Lightning's meta.pt, written last, ends the save
                self._save_shards(Path(strategy.broadcast(str(filepath))), mine["sharded"])
            original(checkpoint, filepath, storage_options)

        strategy.save_checkpoint = save_checkpoint
        self._strategy = strategy

    def _save_shards(self, directory: Path, name: str) -> None:
        from ..sharded_checkpoint import save_atomically, sparsifier_entries

        if directory.is_file() and (not dist.is_initialized() or dist.get_rank() == 0):
            directory.unlink()  # a single-file checkpoint of the same name, which Lightning replaces by a directory
        save_atomically(sparsifier_entries(self.sparsifier), directory / name)

    def _load_shards(self, name: str, steps: int) -> None:
        from ..sharded_checkpoint import load_safely, restore_sparsifier, sparsifier_entries

        if self._restoring_from is None:
            raise ValueError("SparsityCallback got a sharded state without the checkpoint's path; resume with trainer.fit(ckpt_path=...).")
        entries = sparsifier_entries(self.sparsifier)  # the template DCP fills in, resharded onto these ranks
        folder = self._restoring_from / name
        load_safely(entries, folder)
        if int(entries["steps"]) != steps:
            raise ValueError(
                f"the sparsifier's state in {folder} was saved at step {int(entries['steps'])}, the checkpoint's at step {steps}: "
                "an interrupted save; resume from an earlier checkpoint."
            )
        _note_length(entries, self.sparsifier.config["total_steps"], self.horizon)
        restore_sparsifier(self.sparsifier, entries, self.horizon)


def checkpoint_layout(strategy: Any) -> str | None:
    """How a checkpoint of `strategy` holds the Sparsifier's state: "sharded" (ModelParallelStrategy's
    distributed checkpoint), "full" (its single file) or None (as a plain state dict); refuses with
    a one-line ValueError the strategies whose weights the engine cannot follow."""
    refuse_sharded(strategy)
    from lightning.pytorch import strategies

    model_parallel = getattr(strategies, "ModelParallelStrategy", None)
    if model_parallel is None or not isinstance(strategy, model_parallel):
        return None
    return "sharded" if getattr(strategy, "_save_distributed_checkpoint", True) else "full"


def refuse_sharded(strategy: Any) -> None:
    """A one-line ValueError for the strategies that flatten the weights the masks cover (FSDP1, DeepSpeed)."""
    from lightning.pytorch import strategies

    refused = {name: getattr(strategies, name) for name in ("DeepSpeedStrategy", "FSDPStrategy") if hasattr(strategies, name)}
    for name, kind in refused.items():
        if isinstance(strategy, kind):
            raise ValueError(
                f"SparsityCallback cannot train under {name}: it flattens the weights the masks cover; shard with "
                "ModelParallelStrategy instead (FSDP2: fully_shard in the module's configure_model), or use strategy='ddp'."
            )


def _gathered(value: Any) -> Any:
    """`value` (a state dict) with every DTensor gathered whole onto the CPU (a collective: every
    rank walks the same structure in the same order)."""
    if is_sharded(value):
        return value.full_tensor().cpu()
    if isinstance(value, dict):
        return {key: _gathered(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_gathered(item) for item in value]
    return value


def _note_length(saved: dict[str, Any], total: int, horizon: str) -> None:
    """One logged line when a run of another length is resumed (as the other strategies' resume)."""
    before = saved.get("config", {}).get("total_steps")
    note_new_length(None if before is None else int(before), int(total), horizon)
