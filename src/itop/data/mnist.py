"""MNIST from the four standard IDX files (gzipped), with header checks.

The reader checks the magic number, the declared dimensions and the byte count of each
file, so a truncated download or a swapped file is reported by name instead of
surfacing later as a reshape error or silently wrong labels.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import download
from .errors import DataError
from .registry import register_dataset
from .splits import ArrayDataset, DatasetSplits, split_validation

__all__ = ["MNIST_FILES", "read_idx_images", "read_idx_labels", "load_mnist_split", "load_mnist"]

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
MEAN, STD = (0.1307,), (0.3081,)


def _read_gz(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found.") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a complete gzip file ({' '.join(str(exc).split())}).") from None


def _parse_idx(path: Path, raw: bytes, magic: int, ndim: int) -> tuple[tuple[int, ...], bytes]:
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise DataError(f"{path}: too short for an IDX header ({len(raw)} bytes).")
    found, *dims = struct.unpack(f">{1 + ndim}I", raw[:header])
    if found != magic:
        raise DataError(f"{path}: bad magic number 0x{found:08x}, expected 0x{magic:08x}.")
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{path}: header declares {'x'.join(map(str, dims))} = {expected} bytes but the file holds {len(raw) - header}.")
    return tuple(dims), raw[header:]


def read_idx_images(path: str | Path) -> torch.Tensor:
    """Read a gzipped IDX3 image file as a uint8 tensor N x 1 x H x W."""
    path = Path(path)
    (n, rows, cols), body = _parse_idx(path, _read_gz(path), IMAGES_MAGIC, 3)
    array = np.frombuffer(body, dtype=np.uint8).reshape(n, 1, rows, cols)
    return torch.from_numpy(array.copy())


def read_idx_labels(path: str | Path, num_classes: int = 10) -> torch.Tensor:
    """Read a gzipped IDX1 label file as an int64 tensor N, checking the class range."""
    path = Path(path)
    (n,), body = _parse_idx(path, _read_gz(path), LABELS_MAGIC, 1)
    labels = np.frombuffer(body, dtype=np.uint8).astype(np.int64)
    if n and labels.max() >= num_classes:
        raise DataError(f"{path}: label {labels.max()} is out of range 0..{num_classes - 1}.")
    return torch.from_numpy(labels)


@dataclass(frozen=True)
class IdxSource:
    """A dataset published as MNIST's four IDX files: where to fetch them, their checksums, and
    what a run needs to know about it."""

    title: str
    name: str
    url: str
    md5: dict
    mean: tuple[float, ...]
    std: tuple[float, ...]


def mnist_source() -> IdxSource:
    """MNIST's source, read from the module's constants when called (tests point them elsewhere)."""
    return IdxSource("MNIST", "mnist", MNIST_URL, MNIST_MD5, MEAN, STD)


def ensure_idx_files(directory: Path, names: list[str], allow_download: bool, source: IdxSource | None = None) -> None:
    """Download the missing `names` if allowed; a one-line DataError if they stay missing."""
    source = source or mnist_source()
    missing = [name for name in names if not (directory / name).is_file()]
    if not missing:
        return
    reason = None
    if allow_download:
        reason = download.fetch_files(source.url, missing, directory, source.md5)
        missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise download.missing_files_error(source.title, missing, directory, reason)


def load_idx_split(directory: Path, split: str, *, allow_download: bool = True, source: IdxSource | None = None) -> ArrayDataset:
    """The "train" or "test" images and labels of an IDX dataset in `directory` (MNIST by default)."""
    source = source or mnist_source()
    if split not in MNIST_FILES:
        raise ValueError(f"Unknown {source.title} split {split!r}; choose 'train' or 'test'.")
    images_name, labels_name = MNIST_FILES[split]
    ensure_idx_files(directory, [images_name, labels_name], allow_download, source)
    images = read_idx_images(directory / images_name)
    labels = read_idx_labels(directory / labels_name)
    if len(images) != len(labels):
        raise DataError(f"{directory}: {images_name} holds {len(images)} images but {labels_name} holds {len(labels)} labels.")
    return ArrayDataset(images, labels)


def load_idx_dataset(
    directory: Path, *, valid_split: float, seed: int, allow_download: bool, source: IdxSource | None = None
) -> DatasetSplits:
    """Train (less a seeded validation share) and test of an IDX dataset in `directory`."""
    source = source or mnist_source()
    ensure_idx_files(directory, [name for pair in MNIST_FILES.values() for name in pair], allow_download, source)
    train = load_idx_split(directory, "train", allow_download=False, source=source)
    test = load_idx_split(directory, "test", allow_download=False, source=source)
    train, val = split_validation(train, valid_split, seed)
    return DatasetSplits(
        train,
        val,
        test,
        num_classes=10,
        in_channels=1,
        image_size=train.images.shape[-1],
        mean=source.mean,
        std=source.std,
        augment="none",
        name=source.name,
    )


def load_mnist_split(data_dir: str | Path | None, split: str, *, allow_download: bool = True) -> ArrayDataset:
    """The MNIST "train" (60,000) or "test" (10,000) set from `data_dir`."""
    return load_idx_split(download.resolve_data_dir(data_dir), split, allow_download=allow_download)


@register_dataset("mnist")
def load_mnist(data_dir: str | Path | None, *, valid_split: float = 0.1, seed: int = 0, allow_download: bool = True) -> DatasetSplits:
    """Full MNIST; the validation share is a seeded random subset of the 60,000."""
    return load_idx_dataset(download.resolve_data_dir(data_dir), valid_split=valid_split, seed=seed, allow_download=allow_download)
