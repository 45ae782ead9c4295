"""Batches from a dataset that lives on the device as one uint8 tensor.

MNIST and CIFAR fit in device memory, so per-sample Python work (PIL transforms, worker
processes) is pure overhead: here a whole batch is indexed, augmented (still as uint8),
converted and normalised with a few tensor operations on the device. Every random draw
(the epoch permutation, crop offsets, flips) comes from one CPU `torch.Generator`, made
at the start of each epoch, so batches are identical on CPU and GPU for a given seed,
and saving and restoring the generator's state between epochs is all a resume needs.

Tabular datasets hold float32 features (N x F x 1 x 1) standardised when they were
loaded: their batches are yielded as they are, and augmentation, which only makes sense
for pixels, is refused for them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .splits import ArrayDataset, DatasetSplits

__all__ = ["AUGMENTATIONS", "DeviceLoader", "make_loaders"]

AUGMENTATIONS = ("none", "crop-flip-reflect", "crop-flip-zero")
PADDING = 4


class DeviceLoader:
    """Iterate (normalised float images, int64 labels) batches held on `device`.

    `augment` is "none", or random crop to the input size after 4-pixel padding
    ("crop-flip-reflect": reflect padding, "crop-flip-zero": black padding) plus a
    horizontal flip with probability 0.5. `len()` is the number of batches per epoch.
    float32 inputs are features, not pixels: they are yielded unchanged (`mean` and
    `std` are not applied) and take only augment "none".
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool = False,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str = "none",
        generator: torch.Generator | None = None,
        device="cpu",
    ) -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"Unknown augmentation {augment!r}; valid choices: {', '.join(AUGMENTATIONS)}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        if generator is None and (shuffle or augment != "none"):
            raise ValueError("A torch.Generator is needed to shuffle or augment.")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError("The generator must be a CPU generator (draws are made on the CPU).")
        data = ArrayDataset(images, labels)  # validates dtypes and shapes
        if data.is_features and augment != "none":
            raise ValueError(f"Augmentation {augment!r} applies to uint8 images only; float32 features take augment='none'.")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        channels = self.images.shape[1]
        self.mean = self._per_channel(mean, channels, "mean")
        self.std = self._per_channel(std, channels, "std")
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.augment, self.generator = augment, generator

    def _per_channel(self, values: Sequence[float], channels: int, what: str) -> torch.Tensor:
        tensor = torch.as_tensor(values, dtype=torch.float32).flatten()
        if tensor.numel() not in (1, channels):
            raise ValueError(f"{what} needs 1 or {channels} values, got {tensor.numel()}.")
        return tensor.expand(channels).reshape(1, channels, 1, 1).to(self.device)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _draw_epoch(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Order, crop offsets and flips for a whole epoch, drawn in a fixed sequence."""
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.augment == "none":
            return order.to(self.device), None, None
        offsets = torch.randint(0, 2 * PADDING + 1, (n, 2), generator=self.generator)
        flips = torch.rand(n, generator=self.generator) < 0.5
        return order.to(self.device), offsets.to(self.device), flips.to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, offsets, flips = self._draw_epoch()
        return self._batches(order, offsets, flips)

    def _batches(self, order, offsets, flips):
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            x = self.images[index]  # indexing with a tensor copies: x never aliases the data
            if x.dtype == torch.float32:  # standardised features: as they are
                yield x, self.labels[index]
                continue
            if offsets is not None:
                span = slice(start, start + len(index))
                x = self._crop_flip(x, offsets[span], flips[span])
            yield x.float().div_(255.0).sub_(self.mean).div_(self.std), self.labels[index]

    def _crop_flip(self, x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Batched pad-crop-flip as one gather of source pixels, on uint8 images.

        Same result as padding by 4, cropping at `offsets` and flipping, without
        materialising the padded batch (reflect padding is slow on CPU): each output
        pixel's source is computed directly, reflected or marked as padding (zero).
        """
        b, c, h, w = x.shape
        columns = torch.arange(w, device=x.device).expand(b, w)
        rows = offsets[:, :1] - PADDING + torch.arange(h, device=x.device)
        cols = offsets[:, 1:] - PADDING + torch.where(flips[:, None], w - 1 - columns, columns)
        inside = None
        if self.augment == "crop-flip-reflect":
            rows, cols = _reflect(rows, h), _reflect(cols, w)
        else:
            inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
            rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
        source = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        out = x.reshape(b, c, h * w).gather(2, source).view(b, c, h, w)
        return out if inside is None else out.masked_fill_(~inside[:, None], 0)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map positions outside 0..size-1 back inside by mirroring, as 'reflect' padding does."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def make_loaders(
    splits: DatasetSplits,
    batch_size: int,
    *,
    generator: torch.Generator,
    device="cpu",
    eval_batch_size: int | None = None,
    drop_last: bool = False,
) -> tuple[DeviceLoader, DeviceLoader | None, DeviceLoader]:
    """(train, val, test) loaders: only train is shuffled and augmented."""
    eval_size = eval_batch_size or batch_size

    def plain(part: ArrayDataset | None) -> DeviceLoader | None:
        if part is None:
            return None
        return DeviceLoader(
            part.images, part.labels, eval_size, shuffle=False, mean=splits.mean, std=splits.std, augment="none", device=device
        )

    train = DeviceLoader(
        splits.train.images,
        splits.train.labels,
        batch_size,
        shuffle=True,
        drop_last=drop_last,
        mean=splits.mean,
        std=splits.std,
        augment=splits.augment,
        generator=generator,
        device=device,
    )
    return train, plain(splits.val), plain(splits.test)
