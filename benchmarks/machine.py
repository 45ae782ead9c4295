"""Where a benchmark figure was measured: one line that every benchmark prints above each table.

Imported by the scripts in benchmarks/ as `from machine import machine_line, print_header` (they run
as `python benchmarks/x.py`, which puts benchmarks/ on sys.path). A pasted table then carries the
CPU model, the instruction set PyTorch's kernels dispatch to, the cores this process may use, the
thread count, the library versions and the environment variables that change kernels or threads.

numba's version is read from the installed distribution's metadata: importing numba here would
start its threads and cost a second, and the scripts that use it import it themselves.
"""

from __future__ import annotations

import functools
import os
import platform
from importlib import metadata
from pathlib import Path

import torch

# Environment variables that change which kernels run or on how many threads (shown only when set).
KERNEL_ENV = (
    "ATEN_CPU_CAPABILITY",  # PyTorch's dispatch ISA (default: the best the CPU has)
    "MKL_ENABLE_INSTRUCTIONS",  # MKL's ISA
    "NUMBA_CPU_NAME",  # the CPU numba compiles for (and caches under)
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "GOMP_SPINCOUNT",  # how long OpenMP threads spin before sleeping: matters under contention
    "OMP_WAIT_POLICY",
    "KMP_BLOCKTIME",
    "ITOP_KERNELS",
    "ITOP_SPARSE_KERNELS",  # "torch": itop's truly sparse layers skip the numba kernels (itop.sparse.native)
)


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else platform.processor() or the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return ""


def cores() -> str:
    """os.cpu_count() and, where the OS says, how many of them this process may run on."""
    text = f"{os.cpu_count()} cores"
    if hasattr(os, "sched_getaffinity"):
        text += f" ({len(os.sched_getaffinity(0))} usable by this process)"
    return text


def kernel_env() -> str:
    chosen = [f"{name}={os.environ[name]}" for name in KERNEL_ENV if name in os.environ]
    return "env " + (" ".join(chosen) if chosen else "(no kernel/thread variable set)")


def allocator_status() -> str:
    """What itop.allocator did in this process (glibc's malloc keeping freed memory, or not)."""
    try:
        from itop.allocator import status
    except ImportError:
        return "unknown (itop not installed)"
    return status()


def machine_line() -> str:
    """One line: CPU, PyTorch's ISA, cores, torch threads (at the time of the call), versions, env."""
    numba = _version("numba")
    itop = _version("itop")
    if not itop:
        try:
            import itop as itop_module

            itop = getattr(itop_module, "__version__", "") or "unknown"
        except ImportError:
            itop = "not installed"
    parts = [
        f"CPU {cpu_model()}",
        f"ISA {torch.backends.cpu.get_cpu_capability()}",
        cores(),
        f"torch threads {torch.get_num_threads()}",
        f"torch {torch.__version__}",
        f"numba {numba}" if numba else "numba not installed",
        f"itop {itop}",
        kernel_env(),
        f"malloc {allocator_status()}",
    ]
    return "machine: " + "; ".join(parts)


def print_header(title: str | None = None) -> None:
    """Print `title` (if given), then the machine line: call it right above each table."""
    if title:
        print(title)
    print(machine_line(), flush=True)
