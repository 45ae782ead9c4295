"""Cost of dynamic sparse training under FSDP2 (fully_shard) on 2 CPU processes (gloo).

Run by hand:  python benchmarks/fsdp.py            # the full measurement (a few minutes)
              python benchmarks/fsdp.py --quick    # smoke run: a small model, few blocks (under a minute)

The script starts its own processes (torch.multiprocessing, gloo on a free local port), one thread
each, and shards an MLP of 58.7M parameters (1024-4096-4096-4096-4096-1024, ReLU) with FSDP2:
`fully_shard` on every Linear, then on the whole model. The optimizer is SGD with momentum 0.9
(built after sharding, as FSDP2 needs); every process trains on its own fixed synthetic batch.

1. Step time: FSDP2 with a Sparsifier (RigL: magnitude pruning, gradient growth, density 0.1, ERK,
   an update frequency beyond the run, so no timed step holds an update) against FSDP2 dense (the
   same model and optimizer, built the same way, without a Sparsifier). Both are built once and
   timed in alternating blocks of a few steps, the order swapped every pair (dense-sparse,
   sparse-dense, ...); a block lasts as long as its slowest process. Printed: the median per-pair
   ratio sparse / dense with its quartiles, and each side's median ms per step. Target: at most
   1.05x.
2. One topology update, `update_topology()` right after a backward, for SET (SET's pruning rule,
   random growth) and RigL, in ms (the slowest process).
3. Memory: each process's bytes held by the Sparsifier (the local shards of the masks, of their
   float copies that the per-step multiply reads, of the explored sets and of the gradient averages,
   which RigL does not keep) against the same model's Sparsifier in one unsharded process, which
   holds whole tensors (its sparse Linear kernels are off, as on shards); the ratio should be about
   1 / 2. And each process's peak RSS (getrusage) in a run of a few steps with one topology update,
   sparse, and the same run dense, each in processes of its own.
"""

# ruff: noqa: I001 - itop.openmp is imported first, as `import itop` is in a user's script, so that OpenMP's
# spin count is set before torch loads OpenMP (see src/itop/openmp.py)
from __future__ import annotations

import itop.openmp

import argparse
import importlib
import os
import resource
import socket
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from machine import print_header
from torch import nn

import itop
from itop.sparsity import shards

WORLD = 2
TARGET = 1.05  # sparse / dense step time, at most
DENSITY = 0.1
RIGL = dict(prune="magnitude", grow="gradient")
SET = dict(prune="set", grow="random")
NEVER = 10**9  # an update frequency no run reaches


@dataclass
class Plan:
    sizes: list[int]
    batch: int  # per process
    pairs: int  # of timed blocks (dense, sparse)
    steps: int  # per block
    warmup: int  # steps of each side before the timed blocks
    updates: int  # timed topology updates per criterion
    memory_steps: int  # steps of the memory runs (one of them ends with a topology update)
    threads: int  # per process


