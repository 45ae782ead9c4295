"""Study 3, equal training FLOPs: SET vs RigL vs static vs dense when each gets the same compute.

    python benchmarks/reproduce/equal_flops.py [--seeds 5] [--quick]

At density 0.05 a sparse run of 100 epochs costs about 5% of a dense run's training FLOPs (RigL a
little more: a dense gradient at each update). The dense network gets the same budget by training
5 epochs (and 10 for sparse runs at 2x); the table shows the Training FLOPs and Test FLOPs columns
of the original ITOP code's README beside the accuracies, and `itop report` plots accuracy against
training FLOPs.
"""

from __future__ import annotations

import common
from common import RIGL, SET, STATIC, Job, longer

SPARSE = {"Static": STATIC, "SET-ITOP": (*SET, "--update_frequency", "100"), "RigL-ITOP": (*RIGL, "--update_frequency", "100")}


def jobs(seeds: int, quick: bool) -> list[Job]:
    multipliers = (1,) if quick else (1, 2)
    grid = [Job("Dense, 100 epochs (1x FLOPs)", (), seed) for seed in range(seeds)]
    for m in multipliers:
        epochs = 5 * m
        grid += [Job(f"Dense, {epochs} epochs (the budget of 0.05 x {m})", ("--epochs", str(epochs)), seed) for seed in range(seeds)]
        for method, flags in SPARSE.items():
            grid += [
                Job(f"{method}, density 0.05, {m}x training", (*flags, "--density", "0.05", *longer(m)), seed) for seed in range(seeds)
            ]
    return grid


def main() -> None:
    common.run_study(__doc__.splitlines()[0], jobs, "equal_flops", first="setting")


if __name__ == "__main__":
    main()
