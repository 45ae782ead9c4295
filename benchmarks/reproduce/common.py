"""What the reproduction studies share: the original recipe, a resumable grid of `itop train` runs,
the official MNIST test set, and mean ± std tables.

Every run is an `itop train` command whose directory name is derived from its flags, so a study
that is stopped resumes where it was (finished runs are kept, a run with a checkpoint continues
with `--resume`), and two studies asking for the same run share it. Runs go two at a time, each
on one thread (`--workers 2`): LeNet-300-100's small matrices gain little from a second thread.
Test accuracy on the official 10,000 MNIST test images (never in the embedded training digits) is
computed from each run's `best.pt` (the best-validation checkpoint, the original's rule) and
`checkpoint.pt` (the final epoch) and kept in the run directory as `official_test.json`. The test
files (t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz) are read from --test-dir, by default
the itop data directory, where `itop train --data mnist` reads MNIST ($ITOP_DATA_DIR, else
~/.cache/itop/data); without them the tables leave those columns out and say which files to put where.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# The original ITOP code's main.py recipe for MNIST (its README): 100 epochs, batch 100, SGD 0.1 with Nesterov
# momentum 0.9, weight decay 5e-4, LR / 10 at 1/2 and 3/4 of training (itop train's defaults for
# these flags), ERK; on the embedded digits: 3,600 training / 400 validation / 1,000 test.
RECIPE = [
    "--model",
    "lenet300-100",
    "--data",
    "mnist5k",
    "--epochs",
    "100",
    "--batch-size",
    "100",
    "--lr",
    "0.1",
    "--momentum",
    "0.9",
    "--weight-decay",
    "5e-4",
    "--sparse_init",
    "ERK",
    "--no-progress",
]
# 2 epochs: runs of 1 or 2 epochs divide the LR by 10 after 1/2 and 3/4 of their optimizer steps
# (itop.train.optim.multistep_milestones), so a quick run still passes through all three rates
QUICK = ["--epochs", "2", "--batch-size", "250"]

SET = ["--sparse", "--growth", "random", "--death", "magnitude"]  # SET-ITOP: magnitude pruning, random growth
RIGL = ["--sparse", "--growth", "gradient", "--death", "magnitude"]  # RigL-ITOP
STATIC = ["--sparse", "--fix"]

# The original ITOP code (`.cuda()` removed, otherwise unchanged) on these 5,000 digits with a seeded
# 4,500 / 500 split, tested on the official 10,000, 3 seeds, density 0.05: best-validation (final epoch)
# test accuracy, Rs. Measured earlier, not by these scripts.
ORIGINAL = {
    "Dense": ("94.49 ± 0.42", "94.91", "-"),
    "Static": ("91.95 ± 0.51", "92.49", "-"),
    "SET-ITOP (every 75 steps)": ("92.92 ± 0.24", "93.59", "0.52"),
    "RigL-ITOP (every 200 steps)": ("93.92 ± 0.36", "94.02", "0.17"),
}


def lenet5_epochs() -> str:
    """--lenet5-epochs, taken out of the command line before the common flags are parsed."""
    if "--lenet5-epochs" not in sys.argv:
        return "30"
    at = sys.argv.index("--lenet5-epochs")
    value = sys.argv[at + 1]
    del sys.argv[at : at + 2]
    return value


def longer(multiplier: int) -> tuple[str, ...]:
    """The flags of an m-times longer run (none for 1x, so the 1x run is the one other studies train)."""
    return ("--multiplier", str(multiplier)) if multiplier > 1 else ()


@dataclass(frozen=True)
class Job:
    """One `itop train` run: a row label and its flags (seed and recipe added by the study)."""

    label: str
    flags: tuple[str, ...]
    seed: int

    @property
    def name(self) -> str:
        """Directory name: the flags in a fixed order, so equal runs of two studies are one run."""
        pairs, flags = [], list(self.flags)
        while flags:
            key = flags.pop(0).lstrip("-").replace("_", "-")
            value = flags.pop(0) if flags and not flags[0].startswith("--") else ""
            pairs.append(f"{key}-{value}" if value else key)
        return f"{'_'.join(sorted(pairs)) or 'dense'}_seed{self.seed}"


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=str(ROOT / "bench-runs" / "reproduce"), help="where the run directories go")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (each on 2 / workers threads)")
    parser.add_argument(
        "--test-dir",
        default=None,
        help="folder with the official MNIST t10k IDX files (default: the itop data directory, "
        "where `itop train --data mnist` reads MNIST); without them those columns are left out",
    )
    parser.add_argument("--plots", default=None, help="where `itop report` writes this study's tables and PNGs")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed, a reduced grid: checks the script runs")
    args = parser.parse_args()
    if args.test_dir is None:
        from itop.data.download import default_data_dir

        args.test_dir = str(default_data_dir())
    missing = missing_test_files(Path(args.test_dir))
    if missing:
        print(
            f"official MNIST test set not found: put {' and '.join(missing)} in {args.test_dir} or pass --test-dir; "
            "the tables leave its columns out",
            flush=True,
        )
    if args.quick:
        args.seeds = 1
    return args


DIVERGED = "diverged.txt"  # beside a run whose loss became NaN: its result is that it diverged


def train(job: Job, out: Path, quick: bool, threads: int) -> dict | None:
    """The run's summary (training or resuming it unless it finished), or None for a run that
    diverged (itop train stopped it on a NaN loss; kept in <run>/diverged.txt, not retried)."""
    run_dir = out / job.name
    if (run_dir / DIVERGED).is_file():
        return None
    if not (run_dir / "summary.json").is_file():
        if (run_dir / "checkpoint.pt").is_file():
            argv = ["--resume", str(run_dir), "--no-progress"]
        else:
            argv = [*RECIPE, *(QUICK if quick else []), *job.flags, "--seed", str(job.seed), "--save", str(run_dir)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        done = subprocess.run([sys.executable, "-m", "itop", "train", *argv], capture_output=True, text=True, env=env)
        if done.returncode != 0 and "the loss became nan" in done.stderr:
            (run_dir / DIVERGED).write_text(done.stderr.strip().splitlines()[-1] + "\n")
            return None
        if done.returncode != 0:
            raise SystemExit(f"itop train {' '.join(argv)} failed (status {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads((run_dir / "summary.json").read_text())


def run_grid(jobs: list[Job], args: argparse.Namespace) -> dict[Job, dict]:
    """Every job's summary, `args.workers` runs at a time; prints progress and the wall time."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = max(1, 2 // args.workers)
    started, done = time.perf_counter(), 0
    results = {}
    with ThreadPoolExecutor(args.workers) as pool:
        futures = {job: pool.submit(train, job, out, args.quick, threads) for job in jobs}
        for job, future in futures.items():
            results[job] = future.result()
            done += 1
            print(f"\r  {done}/{len(jobs)} runs ({time.perf_counter() - started:.0f} s)", end="", flush=True)
    print(f"\r  {len(jobs)} runs in {time.perf_counter() - started:.0f} s wall time")
    for job in [job for job, summary in results.items() if summary is None]:
        print(f"  diverged, left out of the table: {job.label}, seed {job.seed} ({(out / job.name / DIVERGED).read_text().strip()})")
        del results[job]
    official = official_test_set(Path(args.test_dir))
    for job, summary in results.items():
        if official is not None:
            summary.update(official_accuracy(out / job.name, *official))
    return results


