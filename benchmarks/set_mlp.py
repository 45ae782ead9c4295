"""SET-MLP against the same MLP dense and static sparse: does SET match or beat both at a few percent of the weights?

Run by hand:  python benchmarks/set_mlp.py [--epochs 60] [--seeds 3] [--out bench-runs/set-mlp] [--quick]

The SET papers' claim (Mocanu et al. 2018; SET.md's table): with epsilon 20, an MLP whose
connections evolve (SET) matches or beats the dense MLP and clearly beats the same sparse graph
left fixed (static). Here the 784-1000-1000-1000-10 MLP trains with `itop train` on the embedded
digits (4,000 for training, no validation split: the final epoch is tested, as SET does) and is
tested on the embedded 1,000 test digits and, where present, on the official 10,000 MNIST test
images (../shared/data/mnist-test beside the checkout, or --test-dir), none of which it saw.
Every run is a directory under --out; a finished run is not trained again (the study resumes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RECIPE = ["--model", "set-mlp", "--data", "mnist5k", "--valid_split", "0", "--activation", "relu", "--dropout", "0.3",
          "--batch-size", "32", "--lr", "0.01", "--momentum", "0.9", "--no-nesterov", "--weight-decay", "2e-4",
          "--lr-schedule", "constant", "--no-progress"]
SPARSE = ["--sparse", "--epsilon", "20", "--truly-sparse", "--init-scale", "sparse"]
METHODS = {
    "Dense": [],
    "Static (epsilon 20)": [*SPARSE, "--fix"],
    "SET (epsilon 20, zeta 0.3)": [*SPARSE, "--death", "SET", "--death-rate", "0.3", "--decay-schedule", "constant",
                                   "--growth", "random", "--update-every", "epoch"],
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


def official_test_set(directory: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    from itop.data.mnist import MEAN, MNIST_FILES, STD, read_idx_images, read_idx_labels

    images_name, labels_name = MNIST_FILES["test"]
    if not (directory / images_name).is_file():
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
    correct = sum(int((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum()) for i in range(0, len(y), 1000))
    return correct / len(y)


def mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    values = [v * scale for v in values]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--hidden", default="1000,1000,1000")
    parser.add_argument("--out", default="bench-runs/set-mlp")
    parser.add_argument("--test-dir", default=str(here.parent.parent / "shared" / "data" / "mnist-test"))
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed, hidden 100,100: checks the script runs")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.seeds, args.hidden = 2, 1, "100,100"
    official = official_test_set(Path(args.test_dir))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 784-{args.hidden.replace(',', '-')}-10, {args.epochs} epochs, "
          f"seeds 1..{args.seeds}; runs in {args.out}")
    print("official MNIST test set: " + (f"{args.test_dir}" if official else f"not found in {args.test_dir} (column left empty)"))
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
    print("| method | density | embedded test digits (1,000), % | official MNIST test (10,000), % | Rs | training FLOPs | test FLOPs | s per run |")
    print("|---|---|---|---|---|---|---|---|")
    for method, summaries, official_accs in rows:
        print(f"| {method} | {summaries[0]['density']:.4f} | {mean_std([s['test_acc'] for s in summaries], 100)} | "
              f"{mean_std(official_accs, 100) if official_accs else '-'} | {mean_std([s['itop_rate'] for s in summaries], 1, 3)} | "
              f"{summaries[0]['training_flops']:.3f}x | {summaries[0]['test_flops']:.3f}x | {mean_std([s['seconds'] for s in summaries], 1, 0)} |")
    dense, static, evolving = ([s["test_acc"] for s in r[1]] for r in rows)
    print()
    print(f"SET - dense: {100 * (statistics.mean(evolving) - statistics.mean(dense)):+.2f} points; "
          f"SET - static: {100 * (statistics.mean(evolving) - statistics.mean(static)):+.2f} points (embedded test digits, mean over seeds)")
    if rows[0][2]:
        means = [statistics.mean(r[2]) for r in rows]
        print(f"official test set: SET - dense {100 * (means[2] - means[0]):+.2f} points, SET - static {100 * (means[2] - means[1]):+.2f} points")
    print(f"(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
