import codecs
import dataclasses
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from itop.data import DataError, cifar, load_dataset
from itop.data.cifar import read_cifar_batch, safe_load_pickle

from .formats import cifar_batch, write_cifar10_dir, write_cifar100_dir, write_pickle

CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def test_cifar10_reads_channel_major_images(tmp_path):
    batches = write_cifar10_dir(tmp_path)
    splits = load_dataset("cifar10", tmp_path, valid_split=0)
    assert splits.train.images.shape == (30, 3, 32, 32) and splits.test.images.shape == (8, 3, 32, 32)
    first = batches["data_batch_1"]
    assert np.array_equal(splits.train.images[0, 1].numpy(), first[b"data"][0, 1024:2048].reshape(32, 32))
    assert splits.train.labels[:6].tolist() == first[b"labels"]
    assert splits.augment == "crop-flip-reflect" and splits.num_classes == 10
    assert splits.mean == (0.4914, 0.4822, 0.4465) and splits.std == (0.2023, 0.1994, 0.2010)


def test_cifar10_validation_split(tmp_path):
    write_cifar10_dir(tmp_path)
    splits = load_dataset("cifar10", tmp_path, valid_split=0.2, seed=5)
    assert (len(splits.train), len(splits.val)) == (24, 6)


def test_cifar100_has_validation_split_and_fine_labels(tmp_path):
    batches = write_cifar100_dir(tmp_path)
    splits = load_dataset("cifar100", tmp_path, valid_split=0.1, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (27, 3, 10)
    assert splits.test.labels.tolist() == batches["test"][b"fine_labels"]
    assert splits.num_classes == 100 and splits.augment == "crop-flip-zero"
    assert splits.mean == (0.50708, 0.48655, 0.44092)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_pickle_protocol_loads(tmp_path, protocol):
    write_pickle(tmp_path / "b", cifar_batch(4, 10, b"labels", 0), protocol=protocol)
    assert len(read_cifar_batch(tmp_path / "b", "labels", 10)) == 4


def test_python2_style_numpy_names_load(tmp_path):
    """Real CIFAR files were written by Python 2 with numpy's old `numpy.core` module path."""
    raw = pickle.dumps(cifar_batch(3, 10, b"labels", 0), protocol=2)
    path = tmp_path / "b"
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in path.read_bytes()
    assert read_cifar_batch(path, "labels", 10).images.shape == (3, 3, 32, 32)


class Exploit:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class Evaluator:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    write_pickle(path, {b"data": Exploit(f"touch {marker}"), b"labels": []})
    with pytest.raises(DataError, match="refusing to load global (posix|os).system"):
        safe_load_pickle(path)
    assert not marker.exists()


class Plain:
    """An innocent class: still refused, since any importable class could be hostile."""


@pytest.mark.parametrize("payload", [Evaluator(), Plain(), getattr])
def test_other_globals_are_refused(tmp_path, payload):
    write_pickle(tmp_path / "b", {b"data": payload})
    with pytest.raises(DataError, match="refusing to load global"):
        safe_load_pickle(tmp_path / "b")


class Rot13:
    def __reduce__(self):
        return (codecs.encode, ("abc", "rot13"))


def test_non_latin1_codec_refused(tmp_path):
    # _codecs.encode is allowed for protocol-2 bytes, but only with latin-1
    write_pickle(tmp_path / "b", {b"data": Rot13()})
    with pytest.raises(DataError, match="refusing codec"):
        safe_load_pickle(tmp_path / "b")


def test_truncated_pickle(tmp_path):
    write_pickle(tmp_path / "test_batch", cifar_batch(4, 10, b"labels", 0))
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="test_batch: not a valid CIFAR pickle"):
        read_cifar_batch(path, "labels", 10)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b.update({b"data": b[b"data"][:, :100]}), "N x 3072"),
        (lambda b: b.update({b"data": b[b"data"].astype(np.float32)}), "uint8"),
        (lambda b: b.pop(b"labels"), "'labels' is missing"),
        (lambda b: b.update({b"labels": b[b"labels"][:2]}), "4 images but 2 labels"),
        (lambda b: b.update({b"labels": [10, 0, 0, 0]}), "labels outside 0..9"),
    ],
)
def test_malformed_batches(tmp_path, mutate, message):
    batch = cifar_batch(4, 10, b"labels", 0)
    mutate(batch)
    write_pickle(tmp_path / "b", batch)
    with pytest.raises(DataError, match=message):
        read_cifar_batch(tmp_path / "b", "labels", 10)


def test_not_a_dict(tmp_path):
    write_pickle(tmp_path / "b", [1, 2, 3])
    with pytest.raises(DataError, match="expected a dict"):
        read_cifar_batch(tmp_path / "b", "labels", 10)


def test_missing_files_named(tmp_path, no_network):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path)
    message = str(info.value)
    assert all(name in message for name in CIFAR10_FILES)
    assert str(tmp_path / "cifar-10-batches-py") in message and "\n" not in message
    assert no_network == [cifar.CIFAR10.url]


def test_cifar100_missing_files_named(tmp_path, no_network):
    with pytest.raises(DataError, match=r"CIFAR100 files missing: train, test; put them in .*cifar-100-python"):
        load_dataset("cifar100", tmp_path)


def test_download_extracts_archive(tmp_path, monkeypatch):
    source = tmp_path / "source"
    write_cifar10_dir(source)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    spec = dataclasses.replace(cifar.CIFAR10, url=archive.as_uri(), md5=None)
    monkeypatch.setattr(cifar, "CIFAR10", spec)
    splits = load_dataset("cifar10", tmp_path / "data", valid_split=0)
    assert len(splits.train) == 30 and torch.all(splits.test.labels < 10)
    assert not (tmp_path / "data" / "cifar-10-python.tar.gz").exists()