def missing_test_files(directory: Path) -> list[str]:
    """Which of the official MNIST test files `directory` lacks."""
    from itop.data.mnist import MNIST_FILES

    return [name for name in MNIST_FILES["test"] if not (directory / name).is_file()]


def official_test_set(directory: Path):
    """The official 10,000 MNIST test images, normalised as in training, or None when absent."""
    import torch

    from itop.data.mnist import MEAN, MNIST_FILES, STD, read_idx_images, read_idx_labels

    images, labels = (directory / name for name in MNIST_FILES["test"])
    if not images.is_file() or not labels.is_file():
        return None
    return ((read_idx_images(images).float() / 255 - MEAN[0]) / STD[0]).to(torch.float32), read_idx_labels(labels)


def official_accuracy(run_dir: Path, x, y) -> dict:
    """{"official_best": ..., "official_final": ...}: best.pt's and checkpoint.pt's accuracy, cached."""
    import torch

    from itop.models import create_model

    cache = run_dir / "official_test.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    config = json.loads((run_dir / "config.json").read_text())
    result = {}
    for key, file in (("official_best", "best.pt"), ("official_final", "checkpoint.pt")):
        model = create_model(config["model"], num_classes=10, in_channels=1, image_size=28)
        model.load_state_dict(torch.load(run_dir / file, weights_only=True)["model"])
        model.eval()
        with torch.no_grad():
            result[key] = float((model(x).argmax(1) == y).float().mean())
    cache.write_text(json.dumps(result))
    return result


