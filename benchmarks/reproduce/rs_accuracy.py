"""Study 1, the paper's central claim: does exploring more (a higher Rs) give a higher accuracy?

    python benchmarks/reproduce/rs_accuracy.py [--seeds 5] [--quick]

SET-ITOP and RigL-ITOP on LeNet-300-100 at densities 0.1, 0.05 and 0.02, with topology updates
every 25 to 800 optimizer steps (more often = more exploration), and at density 0.05 with batch
sizes 32 to 256 for the same 100 epochs (smaller batches = more steps, more updates); dense and
static runs as references. Prints one table per density and the batch table; `itop report` draws
accuracy against Rs (accuracy_vs_rs.png).
"""

from __future__ import annotations

import common
from common import RIGL, SET, STATIC, Job

DENSITIES = (0.1, 0.05, 0.02)
INTERVALS = (25, 50, 100, 200, 400, 800)
BATCHES = (32, 64, 128, 256)
METHODS = {"SET-ITOP": SET, "RigL-ITOP": RIGL}


def jobs(seeds: int, quick: bool) -> list[Job]:
    densities, intervals, batches = ((0.05,), (25, 100), (64,)) if quick else (DENSITIES, INTERVALS, BATCHES)
    grid = [Job("Dense", (), seed) for seed in range(seeds)]
    for density in densities:
        grid += [Job(f"Static, density {density}", (*STATIC, "--density", str(density)), seed) for seed in range(seeds)]
        for method, flags in METHODS.items():
            for every in intervals:
                grid += [
                    Job(
                        f"{method}, density {density}, every {every} steps",
                        (*flags, "--density", str(density), "--update_frequency", str(every)),
                        seed,
                    )
                    for seed in range(seeds)
                ]
    for method, flags in METHODS.items():
        for batch in batches:
            grid += [
                Job(
                    f"{method}, density 0.05, every 100 steps, batch {batch}",
                    (*flags, "--density", "0.05", "--update_frequency", "100", "--batch-size", str(batch)),
                    seed,
                )
                for seed in range(seeds)
            ]
    return grid


def tables(rows: dict) -> None:
    """One table per density (interval sweep, with dense and static), then the batch-size table."""
    densities = sorted({round(s["density"], 2) for runs in rows.values() for s in runs if s["method"] != "Dense"}, reverse=True)
    for density in densities:
        chosen = {k: v for k, v in rows.items() if k == "Dense" or (f"density {density:g}," in k + "," and "batch" not in k)}
        print(f"### density {density:g}\n\n{common.accuracy_table(chosen)}\n")
    batches = {k: v for k, v in rows.items() if "batch" in k}
    print(f"### density 0.05, batch size at 100 epochs\n\n{common.accuracy_table(batches)}\n")


def reports(results: dict) -> dict:
    """Two reports: the update-interval sweep (with dense and static), and the batch-size sweep."""
    return {
        "rs_accuracy": {job: s for job, s in results.items() if "batch" not in job.label},
        "rs_accuracy_batch": {job: s for job, s in results.items() if "batch" in job.label},
    }


def main() -> None:
    common.run_study(__doc__.splitlines()[0], jobs, "rs_accuracy", print_tables=tables, reports=reports)


if __name__ == "__main__":
    main()
