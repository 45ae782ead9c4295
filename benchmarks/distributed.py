"""Two-process gloo training versus one process, and the cost of the cross-rank mask check.

Run by hand:  python benchmarks/distributed.py [--steps 60] [--batch 128]

Part 1 runs sparse training (RigL, density 0.05, MLP 3072-1024-512-10) in this process; part 2
starts the same script under torchrun with 2 processes, each with the same per-process batch
(so the global batch doubles). Printed: time per optimizer step, examples per second, and their
ratios. In the 2-process job it also times `check_masks_agree` (the checksum all-reduce run at
every topology update) against a training step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.distributed as dist
from machine import print_header
from torch import nn

import itop
from itop.sparsity.distributed import check_masks_agree

SIZES = [3072, 1024, 512, 10]


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(SIZES[0], SIZES[1]), nn.ReLU(), nn.Linear(SIZES[1], SIZES[2]), nn.ReLU(), nn.Linear(SIZES[2], SIZES[3]))


def measure(steps: int, batch: int) -> dict:
    world = dist.get_world_size() if dist.is_initialized() else 1
    net = model()
    forward = nn.parallel.DistributedDataParallel(net) if world > 1 else net
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    sp = itop.Sparsifier(net, opt, density=0.05, grow="gradient", update_frequency=None, seed=0)
    x, y = torch.randn(batch, SIZES[0]), torch.randint(0, SIZES[-1], (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(forward(x), y).backward()
        opt.step()
        sp.step()

    for _ in range(5):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    result = {"world": world, "step_s": statistics.median(times), "examples_per_s": world * batch / statistics.median(times)}
    if world > 1:
        checks = []
        for _ in range(20):
            start = time.perf_counter()
            check_masks_agree(sp.masks)
            checks.append(time.perf_counter() - start)
        result["check_s"] = statistics.median(checks)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        dist.init_process_group("gloo")
        torch.set_num_threads(1)
        result = measure(args.steps, args.batch)
        if dist.get_rank() == 0:
            print(json.dumps(result))
        dist.destroy_process_group()
        return
    torch.set_num_threads(2)
    one = measure(args.steps, args.batch)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        "--worker",
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    two = json.loads(out.stdout.strip().splitlines()[-1])
    print_header(f"MLP {'-'.join(map(str, SIZES))}, RigL density 0.05, batch {args.batch} per process (threads: see the table)")
    print("| processes | threads each | step ms | examples/s |")
    print("|---|---|---|---|")
    print(f"| 1 | 2 | {one['step_s'] * 1e3:.1f} | {one['examples_per_s']:.0f} |")
    print(f"| 2 (gloo) | 1 | {two['step_s'] * 1e3:.1f} | {two['examples_per_s']:.0f} |")
    print(f"throughput ratio 2 processes / 1 process: {two['examples_per_s'] / one['examples_per_s']:.2f}x")
    print(
        f"mask agreement check: {two['check_s'] * 1e3:.2f} ms per topology update "
        f"= {two['check_s'] / two['step_s']:.1%} of one training step"
    )


if __name__ == "__main__":
    main()
