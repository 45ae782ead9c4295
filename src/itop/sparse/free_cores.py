"""How many of this process's cores other processes leave free, so that a kernel split into parts
does not wait on a worker thread that a busy neighbour keeps off its core.

A parallel kernel splits its rows into one part per configured thread and runs the parts over
numba's threads. When another process keeps one of two cores busy, a woken worker may wait a
time slice for a core, and every parallel region waits with it: `itop train`'s step at H=10,000
(batch 2, two threads) took 2.9x its idle time beside a busy loop, against 1.2x with its two parts
run by the calling thread alone (which idle takes 1.7x as long). `native._pool` therefore runs the
parts on at most `free(threads)` threads. The parts, and so the numbers, never change with it.
PyTorch's own parallel loops wait the same way. An optimizer's update is elementwise, so its
numbers do not depend on the thread count (SGD, foreach SGD and Adam are tested bit for bit on one
and two threads): `optimizer_threads` runs it on the free cores, as `itop train` does, and a loop
of your own may too:

    with itop.sparse.free_cores.optimizer_threads():
        optimizer.step()

Beside a busy loop on one of two cores (AMD EPYC, AVX-512), the SET-MLP step at H=10,000 took
1.6-1.8x its idle time so, against 1.8-2.9x: `itop train`'s step (fused SGD) and a loop of one's
own with `torch.optim.SGD` alike.

Linux: from /proc/stat, the time the CPUs this process may run on spent busy, less this process's
own CPU time, over the time since the last reading; read at most every `INTERVAL` seconds, so a
step pays a clock read. Elsewhere, or where /proc/stat cannot be read, every core counts as free.
`ITOP_FREE_CORES=all` turns the reading off.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import torch

INTERVAL = 0.1  # seconds between readings of /proc/stat (about 20 us each)
TAKEN = 0.5  # another process using more than half a core has taken it
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal (not idle, iowait)

_last: tuple[float, float, float] | None = None  # (wall, busy CPU seconds of our CPUs, own CPU seconds)
_free: float | None = None  # cores left to this process at the last reading; None: not known
_enabled = os.environ.get("ITOP_FREE_CORES", "").strip().lower() != "all"


def _cpus() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _busy_seconds(cpus: set[int]) -> float | None:
    """CPU seconds that the CPUs in `cpus` have spent busy since boot (every process), from /proc/stat."""
    try:
        with open("/proc/stat", "rb") as stat:
            lines = stat.read().split(b"\n")
    except OSError:
        return None
    total = 0
    for line in lines[1:]:
        if not line.startswith(b"cpu"):
            break
        name, *fields = line.split()
        if int(name[3:]) in cpus:
            total += sum(int(fields[i]) for i in _BUSY_FIELDS if i < len(fields))
    return total / _TICK


def _reading(now: float, cpus: set[int]) -> tuple[float, float, float] | None:
    """(wall, busy CPU seconds of `cpus`, this process's CPU seconds) now; None without /proc/stat."""
    busy = _busy_seconds(cpus)
    return None if busy is None else (now, busy, time.process_time())


def _others(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Cores that other processes kept busy between two readings."""
    return max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / (after[0] - before[0])


def threads_left(free_cores: float, threads: int) -> int:
    """At most `threads`, at least 1: a core another process uses more than half of is taken."""
    return max(1, min(threads, int(free_cores + TAKEN)))


def _read(now: float) -> None:
    global _last, _free, _enabled
    cpus = _cpus()
    reading = _reading(now, cpus)
    if reading is None:  # no /proc/stat: every core counts as free from now on
        _enabled, _free = False, None
        return
    if _last is not None and now > _last[0]:
        _free = len(cpus) - _others(_last, reading)
    _last = reading


def free(threads: int) -> int:
    """At most `threads`, fewer where other processes keep cores busy (at least 1)."""
    if not _enabled or threads <= 1:
        return threads
    now = time.monotonic()
    if _last is None or now - _last[0] >= INTERVAL:
        _read(now)
    return threads if _free is None else threads_left(_free, threads)


def others_busy(seconds: float = 0.2) -> tuple[float, int] | None:
    """(cores other processes kept busy over the next `seconds`, CPUs this process may use), for
    `itop doctor`; None where /proc/stat cannot be read."""
    cpus = _cpus()
    before = _reading(time.monotonic(), cpus)
    if before is None:
        return None
    time.sleep(seconds)
    after = _reading(time.monotonic(), cpus)
    return None if after is None else (_others(before, after), len(cpus))


@contextlib.contextmanager
def optimizer_threads(device: torch.device | str = "cpu") -> Iterator[None]:
    """PyTorch's threads cut to `free(...)` of them inside the block, restored after (also on an
    error); nothing changes on other devices or while every core is free.

    For an optimizer's step only, or other elementwise work: reductions and matrix products round
    differently by thread count (PyTorch splits a sum among its threads), and itop's kernels split
    their rows by the configured threads, so neither belongs inside."""
    threads = torch.get_num_threads()
    left = free(threads) if torch.device(device).type == "cpu" else threads
    if left == threads:
        yield
        return
    torch.set_num_threads(left)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
