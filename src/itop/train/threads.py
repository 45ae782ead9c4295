"""How many CPU threads a run trains on: one where a step is too small for threads to pay.

Each parallel region of PyTorch or of the numba kernels wakes the other threads of a pool; on a
2-core Xeon that costs about 60 us a region once the workers sleep (`itop.openmp` lets them sleep
soon, so that a busy neighbour process is not slowed). A step of SET's recipe at H=1,000 (batch 2,
73,000 weights) runs about ten such regions and computes for less than a millisecond: on one
thread its epoch took 2.8 s instead of 3.3 s, while at H=10,000 (620,000 weights) two threads still
won, 8.2 s against 9.5 s (`itop train --preset million-neurons`, 2,000 steps; docs/performance.md).

The rule is fixed, not measured, so that a run and its resume take the same number of threads and
so compute the same numbers: one thread where batch x parameters is under `TINY_STEP_WORK`, on the
CPU, unless OMP_NUM_THREADS says otherwise.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

TINY_STEP_WORK = 1 << 19  # batch x parameters: H=1,000 at batch 2 is 146,000 (one thread wins), H=10,000 1.2M (two win)


def step_threads(model: nn.Module, batch: int, device: torch.device) -> int | None:
    """The thread count for training `model` at `batch` on `device`: 1 for tiny steps on the CPU,
    None to keep PyTorch's (another device, OMP_NUM_THREADS set, or a step large enough)."""
    if device.type != "cpu" or os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads() == 1:
        return None
    work = batch * sum(p.numel() for p in model.parameters())
    return 1 if work < TINY_STEP_WORK else None


def threads_note(threads: int | None, model: nn.Module, batch: int) -> str | None:
    if threads is None:
        return None
    params = sum(p.numel() for p in model.parameters())
    return (
        f"training on {threads} CPU thread: a step of batch {batch} x {params:,} parameters is too small for "
        f"{torch.get_num_threads()} threads to pay (set OMP_NUM_THREADS to choose)"
    )


@contextlib.contextmanager
def using_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's (and so the numba kernels') thread count set to `threads` inside, restored after."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
