"""Tabular datasets: a feature matrix and a label vector from a .mat, .npz or .csv file.

SET's experiments on microarray and other feature-selection benchmarks (lung, madelon,
... from featureselection.asu.edu) read MATLAB files holding `X` (samples x features)
and `Y` (class values), hold out a third of the samples for testing and z-score the
features. This reader does the same for any such file, with the split seeded like every
other dataset here and the z-scoring fitted on the training split only, so no statistic
of the validation or test samples leaks into training. The result is the usual
`DatasetSplits`, its features stored as float32 N x F x 1 x 1 (see `splits.py`).

Files in these formats come from many tools, so everything a reader can get wrong is
checked and reported on one line naming the file: missing arrays, disagreeing sizes,
NaNs, labels that are not classes, MATLAB v7.3 files that scipy cannot read.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .splits import ArrayDataset, DatasetSplits, split_validation

__all__ = ["TABULAR_SUFFIXES", "read_tabular", "load_tabular"]

TABULAR_SUFFIXES = (".mat", ".npz", ".csv")
DEFAULT_TEST_SPLIT = 1 / 3  # as the SET code holds out a third of the samples
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # MATLAB v7.3 files are HDF5 behind a 512-byte header


def _pick(path: Path, names) -> tuple[str, str]:
    """Names of the features (`X` or `x`) and labels (`Y` or `y`); else list what is there."""
    names = list(names)
    chosen = []
    for options in (("X", "x"), ("Y", "y")):
        found = [name for name in options if name in names]
        if not found:
            held = ", ".join(sorted(names)) or "none"
            raise DataError(f"{path}: no array {options[0]!r} (features X, labels Y); the file holds: {held}.")
        chosen.append(found[0])
    return chosen[0], chosen[1]


def _dense(array) -> np.ndarray:
    """A numpy array from whatever the reader gave (loadmat returns sparse matrices as such)."""
    return np.asarray(array.toarray() if hasattr(array, "toarray") else array)


def _read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            head = handle.read(520)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({_one_line(exc)}).") from None
    resave = (
        f"{path}: a MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save it with "
        "save(..., '-v7') or convert it to .npz with arrays X and Y."
    )
    if head.startswith(b"MATLAB 7.3") or head[512:520] == HDF5_SIGNATURE:
        raise DataError(resave)
    try:
        import scipy.io
    except ImportError:
        raise DataError(f"{path}: reading .mat files needs scipy: pip install scipy.") from None
    try:
        contents = scipy.io.loadmat(path)
    except NotImplementedError:  # scipy's answer to v7.3 files not caught above
        raise DataError(resave) from None
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError... on bad files
        raise DataError(f"{path}: not a readable MATLAB file ({_one_line(exc)}).") from None
    arrays = {k: v for k, v in contents.items() if not k.startswith("__")}
    x_name, y_name = _pick(path, arrays)
    return _dense(arrays[x_name]), _dense(arrays[y_name])


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        contents = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({_one_line(exc)}).") from None
    if not hasattr(contents, "files"):
        raise DataError(f"{path}: a single .npy array, not an .npz archive; save X and Y with np.savez.")
    with contents:
        x_name, y_name = _pick(path, contents.files)
        try:
            return np.asarray(contents[x_name]), np.asarray(contents[y_name])
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: cannot read its arrays ({_one_line(exc)}).") from None


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Features, labels and the file's line number of each data row."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [
                (number, row) for number, row in enumerate(csv.reader(handle), start=1) if any(field.strip() for field in row)
            ]  # blank lines carry nothing
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV text file ({_one_line(exc)}).") from None
    if rows and not any(_is_number(field) for field in rows[0][1]):
        rows = rows[1:]  # a header row of names
    if not rows:
        raise DataError(f"{path}: no data rows; expected numbers with the label in the last column.")
    width = len(rows[0][1])
    if width < 2:
        raise DataError(f"{path}: one column per row; expected features then the label, comma-separated.")
    table = np.empty((len(rows), width), dtype=np.float64)
    for k, (number, row) in enumerate(rows):
        if len(row) != width:
            raise DataError(f"{path}: line {number} has {len(row)} fields, the first data row {width}.")
        try:
            table[k] = row
        except ValueError:  # empty fields become NaN (reported later); anything else is wrong
            for column, field in enumerate(row):
                field = field.strip()
                if field and not _is_number(field):
                    raise DataError(f"{path}: line {number}, column {column + 1}: {field!r} is not a number.") from None
                table[k, column] = float(field) if field else np.nan
    return table[:, :-1], table[:, -1], [number for number, _ in rows]


def read_tabular(path: str | Path) -> tuple[np.ndarray, np.ndarray, Callable[[int], str]]:
    """Raw (features, labels) from a .mat, .npz or .csv file, plus how to name a sample row.

    The row namer turns a 0-based sample index into "row 5" (.mat, .npz) or "line 6"
    (.csv: the line in the file), so messages point where the user would look.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABULAR_SUFFIXES:
        raise DataError(f"{path}: unknown tabular format {path.suffix or '(no suffix)'!r}; use one of {', '.join(TABULAR_SUFFIXES)}.")
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    if suffix == ".csv":
        x, y, lines = _read_csv(path)
        return x, y, lambda i: f"line {lines[i]}"
    x, y = _read_mat(path) if suffix == ".mat" else _read_npz(path)
    return x, y, lambda i: f"row {i + 1}"


