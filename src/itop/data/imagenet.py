"""ImageNet from an image-folder tree, decoded with PIL (torchvision is not a dependency).

ImageNet does not fit in memory, so it keeps the classic pipeline: worker processes
decode JPEGs and apply the geometric transforms on uint8 images, and the float
conversion and normalisation happen on the device in whole batches, which keeps the
worker-to-device traffic at one byte per pixel. Random draws use torch's RNG, which the
DataLoader seeds per worker from its own generator (a function of seed, epoch and rank: ranks
must not draw the same crops), or, with no workers, a generator of the dataset's own; so runs
are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .errors import DataError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolder",
    "random_resized_crop",
    "resize_center_crop",
    "DeviceNormalizer",
    "make_imagenet_loader",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpeg", ".jpg", ".png")
FLIP_LEFT_RIGHT = 0  # PIL.Image.Transpose.FLIP_LEFT_RIGHT, without importing PIL here


def _uniform(low: float, high: float, generator: torch.Generator | None = None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def random_resized_crop(image, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator: torch.Generator | None = None):
    """Crop a random area share in `scale` with aspect in `ratio`, resized to size x size."""
    from PIL import Image

    width, height = image.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(*scale, generator)
        aspect = math.exp(_uniform(*log_ratio, generator))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (), generator=generator).item())
            break
    else:  # fall back to a central crop with the aspect clamped into `ratio`
        aspect = min(max(width / height, ratio[0]), ratio[1])
        if width / height <= aspect:
            w, h = width, round(width / aspect)
        else:
            w, h = round(height * aspect), height
        top, left = (height - h) // 2, (width - w) // 2
    return image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))


def resize_center_crop(image, resize: int, size: int):
    """Resize the shorter side to `resize`, then take the central size x size square."""
    from PIL import Image

    width, height = image.size
    scale = resize / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
    return image.crop((left, top, left + size, top + size))


def _to_uint8_chw(image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _scan(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise DataError(f"{root}: directory not found; expected {root}/<class>/*.JPEG.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    samples = [
        (path, index)
        for index, name in enumerate(classes)
        for path in sorted((root / name).iterdir())
        if path.suffix.lower() in EXTENSIONS and path.is_file()
    ]
    if not samples:
        raise DataError(f"{root}: no images found; expected {root}/<class>/*.JPEG.")
    return classes, samples


class ImageFolder(Dataset):
    """`root/<class>/<image>` samples as (uint8 3 x size x size tensor, class index).

    Classes are the sorted sub-directory names. `train=True` applies random resized crop
    and a horizontal flip; otherwise resize to `resize` (default size * 256 / 224) and
    center crop.
    """

    def __init__(self, root: str | Path, *, train: bool, image_size: int = 224, resize: int | None = None) -> None:
        self.root = Path(root)
        self.classes, self.samples = _scan(self.root)
        self.train, self.image_size = train, int(image_size)
        self.resize = int(resize) if resize else int(round(image_size * 256 / 224))
        self.generator: torch.Generator | None = None  # None: torch's RNG (seeded per worker)

    def __len__(self) -> int:
        return len(self.samples)

    def _open(self, path: Path):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"{path}: cannot decode image ({' '.join(str(exc).split())}).") from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = self._open(path)
        if self.train:
            image = random_resized_crop(image, self.image_size, generator=self.generator)
            if torch.rand((), generator=self.generator).item() < 0.5:
                image = image.transpose(FLIP_LEFT_RIGHT)
        else:
            image = resize_center_crop(image, self.resize, self.image_size)
        return _to_uint8_chw(image), label


class DeviceNormalizer:
    """Wrap a uint8 DataLoader: move batches to `device`, then convert and normalise there."""

    def __init__(self, loader: DataLoader, device="cpu", mean=IMAGENET_MEAN, std=IMAGENET_STD, seed: int = 0, rank: int = 0) -> None:
        self.loader, self.device, self.seed, self.rank = loader, torch.device(device), seed, rank
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1) * 255.0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Make epoch `epoch`'s order and augmentation a function of (seed, epoch, rank) alone, so
        a resumed run draws exactly what an uninterrupted one would (DistributedSampler included;
        its shuffle stays common to all ranks, the crops and flips differ between them)."""
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(epoch)
        draws = (self.seed * 1_000_003 + epoch) * 65_537 + self.rank
        if self.loader.generator is not None:
            self.loader.generator.manual_seed(draws)
        dataset = self.loader.dataset
        if isinstance(dataset, ImageFolder):  # workers seed torch's RNG; the main process uses this
            dataset.generator = torch.Generator().manual_seed(draws) if self.loader.num_workers == 0 else None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True).float()
            yield images.sub_(self.mean).div_(self.std), labels.to(self.device, non_blocking=True)


def make_imagenet_loader(
    root: str | Path,
    split: str,
    batch_size: int,
    *,
    workers: int = 4,
    distributed: bool = False,
    num_replicas: int | None = None,
    rank: int | None = None,
    image_size: int = 224,
    device="cpu",
    seed: int = 0,
) -> DeviceNormalizer:
    """Loader for `root/<split>` ("train" or "val") yielding normalised batches on `device`.

    Train batches are shuffled, augmented and drop the last partial batch; with
    `distributed`, a DistributedSampler splits the data across ranks (call `set_epoch`).
    Validation with `distributed` gives rank r the images r, r+K, r+2K, ... (no padding, so
    summing correct counts over ranks gives the exact accuracy of the whole set).
    """
    if split not in ("train", "val"):
        raise ValueError(f"Unknown ImageNet split {split!r}; choose 'train' or 'val'.")
    train = split == "train"
    dataset = ImageFolder(Path(root) / split, train=train, image_size=image_size)
    if distributed and not train:
        world, me = num_replicas or 1, rank or 0
        dataset = Subset(dataset, range(me, len(dataset), world))
    sampler = None
    if distributed and train:
        sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        drop_last=train,
        pin_memory=torch.device(device).type == "cuda",
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )  # fresh workers each epoch: seeds follow set_epoch
    return DeviceNormalizer(loader, device, seed=seed, rank=rank or 0)
