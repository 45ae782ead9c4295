"""OpenMP threads that wait without spinning for long, set before PyTorch and numba load OpenMP.

After each parallel region, GNU OpenMP (PyTorch's and numba's thread pools on Linux) keeps its idle
threads spinning for GOMP_SPINCOUNT iterations, 300,000 by default: about 15-20 ms of a core on
Intel CPUs since Skylake, whose `pause` instruction takes about 140 cycles, and less on AMD. On a
core that another busy process shares, the spinning threads take the time slices the working
threads need, and every parallel region waits for them: on a 2-core Intel Xeon a training step
became 5-10x slower while one other process was busy (`benchmarks/truly_sparse.py --only
contention`). A spin count of a few thousand keeps hand-overs between parallel regions fast and
lets idle threads sleep within a fraction of a millisecond. Intel's OpenMP reads KMP_BLOCKTIME (in
ms, 200 by default) for the same purpose.

Importing this module (`import itop` does it first) sets both before it imports torch, unless the environment already sets them. OpenMP
reads them once, when its library loads: if torch was imported before itop, PyTorch's pool keeps
its default (numba's, loaded later, still takes ours), and `itop doctor` says so.
"""

from __future__ import annotations

import os
import sys

SPIN_DEFAULTS = {"GOMP_SPINCOUNT": "3000", "KMP_BLOCKTIME": "1"}
torch_loaded_first = "torch" in sys.modules  # True: PyTorch's OpenMP already read its settings


def configure() -> None:
    """Set the spin defaults in this process's environment where the user has not set them."""
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "ACTIVE":
        return  # the user asked for spinning threads
    for name, value in SPIN_DEFAULTS.items():
        os.environ.setdefault(name, value)


configure()
