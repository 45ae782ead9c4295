"""In-memory datasets and the train/validation split.

Small datasets (MNIST, CIFAR) fit on the device as one uint8 tensor, so they are kept
as plain tensors rather than per-sample objects. Tabular datasets (a feature matrix, as in
the SET experiments on lung or madelon) use the same containers: their already
standardised float32 features are stored as N x F x 1 x 1, so F plays the part of the
channels and every model that flattens its input takes them unchanged. The validation split lives here, in one
place, because the original ITOP code got it wrong in three ways: MNIST took the *last*
10% without shuffling, CIFAR-10 validated on augmented images, and CIFAR-100 picked its
checkpoint on the test set. Here every dataset is split by a seeded permutation, and the
split only ever holds raw images: augmentation is decided by the loader, for train only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ArrayDataset", "DatasetSplits", "split_validation", "check_valid_split"]


@dataclass
class ArrayDataset:
    """Inputs and labels (int64, N) as two aligned tensors.

    `images` is either uint8 pixels N x C x H x W, which the loader scales and normalises,
    or float32 features N x F x 1 x 1 that are already standardised and used as they are.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        shape = tuple(self.images.shape)
        pixels = self.images.dtype == torch.uint8 and len(shape) == 4
        features = self.images.dtype == torch.float32 and len(shape) == 4 and shape[2:] == (1, 1)
        if not (pixels or features):
            raise ValueError(
                f"images must be uint8 N x C x H x W or float32 features N x F x 1 x 1, got {self.images.dtype} with shape {shape}."
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(f"labels must be an int64 vector, got {self.labels.dtype}.")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels; they must match.")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def is_features(self) -> bool:
        """True for float32 features (used as stored), False for uint8 images."""
        return self.images.dtype == torch.float32

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def subset(self, indices: torch.Tensor) -> ArrayDataset:
        """The samples at `indices`, in that order."""
        indices = indices.to(self.labels.device)
        return ArrayDataset(self.images[indices], self.labels[indices])

    def to(self, device: torch.device | str) -> ArrayDataset:
        return ArrayDataset(self.images.to(device), self.labels.to(device))

    def example_kind(self) -> str:
        """What one example is, e.g. "1x28x28 uint8 images" or "3312 float32 features"."""
        if self.is_features:
            return f"{self.images.shape[1]} float32 features"
        return "x".join(str(size) for size in self.images.shape[1:]) + " uint8 images"

    def __repr__(self) -> str:  # a summary: the default would print every tensor
        device = "" if self.images.device.type == "cpu" else f", on {self.images.device}"
        return f"ArrayDataset({len(self)} examples, {self.example_kind()}{device})"


@dataclass
class DatasetSplits:
    """Everything a training run needs to know about one dataset.

    `val` is None when no validation share was asked for. `mean` and `std` are per
    channel in 0..1 units; `augment` names the train-time augmentation ("none",
    "crop-flip-reflect" or "crop-flip-zero") and never applies to `val` or `test`.
    A tabular dataset has float32 features: in_channels = F, image_size = 1, mean (0.0,),
    std (1.0,) and augment "none".
    """

    train: ArrayDataset
    val: ArrayDataset | None
    test: ArrayDataset
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"
    name: str = ""

    def __repr__(self) -> str:  # a summary: the default would print every tensor
        name = f"{self.name}: " if self.name else ""
        val = 0 if self.val is None else len(self.val)
        augment = "" if self.augment == "none" else f", augment {self.augment}"
        device = "" if self.train.images.device.type == "cpu" else f", on {self.train.images.device}"
        return (
            f"DatasetSplits({name}train {len(self.train)}, val {val}, test {len(self.test)} examples, "
            f"{self.train.example_kind()}, {self.num_classes} classes{augment}{device})"
        )

    def to(self, device: torch.device | str) -> DatasetSplits:
        """A copy with every tensor on `device`."""
        val = None if self.val is None else self.val.to(device)
        return DatasetSplits(
            self.train.to(device),
            val,
            self.test.to(device),
            self.num_classes,
            self.in_channels,
            self.image_size,
            self.mean,
            self.std,
            self.augment,
            self.name,
        )


def check_valid_split(valid_split: float) -> float:
    """Reject shares outside [0, 1) with a one-line message."""
    share = float(valid_split)
    if not 0.0 <= share < 1.0:
        raise ValueError(f"valid_split must be in [0, 1), got {valid_split!r}.")
    return share


def split_validation(data: ArrayDataset, valid_split: float, seed: int) -> tuple[ArrayDataset, ArrayDataset | None]:
    """Split `data` into (train, val) by a permutation seeded with `seed`.

    The last round(valid_split * N) positions of the permutation form the validation
    set. Both parts keep the original sample order, so the split is a pure function of
    (N, valid_split, seed). Returns (data, None) when the share rounds to zero samples.
    """
    share = check_valid_split(valid_split)
    n = len(data)
    n_val = int(round(share * n))
    if n_val == 0:
        return data, None
    if n_val >= n:
        raise ValueError(f"valid_split={share} leaves no training samples out of {n}.")
    generator = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=generator)
    train_idx = perm[: n - n_val].sort().values
    val_idx = perm[n - n_val :].sort().values
    return data.subset(train_idx), data.subset(val_idx)
