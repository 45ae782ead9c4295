import pytest
import torch
import torch.nn.functional as F

from itop.data import ArrayDataset, DatasetSplits, DeviceLoader, make_loaders

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def data(n: int = 10, size: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
    return images, torch.arange(n) % 10


def loader(augment="none", shuffle=True, seed=0, batch_size=4, n=10, **kwargs) -> DeviceLoader:
    images, labels = data(n)
    return DeviceLoader(
        images,
        labels,
        batch_size,
        shuffle=shuffle,
        mean=MEAN,
        std=STD,
        augment=augment,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def epoch(dl):
    return [(x.clone(), y.clone()) for x, y in dl]


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


@pytest.mark.parametrize("n, batch, drop, expected", [(10, 4, False, 3), (10, 4, True, 2), (8, 4, True, 2), (3, 4, True, 0)])
def test_len_and_batch_sizes(n, batch, drop, expected):
    dl = loader(n=n, batch_size=batch, drop_last=drop)
    sizes = [len(y) for _, y in dl]
    assert len(dl) == expected == len(sizes)
    assert sum(sizes) == (n // batch * batch if drop else n)


def test_plain_batches_are_normalised_in_order():
    images, labels = data()
    dl = DeviceLoader(images, labels, 4, shuffle=False, mean=MEAN, std=STD, augment="none")
    x = torch.cat([b for b, _ in dl])
    assert torch.allclose(x, normalise(images), atol=1e-6)
    assert torch.equal(torch.cat([y for _, y in dl]), labels)


def test_shuffle_is_a_permutation_changing_per_epoch():
    dl = loader(n=50, batch_size=50)
    first, second = epoch(dl), epoch(dl)
    assert sorted(first[0][1].tolist()) == sorted((torch.arange(50) % 10).tolist())
    assert not torch.equal(first[0][0], second[0][0])


@pytest.mark.parametrize("augment", ["none", "crop-flip-reflect", "crop-flip-zero"])
def test_same_seed_same_batches(augment):
    assert same(epoch(loader(augment, seed=3)), epoch(loader(augment, seed=3)))
    assert not same(epoch(loader(augment, seed=3)), epoch(loader(augment, seed=4)))


@pytest.mark.parametrize("augment", ["none", "crop-flip-reflect"])
def test_resume_from_generator_state(augment):
    dl = loader(augment, seed=11)
    epoch(dl)
    state = dl.generator.get_state()
    expected = epoch(dl)
    resumed = loader(augment, seed=999)
    resumed.generator.set_state(state)
    assert same(epoch(resumed), expected)


def reference_crop_flip(image, top, left, flip, mode):
    padded = F.pad(image[None].float() / 255, (4, 4, 4, 4), mode=mode)[0]
    crop = padded[:, top : top + 32, left : left + 32]
    return crop.flip(2) if flip else crop


@pytest.mark.parametrize("augment, mode", [("crop-flip-reflect", "reflect"), ("crop-flip-zero", "constant")])
def test_augmentation_matches_per_image_reference(augment, mode):
    images, labels = data(n=12)
    dl = loader(augment, seed=5, n=12, batch_size=5)
    gen = torch.Generator().manual_seed(5)  # replay the loader's draws
    order = torch.randperm(12, generator=gen)
    offsets = torch.randint(0, 9, (12, 2), generator=gen)
    flips = torch.rand(12, generator=gen) < 0.5
    expected = torch.stack(
        [reference_crop_flip(images[i], *offsets[k].tolist(), bool(flips[k]), mode) for k, i in enumerate(order.tolist())]
    )
    batches = epoch(dl)
    assert torch.allclose(torch.cat([x for x, _ in batches]), normalise(expected * 255), atol=1e-5)
    assert torch.equal(torch.cat([y for _, y in batches]), labels[order])
    assert flips.any() and not flips.all() and (offsets != 4).any()


@pytest.mark.parametrize("augment, mode", [("crop-flip-reflect", "reflect"), ("crop-flip-zero", "constant")])
def test_extreme_offsets_match_padding(augment, mode):
    images, _ = data(n=6)
    offsets = torch.tensor([[0, 0], [8, 8], [0, 8], [8, 0], [4, 4], [0, 0]])
    flips = torch.tensor([False, True, False, True, True, True])
    got = loader(augment, n=6)._crop_flip(images, offsets, flips)
    expected = torch.stack([reference_crop_flip(images[i], *offsets[i].tolist(), bool(flips[i]), mode) for i in range(6)])
    assert got.dtype == torch.uint8 and torch.equal(got.float() / 255, expected)


@pytest.mark.parametrize("augment", ["crop-flip-reflect", "crop-flip-zero"])
def test_augmented_shapes_and_range(augment):
    dl = loader(augment, n=64, batch_size=16)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    for x, y in dl:
        assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        raw = x * std + mean
        assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_zero_padding_shows_black_borders():
    images = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
    dl = DeviceLoader(
        images,
        torch.zeros(64, dtype=torch.int64),
        64,
        shuffle=False,
        mean=(0,),
        std=(1,),
        augment="crop-flip-zero",
        generator=torch.Generator().manual_seed(0),
    )
    x, _ = next(iter(dl))
    assert (x == 0).any() and (x == 1).any()
    reflect = DeviceLoader(
        images,
        torch.zeros(64, dtype=torch.int64),
        64,
        shuffle=False,
        mean=(0,),
        std=(1,),
        augment="crop-flip-reflect",
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.all(next(iter(reflect))[0] == 1)


def splits_for_test(augment="crop-flip-reflect") -> DatasetSplits:
    images, labels = data(n=20)
    part = ArrayDataset(images, labels)
    return DatasetSplits(part, ArrayDataset(images[:6], labels[:6]), ArrayDataset(images[6:], labels[6:]), 10, 3, 32, MEAN, STD, augment)


def test_validation_and_test_are_never_augmented():
    splits = splits_for_test()
    train, val, test = make_loaders(splits, 4, generator=torch.Generator().manual_seed(0), eval_batch_size=3)
    assert train.augment == "crop-flip-reflect" and train.shuffle
    assert val.augment == "none" and test.augment == "none" and not val.shuffle
    assert len(val) == 2 and len(test) == 5
    for _ in range(2):
        assert torch.allclose(torch.cat([x for x, _ in val]), normalise(splits.val.images), atol=1e-6)


def test_make_loaders_without_validation():
    splits = splits_for_test()
    splits.val = None
    assert make_loaders(splits, 4, generator=torch.Generator())[1] is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(augment="jitter"), "Unknown augmentation"),
        (dict(generator=None), "Generator is needed"),
        (dict(batch_size=0), "batch_size"),
        (dict(mean=(0.1, 0.2)), "mean needs 1 or 3"),
    ],
)
def test_bad_arguments(kwargs, message):
    images, labels = data(4)
    args = dict(batch_size=2, shuffle=True, mean=MEAN, std=STD, augment="none", generator=torch.Generator())
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        DeviceLoader(images, labels, **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("augment", ["crop-flip-reflect", "crop-flip-zero"])
def test_cpu_and_cuda_batches_identical(augment):
    cpu = epoch(loader(augment, seed=2, n=40, batch_size=16))
    gpu = [(x.cpu(), y.cpu()) for x, y in loader(augment, seed=2, n=40, batch_size=16, device="cuda")]
    assert same(cpu, gpu)
