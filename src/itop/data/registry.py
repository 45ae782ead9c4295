"""Datasets by name, so the command line and configs can say `--data cifar10`.

Each reader module registers a loader function with `@register_dataset(name)`. A loader
takes `(data_dir, *, valid_split, seed, allow_download)` and returns `DatasetSplits`;
`load_dataset` adds the checks and the move to the device that every dataset shares.
A name ending in .mat, .npz or .csv is not a registered dataset but a tabular file
(features and labels), read by `itop.data.tabular.load_tabular`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from .download import resolve_data_dir
from .errors import EMBEDDED_DATA_HINT, DataError
from .splits import DatasetSplits, check_valid_split
from .tabular import DEFAULT_TEST_SPLIT, TABULAR_SUFFIXES, load_tabular

__all__ = ["register_dataset", "list_datasets", "load_dataset", "is_tabular_path"]

Loader = Callable[..., DatasetSplits]
_REGISTRY: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator registering `loader` under `name` (lower case, unique)."""
    key = name.lower()

    def decorate(loader: Loader) -> Loader:
        if key in _REGISTRY and _REGISTRY[key] is not loader:
            raise ValueError(f"Dataset {key!r} is already registered.")
        _REGISTRY[key] = loader
        return loader

    return decorate


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def is_tabular_path(name: str | os.PathLike) -> bool:
    """True when `name` ends in .mat, .npz or .csv (any case): a tabular file to read."""
    return str(name).lower().endswith(TABULAR_SUFFIXES)


def load_dataset(
    name: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    *,
    valid_split: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    download: bool = True,
    test_split: float = DEFAULT_TEST_SPLIT,
) -> DatasetSplits:
    """Load dataset `name` from `data_dir` (None: `default_data_dir()`).

    The last round(valid_split * N) samples of a permutation seeded by `seed` become
    the validation set (None when valid_split is 0). Missing files are downloaded when
    `download` is true and the network allows; otherwise a one-line `DataError` says
    which files to put where, and that the embedded `mnist5k` needs none.

    A `name` ending in .mat, .npz or .csv is the path of a tabular file (relative to the
    working directory; `data_dir` and `download` do not apply): its samples are split
    into test (the share `test_split`, used by tabular files only), then train and
    validation; see `load_tabular`.

    Args:
        name: "mnist5k" (embedded, no download), "mnist", "fashion-mnist", "cifar10",
            "cifar100", or the path of a .mat / .npz / .csv file.
        data_dir: where the dataset files are (default `$ITOP_DATA_DIR` or `~/.cache/itop/data`).
        valid_split: share of the training set held out for validation, in [0, 1).
        seed: the random seed of the validation (and, for tabular files, test) split.
        device: where the tensors go (small datasets live on the device).
        download: download missing files when the network allows.
        test_split: share of a tabular file held out for testing.

    Returns:
        `DatasetSplits` with `train`, `val` (or None) and `test` splits, the image shape and the
        number of classes.

    Raises:
        DataError: in one line, for missing or corrupt files (naming the files and where to put
            them) or an unknown name.

    Example:
        ```python
        digits = itop.data.load_dataset("mnist5k")
        print(digits)  # DatasetSplits(mnist5k: train 3600, val 400, test 1000 examples, ...)
        ```
    """
    share = check_valid_split(valid_split)
    if is_tabular_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: file not found; {EMBEDDED_DATA_HINT}.")
        splits = load_tabular(path, valid_split=share, seed=int(seed), test_split=test_split)
        return splits.to(device)
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(
            f"Unknown dataset {name!r}; valid choices: {', '.join(list_datasets())}, or the path of a {', '.join(TABULAR_SUFFIXES)} file."
        )
    splits = _REGISTRY[key](resolve_data_dir(data_dir), valid_split=share, seed=int(seed), allow_download=download)
    return splits.to(device)
