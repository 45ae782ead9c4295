"""Study 5, sparse momentum: does momentum growth explore, and how does it compare with SET and RigL?

    python benchmarks/reproduce/momentum.py [--seeds 5] [--quick]

`--growth momentum` (Dettmers & Zettlemoyer 2019: grow where the running average of the dense
gradients is largest), with and without `--redistribution momentum`, against SET-ITOP and
RigL-ITOP, all at density 0.05 with an update every 100 steps. The original's momentum growth
never explored (its Rs stayed at the density); here Rs says whether ours does.
"""

from __future__ import annotations

import common
from common import RIGL, SET, Job

METHODS = {
    "SET-ITOP": SET,
    "RigL-ITOP": RIGL,
    "momentum growth": ("--sparse", "--growth", "momentum", "--death", "magnitude"),
    "momentum growth + momentum redistribution": (
        "--sparse",
        "--growth",
        "momentum",
        "--death",
        "magnitude",
        "--redistribution",
        "momentum",
    ),
}


def jobs(seeds: int, quick: bool) -> list[Job]:
    return [
        Job(method, (*flags, "--density", "0.05", "--update_frequency", "100"), seed)
        for method, flags in METHODS.items()
        for seed in range(seeds)
    ]


def main() -> None:
    common.run_study(__doc__.splitlines()[0], jobs, "momentum", first="method")


if __name__ == "__main__":
    main()
