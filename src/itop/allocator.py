"""Keep freed memory in the process (glibc), so that large tensors reuse pages already mapped.

glibc's malloc serves every allocation above its mmap threshold (32 MB at most, by default) with a
fresh `mmap` and unmaps it on `free`, and it gives the top of its heap back to the system once more
than its trim threshold is free there. A CPU training step allocates and frees activations of
megabytes to tens of megabytes in every layer; each page of a fresh mapping faults on first touch
(a kernel entry and a page zeroed), so the step pays for its memory again and again. Measured on a
2-core AMD EPYC (AVX-512), ResNet-18 (CIFAR) at batch 128, eval forward, two runs: 1,003-1,028 ms
dense and 550-553 ms truly sparse (ERK 0.05) with glibc's defaults, 668-692 ms and 334-335 ms with
these settings (docs/performance.md). The heap serves allocations up to 2 GB; threads other than
the main one still map those above their arena's 64 MB.
PyTorch's CPU performance guide suggests preloading tcmalloc or jemalloc for the same reason; this
gets most of it from glibc itself, with `mallopt`, and nothing to install.

The cost: memory the process freed stays mapped in it (up to `trim_threshold` at the top of the
heap), so its resident size stays near its peak instead of shrinking between steps, and the peak
itself may grow: ResNet-18's dense training at batch 128 peaked at 1.54-1.59 GB against 1.32-1.33
GB, and held that between steps against 0.89-0.95 GB, its first four steps 2.84-2.90 s each
against 3.54-3.82 s (two runs each).
`itop train` calls it; a script or notebook may call `itop.allocator.keep_freed_memory()` once at
its start. It does nothing where the C library is not glibc, where an environment variable of
glibc's (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_) says the user chose
already, or under ITOP_MALLOC=default.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)
MMAP_THRESHOLD = 2**31 - 1  # allocations up to 2 GB (mallopt's int) come from the heap, whose freed pages are reused
TRIM_THRESHOLD = 1 << 30  # up to 1 GB free at the heap's top stays mapped
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
GLIBC = platform.libc_ver()[0] == "glibc"
KEPT = "freed memory kept for reuse (glibc's mallopt)"  # what `status()` says once applied

_applied: str | None = None  # what the last call did, for `itop doctor`


def keep_freed_memory(trim_threshold: int = TRIM_THRESHOLD) -> str:
    """Have glibc's malloc keep and reuse freed memory (see the module docstring); returns what it
    did, in words: applied, or why not. Safe to call more than once."""
    global _applied
    if os.environ.get("ITOP_MALLOC", "").lower() == "default":
        _applied = "glibc's defaults (ITOP_MALLOC=default)"
    elif any(name in os.environ for name in USER_SETTINGS):
        _applied = "glibc's settings from the environment (" + ", ".join(n for n in USER_SETTINGS if n in os.environ) + ")"
    elif not GLIBC:
        _applied = "not glibc: the C library's defaults"
    else:
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            _applied = "no mallopt in this process: the C library's defaults"
        else:
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            mmap_ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            trim_ok = mallopt(M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)) == 1
            _applied = KEPT if mmap_ok and trim_ok else "glibc refused mallopt: its defaults"
    return _applied


def status() -> str:
    """What `keep_freed_memory` did in this process, or that it was not called."""
    return _applied or "glibc's defaults (keep_freed_memory not called)"
