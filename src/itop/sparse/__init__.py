"""Truly sparse layers: weights stored and computed as their active entries only.

    model = itop.sparse.sparsify(model, density=0.01)     # Linear layers -> SparseLinear
    optimizer = torch.optim.SGD(model.parameters(), ...)
    sparsifier = itop.Sparsifier(model, optimizer, ...)    # SET / RigL updates in index space

This package is the storage layer: `SparseLinear` and `SparseConv2d`, the condensed
constant-fan-in layers `CondensedLinear` and `CondensedConv2d`, their index structures, products
and sampler.
It imports nothing of the engine (`itop.sparsity`), which builds on it. The conversions
`sparsify`, `export` and `densify` read the engine's selection rules and masks, so they live above
both (`itop/convert.py`) and are imported from there on first use.
"""

from typing import TYPE_CHECKING

from .condensed import CondensedLinear
from .condensed_chain import CondensedSequential
from .condensed_conv import CondensedConv2d
from .conv import SparseConv2d
from .layer import SparseLinear

if TYPE_CHECKING:  # for type checkers and the API documentation; at run time, __getattr__ below
    from ..convert import densify, export, sparsify

__all__ = ["SparseLinear", "SparseConv2d", "CondensedLinear", "CondensedConv2d", "CondensedSequential", "sparsify", "export", "densify"]

_CONVERSIONS = ("sparsify", "export", "densify")


def __getattr__(name: str):
    if name in _CONVERSIONS:
        from .. import convert  # above this package: imports the engine

        value = getattr(convert, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_CONVERSIONS))