def plan_for(args: argparse.Namespace) -> Plan:
    threads = args.threads or max(1, len(os.sched_getaffinity(0)) // WORLD if hasattr(os, "sched_getaffinity") else 1)
    if args.quick:
        return Plan([256, 512, 512, 256], batch=16, pairs=4, steps=2, warmup=2, updates=2, memory_steps=3, threads=threads)
    sizes = [1024, 4096, 4096, 4096, 4096, 1024]
    return Plan(sizes, batch=args.batch, pairs=args.pairs, steps=args.steps, warmup=3, updates=3, memory_steps=4, threads=threads)


# ----------------------------------------------------------------------------- model and training
def mlp(sizes: list[int]) -> nn.Sequential:
    torch.manual_seed(0)  # the same weights on every process and in the unsharded reference
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def sharded_mlp(sizes: list[int]) -> nn.Sequential:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = mlp(sizes)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def trainer(plan: Plan, criteria: dict | None, sharded: bool = True, update_frequency: int = NEVER):
    """A model, its SGD optimizer, a Sparsifier (None when `criteria` is None) and one training step."""
    model = sharded_mlp(plan.sizes) if sharded else mlp(plan.sizes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sparsifier = None
    if criteria is not None:
        sparsifier = itop.Sparsifier(
            model,
            optimizer,
            density=DENSITY,
            distribution="erk",
            update_frequency=update_frequency,
            total_steps=10 * max(update_frequency, 100),
            seed=0,
            sparse_linear=sharded,  # no kernels on shards; off in the unsharded reference too
            **criteria,
        )
    rank = dist.get_rank() if dist.is_initialized() else 0
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(plan.batch, plan.sizes[0], generator=generator)
    y = torch.randint(0, plan.sizes[-1], (plan.batch,), generator=generator)

    def backward() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()

    def step() -> None:
        backward()
        optimizer.step()
        if sparsifier is not None:
            sparsifier.step()

    return model, optimizer, sparsifier, step, backward


def slowest(seconds: float) -> float:
    """The largest of every process's `seconds` (the processes wait for each other at every collective)."""
    value = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value)


def timed(fn, repeat: int = 1) -> float:
    dist.barrier()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return slowest(time.perf_counter() - start) / repeat


# ----------------------------------------------------------------------------- what the Sparsifier holds
def sparsifier_bytes(sparsifier) -> dict[str, int]:
    """Bytes of this process's tensors that the Sparsifier holds, by kind (local shards of DTensors;
    a tensor seen twice is counted once)."""
    seen: set[int] = set()

    def total(tensors) -> int:
        count = 0
        for tensor in tensors:
            if tensor is None:
                continue
            tensor = shards.local(tensor)
            key = tensor.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                count += tensor.untyped_storage().nbytes()
        return count

    storages = sparsifier._masked.storages
    kinds = {
        "masks (bool)": total(s.mask for s in storages),
        "masks as floats (the per-step multiply)": total(getattr(s, "multiplier", None) for s in storages),
        "explored sets (Rs)": total(sparsifier.exploration.explored.values()),
        "gradient averages": total(sparsifier.grad_average.values()),
    }
    kinds["total"] = sum(kinds.values())
    return kinds


def rss_now() -> int:
    """This process's resident set now, in bytes (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def peak_rss() -> int:
    """This process's peak resident set so far, in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# ----------------------------------------------------------------------------- jobs (run on every process)
def time_steps(plan: Plan) -> dict:
    """Step times dense and sparse in alternating blocks, then one topology update timed, SET and RigL."""
    sides = {"dense": trainer(plan, None), "sparse": trainer(plan, RIGL)}
    for _, _, _, step, _ in sides.values():
        for _ in range(plan.warmup):
            step()
    blocks: dict[str, list[float]] = {"dense": [], "sparse": []}
    for pair in range(plan.pairs):
        order = ("dense", "sparse") if pair % 2 == 0 else ("sparse", "dense")
        for side in order:
            blocks[side].append(timed(sides[side][3], plan.steps))
        if dist.get_rank() == 0:
            ms = {side: times[-1] / plan.steps * 1e3 for side, times in blocks.items()}
            print(
                f"  pair {pair + 1}/{plan.pairs}: dense {ms['dense']:.1f} ms, sparse {ms['sparse']:.1f} ms per step",
                file=sys.stderr,
                flush=True,
            )
    sparsifier = sides["sparse"][2]
    assert sparsifier.steps == plan.warmup + plan.pairs * plan.steps and len(sparsifier.history) == 1, "an update ran in the timed steps"
    updates = {"RigL": update_times(sides["sparse"], plan.updates)}
    del sides
    updates["SET"] = update_times(trainer(plan, SET), plan.updates)
    return {"blocks": blocks, "updates": updates}


def update_times(side, repeat: int) -> list[float]:
    _, _, sparsifier, _, backward = side
    times = []
    for _ in range(repeat):
        backward()
        times.append(timed(sparsifier.update_topology))
    return times


def memory(plan: Plan, sparse: bool) -> dict:
    """Peak RSS of a few training steps (sparse: the last one ends with a topology update), and what
    the Sparsifier holds."""
    before = rss_now()
    _, _, sparsifier, step, _ = trainer(plan, RIGL if sparse else None, update_frequency=plan.memory_steps)
    for _ in range(plan.memory_steps):
        step()
    result = {"rss_before": before, "peak_rss": peak_rss()}
    if sparse:
        assert len(sparsifier.history) == 2, "the memory run holds one topology update"
        result["held"] = sparsifier_bytes(sparsifier)
    return result


JOBS = {"time": time_steps, "memory-dense": lambda plan: memory(plan, False), "memory-sparse": lambda plan: memory(plan, True)}


def worker(rank: int, port: int, job: str, plan: dict, results) -> None:
    torch.set_num_threads(plan["threads"])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    for module in ("device_mesh", "fsdp", "tensor"):  # loaded before rss_now(): the memory runs count the model, not modules
        importlib.import_module(f"torch.distributed.{module}")

    try:
        result = JOBS[job](Plan(**plan))
        gathered = [None] * WORLD
        dist.gather_object(result, gathered if rank == 0 else None, dst=0)
        if rank == 0:
            results.put(gathered)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(job: str, plan: Plan) -> list[dict]:
    """Run `job` on WORLD new processes; every process's result, in rank order."""
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    port = free_port()
    processes = [context.Process(target=worker, args=(rank, port, job, asdict(plan), results)) for rank in range(WORLD)]
    for process in processes:
        process.start()
    try:
        gathered = None
        while gathered is None:
            if not results.empty():
                gathered = results.get()
            elif any(p.exitcode not in (None, 0) for p in processes) or all(p.exitcode is not None for p in processes):
                codes = ", ".join(f"rank {r}: {p.exitcode}" for r, p in enumerate(processes))
                raise SystemExit(f"fsdp benchmark: the {job} processes ended without a result ({codes})")
            else:
                time.sleep(0.05)
        for process in processes:
            process.join(timeout=120)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join()
    failed = [r for r, p in enumerate(processes) if p.exitcode != 0]
    if failed:
        print(
            f"note: the {job} processes ended with {[processes[r].exitcode for r in failed]} after handing their results over",
            file=sys.stderr,
        )
    return gathered


# ----------------------------------------------------------------------------- report
def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return median, q1, q3


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def report(plan: Plan, parameters: int, reference: dict[str, int], timing: list[dict], dense: list[dict], sparse: list[dict]) -> None:
    blocks = timing[0]["blocks"]  # the same on every process (the slowest process's time)
    dense_ms = [t / plan.steps * 1e3 for t in blocks["dense"]]
    sparse_ms = [t / plan.steps * 1e3 for t in blocks["sparse"]]
    ratio, q1, q3 = quartiles([s / d for d, s in zip(dense_ms, sparse_ms)])
    model = f"MLP {'-'.join(map(str, plan.sizes))} ({parameters:,} parameters)"
    print_header(
        f"\n## FSDP2 step time: {model}, {WORLD} processes (gloo) x {plan.threads} thread(s), SGD momentum 0.9, batch {plan.batch} per process"
    )
    print(f"{plan.pairs} pair(s) of {plan.steps}-step blocks, order swapped every pair, after {plan.warmup} warm-up steps per side")
    print("| training step | ms per step, median [q1, q3] of blocks |")
    print("|---|---|")
    for label, values in (
        ("FSDP2 dense", dense_ms),
        (f"FSDP2 + Sparsifier (RigL, density {DENSITY}, ERK; no update in the timed steps)", sparse_ms),
    ):
        median, low, high = quartiles(values)
        print(f"| {label} | {median:.1f} [{low:.1f}, {high:.1f}] |")
    verdict = "met" if ratio <= TARGET else "missed"
    print(
        f"step ratio sparse / dense: {ratio:.3f}x, quartiles [{q1:.3f}, {q3:.3f}] over {plan.pairs} pair(s); target at most {TARGET}x: {verdict}"
    )

    print(f"\n## one topology update after a backward, {WORLD} processes (ms, the slowest process)")
    print("| criterion | ms, median [min, max] |")
    print("|---|---|")
    for label, key in (("SET (prune set, grow random)", "SET"), ("RigL (prune magnitude, grow gradient)", "RigL")):
        times = [t * 1e3 for t in timing[0]["updates"][key]]
        print(f"| {label} | {statistics.median(times):.1f} [{min(times):.1f}, {max(times):.1f}] (of {len(times)}) |")

    print(f"\n## memory: what the Sparsifier holds (MiB) on each process, against one unsharded process (RigL, density {DENSITY})")
    ranks = [s["held"] for s in sparse]
    print("| tensors | " + " | ".join(f"rank {r}" for r in range(WORLD)) + " | one process | share of one process |")
    print("|---|" + "---|" * WORLD + "---|---|")
    for kind, whole in reference.items():
        shares = ", ".join(f"{held[kind] / whole:.3f}" if whole else "-" for held in ranks)
        print(f"| {kind} | " + " | ".join(mib(held[kind]) for held in ranks) + f" | {mib(whole)} | {shares} |")
    worst = max(held["total"] for held in ranks) / reference["total"]
    print(f"largest process's share of the one-process total: {worst:.3f} (1 / {WORLD} = {1 / WORLD:.3f})")

    print(
        f"\n## memory: peak RSS of {plan.memory_steps} training steps per process (MiB; sparse: the last step ends with a topology update)"
    )
    print("| run | " + " | ".join(f"rank {r} peak (above the start)" for r in range(WORLD)) + " |")
    print("|---|" + "---|" * WORLD)
    for label, runs in (("FSDP2 dense", dense), ("FSDP2 + Sparsifier (RigL)", sparse)):
        cells = [f"{mib(run['peak_rss'])} ({mib(run['peak_rss'] - run['rss_before'])})" for run in runs]
        print(f"| {label} | " + " | ".join(cells) + " |")
    extra = [mib(s["peak_rss"] - s["rss_before"] - (d["peak_rss"] - d["rss_before"])) for d, s in zip(dense, sparse)]
    print("| sparse - dense, above the start | " + " | ".join(extra) + " |")
    print("(the start: the process's resident set before the model is built, torch and the process group loaded)", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: a small model, few blocks")
    parser.add_argument("--pairs", type=int, default=12, help="pairs of timed blocks (default 12)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per block (default 3)")
    parser.add_argument("--batch", type=int, default=32, help="examples per process (default 32)")
    parser.add_argument("--threads", type=int, default=0, help="threads per process (default: the usable cores / 2)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    plan = plan_for(args)
    torch.set_num_threads(plan.threads)  # as in each process, for the header's thread count
    _, _, sparsifier, _, _ = trainer(plan, RIGL, sharded=False)
    parameters = sum(p.numel() for p in sparsifier.model.parameters())
    reference = sparsifier_bytes(sparsifier)
    del sparsifier
    print(f"step times and topology updates on {WORLD} processes...", file=sys.stderr, flush=True)
    timing = run_job("time", plan)
    print(f"peak RSS, dense then sparse, on {WORLD} processes each...", file=sys.stderr, flush=True)
    dense = run_job("memory-dense", plan)
    sparse = run_job("memory-sparse", plan)
    report(plan, parameters, reference, timing, dense, sparse)
    print(f"(measured in {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
