"""Study 6, structured sparsity: RigL against SRigL (constant fan-in with neuron ablation) and N:M.

    python benchmarks/reproduce/structured.py [--seeds 3] [--quick] [--lenet5-epochs 30]

SRigL (Lasby et al. 2024, "Dynamic Sparse Training with Structured Sparsity") reports that a
constant fan-in with neuron ablation comes within about half a point of RigL's accuracy. Here, on
the embedded digits with the original recipe, RigL-ITOP (unstructured), RigL-ITOP with
`--structure fan-in --ablation` (SRigL) and RigL-ITOP with `--structure fan-in` alone, at 90% and 95%
sparsity; and RigL-ITOP at 2:4 and 1:4 (whose density is fixed at 1/2 and 1/4) beside unstructured
RigL-ITOP at those same densities.

LeNet-300-100 runs the recipe's 100 epochs; LeNet-5 (whose first convolution, 25 inputs per
filter, stays dense under N:M) `--lenet5-epochs` (30 by default, for the budget: a 100-epoch
LeNet-5 run takes about four minutes on one thread).
"""

from __future__ import annotations

import common
from common import RIGL, Job

STRUCTURES = {
    "unstructured": (),
    "fan-in": ("--structure", "fan-in"),
    "SRigL (fan-in + ablation)": ("--structure", "fan-in", "--ablation"),
}
N_M = {"2:4": "0.5", "1:4": "0.25"}
LENET5 = ("--model", "lenet5")


EPOCHS5 = common.lenet5_epochs()


def grid(network: str, model: tuple[str, ...], seeds: int, quick: bool) -> list[Job]:
    """The network's runs; `quick` keeps density 0.05, unstructured against SRigL, and 2:4 alone."""
    flags = (*model, *RIGL, "--update_frequency", "100")
    structures = {k: v for k, v in STRUCTURES.items() if not quick or k != "fan-in"}
    jobs = []
    for density in ("0.05",) if quick else ("0.1", "0.05"):
        for name, extra in structures.items():
            jobs += [
                Job(f"{network}, RigL-ITOP {name}, density {density}", (*flags, "--density", density, *extra), s) for s in range(seeds)
            ]
    for pattern, density in N_M.items():
        if quick and pattern == "1:4":
            continue
        jobs += [Job(f"{network}, RigL-ITOP {pattern}, density {density}", (*flags, "--structure", pattern), s) for s in range(seeds)]
        if not quick:
            jobs += [Job(f"{network}, RigL-ITOP unstructured, density {density}", (*flags, "--density", density), s) for s in range(seeds)]
    return jobs


def jobs(seeds: int, quick: bool) -> list[Job]:
    if quick:  # LeNet-5 with SRigL alone: the script's paths, in seconds
        return grid("LeNet-300-100", (), seeds, quick) + grid("LeNet-5", LENET5, seeds, quick)[1:2]
    return grid("LeNet-300-100", (), seeds, quick) + grid("LeNet-5", (*LENET5, "--epochs", EPOCHS5), seeds, quick)


def reports(results: dict[Job, dict]) -> dict[str, dict[Job, dict]]:
    """One `itop report` per network."""
    lenet5 = {job: s for job, s in results.items() if job.label.startswith("LeNet-5")}
    return {"lenet300-100": {job: s for job, s in results.items() if job not in lenet5}, "lenet5": lenet5}


def main() -> None:
    common.run_study(__doc__.splitlines()[0], jobs, "structured", first="network, method, density", reports=reports)


if __name__ == "__main__":
    main()
