import pytest
import torch

import itop.data as data
from itop.data import ArrayDataset, DatasetSplits, list_datasets, load_dataset, register_dataset, registry


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def toy_loader(data_dir, *, valid_split, seed, allow_download):
    images = torch.zeros(10, 1, 4, 4, dtype=torch.uint8)
    whole = ArrayDataset(images, torch.arange(10))
    train, val = data.split_validation(whole, valid_split, seed)
    return DatasetSplits(train, val, whole, 10, 1, 4, (0.5,), (0.5,), "none", f"toy:{data_dir.name}")


def test_builtin_names():
    assert {"mnist", "mnist5k", "cifar10", "cifar100"} <= set(list_datasets())
    assert list_datasets() == sorted(list_datasets())


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError) as info:
        load_dataset("imagenette", "/nowhere")
    message = str(info.value)
    assert "'imagenette'" in message and ", ".join(list_datasets()) in message
    assert "\n" not in message and not isinstance(info.value, data.DataError)


def test_register_and_load(scratch_registry, tmp_path):
    register_dataset("Toy")(toy_loader)
    assert "toy" in list_datasets()
    splits = load_dataset("TOY", tmp_path, valid_split=0.3, seed=1, device="cpu")
    assert (len(splits.train), len(splits.val)) == (7, 3) and splits.name == f"toy:{tmp_path.name}"
    assert load_dataset("toy", tmp_path, valid_split=0).val is None


def test_duplicate_registration_refused(scratch_registry):
    register_dataset("toy")(toy_loader)
    register_dataset("toy")(toy_loader)  # the same function again is harmless
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("toy")(lambda *a, **k: None)


def test_default_data_dir_used(scratch_registry, monkeypatch, tmp_path):
    monkeypatch.setenv("ITOP_DATA_DIR", str(tmp_path / "cache"))
    register_dataset("toy")(toy_loader)
    assert load_dataset("toy").name == "toy:cache"


@pytest.mark.parametrize("share", [-0.5, 1.0])
def test_bad_valid_split(share):
    with pytest.raises(ValueError, match="valid_split"):
        load_dataset("mnist5k", None, valid_split=share)


def test_public_names_exported():
    for name in (
        "ArrayDataset",
        "DataError",
        "DatasetSplits",
        "DeviceLoader",
        "default_data_dir",
        "list_datasets",
        "load_dataset",
        "make_loaders",
        "register_dataset",
    ):
        assert name in data.__all__ and hasattr(data, name)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100", "absent.csv"])
def test_missing_data_names_the_embedded_digits(name, tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.DataError) as info:
        load_dataset(name, tmp_path / "empty")
    message = str(info.value)
    assert "\n" not in message and message.endswith("or train on the 5,000 MNIST digits that come with itop: --data mnist5k.")
