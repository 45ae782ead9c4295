"""Cost of sparsity per training step and per topology update, against dense training.

Run by hand:  python benchmarks/step_overhead.py [--rounds 40] [--steps 50] [--threads 2]
              [--models all|lenet|mlp] [--optimizer both|loop|fused] [--no-update]

For each model, training steps with the sparsifier detached (dense) and attached (sparse, SET; RigL's
steps between updates are the same) are timed in interleaved blocks on the same model and optimizer,
and the median of the per-round ratios is printed with its quartiles: with the sparse Linear kernels
(the default: where the dispatch measured them faster) and with masks only, for SGD's for-loop (what
`torch.optim.SGD` runs on the CPU by default) and for `fused=True` (what `itop train` uses).
The optimizer phase (from `backward()` to the next forward: the sparsifier's hooks and
`optimizer.step()`) is also timed inside real steps, dense and sparse, beside a pass over the same
gradients that reads no mask (x 1.0): the floor for any per-step pass on this machine.
Then one topology update is timed for SET (magnitude prune + random growth) and RigL
(magnitude prune + gradient growth). Reference figures for the original ITOP code's masking,
measured separately on a 2-core AMD EPYC (AVX2) virtual machine, 2026-11: step 1.21x
(LeNet-300-100, batch 100) and 1.10x (3072-1024-512-10 MLP, batch 128); one update on that MLP
153 ms (SET) / 409 ms (RigL).
"""

# ruff: noqa: I001 - itop.openmp is imported first, as `import itop` is in a user's script, so that OpenMP's
# spin count is set before torch loads OpenMP (see src/itop/openmp.py)
from __future__ import annotations

import itop.openmp

import argparse
import statistics
import time

import torch
from machine import print_header
from torch import nn

import itop

ORIGINAL_MACHINE = "a 2-core AMD EPYC (AVX2) VM, 2026-11"  # where the original ITOP code's figures were measured


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def make_run(sizes, batch, sparse: bool, grow: str = "gradient", sparse_linear: bool = True, fused: bool = False):
    torch.manual_seed(0)
    model = mlp(sizes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=fused or None)
    sparsifier = (
        itop.Sparsifier(model, optimizer, density=0.05, grow=grow, update_frequency=None, seed=0, sparse_linear=sparse_linear)
        if sparse
        else None
    )
    x, y = torch.randn(batch, sizes[0]), torch.randint(0, sizes[-1], (batch,))

    def step(use_sparsifier: bool = True):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if sparsifier is not None and use_sparsifier:
            sparsifier.step()

    return step, sparsifier


