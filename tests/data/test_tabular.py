import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from itop.data import ArrayDataset, DataError, DeviceLoader, is_tabular_path, load_dataset, load_tabular, make_loaders
from itop.data.tabular import read_tabular


def table(n: int = 30, features: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features on different scales and labels 1..5, as in lung.mat."""
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, (n, features)) * np.arange(1, features + 1)
    return x, np.arange(n) % 5 + 1


def write(path: Path, x: np.ndarray, y: np.ndarray, header: bool = False) -> Path:
    """`path` in the format its suffix names (.mat via scipy, .npz, .csv with the label last)."""
    if path.suffix == ".mat":
        scipy.io.savemat(path, {"X": x, "Y": y})
    elif path.suffix == ".npz":
        np.savez(path, X=x, Y=y)
    else:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            if header:
                writer.writerow([f"f{i}" for i in range(x.shape[1])] + ["class"])
            writer.writerows(np.column_stack([x, y]).tolist())
    return path


def one_line_error(path: Path, pattern: str, **kwargs) -> str:
    with pytest.raises(DataError, match=pattern) as info:
        load_tabular(path, valid_split=kwargs.pop("valid_split", 0.2), seed=0, **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def expected_parts(x: np.ndarray, splits) -> list[np.ndarray]:
    """Each split's features z-scored with the training rows' statistics.

    Needs labels that are the row numbers (y = arange(N)), so a split's labels say which
    rows it holds.
    """
    train_rows = splits.train.labels.numpy()
    mean, std = x[train_rows].mean(axis=0), x[train_rows].std(axis=0)
    std[std == 0] = 1.0
    return [(x[part.labels.numpy()] - mean) / std for part in (splits.train, splits.val, splits.test)]


@pytest.mark.parametrize(
    "name, header", [("lung.mat", False), ("lung.npz", False), ("lung.csv", False), ("lung.csv", True), ("LUNG.CSV", True)]
)
def test_every_format_gives_the_same_splits(tmp_path, name, header):
    x, y = table()
    splits = load_tabular(write(tmp_path / name, x, y, header), valid_split=0.25, seed=3)
    reference = load_tabular(write(tmp_path / "ref.npz", x, y), valid_split=0.25, seed=3)
    for part, ref in zip((splits.train, splits.val, splits.test), (reference.train, reference.val, reference.test)):
        assert torch.allclose(part.images, ref.images, atol=1e-6)
        assert torch.equal(part.labels, ref.labels)
    assert splits.name == Path(name).stem
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (5, 6, 1)
    assert (splits.mean, splits.std, splits.augment) == ((0.0,), (1.0,), "none")
    assert splits.train.images.dtype == torch.float32 and splits.train.labels.dtype == torch.int64
    assert splits.train.images.shape == (len(splits.train), 6, 1, 1)


def test_labels_one_to_five_become_zero_to_four(tmp_path):
    x, y = table()
    x[:, 0] = y  # feature 0 is the label, so after z-scoring its rank is the class
    splits = load_tabular(write(tmp_path / "d.npz", x, y), valid_split=0.2, seed=0)
    parts = (splits.train, splits.val, splits.test)
    feature = torch.cat([p.images[:, 0, 0, 0] for p in parts])
    labels = torch.cat([p.labels for p in parts])
    assert sorted(labels.unique().tolist()) == [0, 1, 2, 3, 4]
    assert torch.equal(torch.unique(feature, return_inverse=True)[1], labels)


@pytest.mark.parametrize("shape", ["vector", "column", "row"])
def test_label_vector_shapes(tmp_path, shape):
    x, y = table()
    y = {"vector": y, "column": y[:, None], "row": y[None, :]}[shape]
    assert load_tabular(write(tmp_path / "d.npz", x, y), valid_split=0, seed=0).num_classes == 5


def test_npz_lower_case_names(tmp_path):
    x, y = table()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    assert load_tabular(tmp_path / "d.npz", valid_split=0, seed=0).in_channels == 6


@pytest.mark.parametrize("suffix", [".npz", ".mat"])
def test_one_hot_labels(tmp_path, suffix):
    x, y = table(n=24)
    classes = np.arange(24) % 4
    splits = load_tabular(write(tmp_path / f"d{suffix}", x, np.eye(4)[classes]), valid_split=0, seed=2)
    reference = load_tabular(write(tmp_path / "r.npz", x, classes), valid_split=0, seed=2)
    assert splits.num_classes == 4
    assert torch.equal(splits.train.labels, reference.train.labels)
    assert torch.equal(splits.test.labels, reference.test.labels)


def test_sparse_mat_features(tmp_path):
    import scipy.sparse

    x, y = table()
    x[x < 5] = 0
    scipy.io.savemat(tmp_path / "d.mat", {"X": scipy.sparse.csc_matrix(x), "Y": y})
    dense = load_tabular(write(tmp_path / "r.npz", x, y), valid_split=0, seed=0)
    splits = load_tabular(tmp_path / "d.mat", valid_split=0, seed=0)
    assert torch.allclose(splits.train.images, dense.train.images)


def test_sizes_add_up_and_a_third_is_held_out(tmp_path):
    x, y = table(n=30)
    path = write(tmp_path / "d.npz", x, y)
    splits = load_tabular(path, valid_split=0.25, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 10)
    assert load_tabular(path, valid_split=0, seed=0).val is None
    splits = load_tabular(path, valid_split=0.1, seed=0, test_split=0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (22, 2, 6)


def test_split_is_a_function_of_the_seed(tmp_path):
    x, _ = table(n=40)
    path = write(tmp_path / "d.npz", x, np.arange(40))  # labels = row numbers

    def rows(seed):
        splits = load_tabular(path, valid_split=0.2, seed=seed)
        return [set(part.labels.tolist()) for part in (splits.train, splits.val, splits.test)]

    first = rows(5)
    assert rows(5) == first and rows(6) != first
    assert set().union(*first) == set(range(40)) and sum(map(len, first)) == 40


def test_standardised_with_the_training_split_only(tmp_path):
    x, _ = table(n=57)  # 30 training rows: their mean of 0.1 is not exactly 0.1
    x[:, 2] = 0.1  # a constant feature becomes 0, not NaN nor +-1 from rounding noise
    splits = load_tabular(write(tmp_path / "d.npz", x, np.arange(57)), valid_split=0.2, seed=1)
    train = splits.train.images[:, :, 0, 0].double()
    assert torch.allclose(train.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-6)
    std = train.std(0, unbiased=False)
    assert torch.allclose(std[[0, 1, 3, 4, 5]], torch.ones(5, dtype=torch.float64), atol=1e-5)
    assert len(splits.train) == 30
    assert std[2] == 0 and (splits.test.images[:, 2] == 0).all()
    test_mean = splits.test.images[:, :, 0, 0].double().mean(0)
    assert test_mean.abs().max() > 0.05  # the test rows' own mean was not removed
    parts = (splits.train, splits.val, splits.test)
    expected = expected_parts(x, splits)
    for part, want in zip(parts, expected):
        want[:, 2] = 0.0
        assert np.allclose(part.images[:, :, 0, 0].numpy(), want, atol=1e-5)


def test_read_tabular_returns_the_raw_arrays(tmp_path):
    x, y = table()
    got_x, got_y, row_name = read_tabular(write(tmp_path / "d.csv", x, y, header=True))
    assert np.allclose(got_x, x) and np.array_equal(got_y, y)
    assert row_name(0) == "line 2"


# --- bad input: one line naming the file ---------------------------------------------------


def test_missing_file(tmp_path):
    one_line_error(tmp_path / "absent.mat", "file not found")


def test_unknown_suffix(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("1,2\n")
    message = one_line_error(path, "unknown tabular format")
    assert ".mat, .npz, .csv" in message


def test_matlab_v73_file(tmp_path):
    path = tmp_path / "lung.mat"
    path.write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 ." + bytes(200) + b"\x89HDF\r\n\x1a\n garbage" * 40)
    message = one_line_error(path, "v7.3")
    assert "-v7" in message and ".npz" in message


def test_hdf5_behind_a_header_without_the_version_text(tmp_path):
    path = tmp_path / "lung.mat"
    path.write_bytes(b"x" * 512 + b"\x89HDF\r\n\x1a\n" + bytes(100))
    one_line_error(path, "re-save it")


def test_garbage_mat(tmp_path):
    path = tmp_path / "d.mat"
    path.write_bytes(b"not a matlab file at all" * 20)
    one_line_error(path, "not a readable MATLAB file")


def test_garbage_npz(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"PK\x03\x04 broken zip")
    one_line_error(path, "not a readable .npz file")


def test_npy_renamed_npz(tmp_path):
    path = tmp_path / "d.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.zeros((3, 2)))
    one_line_error(path, "single .npy array")


@pytest.mark.parametrize("suffix", [".npz", ".mat"])
def test_arrays_not_there_are_listed(tmp_path, suffix):
    x, y = table()
    path = tmp_path / f"d{suffix}"
    if suffix == ".mat":
        scipy.io.savemat(path, {"data": x, "target": y})
    else:
        np.savez(path, data=x, target=y)
    message = one_line_error(path, "no array 'X'")
    assert "data, target" in message


def test_labels_missing(tmp_path):
    x, _ = table()
    np.savez(tmp_path / "d.npz", X=x)
    one_line_error(tmp_path / "d.npz", "no array 'Y'.*holds: X")


def test_sizes_disagree(tmp_path):
    x, y = table()
    one_line_error(write(tmp_path / "d.npz", x, y[:-1]), "X has 30 rows but Y has 29")


def test_onehot_rows_disagree(tmp_path):
    x, _ = table()
    one_line_error(write(tmp_path / "d.npz", x, np.eye(3)[np.arange(20) % 3]), "X has 30 rows")


def test_non_integral_labels(tmp_path):
    x, y = table()
    one_line_error(write(tmp_path / "d.npz", x, y + 0.5), "labels that are not classes.*non-integral")


@pytest.mark.parametrize("bad", ["two ones", "a two", "all zero"])
def test_matrix_that_is_not_one_hot(tmp_path, bad):
    x, _ = table()
    y = np.eye(3)[np.arange(30) % 3]
    y[4] = {"two ones": [1, 1, 0], "a two": [0, 2, 0], "all zero": [0, 0, 0]}[bad]
    one_line_error(write(tmp_path / "d.npz", x, y), "labels that are not classes.*row 5 is not one-hot")


def test_one_class(tmp_path):
    x, _ = table()
    one_line_error(write(tmp_path / "d.npz", x, np.full(30, 3)), "at least 2 classes")


def test_text_labels(tmp_path):
    x, _ = table()
    np.savez(tmp_path / "d.npz", X=x, Y=np.array(["a", "b"] * 15))
    one_line_error(tmp_path / "d.npz", "Y must hold real numbers")


@pytest.mark.parametrize("y", [np.float64(2.0), np.zeros((30, 2, 2))])
def test_labels_neither_vector_nor_matrix(tmp_path, y):
    x, _ = table()
    one_line_error(write(tmp_path / "d.npz", x, y), "Y has shape .* expected a label vector")


def test_features_not_a_matrix(tmp_path):
    _, y = table()
    one_line_error(write(tmp_path / "d.npz", np.arange(30.0), y), "X has shape \\(30,\\)")


def test_nan_features_counted_with_the_first_row(tmp_path):
    x, y = table()
    x[7, 2] = x[3, 1] = np.nan
    x[9, 0] = np.inf
    one_line_error(write(tmp_path / "d.npz", x, y), "3 missing or infinite values .* in X, the first in row 4")


def test_nan_labels(tmp_path):
    x, y = table()
    y = y.astype(float)
    y[11] = np.nan
    one_line_error(write(tmp_path / "d.mat", x, y), "1 missing .* in Y, the first in row 12")


def test_csv_empty_field_names_the_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n1,2,1\n3,4,2\n\n5,,1\n6,7,2\n")
    one_line_error(path, "1 missing .* in X, the first in line 5")


def test_csv_text_field(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("1,2,1\n3,four,2\n")
    one_line_error(path, "line 2, column 2: 'four' is not a number")


def test_csv_ragged_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("1,2,1\n3,4,2,9\n")
    one_line_error(path, "line 2 has 4 fields")


def test_csv_header_only(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n")
    one_line_error(path, "no data rows")


@pytest.mark.parametrize("share", [0, 1, 1.5, -0.2])
def test_bad_test_split(tmp_path, share):
    x, y = table()
    with pytest.raises(ValueError, match=r"test_split must be in \(0, 1\)"):
        load_tabular(write(tmp_path / "d.npz", x, y), valid_split=0, seed=0, test_split=share)


def test_test_split_rounding_to_nothing(tmp_path):
    x, y = table(n=10)
    one_line_error(write(tmp_path / "d.npz", x, y), "empty test or training set", test_split=0.01)


# --- the registry -------------------------------------------------------------------------


def test_registry_routes_tabular_names(tmp_path, monkeypatch):
    x, y = table()
    write(tmp_path / "Lung.npz", x, y).rename(tmp_path / "Lung.NPZ")
    monkeypatch.chdir(tmp_path)
    splits = load_dataset("Lung.NPZ", "/unused", valid_split=0.2, seed=0, test_split=0.5, download=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 3, 15)
    assert splits.name == "Lung"
    with pytest.raises(DataError, match="absent.csv: file not found"):
        load_dataset("absent.csv")


def test_is_tabular_path():
    assert is_tabular_path("a/lung.mat") and is_tabular_path("X.CSV") and is_tabular_path(Path("b.npz"))
    assert not is_tabular_path("mnist") and not is_tabular_path("data.txt")
    with pytest.raises(ValueError, match=r"\.mat, \.npz, \.csv file"):
        load_dataset("data.txt")


# --- float features in the containers and the loader -----------------------------------------


def features(n: int = 10, f: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, f, 1, 1, generator=torch.Generator().manual_seed(0)), torch.arange(n) % 3


def test_array_dataset_takes_float32_features_besides_uint8_images():
    x, y = features()
    assert ArrayDataset(x, y).is_features and not ArrayDataset(x.to(torch.uint8), y).is_features
    for bad in (x.double(), x.view(10, 2, 2, 1), x.view(10, 4)):
        with pytest.raises(ValueError, match="float32 features N x F x 1 x 1"):
            ArrayDataset(bad, y)


def test_loader_yields_features_unchanged_and_never_writes_the_data():
    x, y = features()
    kept = x.clone()
    dl = DeviceLoader(x, y, 4, shuffle=False, mean=(0.5,), std=(2.0,))
    for _ in range(2):
        batches = list(dl)
        assert torch.equal(torch.cat([b for b, _ in batches]), kept)  # no /255, mean or std
        for batch, _ in batches:
            batch.mul_(0).add_(7)  # a caller writing into a batch must not reach the data
    assert torch.equal(dl.images, kept) and torch.equal(x, kept)


def test_shuffled_feature_batches_are_rows_of_the_data():
    x, y = features(n=12)
    dl = DeviceLoader(x, y, 5, shuffle=True, mean=(0.0,), std=(1.0,), generator=torch.Generator().manual_seed(1))
    for batch, labels in dl:
        rows = [int(torch.nonzero((x == row).all(dim=(1, 2, 3)))[0]) for row in batch]
        assert torch.equal(y[rows], labels)


@pytest.mark.parametrize("augment", ["crop-flip-reflect", "crop-flip-zero"])
def test_augmenting_features_refused(augment):
    x, y = features()
    with pytest.raises(ValueError, match="float32 features take augment='none'"):
        DeviceLoader(x, y, 4, shuffle=True, mean=(0.0,), std=(1.0,), augment=augment, generator=torch.Generator())


def test_make_loaders_on_a_tabular_file(tmp_path):
    x, y = table()
    splits = load_tabular(write(tmp_path / "d.npz", x, y), valid_split=0.2, seed=0)
    train, val, test = make_loaders(splits, 8, generator=torch.Generator().manual_seed(0))
    batch, labels = next(iter(train))
    assert batch.shape == (8, 6, 1, 1) and batch.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.equal(torch.cat([b for b, _ in test]), splits.test.images)
