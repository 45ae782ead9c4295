"""`best_sparse.pt`, the truly sparse form of a run's best model: what `itop train` writes beside
`best.pt` (`itop.sparse.export` of the model under its masks) and how it is read back onto a fresh
model of the run's architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

import itop
from itop.loading import best_sparse_as_save, restore
from itop.sparse.base import SparseWeights

from .checkpoint import load_checkpoint


def sparse_export_state(model: nn.Module, sparsifier, epoch: int) -> dict[str, Any]:
    """A checkpoint of `itop.sparse.export(model, sparsifier)` (the model's current weights under
    the sparsifier's current masks): its state dict on the CPU, and the sizes of its truly sparse
    layers (module name -> {"shape": dense weight shape, "nnz"}) to rebuild it (`load_sparse_model`)."""
    exported = itop.sparse.export(model, sparsifier, structured=False)
    layers = {name: {"shape": list(m.weight_shape), "nnz": m.nnz} for name, m in exported.named_modules() if isinstance(m, SparseWeights)}
    state = {k: v.detach().to("cpu", copy=True) for k, v in exported.state_dict().items()}
    return {"format": 1, "model": state, "epoch": epoch, "truly_sparse_layers": layers}


def load_sparse_model(path: Path, model: nn.Module) -> nn.Module:
    """`model` (a fresh one of the run's architecture) with the named layers of the best_sparse.pt
    at `path` replaced by truly sparse layers of the saved sizes, and its weights
    loaded (`itop.load(path, model)` reads the file too)."""
    state = load_checkpoint(path, "pass a best_sparse.pt written by itop train")
    return restore(best_sparse_as_save(state), model, layout="sparse", source=str(path))
