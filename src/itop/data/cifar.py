"""CIFAR-10 and CIFAR-100 from the official "python version" pickles.

Pickle runs whatever code a file names, and CIFAR files are routinely fetched from
mirrors, so they are read with an unpickler that only resolves the handful of globals
the real files use (numpy array reconstruction, `_codecs.encode` for Python 3 protocol 2
bytes, and data-only builtins). Anything else, such as `os.system`, is refused before it
can run. Unlike the original, CIFAR-100 gets its own validation split too, so checkpoint
selection never looks at the test set.
"""

from __future__ import annotations

import builtins
import codecs
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import download
from .errors import DataError
from .registry import register_dataset
from .splits import ArrayDataset, DatasetSplits, split_validation

__all__ = ["SafeUnpickler", "safe_load_pickle", "read_cifar_batch", "load_cifar10", "load_cifar100"]

_RECONSTRUCT = np.empty(0).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]
_FROMBUFFER = np.empty(1).__reduce_ex__(5)[0]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as Python 3 protocol-2 pickles use it, latin-1 only."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing codec {encoding!r}")
    return codecs.encode(text, "latin1")


_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
for _module in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_module}.multiarray", "_reconstruct")] = _RECONSTRUCT
    _ALLOWED[(f"{_module}.multiarray", "scalar")] = _SCALAR
    _ALLOWED[(f"{_module}.numeric", "_frombuffer")] = _FROMBUFFER
_SAFE_BUILTINS = {"bytes", "bytearray", "dict", "list", "tuple", "int", "float", "str"}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy-array and plain-data globals."""

    def find_class(self, module: str, name: str):
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def safe_load_pickle(path: Path):
    """Unpickle `path` (encoding 'bytes') with `SafeUnpickler`; errors become DataError."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc}).") from None
    try:
        return SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # any decoding failure is a corrupt or hostile file
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: not a valid CIFAR pickle ({detail}).") from None


def _get(batch: dict, key: str):
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    return None


def read_cifar_batch(path: str | Path, label_key: str, num_classes: int) -> ArrayDataset:
    """One CIFAR pickle (a dict with b'data' N x 3072 uint8 and labels) as tensors."""
    path = Path(path)
    batch = safe_load_pickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict, found {type(batch).__name__}.")
    data, labels = _get(batch, "data"), _get(batch, label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' is not a uint8 array of shape N x 3072.")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {label_key!r} is missing or not a list of integers.") from None
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels outside 0..{num_classes - 1}.")
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return ArrayDataset(images, torch.from_numpy(labels.copy()))


@dataclass(frozen=True)
class _CifarSpec:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    url: str
    md5: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: str


CIFAR10 = _CifarSpec(
    "cifar10",
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("test_batch",),
    "labels",
    10,
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
    (0.4914, 0.4822, 0.4465),
    (0.2023, 0.1994, 0.2010),
    "crop-flip-reflect",
)
CIFAR100 = _CifarSpec(
    "cifar100",
    "cifar-100-python",
    ("train",),
    ("test",),
    "fine_labels",
    100,
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85",
    (0.50708, 0.48655, 0.44092),
    (0.26733, 0.25644, 0.27615),
    "crop-flip-zero",
)


def _ensure_files(spec: _CifarSpec, root: Path, allow_download: bool) -> Path:
    folder = root / spec.folder
    names = list(spec.train_files + spec.test_files)
    missing = [name for name in names if not (folder / name).is_file()]
    reason = None
    if missing and allow_download:
        reason = download.fetch_archive(spec.url, root, spec.md5)
        missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise download.missing_files_error(spec.name.upper(), missing, folder, reason)
    return folder


def _read_all(folder: Path, names: tuple[str, ...], spec: _CifarSpec) -> ArrayDataset:
    parts = [read_cifar_batch(folder / name, spec.label_key, spec.num_classes) for name in names]
    return ArrayDataset(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def _load(spec: _CifarSpec, data_dir, valid_split: float, seed: int, allow_download: bool) -> DatasetSplits:
    folder = _ensure_files(spec, download.resolve_data_dir(data_dir), allow_download)
    train = _read_all(folder, spec.train_files, spec)
    test = _read_all(folder, spec.test_files, spec)
    train, val = split_validation(train, valid_split, seed)
    return DatasetSplits(
        train,
        val,
        test,
        num_classes=spec.num_classes,
        in_channels=3,
        image_size=32,
        mean=spec.mean,
        std=spec.std,
        augment=spec.augment,
        name=spec.name,
    )


@register_dataset("cifar10")
def load_cifar10(data_dir, *, valid_split: float = 0.1, seed: int = 0, allow_download: bool = True) -> DatasetSplits:
    """CIFAR-10: 50,000 train (minus the validation share) and 10,000 test images."""
    return _load(CIFAR10, data_dir, valid_split, seed, allow_download)


@register_dataset("cifar100")
def load_cifar100(data_dir, *, valid_split: float = 0.1, seed: int = 0, allow_download: bool = True) -> DatasetSplits:
    """CIFAR-100 (fine labels), with a validation split unlike the original."""
    return _load(CIFAR100, data_dir, valid_split, seed, allow_download)