def time_block(step, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def step_ratio(sizes, batch, rounds: int, steps: int, sparse_linear: bool, fused: bool) -> tuple[float, float, list[float]]:
    """Median step times with the sparsifier detached (dense) and attached (sparse), and the
    quartiles of the per-round ratios.

    Both use the very same model, optimizer and batch, so memory placement, which alone moves
    the step time of two identical dense models by several percent here, cannot bias the ratio.
    Blocks alternate dense-sparse, sparse-dense (ABBA) so slow drifts of the machine cancel.
    """
    step, sparsifier = make_run(sizes, batch, sparse=True, grow="random", sparse_linear=sparse_linear, fused=fused)

    def block(attached: bool) -> float:
        (sparsifier.attach if attached else sparsifier.detach)()
        return time_block(lambda: step(use_sparsifier=attached), steps)

    block(False), block(True)
    dense_t, sparse_t = [], []
    for r in range(rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        times = {attached: block(attached) for attached in order}
        dense_t.append(times[False])
        sparse_t.append(times[True])
    ratios = statistics.quantiles([s / d for d, s in zip(dense_t, sparse_t)], n=4)
    return statistics.median(dense_t), statistics.median(sparse_t), ratios


def optimizer_phase(sizes, batch, steps: int, fused: bool) -> tuple[float, float, float]:
    """Milliseconds, timed inside real training steps (alternating), of what happens between
    `backward()` and the next forward: `optimizer.step()` alone (dense), and with the sparsifier's
    hooks (sparse: the gradient masking, or the one-pass SGD update of the masked weights, and the
    step); plus a multiply of the same gradients by the scalar 1.0, the least that any separate pass
    over them costs (no mask is read)."""
    _, sparsifier = make_run(sizes, batch, sparse=True, fused=fused)
    optimizer, weights = sparsifier.optimizer, sparsifier._weights
    times: dict[str, list[float]] = {"dense": [], "sparse": [], "pass": []}
    for i in range(steps):
        way = ("sparse", "dense", "pass")[i % 3]
        (sparsifier.attach if way == "sparse" else sparsifier.detach)()
        optimizer.zero_grad(set_to_none=True)
        sparsifier.model(torch.randn(batch, sizes[0])).square().mean().backward()
        start = time.perf_counter()
        if way == "pass":
            for weight in weights:
                weight.grad.mul_(1.0)
        else:
            optimizer.step()
        times[way].append(time.perf_counter() - start)
        sparsifier.apply_masks()
    return tuple(statistics.median(times[way][5:]) * 1e3 for way in ("dense", "sparse", "pass"))


def update_time(sizes, batch, grow: str, repeats: int) -> float:
    step, sparsifier = make_run(sizes, batch, sparse=True, grow=grow)
    step()
    times = []
    for _ in range(repeats):
        sparsifier.optimizer.zero_grad()
        model = sparsifier.model
        x = torch.randn(batch, sizes[0])
        nn.functional.cross_entropy(model(x), torch.randint(0, sizes[-1], (batch,))).backward()
        start = time.perf_counter()
        sparsifier.update_topology()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--models", choices=("all", "lenet", "mlp"), default="all")
    parser.add_argument(
        "--optimizer",
        choices=("both", "loop", "fused"),
        default="both",
        help="SGD's for-loop (PyTorch's CPU default), fused=True (itop train's), or both",
    )
    parser.add_argument("--no-update", action="store_true", help="skip the topology update timings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormal slow-downs would otherwise swamp the comparison
    models = [
        (label, sizes, batch, original)
        for label, sizes, batch, original in (
            ("LeNet-300-100", [784, 300, 100, 10], 100, 1.21),
            ("MLP 3072-1024-512-10", [3072, 1024, 512, 10], 128, 1.10),
        )
        if args.models == "all" or label.lower().startswith(args.models)
    ]
    optimizers = {"both": (False, True), "loop": (False,), "fused": (True,)}[args.optimizer]
    print_header(f"{args.threads} threads, {args.rounds} interleaved rounds of {args.steps} steps")
    print(
        "| model | batch | SGD | sparse Linear kernels | dense step ms | sparse step ms | ratio, median [q1, q3] | "
        f"original's ratio (for information, measured on {ORIGINAL_MACHINE}) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    phases = []
    for label, sizes, batch, original in models:
        for fused in optimizers:
            sgd = "fused=True" if fused else "for-loop"
            for sparse_linear in (True, False):
                d, s, (q1, r, q3) = step_ratio(sizes, batch, args.rounds, args.steps, sparse_linear, fused)
                kernels = "on (default)" if sparse_linear else "off: masks only"
                print(
                    f"| {label} | {batch} | {sgd} | {kernels} | {d * 1e3:.3f} | {s * 1e3:.3f} | {r:.3f}x [{q1:.3f}, {q3:.3f}] | {original:.2f}x |"
                )
            phases.append((label, sgd, *optimizer_phase(sizes, batch, steps=600, fused=fused)))
    print()
    print_header()
    print(
        "| optimizer phase inside the step | SGD | dense: optimizer.step() ms | sparse: hooks + step ms | sparse - dense ms | any pass over the gradients (x 1.0) ms |"
    )
    print("|---|---|---|---|---|---|")
    for label, sgd, dense_ms, sparse_ms, pass_ms in phases:
        print(f"| {label} | {sgd} | {dense_ms:.3f} | {sparse_ms:.3f} | {sparse_ms - dense_ms:+.3f} | {pass_ms:.3f} |")
    if args.no_update:
        return
    print()
    print_header()
    print(
        f"| update on MLP 3072-1024-512-10 | ms | original ms (for information, measured on {ORIGINAL_MACHINE}) | "
        "original ms / ours (for information: another machine) |"
    )
    print("|---|---|---|---|")
    for label, grow, original in (("SET (random growth)", "random", 153), ("RigL (gradient growth)", "gradient", 409)):
        t = update_time([3072, 1024, 512, 10], 128, grow, repeats=7) * 1e3
        print(f"| {label} | {t:.1f} | {original} | {original / t:.1f}x |")


if __name__ == "__main__":
    main()
