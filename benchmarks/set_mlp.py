"""SET-MLP against the same MLP dense and static sparse, and against the truly sparse SET-MLP it reproduces.

Run by hand:  python benchmarks/set_mlp.py [--epochs 60] [--seeds 3] [--out bench-runs/set-mlp] [--quick]
              python benchmarks/set_mlp.py --reference-dir CHECKOUT [--reference-python PYTHON] [--epochs 5] [--seeds 3]

Without --reference-dir: the SET papers' claim (Mocanu et al. 2018): with epsilon 20, an MLP whose
connections evolve (SET) matches or beats the dense MLP and clearly beats the same sparse graph
left fixed (static). Here the 784-1000-1000-1000-10 MLP trains with `itop train` on the embedded
digits (4,000 for training, no validation split: the final epoch is tested, as SET does) and is
tested on the embedded 1,000 test digits and, where present, on the official 10,000 MNIST test
images (t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in --test-dir, by default itop's
data directory: $ITOP_DATA_DIR or ~/.cache/itop/data, where `itop train --data mnist` keeps them),
none of which it saw.

With --reference-dir CHECKOUT (a checkout of the truly sparse SET-MLP of Liu, Mocanu et al. 2021,
github.com/Shiweiliuiiiiiii/SET-MLP-ONE-MILLION-NEURONS, its Cython module built): accuracy side by
side. The reference (run by benchmarks/set_reference.py, under --reference-python) and
`itop train --preset million-neurons --hidden 1000,1000,1000` train on the same 4,000 embedded
digits (itop's training split of `mnist5k`), 784-1000-1000-1000-10, ReLU, softmax and
cross-entropy, epsilon 10, zeta 0.3, batch 2, no dropout, 5 epochs, seeds 1..3, and are tested on
the official 10,000 test images (required here). itop also runs at the reference's nominal lr 0.01
and weight decay 2e-4 (the preset's values before they were matched to the reference's step) and
at lr 0.005 with weight decay 2e-4 (the step alone matched), for contrast. Each row gives the mean
± std test accuracy, every seed's, and the training loss per epoch (mean over seeds).

Every run is a directory (a JSON file for the reference) under --out; a finished run is not
trained again (the study resumes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_line, print_header

RECIPE = [
    "--model",
    "set-mlp",
    "--data",
    "mnist5k",
    "--valid_split",
    "0",
    "--activation",
    "relu",
    "--dropout",
    "0.3",
    "--batch-size",
    "32",
    "--lr",
    "0.01",
    "--momentum",
    "0.9",
    "--no-nesterov",
    "--weight-decay",
    "2e-4",
    "--lr-schedule",
    "constant",
    "--no-progress",
]
SPARSE = ["--sparse", "--epsilon", "20", "--truly-sparse", "--init-scale", "sparse"]
METHODS = {
    "Dense": [],
    "Static (epsilon 20)": [*SPARSE, "--fix"],
    "SET (epsilon 20, zeta 0.3)": [
        *SPARSE,
        "--death",
        "SET",
        "--death-rate",
        "0.3",
        "--decay-schedule",
        "constant",
        "--growth",
        "random",
        "--update-every",
        "epoch",
    ],
}


# The truly sparse SET-MLP's own recipe (its __main__), at the comparison's architecture and data.
REFERENCE_RECIPE = dict(epsilon=10, zeta=0.3, batch_size=2, lr=0.01, momentum=0.9, weight_decay=2e-4)
# itop beside it: the preset, then its former values (the reference's nominal numbers) and the step alone.
ITOP_CONTRASTS = {
    "lr 0.01, weight decay 2e-4 (the reference's nominal values)": dict(lr=0.01, weight_decay=2e-4),
    "lr 0.005, weight decay 2e-4 (the step alone matched)": dict(lr=0.005, weight_decay=2e-4),
}


def train(run_dir: Path, argv: list[str]) -> dict:
    """The run's summary.json, training it first unless a finished one is there."""
    summary = run_dir / "summary.json"
    if not summary.is_file():
        if (run_dir / "checkpoint.pt").is_file():
            argv = ["--resume", str(run_dir), "--no-progress"]
        else:
            argv = [*argv, "--save", str(run_dir)]
        done = subprocess.run([sys.executable, "-m", "itop", "train", *argv], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"itop train {' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return json.loads(summary.read_text())


def default_test_dir() -> Path:
    """Where itop keeps MNIST's IDX files: its data directory ($ITOP_DATA_DIR or ~/.cache/itop/data)."""
    from itop.data import default_data_dir

    return default_data_dir()


def official_test_set(directory: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    from itop.data.mnist import MEAN, MNIST_FILES, STD, read_idx_images, read_idx_labels

    images_name, labels_name = MNIST_FILES["test"]
    if not (directory / images_name).is_file() or not (directory / labels_name).is_file():
        return None
    images, labels = read_idx_images(directory / images_name), read_idx_labels(directory / labels_name)
    return (images.float() / 255 - MEAN[0]) / STD[0], labels


@torch.no_grad()
def final_accuracy(run_dir: Path, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of the run's last epoch (checkpoint.pt) on (x, y), the model rebuilt from its config."""
    from itop.train.config import TrainConfig
    from itop.train.model_setup import build_model

    cfg = TrainConfig(**json.loads((run_dir / "config.json").read_text()))
    model, _ = build_model(cfg, num_classes=10, in_channels=1, image_size=28)
    model.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"])
    model.eval()
    correct = sum(int((model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum()) for i in range(0, len(y), 1000))
    return correct / len(y)


def mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    values = [v * scale for v in values]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def short(x: float) -> str:
    """0.0002 as 2e-4, 0.005 as 0.005."""
    return f"{x:.0e}".replace("e-0", "e-") if 0 < x < 1e-3 else f"{x:g}"


def epoch_losses(run_dir: Path) -> list[float]:
    records = (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r["train_loss"] for r in records if r["kind"] == "epoch"]


def comparison_data(path: Path, official: tuple[torch.Tensor, torch.Tensor]) -> Path:
    """The reference's input: itop's training split of mnist5k (what --preset million-neurons trains on,
    normalised as itop's loader does) and the official test images, flattened, labels as class numbers."""
    if not path.is_file():
        from itop.data import load_dataset
        from itop.data.mnist import MEAN, STD

        train = load_dataset("mnist5k", valid_split=0.0).train
        x_train = (train.images.float() / 255 - MEAN[0]) / STD[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            x_train=x_train.reshape(len(x_train), -1).numpy(),
            y_train=train.labels.numpy(),
            x_test=official[0].reshape(len(official[0]), -1).numpy(),
            y_test=official[1].numpy(),
        )
    return path


def run_reference(args, data: Path, seed: int) -> dict:
    """The reference's result for `seed` (set_reference.py's JSON), running it first unless it is there."""
    r = REFERENCE_RECIPE
    out = Path(args.out) / (
        f"reference-e{args.epochs}-h{args.hidden.replace(',', 'x')}-eps{r['epsilon']}-b{r['batch_size']}"
        f"-lr{short(r['lr'])}-wd{short(r['weight_decay'])}-s{seed}.json"
    )
    if not out.is_file():
        argv = [
            args.reference_python,
            str(Path(__file__).resolve().parent / "set_reference.py"),
            "--reference-dir",
            args.reference_dir,
            "--data",
            str(data),
            "--out",
            str(out),
            "--seed",
            str(seed),
            "--epochs",
            str(args.epochs),
            "--hidden",
            args.hidden,
            *(x for key, value in r.items() for x in (f"--{key.replace('_', '-')}", str(value))),
        ]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the reference run failed ({' '.join(argv)}):\n{done.stderr[-2000:]}")
    return json.loads(out.read_text())


def compare_with_reference(args, official) -> None:
    """The truly sparse SET-MLP and `itop train --preset million-neurons`, side by side on the same data."""
    from itop.train.presets import PRESETS

    preset = PRESETS["million-neurons"].values
    data = comparison_data(Path(args.out) / "mnist5k-train-and-official-test.npz", official)
    r = REFERENCE_RECIPE
    print(f"same data for both: itop's mnist5k training split (4,000 digits), tested on the official 10,000 (written to {data})")
    print(
        f"reference: {args.reference_dir} under {args.reference_python}; its recipe: epsilon {r['epsilon']}, zeta {r['zeta']}, batch "
        f"{r['batch_size']}, lr {r['lr']:g} (its gradient divided by the batch twice: a step of {r['lr'] / r['batch_size']:g} on the "
        f"mean gradient), momentum {r['momentum']}, weight decay {short(r['weight_decay'])} per step outside lr and momentum, no dropout"
    )
    rows, started = [], time.perf_counter()
    results = [run_reference(args, data, seed) for seed in range(1, args.seeds + 1)]
    print(
        f"  reference: done ({time.perf_counter() - started:.0f} s so far); its workarounds: "
        f"{'; '.join(results[0]['workarounds']) or 'none needed'}",
        flush=True,
    )
    rows.append(
        (
            "truly sparse SET-MLP (Liu, Mocanu et al. 2021)",
            f"lr {r['lr']:g}, gradient / batch twice: {r['lr'] / r['batch_size']:g}",
            f"{short(r['weight_decay'])} per step",
            [x["test_acc"] for x in results],
            [x["train_loss"] for x in results],
            [x["seconds"] for x in results],
        )
    )
    systems = {f"itop --preset million-neurons (lr {short(preset['lr'])}, weight decay {short(preset['weight_decay'])})": {}}
    systems.update({f"itop, {label}": values for label, values in ITOP_CONTRASTS.items()})
    for label, values in systems.items():
        lr, wd = values.get("lr", preset["lr"]), values.get("weight_decay", preset["weight_decay"])
        accs, losses, seconds = [], [], []
        for seed in range(1, args.seeds + 1):
            run_dir = (
                Path(args.out) / f"itop-million-neurons-lr{short(lr)}-wd{short(wd)}-e{args.epochs}-h{args.hidden.replace(',', 'x')}-s{seed}"
            )
            overrides = [x for key, value in values.items() for x in (f"--{key.replace('_', '-')}", f"{value:g}")]
            summary = train(
                run_dir,
                [
                    "--preset",
                    "million-neurons",
                    "--hidden",
                    args.hidden,
                    "--epochs",
                    str(args.epochs),
                    "--seed",
                    str(seed),
                    "--no-progress",
                    *overrides,
                ],
            )
            accs.append(final_accuracy(run_dir, *official))
            losses.append(epoch_losses(run_dir))
            seconds.append(summary["seconds"])
        rows.append((label, short(lr), f"{short(wd)} (torch SGD)", accs, losses, seconds))
        print(f"  {label}: done ({time.perf_counter() - started:.0f} s so far)", flush=True)
    print()
    print_header()
    print(
        "| system | step on the mean gradient | weight decay | official MNIST test (10,000), % | per seed (1, 2, 3 ...) | "
        "training loss per epoch (mean over seeds) | s per run |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, step, wd, accs, losses, seconds in rows:
        per_epoch = [statistics.mean(run[e] for run in losses) for e in range(len(losses[0]))]
        print(
            f"| {label} | {step} | {wd} | {mean_std(accs, 100)} | {', '.join(f'{100 * a:.2f}' for a in accs)} | "
            f"{', '.join(f'{v:.3f}' for v in per_epoch)} | {mean_std(seconds, 1, 0)} |"
        )
    print()
    reference = statistics.mean(rows[0][3])
    for label, *_, accs, _losses, _seconds in rows[1:]:
        print(f"{label} - reference: {100 * (statistics.mean(accs) - reference):+.2f} points (official test set, mean over seeds)")
    print(f"(total {time.perf_counter() - started:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="default 60; 5 with --reference-dir")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--hidden", default="1000,1000,1000")
    parser.add_argument("--out", default=None, help="default bench-runs/set-mlp; bench-runs/set-mlp-reference with --reference-dir")
    parser.add_argument(
        "--test-dir",
        default=None,
        help="where t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz are (default: itop's data directory, "
        "$ITOP_DATA_DIR or ~/.cache/itop/data)",
    )
    parser.add_argument(
        "--reference-dir",
        default=None,
        help="a checkout of the truly sparse SET-MLP (github.com/Shiweiliuiiiiiii/SET-MLP-ONE-MILLION-NEURONS), "
        "its Cython module built: compare accuracy with it instead of the dense/static/SET study",
    )
    parser.add_argument(
        "--reference-python",
        default=sys.executable,
        help="the Python that runs the reference (NumPy, SciPy, its built module); default this one",
    )
    parser.add_argument("--quick", action="store_true", help="1-2 epochs, 1 seed, hidden 100,100: checks the script runs")
    args = parser.parse_args()
    reference = args.reference_dir is not None
    args.epochs = args.epochs or (5 if reference else 60)
    args.out = args.out or ("bench-runs/set-mlp-reference" if reference else "bench-runs/set-mlp")
    if args.quick:
        args.epochs, args.seeds, args.hidden = (1 if reference else 2), 1, "100,100"
    test_dir = Path(args.test_dir).expanduser() if args.test_dir else default_test_dir()
    official = official_test_set(test_dir)
    print(machine_line())
    print(f"784-{args.hidden.replace(',', '-')}-10, {args.epochs} epochs, seeds 1..{args.seeds}; runs in {args.out}")
    missing = f"official MNIST test set: t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz not found in {test_dir} (give --test-dir)"
    if reference:
        if not official:
            raise SystemExit(missing + "; the comparison with the reference is on them.")
        print(f"official MNIST test set: {test_dir}")
        compare_with_reference(args, official)
        return
    print(f"official MNIST test set: {test_dir}" if official else missing + "; its column is left empty")
    rows, started = [], time.perf_counter()
    for method, flags in METHODS.items():
        summaries, official_accs = [], []
        for seed in range(1, args.seeds + 1):
            run_dir = Path(args.out) / f"{method.split(' ')[0].lower()}-e{args.epochs}-h{args.hidden.replace(',', 'x')}-s{seed}"
            summaries.append(train(run_dir, [*RECIPE, *flags, "--hidden", args.hidden, "--epochs", str(args.epochs), "--seed", str(seed)]))
            if official:
                official_accs.append(final_accuracy(run_dir, *official))
        rows.append((method, summaries, official_accs))
        print(f"  {method}: done ({time.perf_counter() - started:.0f} s so far)", flush=True)
    print()
    print_header()
    print(
        "| method | density | embedded test digits (1,000), % | official MNIST test (10,000), % | Rs | training FLOPs | test FLOPs | s per run |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for method, summaries, official_accs in rows:
        print(
            f"| {method} | {summaries[0]['density']:.4f} | {mean_std([s['test_acc'] for s in summaries], 100)} | "
            f"{mean_std(official_accs, 100) if official_accs else '-'} | {mean_std([s['itop_rate'] for s in summaries], 1, 3)} | "
            f"{summaries[0]['training_flops']:.3f}x | {summaries[0]['test_flops']:.3f}x | {mean_std([s['seconds'] for s in summaries], 1, 0)} |"
        )
    dense, static, evolving = ([s["test_acc"] for s in r[1]] for r in rows)
    print()
    print(
        f"SET - dense: {100 * (statistics.mean(evolving) - statistics.mean(dense)):+.2f} points; "
        f"SET - static: {100 * (statistics.mean(evolving) - statistics.mean(static)):+.2f} points (embedded test digits, mean over seeds)"
    )
    if rows[0][2]:
        means = [statistics.mean(r[2]) for r in rows]
        print(
            f"official test set: SET - dense {100 * (means[2] - means[0]):+.2f} points, SET - static {100 * (means[2] - means[1]):+.2f} points"
        )
    print(f"(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
