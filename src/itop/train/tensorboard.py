"""`itop train --tensorboard`: the run's curves in `<run>/tensorboard`, on the optimizer-step axis.

It receives the records metrics.jsonl gets (epochs, topology updates) and the running training
loss at each log interval, and writes them through PyTorch's `SummaryWriter`: loss, accuracy,
learning rate, density, Rs, prune rate, per-layer density and explored share, and a histogram of
the layer densities at each update. A resumed run opens the writer with `purge_step` at the
checkpoint's step + 1, so TensorBoard drops what the stopped run wrote after the checkpoint: no
duplicated points.
TensorBoard is optional (`pip install itop[tensorboard]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import RunError


class TensorBoardLog:
    def __init__(self, run_dir: Path, purge_after: int | None = None):
        """`purge_after`: the step of the checkpoint a resumed run starts from; what was written
        after it (by the stopped run) is dropped, as metrics.jsonl drops it."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RunError(
                "--tensorboard needs the tensorboard package: pip install 'itop[tensorboard]' (or pip install tensorboard)."
            ) from None
        purge = None if purge_after is None else purge_after + 1
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=purge)
        self._update_step = None  # an epoch ending with an update: density and Rs are written once

    def running_loss(self, step: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("train/loss_running", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

    def write(self, record: dict[str, Any]) -> None:
        step = record["step"]
        if record["kind"] == "epoch":
            scalars = {
                "train/loss": record["train_loss"],
                "train/accuracy": record["train_acc"],
                "val/accuracy": record["val_acc"],
                "train/epoch": record["epoch"],
            }
            if step != self._update_step:
                scalars.update({"sparsity/density": record["density"], "sparsity/itop_rate": record["itop_rate"]})
        else:  # a topology update
            self._update_step = step
            scalars = {
                "sparsity/density": record["density"],
                "sparsity/itop_rate": record["itop_rate"],
                "sparsity/prune_rate": record["prune_rate"],
                "sparsity/removed": record["removed"],
            }
            for name, value in record["layer_density"].items():
                scalars[f"layer_density/{name}"] = value
            for name, value in record["layer_explored"].items():
                scalars[f"layer_explored/{name}"] = value
            if record["layer_density"]:
                import torch

                self.writer.add_histogram("sparsity/layer_densities", torch.tensor(list(record["layer_density"].values())), step)
        for tag, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Logs:
    """Several logs written as one (metrics.jsonl, and TensorBoard when asked)."""

    def __init__(self, *logs):
        self.logs = logs

    def write(self, record: dict[str, Any]) -> None:
        for log in self.logs:
            log.write(record)

    def running_loss(self, step: int, loss: float, lr: float) -> None:
        for log in self.logs:
            log.running_loss(step, loss, lr)

    def close(self) -> None:
        for log in self.logs:
            log.close()