def mean_std(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    values = [scale * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def grouped(results: dict[Job, dict]) -> dict[str, list[dict]]:
    """Summaries by row label (the runs of one setting over its seeds), in the jobs' order."""
    rows: dict[str, list[dict]] = {}
    for job, summary in results.items():
        rows.setdefault(job.label, []).append(summary)
    return rows


def accuracy_table(rows: dict[str, list[dict]], first: str = "setting") -> str:
    """Markdown: per row, test accuracy (best-validation and final epoch) on the embedded test digits and,
    when present, on the official test set; Rs; training FLOPs relative to a 1x dense run (the original
    ITOP code's README convention, as in summary.json) and in absolute terms (what equal-compute comparisons need);
    test FLOPs; seeds."""
    official = all("official_best" in s for runs in rows.values() for s in runs)
    head = [first, "embedded test: best val", "final epoch"]
    if official:
        head += ["official test: best val", "final epoch"]
    head += ["Rs", "Training FLOPs", "training FLOPs, absolute", "Test FLOPs", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, runs in rows.items():
        cells = [label, mean_std([s["test_acc"] for s in runs]), mean_std([s["final_test_acc"] for s in runs])]
        if official:
            cells += [mean_std([s["official_best"] for s in runs]), mean_std([s["official_final"] for s in runs])]
        absolute = statistics.mean(s["training_flops"] * s["dense_training_flops"] for s in runs)
        cells += [
            mean_std([s["itop_rate"] for s in runs], 1.0, 3),
            f"{statistics.mean(s['training_flops'] for s in runs):.3f}x",
            f"{absolute:.3g}",
            f"{statistics.mean(s['test_flops'] for s in runs):.3f}x",
            str(len(runs)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: dict[Job, dict], args: argparse.Namespace, name: str, subdir: bool = False) -> None:
    """`itop report` over the study's runs: its tables and PNGs in --plots (in --plots/<name> when
    the study makes several reports), or <out>/<name>-report."""
    where = str(Path(args.plots, name) if subdir else Path(args.plots)) if args.plots else str(Path(args.out) / f"{name}-report")
    dirs = [str(Path(args.out) / job.name) for job in results]
    from itop.report.cli import main as report_main  # in this process: a new one would import torch again (2 s)

    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        status = report_main([*dirs, "--out", where])
    if status != 0:
        raise SystemExit(f"itop report failed:\n{errors.getvalue()[-2000:]}")
    print(f"itop report: tables and plots in {where}")


def run_study(description: str, jobs, name: str, first: str = "setting", print_tables=None, reports=None) -> None:
    """A study's command: parse the flags, train its grid (`jobs(seeds, quick)`), print its table
    (or `print_tables(rows)`), then `itop report` over its runs (or over each part that
    `reports(results)` names: {report name: results})."""
    args = parse_args(description)
    results = run_grid(jobs(args.seeds, args.quick), args)
    print()
    rows = grouped(results)
    if print_tables is None:
        print(accuracy_table(rows, first=first))
    else:
        print_tables(rows)
    parts = reports(results) if reports else {name: results}
    for part, chosen in parts.items():
        report(chosen, args, part, subdir=len(parts) > 1)
