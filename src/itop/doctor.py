"""`itop doctor`: what a report about speed needs, printed in a few seconds.

Sparse speed depends on the machine more than on anything else: which CPU and vector ISA, how many
cores, which torch and numba, whether OpenMP's idle threads spin, whether malloc keeps freed memory, and which kernel each product
took. This prints all of it, with the dense GEMM rate and every sparse product's candidates timed on
a reference layer (1024 x 3072 at density 0.05, batches 128 and 2), the ways to transpose its batch
of inputs, the choices made for that layer (`itop.sparse.dispatch`), and where those choices are
cached.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

SHAPE = (1024, 3072)  # (out_features, in_features): the first layer of a CIFAR-10 MLP
DENSITY = 0.05
BATCHES = (128, 2)
SPIN_VARIABLES = ("GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_WAIT_POLICY")


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="itop doctor",
        description="Print the machine, the sparse kernels' speeds on a reference layer and the choices made, for a bug report.",
    )


def _rate(work: float, seconds: float | None) -> str:
    return "-" if seconds is None else f"{work / seconds / 1e9:.1f}"


def _source(chooser, key, before: bool) -> str:
    if chooser.mode != "auto":
        return f"forced by ITOP_KERNELS={chooser.mode}"
    if before:
        return "from the cache"
    return "measured now" if key in chooser.decisions else "fixed rule (probe budget spent)"


def _products(chooser, nnz: int, batch: int, say) -> None:
    """Each product's candidates at this batch, in GFLOP/s of the active weights' work, and the choice."""
    import torch

    from itop.sparse import ops

    names = ops.candidates("input_grad", SHAPE, torch.float32)  # the widest set: the others' and numba's transposed CSR
    say(f"  batch {batch:<4} " + "".join(f"{name:>8}" for name in names) + "   chosen")
    like = torch.empty(0)
    for op in ops.OPS:
        timings = ops.candidate_timings(op, SHAPE, nnz, batch, torch.float32)
        key = ops.decision_key(op, SHAPE, nnz, batch, torch.float32)
        before = key in chooser.decisions
        if chooser.mode == "auto":
            choice = chooser.decide(key, lambda timings=timings: timings, lambda op=op: ops.fixed_rule(op, SHAPE, nnz, batch, like))
        else:
            choice = ops.forced_rule(chooser.mode, op, SHAPE, nnz, batch, like)
        rates = "".join(f"{_rate(2 * nnz * batch, timings.get(name)):>8}" for name in names)
        say(f"    {op:<11}{rates}   {choice} ({_source(chooser, key, before)})")


def _transpose(chooser, say) -> None:
    """The reference layer's batch of inputs copied transposed: each way's time and the choice."""
    import torch

    from itop.sparse import native, ops

    rows, cols = BATCHES[0], SHAPE[1]
    matrix = torch.empty(rows, cols)
    if not native.usable(matrix):
        say(f"input transpose ({rows} x {cols}): PyTorch's copy (numba is not installed)")
        return
    timings = ops.transpose_timings(rows, cols, torch.float32)
    key = ops.transpose_key(rows, cols, torch.float32)
    before = key in chooser.decisions
    if chooser.mode == "auto":
        choice = chooser.decide(key, lambda: timings, lambda: native.transpose_rule(rows, cols))
    else:
        choice = ops.transpose_way(matrix)
    ways = ", ".join(f"{name} {seconds * 1e6:.0f} us" for name, seconds in timings.items())
    say(f"input transpose ({rows} x {cols}, float32): {ways}   {choice} ({_source(chooser, key, before)})")


def _masked(chooser, nnz: int, batch: int) -> str:
    """The masked engine's choice for the reference layer at this batch (training step)."""
    from itop.sparsity import kernels

    timings = kernels.masked_timings(SHAPE, nnz, batch, True)
    key = kernels.decision_key(SHAPE, nnz, batch, True)
    before = key in chooser.decisions
    if chooser.mode == "auto":
        choice = chooser.decide(key, lambda: timings, lambda: kernels.fixed_rule(SHAPE, nnz, batch))
    else:
        choice = "sparse" if chooser.mode == "numba" else "dense (no swap)"
    spent = ", ".join(f"{name} {seconds * 1e3:.2f} ms" for name, seconds in timings.items())
    return f"batch {batch}: {choice} ({spent}; {_source(chooser, key, before)})"


