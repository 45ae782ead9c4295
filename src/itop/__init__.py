"""itop: dynamic sparse training and In-Time Over-Parameterization for PyTorch.

    sparsifier = itop.Sparsifier(model, optimizer, density=0.05, grow="gradient")
    ...  loss.backward(); optimizer.step(); sparsifier.step()
"""

from . import sparse
from .sparsity import flops
from .sparsity.density import DISTRIBUTIONS
from .sparsity.grow import GROW
from .sparsity.prune import PRUNE
from .sparsity.redistribute import REDISTRIBUTE
from .sparsity.sparsifier import Sparsifier

__version__ = "0.1.0"

register_prune = PRUNE.register
register_grow = GROW.register
register_redistribution = REDISTRIBUTE.register
register_distribution = DISTRIBUTIONS.register

__all__ = [
    "Sparsifier", "sparse", "flops", "register_prune", "register_grow",
    "register_redistribution", "register_distribution", "__version__",
]
