"""Study 4, initialisation: uniform vs ER vs ERK layer densities at the same global density.

    python benchmarks/reproduce/initialisation.py [--seeds 5] [--quick]

SET-ITOP and RigL-ITOP on LeNet-300-100 at density 0.05 with each distribution. In an MLP every
weight costs the same FLOPs, so equal density is equal FLOPs here (the Training / Test FLOPs
columns show it); the distributions differ only in where the weights sit.
"""

from __future__ import annotations

import common
from common import RIGL, SET, Job

DISTRIBUTIONS = ("uniform", "ER", "ERK")
METHODS = {"SET-ITOP": (*SET, "--update_frequency", "100"), "RigL-ITOP": (*RIGL, "--update_frequency", "100")}


def jobs(seeds: int, quick: bool) -> list[Job]:
    grid = []
    for method, flags in METHODS.items():
        for distribution in (("uniform", "ERK") if quick else DISTRIBUTIONS):
            extra = () if distribution == "ERK" else ("--sparse_init", distribution)  # ERK: the recipe's own flag
            grid += [Job(f"{method}, {distribution}", (*flags, "--density", "0.05", *extra), seed) for seed in range(seeds)]
    return grid


def main() -> None:
    common.run_study(__doc__.splitlines()[0], jobs, "initialisation", first="method, distribution")


if __name__ == "__main__":
    main()
