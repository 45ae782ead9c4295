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
- Under DDP every rank builds the same masks (all share the random seed) and the Sparsifier checks after each
  update that they agree. DeepSpeed, FSDP and model-parallel strategies shard or flatten the weights
  the masks cover: the callback refuses them at set-up.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl

from .engine import build_sparsifier, checked_horizon, checked_options, layer_densities, logged_figures, torch_optimizer

__all__ = ["SparsityCallback"]


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

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        refuse_sharded(trainer.strategy)

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
        if self.sparsifier is not None:  # a second fit() with the same callback: the old hooks go
            self.sparsifier.detach()
        self.sparsifier = build_sparsifier(
            pl_module, torch_optimizer(trainer.optimizers[0]), self.options, int(total), self._saved, self.horizon
        )
        self._saved = None
        self._figures = logged_figures(self.sparsifier, self.log_layers)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.sparsifier.step():  # False on a batch that only accumulated, or whose step was skipped
            self._figures = logged_figures(self.sparsifier, self.log_layers)  # they change at updates only
            if self.log_layers:
                self._histogram(trainer)
        pl_module.log_dict(self._figures, on_step=True, on_epoch=False)

    def _histogram(self, trainer: pl.Trainer) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_histogram("sparsity/layer_densities", layer_densities(self.sparsifier), trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.sparsifier is None else {"sparsifier": self.sparsifier.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called by Lightning while restoring a checkpoint, before the optimizer exists: the state
        waits for `on_fit_start`, which builds the Sparsifier over the restored weights."""
        self._saved = state_dict.get("sparsifier")


def refuse_sharded(strategy: Any) -> None:
    """A one-line ValueError for strategies that shard or flatten the weights the masks cover."""
    from lightning.pytorch import strategies

    refused = {
        name: getattr(strategies, name)
        for name in ("DeepSpeedStrategy", "FSDPStrategy", "ModelParallelStrategy")
        if hasattr(strategies, name)
    }
    for name, kind in refused.items():
        if isinstance(strategy, kind):
            raise ValueError(
                f"SparsityCallback cannot train under {name}: it shards or flattens the weights the masks cover; "
                "use strategy='ddp' (or a single device)."
            )
