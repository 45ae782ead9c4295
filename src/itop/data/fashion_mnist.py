"""Fashion-MNIST (Zalando): MNIST's format and sizes, clothing instead of digits.

The four files have exactly MNIST's names (`train-images-idx3-ubyte.gz`, ...), so they
cannot share a folder with MNIST's: a Fashion-MNIST run would silently train on digits,
or a download would overwrite them. Hence one rule: Fashion-MNIST's files always live in
the `fashion-mnist/` subfolder of the data directory (`<data_dir>/fashion-mnist/`), and
that is where they are downloaded to and where the missing-files message points. The IDX
files are read by MNIST's checked readers.
"""

from __future__ import annotations

from pathlib import Path

from . import download
from .mnist import IdxSource, load_idx_dataset, load_idx_split
from .registry import register_dataset
from .splits import ArrayDataset, DatasetSplits

__all__ = ["FASHION_SUBDIR", "fashion_mnist_dir", "load_fashion_mnist_split", "load_fashion_mnist"]

FASHION_SUBDIR = "fashion-mnist"
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# The official checksums, as listed by torchvision's FashionMNIST.resources
# (torchvision/datasets/mnist.py) and zalandoresearch/fashion-mnist.
FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# Pixel mean and std (0..1 units) over the 60,000 training images: 0.28604059698879553 and
# 0.35302424451492237, e.g. adambielski/siamese-triplet, Experiments_FashionMNIST.ipynb;
# rounded to four places like MNIST's (0.1307, 0.3081).
MEAN, STD = (0.2860,), (0.3530,)


def _source() -> IdxSource:
    return IdxSource("Fashion-MNIST", "fashion-mnist", FASHION_URL, FASHION_MD5, MEAN, STD)


def fashion_mnist_dir(data_dir: str | Path | None) -> Path:
    """`<data_dir>/fashion-mnist`, where the four files are read from and downloaded to."""
    return download.resolve_data_dir(data_dir) / FASHION_SUBDIR


def load_fashion_mnist_split(data_dir: str | Path | None, split: str, *, allow_download: bool = True) -> ArrayDataset:
    """Fashion-MNIST's "train" (60,000) or "test" (10,000) set from `fashion_mnist_dir`."""
    return load_idx_split(fashion_mnist_dir(data_dir), split, allow_download=allow_download, source=_source())


def load_fashion_mnist(
    data_dir: str | Path | None, *, valid_split: float = 0.1, seed: int = 0, allow_download: bool = True
) -> DatasetSplits:
    """Fashion-MNIST; the validation share is a seeded random subset of the 60,000."""
    return load_idx_dataset(
        fashion_mnist_dir(data_dir), valid_split=valid_split, seed=seed, allow_download=allow_download, source=_source()
    )


register_dataset("fashion-mnist")(load_fashion_mnist)
register_dataset("fashionmnist")(load_fashion_mnist)
