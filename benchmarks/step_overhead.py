"""Cost of sparsity per training step and per topology update, against dense training.

Run by hand:  python benchmarks/step_overhead.py [--rounds 15] [--steps 50] [--threads 2]

For each model, training steps with the sparsifier detached (dense) and attached (sparse, SET; RigL's
steps between updates are the same) are timed in interleaved blocks on the same model and optimizer,
and the median per-round ratio is printed: with the sparse Linear kernels (the default: layers of at
least 200k weights at density <= 0.06 multiply by their active weights only) and with masks only.
The multiply that applies the masks is also timed inside real steps, beside a pass over the same
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


def make_run(sizes, batch, sparse: bool, grow: str = "gradient", sparse_linear: bool = True):
    torch.manual_seed(0)
    model = mlp(sizes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
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


def step_ratio(sizes, batch, rounds: int, steps: int, sparse_linear: bool) -> tuple[float, float, float]:
    """Median step times with the sparsifier detached (dense) and attached (sparse), and the
    median of per-round ratios.

    Both use the very same model, optimizer and batch, so memory placement, which alone moves
    the step time of two identical dense models by several percent here, cannot bias the ratio.
    Blocks alternate dense-sparse, sparse-dense (ABBA) so slow drifts of the machine cancel.
    """
    step, sparsifier = make_run(sizes, batch, sparse=True, grow="random", sparse_linear=sparse_linear)

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
    ratio = statistics.median(s / d for d, s in zip(dense_t, sparse_t))
    return statistics.median(dense_t), statistics.median(sparse_t), ratio


def mask_cost(sizes, batch, steps: int) -> tuple[float, float]:
    """Milliseconds, timed inside real training steps, of the gradient-mask multiply that the
    sparsifier's hook runs before optimizer.step(), and of a multiply of the very same gradients by
    the scalar 1.0: the least that any separate pass over the gradients costs (no mask is read)."""
    _, sparsifier = make_run(sizes, batch, sparse=True)
    sparsifier.detach()
    optimizer, weights = sparsifier.optimizer, sparsifier._weights
    masked, plain = [], []
    for i in range(steps):
        optimizer.zero_grad(set_to_none=True)
        sparsifier.model(torch.randn(batch, sizes[0])).square().mean().backward()
        start = time.perf_counter()
        if i % 2:
            sparsifier._before_optimizer_step(optimizer, (), {})
            masked.append(time.perf_counter() - start)
        else:
            for weight in weights:
                weight.grad.mul_(1.0)
            plain.append(time.perf_counter() - start)
        optimizer.step()
        sparsifier.apply_masks()
    return statistics.median(masked[5:]) * 1e3, statistics.median(plain[5:]) * 1e3


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormal slow-downs would otherwise swamp the comparison
    print_header(f"{args.threads} threads, {args.rounds} interleaved rounds of {args.steps} steps")
    print(
        f"| model | batch | sparse Linear kernels | dense step ms | sparse step ms | ratio | original's ratio (for information, measured on {ORIGINAL_MACHINE}) |"
    )
    print("|---|---|---|---|---|---|---|")
    costs = []
    for label, sizes, batch, original in (
        ("LeNet-300-100", [784, 300, 100, 10], 100, 1.21),
        ("MLP 3072-1024-512-10", [3072, 1024, 512, 10], 128, 1.10),
    ):
        for sparse_linear in (True, False):
            d, s, r = step_ratio(sizes, batch, args.rounds, args.steps, sparse_linear)
            kernels = "on (default)" if sparse_linear else "off: masks only"
            print(f"| {label} | {batch} | {kernels} | {d * 1e3:.3f} | {s * 1e3:.3f} | {r:.3f}x | {original:.2f}x |")
        costs.append((label, d * 1e3, *mask_cost(sizes, batch, steps=400)))
    print()
    print_header()
    print("| inside the step | mask multiply ms | share of dense step | any pass over the gradients (x 1.0) ms | share |")
    print("|---|---|---|---|---|")
    for label, dense_ms, mask_ms, pass_ms in costs:
        print(f"| {label} | {mask_ms:.3f} | {mask_ms / dense_ms:.1%} | {pass_ms:.3f} | {pass_ms / dense_ms:.1%} |")
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
