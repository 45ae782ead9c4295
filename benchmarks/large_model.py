"""Engine cost on a large model: ImageNet ResNet-50 (25.5M sparse weights) at density 0.2.

Run by hand:  python benchmarks/large_model.py [--repeats 3]

Prints the sparsifier's construction time (ER masks), the time of one topology update for SET
and RigL, and the engine's memory per sparse weight, measured from the tensors it holds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import print_header

import itop
from itop.models import create_model


def build(grow: str):
    torch.manual_seed(0)
    model = create_model("imagenet-resnet50", num_classes=1000)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    start = time.perf_counter()
    sparsifier = itop.Sparsifier(model, optimizer, density=0.2, distribution="er", grow=grow, seed=0)
    return model, sparsifier, time.perf_counter() - start


def state_bytes(sparsifier) -> int:
    tensors = [
        *sparsifier.masks.values(),
        *sparsifier._multipliers,
        *sparsifier.exploration.explored.values(),
        *sparsifier.grad_average.values(),
    ]
    return sum(t.numel() * t.element_size() for t in tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 1000, (4,))
    print_header("ImageNet ResNet-50, density 0.2 (ER)")
    print("| grow | construction s | one update s | engine bytes per sparse weight |")
    print("|---|---|---|---|")
    for grow in ("random", "gradient", "momentum"):
        model, sparsifier, init_s = build(grow)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            sparsifier.update_topology()
            times.append(time.perf_counter() - start)
        weights = sum(p.numel() for p in sparsifier.params.values())
        print(f"| {grow} | {init_s:.2f} | {statistics.median(times):.2f} | {state_bytes(sparsifier) / weights:.1f} |")


if __name__ == "__main__":
    main()
