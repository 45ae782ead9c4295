import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from itop.data import ArrayDataset, DataError, DatasetSplits, split_validation


def dataset(n: int) -> ArrayDataset:
    images = torch.arange(n, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 1, 1, 1)
    return ArrayDataset(images.expand(n, 1, 2, 2).contiguous(), torch.arange(n))


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


@pytest.mark.parametrize(
    "images, labels",
    [
        (torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.int64)),  # float images
        (torch.zeros(3, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64)),  # 3-D
        (torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int32)),
        (torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)),
    ],
)
def test_array_dataset_rejects_bad_tensors(images, labels):
    with pytest.raises(ValueError):
        ArrayDataset(images, labels)


def test_array_dataset_indexing_and_subset():
    data = dataset(5)
    image, label = data[3]
    assert label == 3 and image.shape == (1, 2, 2)
    part = data.subset(torch.tensor([4, 0]))
    assert part.labels.tolist() == [4, 0] and len(part) == 2


def test_split_sizes_disjoint_and_complete():
    train, val = split_validation(dataset(100), 0.1, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert sorted(train.labels.tolist() + val.labels.tolist()) == list(range(100))


def test_split_is_random_not_the_tail():
    _, val = split_validation(dataset(1000), 0.1, seed=0)
    assert val.labels.min() < 500  # the original took exactly the last 10%


def test_split_deterministic_per_seed():
    a = split_validation(dataset(50), 0.2, seed=7)[1].labels
    b = split_validation(dataset(50), 0.2, seed=7)[1].labels
    c = split_validation(dataset(50), 0.2, seed=8)[1].labels
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_zero_share_gives_no_validation():
    data = dataset(10)
    train, val = split_validation(data, 0.0, seed=0)
    assert val is None and train is data


def test_share_leaving_no_training_data_rejected():
    with pytest.raises(ValueError, match="no training samples"):
        split_validation(dataset(2), 0.75, seed=0)


@pytest.mark.parametrize("share", [-0.1, 1.0, 1.5])
def test_bad_share_rejected(share):
    with pytest.raises(ValueError, match="valid_split"):
        split_validation(dataset(10), share, seed=0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 300), share=st.floats(0.0, 0.9), seed=st.integers(0, 2**31))
def test_split_partition_property(n, share, seed):
    n_val = round(share * n)
    assume(n_val < n)
    train, val = split_validation(dataset(n), share, seed)
    assert (0 if val is None else len(val)) == n_val
    labels = train.labels.tolist() + ([] if val is None else val.labels.tolist())
    assert sorted(labels) == list(range(n))
    assert train.labels.tolist() == sorted(train.labels.tolist())  # original order kept


def test_dataset_splits_to_device_keeps_metadata():
    splits = DatasetSplits(dataset(4), None, dataset(2), 10, 1, 2, (0.5,), (0.25,), "none", "x")
    moved = splits.to("cpu")
    assert moved.val is None and moved.mean == (0.5,) and moved.name == "x"


def test_dataset_splits_repr_is_a_one_line_summary():
    images = ArrayDataset(torch.zeros(4000, 1, 28, 28, dtype=torch.uint8), torch.zeros(4000, dtype=torch.int64))
    test = images.subset(torch.arange(1000))
    text = repr(DatasetSplits(images, None, test, 10, 1, 28, (0.13,), (0.31,), "none", "mnist5k"))
    assert text == "DatasetSplits(mnist5k: train 4000, val 0, test 1000 examples, 1x28x28 uint8 images, 10 classes)"
    with_val = DatasetSplits(images, test, test, 10, 1, 28, (0.13,), (0.31,), "crop-flip-reflect")
    assert repr(with_val) == (
        "DatasetSplits(train 4000, val 1000, test 1000 examples, 1x28x28 uint8 images, 10 classes, augment crop-flip-reflect)"
    )


def test_array_dataset_repr_names_count_and_example_shape():
    features = ArrayDataset(torch.zeros(500, 3312, 1, 1), torch.zeros(500, dtype=torch.int64))
    assert repr(features) == "ArrayDataset(500 examples, 3312 float32 features)"
    assert repr(dataset(7)) == "ArrayDataset(7 examples, 1x2x2 uint8 images)"
    assert len(repr(DatasetSplits(features, features, features, 2, 3312, 1, (0.0,), (1.0,)))) < 120
