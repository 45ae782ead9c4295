"""Datasets, splits and loaders for itop.

`load_dataset(name, data_dir)` returns a `DatasetSplits` of uint8 tensors (train, a
seeded validation split, test) plus normalisation and augmentation settings;
`make_loaders` / `DeviceLoader` turn them into device-side batches. ImageNet, which
does not fit in memory, has its own PIL-based pipeline in `itop.data.imagenet`.
Importing this package registers the built-in datasets: mnist, mnist5k, cifar10, cifar100.
"""

from .errors import DataError
from .splits import ArrayDataset, DatasetSplits, split_validation
from .download import default_data_dir
from .registry import list_datasets, load_dataset, register_dataset
from . import cifar, embedded, mnist  # noqa: F401  (register the built-in datasets)
from .loader import AUGMENTATIONS, DeviceLoader, make_loaders

__all__ = [
    "AUGMENTATIONS",
    "ArrayDataset",
    "DataError",
    "DatasetSplits",
    "DeviceLoader",
    "default_data_dir",
    "list_datasets",
    "load_dataset",
    "make_loaders",
    "register_dataset",
    "split_validation",
]
