"""What a run tells its user besides its figures: a schedule that never updates the topology,
which model the reported accuracy is of, and how much smaller the truly sparse export is."""

from __future__ import annotations

from typing import Any

from .checkpoint import BEST_SPARSE
from .config import TrainConfig

# Fewer validation examples than this cannot rank epochs (one example moves the accuracy by 1% or
# more), so a run with a smaller validation split reports its final epoch, as runs without one do.
MIN_VALIDATION = 100


def no_update_warning(cfg: TrainConfig, steps_per_epoch: int, total_steps: int, update_frequency: int | None) -> str | None:
    """Why a dynamic sparse run will train one fixed topology, or None when its schedule updates it.

    An update counts only if training continues after it, so one at the very last step (the only
    update of a one-epoch --update-every epoch run) does not. Such a run is labelled SET-ITOP or
    RigL-ITOP but is static sparse training (Rs stays at, or next to, the density).
    """
    if update_frequency is None or (total_steps - 1) // update_frequency > 0:
        return None
    if cfg.update_every == "epoch":
        interval = f"one after each epoch of {steps_per_epoch} steps"
        fix = f"train more than {cfg.total_epochs} epoch(s), or use --update_frequency N with N below {total_steps}"
    else:
        interval = f"one every {update_frequency} steps"
        fix = f"--update_frequency N with N below {total_steps}" + (" or --update-every epoch" if cfg.total_epochs > 1 else "")
    return (
        f"this run's {total_steps} optimizer steps hold no topology update before its last step ({interval}), so it trains "
        f"one fixed topology: static sparse training, not {cfg.method}; use {fix}."
    )


def reported_model(summary: dict[str, Any]) -> str:
    """Which model a summary's test accuracy is of, for the headline: "best epoch 4 of 5 by
    validation accuracy" or "final epoch 20" (no validation split, or one too small to pick)."""
    epochs = summary["epochs"] * summary["multiplier"]
    if summary.get("reported", "best") == "best":
        return f"best epoch {summary['best_epoch']} of {epochs} by validation accuracy"
    return f"final epoch {summary['best_epoch']}"


def sparse_size_line(summary: dict[str, Any]) -> str | None:
    """One line comparing best_sparse.pt with best.pt on disk, or None for a run without one."""
    sparse, dense = summary.get("best_sparse_bytes"), summary.get("best_dense_bytes")
    if not sparse or not dense:
        return None
    ratio = (
        f"{dense / sparse:.1f}x smaller"
        if dense >= sparse
        else f"{sparse / dense:.1f}x larger: at this density values and positions outweigh the dense weights"
    )
    return f"{BEST_SPARSE}: {sparse / 1e6:.2f} MB, against {dense / 1e6:.2f} MB dense (best.pt model) — {ratio}"