def _others() -> str:
    """How busy other processes keep this process's CPUs, and what the kernels make of it."""
    import torch

    from itop.sparse import free_cores, native

    if not free_cores._enabled:
        return "not read (ITOP_FREE_CORES=all: kernels use every configured thread)"
    reading = free_cores.others_busy()
    if reading is None:
        return "not known here (no /proc/stat): kernels use every configured thread"
    others, cpus = reading
    threads = native.configured_threads() if native.kernels() is not None else torch.get_num_threads()
    used = free_cores.threads_left(cpus - others, threads)
    return f"busy on {others:.1f} of {cpus} CPUs over 0.2 s: a kernel split in {threads} parts runs them on {used} thread(s)"


def main(argv: list[str] | None = None) -> int:
    try:
        _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as stop:  # --help, or a bad flag
        return int(stop.code or 0)

    import torch

    from itop import openmp
    from itop.allocator import keep_freed_memory
    from itop.sparse import dispatch, native

    try:
        chooser = dispatch.current()
    except ValueError as error:
        print(f"itop: error: {error}", file=sys.stderr)
        return 2
    machine = chooser.machine
    if chooser.mode == "auto":
        chooser.load()  # now, so that a decision read from the file is told from one measured here
    say = print
    say("machine")
    say(f"  CPU                  {machine['cpu']}")
    say(f"  ISA                  {machine['isa']}")
    say(f"  cores usable         {machine['cores']} (of {os.cpu_count()})")
    threads = f"{torch.get_num_threads()}" + (f" (numba: {native.configured_threads()})" if native.kernels() is not None else "")
    say(f"  torch threads        {threads}")
    say(
        f"  versions             torch {machine['torch']}, numba {machine['numba']}, itop {machine['itop']}, Python {platform.python_version()}"
    )
    spin = ", ".join(f"{name}={os.environ[name]}" if name in os.environ else f"{name} unset" for name in SPIN_VARIABLES)
    say(f"  OpenMP               {spin}")
    say(f"  torch imported before itop: {'yes (PyTorch keeps its OpenMP spin defaults)' if openmp.torch_loaded_first else 'no'}")
    say(f"  malloc               {keep_freed_memory()}; itop train sets the same")
    say(f"  other processes      {_others()}")

    raw = os.environ.get("ITOP_KERNELS") or (
        f"ITOP_SPARSE_KERNELS={os.environ['ITOP_SPARSE_KERNELS']}" if "ITOP_SPARSE_KERNELS" in os.environ else ""
    )
    say("kernels")
    say(f"  ITOP_KERNELS         {chooser.mode}" + (f" (from {raw!r})" if raw else " (unset: measured)"))

    nnz = round(DENSITY * SHAPE[0] * SHAPE[1])
    weight, rows = torch.randn(SHAPE), torch.randn(SHAPE[1], BATCHES[0])
    gemm = dispatch.time_candidates({"mm": lambda: weight.mm(rows)})["mm"]
    say(f"dense GEMM ({SHAPE[0]} x {SHAPE[1]} weight, batch {BATCHES[0]}, float32): {_rate(2 * weight.numel() * BATCHES[0], gemm)} GFLOP/s")
    say(f"sparse products, {SHAPE[0]} x {SHAPE[1]} at density {DENSITY} ({nnz:,} weights, float32), GFLOP/s of 2 x nnz x batch:")
    for batch in BATCHES:
        _products(chooser, nnz, batch, say)
    _transpose(chooser, say)
    say("masked layer of that shape (MaskedCSRLinear: sparse path or dense F.linear, forward and backward):")
    for batch in BATCHES:
        say(f"  {_masked(chooser, nnz, batch)}")

    here, everywhere = chooser.cached()
    say("cache")
    say(f"  file                 {chooser.path}")
    say(f"  decisions            {here} for this machine ({everywhere} for all machines)")
    say(f"  this machine's key   {chooser.machine_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
