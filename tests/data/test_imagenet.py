import pytest
import torch

from itop.data import DataError
from itop.data.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DeviceNormalizer,
    ImageFolder,
    make_imagenet_loader,
    random_resized_crop,
    resize_center_crop,
)

from .formats import write_image_tree

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("imagenet")
    write_image_tree(base / "train", classes=("n02", "n01"), per_class=4, size=(40, 30))
    write_image_tree(base / "val", classes=("n02", "n01"), per_class=2, size=(30, 44))
    (base / "train" / "n01" / "notes.txt").write_text("not an image")
    return base


def test_folder_classes_and_samples(root):
    data = ImageFolder(root / "train", train=True, image_size=16)
    assert data.classes == ["n01", "n02"] and len(data) == 8
    assert [label for _, label in data.samples] == [0] * 4 + [1] * 4


@pytest.mark.parametrize("train", [True, False])
def test_items_are_uint8_chw(root, train):
    data = ImageFolder(root / ("train" if train else "val"), train=train, image_size=16)
    image, label = data[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and label == 0


def test_val_transform_is_deterministic(root):
    data = ImageFolder(root / "val", train=False, image_size=16)
    assert torch.equal(data[1][0], data[1][0])


def test_train_transform_reproducible_with_seed(root):
    data = ImageFolder(root / "train", train=True, image_size=16)
    torch.manual_seed(0)
    first = [data[i][0] for i in range(4)]
    torch.manual_seed(0)
    assert all(torch.equal(a, data[i][0]) for i, a in enumerate(first))


def test_random_resized_crop_size_and_variety():
    image = Image.new("RGB", (64, 48))
    torch.manual_seed(1)
    assert random_resized_crop(image, 24).size == (24, 24)
    assert random_resized_crop(Image.new("RGB", (300, 5)), 8).size == (8, 8)  # fallback path


@pytest.mark.parametrize("size", [(100, 50), (50, 100), (33, 33), (10, 400)])
def test_resize_center_crop_size(size):
    assert resize_center_crop(Image.new("RGB", size), 36, 32).size == (32, 32)


def test_center_crop_takes_the_middle():
    image = Image.new("RGB", (60, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # blue middle third
    out = resize_center_crop(image, 20, 20)
    assert out.getpixel((10, 10)) == (0, 0, 255)


def test_loader_batches_normalised(root):
    loader = make_imagenet_loader(root, "train", 3, workers=0, image_size=16)
    assert len(loader) == 2  # 8 images, drop_last
    images, labels = next(iter(loader))
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32 and labels.shape == (3,)
    low = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert images.amin(dim=(0, 2, 3)).ge(low - 1e-5).all()


def test_val_loader_keeps_every_image(root):
    loader = make_imagenet_loader(root, "val", 3, workers=0, image_size=16)
    assert sum(len(labels) for _, labels in loader) == 4


def test_loader_with_worker_process(root):
    loader = make_imagenet_loader(root, "train", 4, workers=1, image_size=16, seed=3)
    labels = torch.cat([y for _, y in loader])
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 4


def test_distributed_sampler_shards(root):
    loader = make_imagenet_loader(root, "train", 2, workers=0, image_size=16, distributed=True, num_replicas=2, rank=1)
    assert len(loader) == 2  # 4 of 8 images on this rank
    loader.set_epoch(1)
    assert loader.loader.sampler.epoch == 1


def test_device_normalizer_values():
    batch = [(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8), torch.tensor([0, 1]))]
    images, _ = next(iter(DeviceNormalizer(batch)))
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(images[0, :, 0, 0], expected, atol=1e-6)


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="directory not found; expected .*<class>/\\*.JPEG"):
        make_imagenet_loader(tmp_path, "train", 2)


def test_no_images(tmp_path):
    (tmp_path / "val" / "n01").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        ImageFolder(tmp_path / "val", train=False)


def test_corrupt_image_named(tmp_path):
    write_image_tree(tmp_path, classes=("a",), per_class=1)
    bad = tmp_path / "a" / "img_0.JPEG"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError, match="img_0.JPEG: cannot decode image"):
        ImageFolder(tmp_path, train=False, image_size=8)[0]


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="'test'"):
        make_imagenet_loader(tmp_path, "test", 2)


def test_set_epoch_makes_each_epoch_reproducible(tmp_path):
    from itop.data.imagenet import make_imagenet_loader
    from tests.data.formats import write_image_tree

    write_image_tree(tmp_path / "train", per_class=4)

    def epoch(loader, e):
        loader.set_epoch(e)
        return [(x.clone(), y.clone()) for x, y in loader]

    # one worker process: its augmentation RNG is seeded from the loader's generator
    first = make_imagenet_loader(tmp_path, "train", 2, workers=1, seed=3)
    later = make_imagenet_loader(tmp_path, "train", 2, workers=1, seed=3)
    a0, a1 = epoch(first, 0), epoch(first, 1)
    b1 = epoch(later, 1)  # a "resumed" loader starting at epoch 1
    assert all(torch.equal(x, y) and torch.equal(k, m) for (x, k), (y, m) in zip(a1, b1))
    assert not all(torch.equal(x, y) for (x, _), (y, _) in zip(a0, a1))


@pytest.mark.parametrize("workers", [0, 1])
def test_ranks_draw_different_crops_of_the_same_image(tmp_path, workers):
    """Ranks share the sampler's shuffle but must not repeat each other's augmentation."""
    image = Image.effect_noise((48, 40), 60).convert("RGB")
    for i in range(4):
        (tmp_path / "train" / "n01").mkdir(parents=True, exist_ok=True)
        image.save(tmp_path / "train" / "n01" / f"{i}.png")  # identical images: only the crops differ

    def first_epoch(rank, seed=3):
        loader = make_imagenet_loader(
            tmp_path, "train", 2, workers=workers, image_size=16, seed=seed, distributed=True, num_replicas=2, rank=rank
        )
        loader.set_epoch(0)
        return torch.cat([x for x, _ in loader])

    rank0 = first_epoch(0)
    assert torch.equal(rank0, first_epoch(0))  # reproducible per rank
    assert not torch.equal(rank0, first_epoch(1))
