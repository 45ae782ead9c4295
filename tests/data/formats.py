"""Writers for tiny dataset files in the exact on-disk formats users bring.

The readers are tested on these instead of the real (large, undownloadable here) files.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    """Gzipped IDX file: big-endian magic, dimensions, then the uint8 bytes."""
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.tobytes())


def write_mnist_dir(directory: Path, n_train: int = 40, n_test: int = 12, seed: int = 0) -> dict:
    """The four MNIST IDX files with random 28x28 images; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train": (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), np.arange(n_train) % 10),
        "test": (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), np.arange(n_test) % 10),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = arrays[split]
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return arrays


def cifar_batch(n: int, num_classes: int, label_key: bytes, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"testing batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_pickle(path: Path, obj, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def write_cifar10_dir(root: Path, per_batch: int = 6, n_test: int = 8) -> dict:
    """`root/cifar-10-batches-py/` with five train batches and a test batch."""
    folder = root / "cifar-10-batches-py"
    batches = {f"data_batch_{i}": cifar_batch(per_batch, 10, b"labels", i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(n_test, 10, b"labels", 99)
    for name, batch in batches.items():
        write_pickle(folder / name, batch)
    write_pickle(folder / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)]})
    return batches


def write_cifar100_dir(root: Path, n_train: int = 30, n_test: int = 10) -> dict:
    """`root/cifar-100-python/` with train and test holding fine and coarse labels."""
    folder = root / "cifar-100-python"
    batches = {"train": cifar_batch(n_train, 100, b"fine_labels", 1), "test": cifar_batch(n_test, 100, b"fine_labels", 2)}
    for name, batch in batches.items():
        batch[b"coarse_labels"] = [label // 5 for label in batch[b"fine_labels"]]
        write_pickle(folder / name, batch)
    return batches


def write_image_tree(root: Path, classes=("n01", "n02"), per_class: int = 3, size=(40, 30), ext: str = ".JPEG") -> None:
    """`root/<class>/img_k.JPEG` with random-colour images of `size` (width, height)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"img_{k}{ext}", format="JPEG")