def _numeric(path: Path, array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise DataError(f"{path}: {what} must hold real numbers, not {array.dtype} values.")
    return array.astype(np.float64)


def _check_finite(path: Path, array: np.ndarray, what: str, row_name: Callable[[int], str]) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        rows = bad.reshape(len(array), -1).any(axis=1)
        raise DataError(
            f"{path}: {int(bad.sum())} missing or infinite values (NaN, inf or empty) in "
            f"{what}, the first in {row_name(int(np.argmax(rows)))}; fill or drop them first."
        )


def _class_labels(path: Path, y: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Class indices 0..C-1 and C from a label vector or a (2-D) one-hot N x C matrix.

    A vector's sorted distinct values become 0..C-1 (lung.mat's 1..5 become 0..4), so
    any integral coding works; a matrix must be one-hot, and gives its column count as C.
    """
    if y.ndim == 1:
        if len(y) != n:
            raise DataError(f"{path}: X has {n} rows but Y has {len(y)} labels; they must match.")
        fractional = y != np.round(y)
        if fractional.any():
            raise DataError(
                f"{path}: labels that are not classes: {int(fractional.sum())} non-integral "
                f"values such as {y[fractional][0]:g}; Y must hold class values or be one-hot."
            )
        values, labels = np.unique(y, return_inverse=True)
        if len(values) < 2:
            raise DataError(f"{path}: every label is {values[0]:g}; classification needs at least 2 classes.")
        return labels.reshape(-1).astype(np.int64), len(values)
    if len(y) != n:
        raise DataError(f"{path}: X has {n} rows but Y has {len(y)}; they must match.")
    one_hot = np.isin(y, (0.0, 1.0)).all(axis=1) & (y.sum(axis=1) == 1)
    if not one_hot.all():
        raise DataError(
            f"{path}: labels that are not classes: Y is {y.shape[0]} x {y.shape[1]} but row "
            f"{int(np.argmin(one_hot)) + 1} is not one-hot (exactly one 1, zeros elsewhere)."
        )
    return y.argmax(axis=1).astype(np.int64), y.shape[1]


def _check_test_split(test_split: float) -> float:
    share = float(test_split)
    if not 0.0 < share < 1.0:
        raise ValueError(f"test_split must be in (0, 1), got {test_split!r}.")
    return share


def _standardise(train: np.ndarray, *parts: np.ndarray) -> list[np.ndarray]:
    """z-score every part with the training part's per-feature mean and std (ddof 0).

    A feature constant on the training samples is centred on that constant with std 1,
    so it becomes exactly 0 there (computing its std would give rounding noise, not 0).
    """
    mean, std = train.mean(axis=0), train.std(axis=0)
    constant = train.min(axis=0) == train.max(axis=0)
    mean[constant], std[constant] = train[0, constant], 1.0
    return [(part - mean) / std for part in (train, *parts)]


def _features(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).reshape(*array.shape, 1, 1)


def load_tabular(path: str | Path, *, valid_split: float = 0.1, seed: int = 0, test_split: float = DEFAULT_TEST_SPLIT) -> DatasetSplits:
    """Train / validation / test splits of the samples in a .mat, .npz or .csv file.

    The file holds features X (N x F) and labels Y (.mat, .npz: arrays `X` and `Y`, or
    `x` and `y`; .csv: the last column, after an optional header row of names). The last
    round(test_split * N) positions of a permutation seeded by `seed` form the test set;
    `split_validation` then takes the validation share of the rest. Features are z-scored
    with the training split's statistics and stored as float32 N x F x 1 x 1.
    """
    path = Path(path)
    share = _check_test_split(test_split)
    raw_x, raw_y, row_name = read_tabular(path)
    x, y = _numeric(path, np.asarray(raw_x), "X"), _numeric(path, np.asarray(raw_y), "Y")
    if x.ndim != 2 or 0 in x.shape:
        raise DataError(f"{path}: X has shape {x.shape}; expected a samples x features matrix.")
    if y.ndim not in (1, 2):
        raise DataError(f"{path}: Y has shape {y.shape}; expected a label vector or a one-hot matrix.")
    if y.ndim == 2 and 1 in y.shape and y.size == len(x):
        y = y.reshape(-1)  # N x 1, or 1 x N as MATLAB saves a row vector
    _check_finite(path, x, "X", row_name)
    _check_finite(path, y, "Y", row_name)
    labels, num_classes = _class_labels(path, y, len(x))
    n = len(x)
    n_test = int(round(share * n))
    if not 0 < n_test < n:
        raise DataError(f"{path}: test_split={share:g} of {n} samples leaves an empty test or training set.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    test_idx, rest_idx = perm[n - n_test :].sort().values, perm[: n - n_test].sort().values
    # Split positions, not data, so the validation split is exactly the one every dataset uses.
    positions = ArrayDataset(torch.zeros(len(rest_idx), 0, 1, 1), rest_idx)
    train_pos, val_pos = split_validation(positions, valid_split, seed)
    index_sets = [train_pos.labels, test_idx] + ([] if val_pos is None else [val_pos.labels])
    parts = _standardise(*(x[idx.numpy()] for idx in index_sets))
    made = [ArrayDataset(_features(part), torch.from_numpy(labels[idx.numpy()])) for part, idx in zip(parts, index_sets)]
    train, test = made[0], made[1]
    val = made[2] if val_pos is not None else None
    return DatasetSplits(
        train,
        val,
        test,
        num_classes=num_classes,
        in_channels=x.shape[1],
        image_size=1,
        mean=(0.0,),
        std=(1.0,),
        augment="none",
        name=path.stem,
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
