"""Truly sparse layers: weights stored and computed as their active entries only.

    model = itop.sparse.sparsify(model, density=0.01)     # Linear layers -> SparseLinear
    optimizer = torch.optim.SGD(model.parameters(), ...)
    sparsifier = itop.Sparsifier(model, optimizer, ...)    # SET / RigL updates in index space
"""

from .convert import densify, export, sparsify
from .layer import SparseLinear

__all__ = ["SparseLinear", "sparsify", "export", "densify"]
