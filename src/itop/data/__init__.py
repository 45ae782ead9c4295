"""Datasets, splits and loaders for itop.

`load_dataset(name, data_dir)` returns a `DatasetSplits` of uint8 tensors (train, a
seeded validation split, test) plus normalisation and augmentation settings;
`make_loaders` / `DeviceLoader` turn them into device-side batches. ImageNet, which
does not fit in memory, has its own PIL-based pipeline in `itop.data.imagenet`.
Importing this package registers the built-in datasets: mnist, mnist5k, fashion-mnist
(alias fashionmnist), cifar10, cifar100. A name ending in .mat, .npz or .csv is read as a
tabular file of features and labels (`load_tabular`), stored as float32 N x F x 1 x 1.
"""

from . import cifar, embedded, fashion_mnist, mnist  # noqa: F401  (register the built-in datasets)
from .download import default_data_dir
from .errors import DataError
from .loader import AUGMENTATIONS, DeviceLoader, make_loaders
from .registry import is_tabular_path, list_datasets, load_dataset, register_dataset
from .splits import ArrayDataset, DatasetSplits, split_validation
from .tabular import load_tabular

__all__ = [
    "AUGMENTATIONS",
    "ArrayDataset",
    "DataError",
    "DatasetSplits",
    "DeviceLoader",
    "default_data_dir",
    "is_tabular_path",
    "list_datasets",
    "load_dataset",
    "load_tabular",
    "make_loaders",
    "register_dataset",
    "split_validation",
]
