"""Images per second of the ImageNet loader (PIL decode + crop/flip) per loader worker.

Run by hand:  python benchmarks/imagenet_loader.py [--images 400] [--workers 0 1 2]

Writes a temporary image-folder tree of JPEGs at ImageNet's typical size (500x375, quality 90,
smooth content plus noise so that they compress like photographs, about 60-120 kB each) and
times one pass of the train loader (RandomResizedCrop 224 + flip) and of the validation loader
(resize 256 + centre crop 224) for each worker count. A GPU step of ResNet-50 at batch 256 eats
roughly 2,500-3,000 images/s on an A100/H100, which is the figure to divide by.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import print_header

from itop.data.imagenet import make_imagenet_loader


def write_tree(root: Path, images: int, classes: int = 4) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    for split, count in (("train", images), ("val", images // 2)):
        for i in range(count):
            folder = root / split / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            phase = rng.uniform(0, 6.3, 3)
            smooth = np.stack([127 + 100 * np.sin(xx / (40 + 20 * c) + yy / 55 + phase[c]) for c in range(3)], -1)
            pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{i}.JPEG", quality=90)


def images_per_second(root: Path, split: str, workers: int) -> float:
    loader = make_imagenet_loader(root, split, batch_size=32, workers=workers)
    count, start = 0, time.perf_counter()
    for images, _ in loader:
        count += len(images)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_tree(root, args.images)
        size_kb = np.mean([p.stat().st_size for p in root.rglob("*.JPEG")]) / 1024
        print_header(f"{args.images} train / {args.images // 2} val JPEGs of 500x375, {size_kb:.0f} kB on average")
        print("| workers | train images/s | per worker | val images/s | per worker |")
        print("|---|---|---|---|---|")
        for workers in args.workers:
            train, val = images_per_second(root, "train", workers), images_per_second(root, "val", workers)
            per = max(workers, 1)
            print(f"| {workers} | {train:.0f} | {train / per:.0f} | {val:.0f} | {val / per:.0f} |")


if __name__ == "__main__":
    main()
