import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from itop.data import DataError, load_dataset, mnist
from itop.data.mnist import load_mnist_split, read_idx_images, read_idx_labels

from .formats import write_idx, write_mnist_dir

SHARED_TEST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist-test"
ALL_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_read_round_trip(tmp_path):
    arrays = write_mnist_dir(tmp_path)
    images, labels = arrays["train"]
    data = load_mnist_split(tmp_path, "train", allow_download=False)
    assert data.images.shape == (40, 1, 28, 28) and data.images.dtype == torch.uint8
    assert np.array_equal(data.images[:, 0].numpy(), images)
    assert data.labels.tolist() == labels.tolist()
    assert len(load_mnist_split(tmp_path, "test", allow_download=False)) == 12


def test_load_dataset_splits(tmp_path):
    write_mnist_dir(tmp_path)
    splits = load_dataset("mnist", tmp_path, valid_split=0.25, seed=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 12)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 1, 28)
    assert splits.mean == (0.1307,) and splits.std == (0.3081,) and splits.augment == "none"
    assert load_dataset("mnist", tmp_path, valid_split=0).val is None


def test_missing_files_named_with_directory(tmp_path, no_network):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert all(name in message for name in ALL_FILES) and str(tmp_path) in message
    assert "\n" not in message and "download failed" in message
    assert no_network and no_network[0].startswith(mnist.MNIST_URL)


def test_only_the_missing_file_is_named(tmp_path, no_network):
    write_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing: t10k-labels-idx1-ubyte.gz;"):
        load_dataset("mnist", tmp_path)
    assert len(no_network) == 1


def test_no_download_when_disabled(tmp_path, no_network):
    with pytest.raises(DataError, match="not attempted"):
        load_dataset("mnist", tmp_path, download=False)
    assert no_network == []


def test_download_fetches_missing_files(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    write_mnist_dir(source)
    monkeypatch.setattr(mnist, "MNIST_URL", source.as_uri() + "/")
    monkeypatch.setattr(mnist, "MNIST_MD5", {})
    splits = load_dataset("mnist", tmp_path / "data", valid_split=0)
    assert len(splits.train) == 40 and (tmp_path / "data" / ALL_FILES[0]).is_file()


def test_bad_magic(tmp_path):
    path = tmp_path / "x.gz"
    write_idx(path, np.zeros((2, 28, 28)), magic=0x0801)
    with pytest.raises(DataError, match=r"x.gz: bad magic number 0x00000801, expected 0x00000803"):
        read_idx_images(path)


def test_labels_bad_magic(tmp_path):
    path = tmp_path / "y.gz"
    write_idx(path, np.zeros((2, 28, 28)))
    with pytest.raises(DataError, match="bad magic"):
        read_idx_labels(path)


def test_truncated_gzip(tmp_path):
    path = tmp_path / "x.gz"
    write_idx(path, np.zeros((50, 28, 28)))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError, match="x.gz: not a complete gzip file"):
        read_idx_images(path)


def test_not_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(b"\x00\x00\x08\x03 plain bytes")
    with pytest.raises(DataError, match="gzip"):
        read_idx_images(path)


def test_size_mismatch(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as handle:  # header says 3 images, body holds 2
        handle.write(bytes.fromhex("00000803 00000003 0000001c 0000001c") + bytes(2 * 784))
    with pytest.raises(DataError, match="3x28x28 = 2352 bytes but the file holds 1568"):
        read_idx_images(path)


def test_short_header(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        read_idx_labels(path)


def test_label_out_of_range(tmp_path):
    path = tmp_path / "y.gz"
    write_idx(path, np.array([1, 2, 12]))
    with pytest.raises(DataError, match="label 12 is out of range"):
        read_idx_labels(path)


def test_count_mismatch(tmp_path):
    write_mnist_dir(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(5))
    with pytest.raises(DataError, match="12 images but t10k-labels-idx1-ubyte.gz holds 5"):
        load_dataset("mnist", tmp_path)


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="'valid'"):
        load_mnist_split(tmp_path, "valid")


@pytest.mark.skipif(
    not (SHARED_TEST / "t10k-images-idx3-ubyte.gz").is_file(), reason="the real MNIST test set exists only beside the checkout"
)
def test_real_mnist_test_set():
    data = load_mnist_split(SHARED_TEST, "test", allow_download=False)
    assert data.images.shape == (10_000, 1, 28, 28)
    counts = torch.bincount(data.labels, minlength=10)
    assert counts.sum() == 10_000 and counts.min() > 800
    assert 30 < data.images.float().mean() < 40  # MNIST mean 0.1325 * 255
