"""Study 7, the paper's baselines: dynamic sparse training against pruning at initialisation and gradual pruning.

    python benchmarks/reproduce/baselines.py [--seeds 3] [--quick] [--lenet5-epochs 30]

The ITOP paper's claim is comparative: sparse training that keeps exploring (SET-ITOP, RigL-ITOP)
is at least level with the methods that lean on a dense network, pruning at initialisation (SNIP,
Lee et al. 2019; GraSP, Wang et al. 2020; SynFlow, Tanaka et al. 2020; each static after its masks
are chosen: `--init X --fix`) and gradual magnitude pruning from dense (GMP, Zhu & Gupta 2017:
`--gradual --growth none`), and matches GraNet (Liu et al. 2021: `--gradual --growth gradient`,
gradual pruning with regrowth) at a fraction of their training FLOPs. Here, on the embedded digits
with the original recipe, LeNet-300-100 and LeNet-5 at 90%, 95% and 98% sparsity (density 0.1, 0.05
and 0.02), the dense network once per network. SET-ITOP, RigL-ITOP, GMP and GraNet update every 100
optimizer steps (the interval of studies 2 to 6, whose runs this one shares); the gradual methods
prune from dense over the first three quarters of the run, and only epochs at the final density
count as best.

LeNet-300-100 runs the recipe's 100 epochs; LeNet-5 `--lenet5-epochs` (30 by default, as in study
6, whose RigL-ITOP runs it shares: the whole study then takes about an hour on two cores, two runs
at a time). Prints one table per network and density, then a summary at 98% sparsity.
"""

from __future__ import annotations

import statistics

import common
from common import RIGL, SET, STATIC, Job

DENSITIES = ("0.1", "0.05", "0.02")
EVERY = ("--update_frequency", "100")
METHODS = {
    "SNIP": (*STATIC, "--init", "snip"),
    "GraSP": (*STATIC, "--init", "grasp"),
    "SynFlow": (*STATIC, "--init", "synflow"),
    "GMP": ("--sparse", "--gradual", "--growth", "none", "--death", "magnitude", *EVERY),
    "SET-ITOP": (*SET, *EVERY),
    "RigL-ITOP": (*RIGL, *EVERY),
    "GraNet": (*RIGL, "--gradual", *EVERY),
}
PRUNING_AT_INIT = ("SNIP", "GraSP", "SynFlow")
DST = ("SET-ITOP", "RigL-ITOP")
LENET5 = ("--model", "lenet5")


EPOCHS5 = common.lenet5_epochs()


def method_flags(method: str, quick: bool) -> tuple[str, ...]:
    """The method's flags; in a quick run (30 steps) the gradual methods update every 5 steps, since a
    schedule with no update before the end of pruning is refused."""
    flags = METHODS[method]
    if quick and "--gradual" in flags:
        flags = (*flags[: -len(EVERY)], "--update_frequency", "5")
    return flags


def grid(network: str, model: tuple[str, ...], seeds: int, methods, densities, dense: bool = True) -> list[Job]:
    jobs = [Job(f"{network}, Dense", model, s) for s in range(seeds)] if dense else []
    for density in densities:
        for method, flags in methods.items():
            jobs += [Job(f"{network}, {method}, density {density}", (*model, *flags, "--density", density), s) for s in range(seeds)]
    return jobs


def jobs(seeds: int, quick: bool) -> list[Job]:
    if quick:  # density 0.05; LeNet-300-100 with a static, a gradual and a dynamic method; LeNet-5 with SNIP alone
        methods = {m: method_flags(m, True) for m in ("SynFlow", "GMP", "RigL-ITOP", "GraNet")}
        lenet5 = grid("LeNet-5", LENET5, seeds, {"SNIP": METHODS["SNIP"]}, ("0.05",), dense=False)
        return grid("LeNet-300-100", (), seeds, methods, ("0.05",)) + lenet5
    return grid("LeNet-300-100", (), seeds, METHODS, DENSITIES) + grid("LeNet-5", (*LENET5, "--epochs", EPOCHS5), seeds, METHODS, DENSITIES)


def official_or_embedded(runs: list[dict]) -> list[float]:
    """Best-validation accuracies on the official test set, or on the embedded test digits without it."""
    return [s.get("official_best", s["test_acc"]) for s in runs]


def summary(rows: dict[str, list[dict]], network: str, density: str) -> str:
    """One line per comparison the paper makes: the best DST method against the best pruning at
    initialisation, against GMP and against GraNet, with the training FLOPs of each."""

    def mean(method: str) -> tuple[float, float] | None:
        runs = rows.get(f"{network}, {method}, density {density}")
        if not runs:
            return None
        return 100 * statistics.mean(official_or_embedded(runs)), statistics.mean(s["training_flops"] for s in runs)

    present = {m: mean(m) for m in METHODS if mean(m) is not None}
    dst = [m for m in DST if m in present]
    if not dst:
        return ""
    best = max(dst, key=lambda m: present[m][0])
    lines = [f"{network}, density {density}: best DST {best} {present[best][0]:.2f}% at {present[best][1]:.3f}x training FLOPs"]
    others = [max((m for m in PRUNING_AT_INIT if m in present), key=lambda m: present[m][0], default=None), "GMP", "GraNet"]
    for other in [m for m in others if m in present]:
        accuracy, flops = present[other]
        lines.append(
            f"  against {other} {accuracy:.2f}% at {flops:.3f}x: {present[best][0] - accuracy:+.2f} points, "
            f"{present[best][1] / flops:.2f} of its training FLOPs"
        )
    return "\n".join(lines)


def tables(rows: dict[str, list[dict]]) -> None:
    """Per network and density: the methods with the dense network; then the summary at each density."""
    for network in ("LeNet-300-100", "LeNet-5"):
        dense = {k: v for k, v in rows.items() if k == f"{network}, Dense"}
        for density in DENSITIES:
            chosen = {k: v for k, v in rows.items() if k.startswith(f"{network}, ") and k.endswith(f", density {density}")}
            if chosen:
                print(
                    f"### {network}, density {density}\n\n{common.accuracy_table({**dense, **chosen}, first='network, method, density')}\n"
                )
    accuracy = "official test" if all("official_best" in s for runs in rows.values() for s in runs) else "embedded test"
    print(f"### summary ({accuracy}, best-validation checkpoint, mean over seeds)\n")
    for network in ("LeNet-300-100", "LeNet-5"):
        for density in DENSITIES:
            line = summary(rows, network, density)
            if line:
                print(line)


def reports(results: dict[Job, dict]) -> dict[str, dict[Job, dict]]:
    """One `itop report` per network."""
    lenet5 = {job: s for job, s in results.items() if job.label.startswith("LeNet-5")}
    return {"lenet300-100": {job: s for job, s in results.items() if job not in lenet5}, "lenet5": lenet5}


def main() -> None:
    common.run_study(__doc__.splitlines()[0], jobs, "baselines", print_tables=tables, reports=reports)


if __name__ == "__main__":
    main()
