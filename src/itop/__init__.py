"""itop: dynamic sparse training and In-Time Over-Parameterization for PyTorch.

    sparsifier = itop.Sparsifier(model, optimizer, density=0.05, grow="gradient")
    ...  loss.backward(); optimizer.step(); sparsifier.step()

`import itop` also reaches the subpackages: `itop.data`, `itop.models`, `itop.report`,
`itop.train` and `itop.integrations` are imported on first use, so `import itop` stays fast;
`itop.integrations` imports no trainer (import `itop.integrations.huggingface` or
`itop.integrations.lightning` for those).
"""

from importlib import import_module as _import_module
from importlib import metadata as _metadata

from . import openmp as openmp  # first: sets OpenMP's spin defaults before torch loads OpenMP
from . import sparse, sparsity
from .loading import load
from .saving import save
from .sparsity import flops
from .sparsity.density import DISTRIBUTIONS
from .sparsity.grow import GROW
from .sparsity.init_masks import init_masks
from .sparsity.prune import PRUNE
from .sparsity.redistribute import REDISTRIBUTE
from .sparsity.sparsifier import Sparsifier


def _version() -> str:
    """The installed distribution's version; "0+unknown" for a source tree that is not installed."""
    try:
        return _metadata.version("itop")
    except _metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _version()

register_prune = PRUNE.register
register_grow = GROW.register
register_redistribution = REDISTRIBUTE.register
register_distribution = DISTRIBUTIONS.register

# Imported on first access (PEP 562): together they would add about a third to `import itop`.
_LAZY_SUBPACKAGES = ("data", "models", "report", "train", "integrations")


# FSDP2 checkpoints (`sharded_checkpoint`), loaded with torch.distributed.checkpoint when first used.
_LAZY_FUNCTIONS = ("sharded_state", "save_sharded_state", "load_sharded_state")


def __getattr__(name: str):
    if name in _LAZY_SUBPACKAGES:
        return _import_module(f".{name}", __name__)  # the import also sets it on this module
    if name in _LAZY_FUNCTIONS:
        return getattr(_import_module(".sharded_checkpoint", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBPACKAGES) | set(_LAZY_FUNCTIONS))


__all__ = [
    "Sparsifier",
    "init_masks",
    "save",
    "load",
    "sparse",
    "sparsity",
    "flops",
    "register_prune",
    "register_grow",
    "register_redistribution",
    "register_distribution",
    "__version__",
    *_LAZY_SUBPACKAGES,
    *_LAZY_FUNCTIONS,
]
