"""Study 4, initialisation: uniform vs ER vs ERK layer densities, at the same density and at the same FLOPs.

    python benchmarks/reproduce/initialisation.py [--seeds 5] [--quick]

LeNet-300-100: SET-ITOP and RigL-ITOP at density 0.05 with each distribution. In an MLP every
weight costs the same FLOPs, so equal density is equal FLOPs (the Training / Test FLOPs columns
show it); the distributions differ only in where the weights sit.

LeNet-5 (two 5x5 convolutions, then 800-500-10), where ER and ERK differ (ERK counts the kernel):
SET-ITOP with each distribution at density 0.05, where ERK gives the small convolutions more weights and so costs
more FLOPs, and again with uniform and ER at the density whose test FLOPs equal ERK's at 0.05
(found by bisection on the layer densities the Sparsifier chooses). At most 3 seeds: a LeNet-5
run takes about four minutes on one thread.
"""

from __future__ import annotations

import common
from common import RIGL, SET, Job

DISTRIBUTIONS = ("uniform", "ER", "ERK")
METHODS = {"SET-ITOP": (*SET, "--update_frequency", "100"), "RigL-ITOP": (*RIGL, "--update_frequency", "100")}
LENET5 = ("--model", "lenet5")
LENET5_SEEDS = 3


def test_flops(model_name: str, distribution: str, density: float) -> float:
    """Test FLOPs relative to dense of `model_name` with `distribution` at `density`, as itop train counts them."""
    import torch

    import itop
    from itop.models import create_model

    model = create_model(model_name, num_classes=10, in_channels=1, image_size=28)
    sparsifier = itop.Sparsifier(
        model, torch.optim.SGD(model.parameters(), lr=0.1), density=density, distribution=distribution.lower(), seed=0
    )
    counts = itop.flops.count_flops(model, torch.zeros(1, 1, 28, 28))
    return itop.flops.inference_ratio(counts, {n: s["density"] for n, s in sparsifier.layer_stats().items()})


def density_for_flops(model_name: str, distribution: str, target: float) -> float:
    """The density at which `distribution` costs `target` test FLOPs (bisection; FLOPs grow with density)."""
    low, high = 1e-3, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (middle, high) if test_flops(model_name, distribution, middle) < target else (low, middle)
    return round((low + high) / 2, 4)


def lenet5_jobs(seeds: int, quick: bool) -> list[Job]:
    """SET-ITOP only (the budget): each distribution at density 0.05, and uniform and ER at ERK's FLOPs."""
    seeds, flags = min(seeds, LENET5_SEEDS), METHODS["SET-ITOP"]
    grid = [] if quick else [Job("LeNet-5, Dense", LENET5, seed) for seed in range(seeds)]
    erk_flops = test_flops("lenet5", "ERK", 0.05)
    for distribution in ("uniform", "ERK") if quick else DISTRIBUTIONS:
        extra = () if distribution == "ERK" else ("--sparse_init", distribution)
        grid += [
            Job(f"LeNet-5, SET-ITOP, {distribution}, density 0.05", (*LENET5, *flags, "--density", "0.05", *extra), seed)
            for seed in range(seeds)
        ]
        if distribution != "ERK" and not quick:
            density = density_for_flops("lenet5", distribution, erk_flops)
            grid += [
                Job(
                    f"LeNet-5, SET-ITOP, {distribution}, density {density:g} (ERK's FLOPs)",
                    (*LENET5, *flags, "--density", f"{density:g}", *extra),
                    seed,
                )
                for seed in range(seeds)
            ]
    return grid


def jobs(seeds: int, quick: bool) -> list[Job]:
    grid = []
    for method, flags in METHODS.items():
        for distribution in ("uniform", "ERK") if quick else DISTRIBUTIONS:
            extra = () if distribution == "ERK" else ("--sparse_init", distribution)  # ERK: the recipe's own flag
            grid += [Job(f"{method}, {distribution}", (*flags, "--density", "0.05", *extra), seed) for seed in range(seeds)]
    return grid + lenet5_jobs(seeds, quick)


def reports(results: dict[Job, dict]) -> dict[str, dict[Job, dict]]:
    """One `itop report` per network: LeNet-300-100 and LeNet-5 runs in separate tables and plots."""
    lenet5 = {job: s for job, s in results.items() if job.label.startswith("LeNet-5")}
    return {"lenet300-100": {job: s for job, s in results.items() if job not in lenet5}, "lenet5": lenet5}


def main() -> None:
    common.run_study(__doc__.splitlines()[0], jobs, "initialisation", first="method, distribution", reports=reports)


if __name__ == "__main__":
    main()
