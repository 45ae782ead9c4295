import numpy as np
import pytest
import torch

from itop.data import DataError, fashion_mnist, list_datasets, load_dataset
from itop.data.fashion_mnist import fashion_mnist_dir, load_fashion_mnist_split

from .formats import write_idx, write_mnist_dir

ALL_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_registered_under_both_names():
    assert {"fashion-mnist", "fashionmnist"} <= set(list_datasets())


def test_files_are_read_from_the_subfolder(tmp_path):
    arrays = write_mnist_dir(tmp_path / "fashion-mnist")
    assert fashion_mnist_dir(tmp_path) == tmp_path / "fashion-mnist"
    splits = load_dataset("fashion-mnist", tmp_path, valid_split=0.25, seed=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 12)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 1, 28)
    assert splits.mean == (0.2860,) and splits.std == (0.3530,) and splits.augment == "none"
    assert splits.name == "fashion-mnist"
    test_images, test_labels = arrays["test"]
    assert np.array_equal(splits.test.images[:, 0].numpy(), test_images)
    assert splits.test.labels.tolist() == test_labels.tolist()
    assert splits.train.images.dtype == torch.uint8


@pytest.mark.parametrize("name", ["fashionmnist", "Fashion-MNIST"])
def test_alias_and_case(tmp_path, name):
    write_mnist_dir(tmp_path / "fashion-mnist")
    splits = load_dataset(name, tmp_path, valid_split=0)
    assert splits.name == "fashion-mnist" and len(splits.train) == 40 and splits.val is None


def test_split_reader(tmp_path):
    arrays = write_mnist_dir(tmp_path / "fashion-mnist", n_train=20)
    data = load_fashion_mnist_split(tmp_path, "train", allow_download=False)
    assert np.array_equal(data.images[:, 0].numpy(), arrays["train"][0])
    with pytest.raises(ValueError, match="'valid'"):
        load_fashion_mnist_split(tmp_path, "valid")


def test_mnist_files_beside_it_are_not_taken_for_fashion(tmp_path, no_network):
    write_mnist_dir(tmp_path)  # MNIST's files, same names, directly in the data dir
    with pytest.raises(DataError, match="Fashion-MNIST files missing") as info:
        load_dataset("fashion-mnist", tmp_path)
    assert str(tmp_path / "fashion-mnist") in str(info.value)


def test_missing_files_named_with_directory(tmp_path, no_network):
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", tmp_path)
    message = str(info.value)
    assert all(name in message for name in ALL_FILES)
    assert f"put them in {tmp_path / 'fashion-mnist'} (download failed" in message
    assert "\n" not in message
    assert no_network and no_network[0] == fashion_mnist.FASHION_URL + ALL_FILES[0]
    assert fashion_mnist.FASHION_URL == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"


def test_only_the_missing_file_is_named(tmp_path, no_network):
    write_mnist_dir(tmp_path / "fashion-mnist")
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing: t10k-labels-idx1-ubyte.gz;"):
        load_dataset("fashion-mnist", tmp_path)
    assert len(no_network) == 1


def test_no_download_when_disabled(tmp_path, no_network):
    with pytest.raises(DataError, match="not attempted"):
        load_dataset("fashion-mnist", tmp_path, download=False)
    assert no_network == []


def test_download_fetches_into_the_subfolder(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    write_mnist_dir(source)
    monkeypatch.setattr(fashion_mnist, "FASHION_URL", source.as_uri() + "/")
    monkeypatch.setattr(fashion_mnist, "FASHION_MD5", {})
    splits = load_dataset("fashion-mnist", tmp_path / "data", valid_split=0)
    assert len(splits.train) == 40
    assert all((tmp_path / "data" / "fashion-mnist" / name).is_file() for name in ALL_FILES)


def test_download_checks_the_official_md5(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    write_mnist_dir(source)  # not the real files: their checksums cannot match
    monkeypatch.setattr(fashion_mnist, "FASHION_URL", source.as_uri() + "/")
    with pytest.raises(DataError, match="wrong checksum.*8d4fb7e6c68d591d4c3dfef9ec88bf0d"):
        load_dataset("fashion-mnist", tmp_path / "data")
    assert not (tmp_path / "data" / "fashion-mnist" / ALL_FILES[0]).exists()
    assert fashion_mnist.FASHION_MD5 == {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }


def test_count_mismatch(tmp_path):
    write_mnist_dir(tmp_path / "fashion-mnist")
    write_idx(tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz", np.arange(5))
    with pytest.raises(DataError, match="12 images but t10k-labels-idx1-ubyte.gz holds 5"):
        load_dataset("fashion-mnist", tmp_path)


def test_corrupt_file_named(tmp_path):
    write_mnist_dir(tmp_path / "fashion-mnist")
    path = tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError, match="fashion-mnist/train-images-idx3-ubyte.gz: not a complete gzip"):
        load_dataset("fashion-mnist", tmp_path)
