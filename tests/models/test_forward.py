"""Every model builds and trains a step at its dataset's input size on CPU, and its head
follows `num_classes`."""

from __future__ import annotations

import pytest
import torch

from itop.models import create_model, default_input_shape, list_models

from .helpers import DATASET, INPUT_SHAPE, head

BATCH = 2


def test_every_model_has_its_dataset_input_size():
    assert sorted(DATASET) == list_models()
    for name, dataset in DATASET.items():
        assert default_input_shape(name) == INPUT_SHAPE[dataset], name


# Full size for every model, ImageNet ResNets at 224x224 included: one SGD step of
# imagenet-resnet152 at batch 2 takes about a second on a 2-core CPU.
@pytest.mark.parametrize("name", list_models())
def test_one_training_step_at_the_dataset_input_size(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)  # no size given: the dataset's input
    x = torch.randn(BATCH, *INPUT_SHAPE[DATASET[name]])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = head(model).weight.detach().clone()
    logits = model(x)
    assert logits.shape == (BATCH, 7)
    # Logits, not log-probabilities: the rows are not normalised.
    assert not torch.allclose(logits.logsumexp(dim=1), torch.zeros(BATCH), atol=1e-3)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 6]))
    assert torch.isfinite(loss)
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
    optimizer.step()
    assert not torch.equal(head(model).weight, before)
    for param_name, param in model.named_parameters():
        assert torch.isfinite(param).all(), param_name


@pytest.mark.parametrize("name", list_models())
def test_num_classes_sets_the_head(name):
    with torch.device("meta"):  # shapes only: skips the cost of initialising the weights
        assert head(create_model(name, num_classes=100)).out_features == 100
        assert head(create_model(name, num_classes=10)).out_features == 10


@pytest.mark.parametrize(
    ("name", "channels", "size"),
    [
        ("lenet5", 3, 32),
        ("lenet300-100", 3, 32),
        ("mlp-cifar10", 1, 28),
        ("alexnet-s", 1, 28),
        ("alexnet-b", 3, 64),
        ("vgg-c", 1, 28),
        ("vgg-like", 3, 64),
        ("wrn-28-2", 1, 28),
        ("resnet18", 1, 28),
        ("imagenet-resnet18", 1, 40),
    ],
)
def test_other_input_sizes_resize_the_model(name, channels, size):
    model = create_model(name, num_classes=5, in_channels=channels, image_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(1, channels, size, size)).shape == (1, 5)


@pytest.mark.parametrize(
    ("name", "channels", "size", "in_features"),
    [
        ("lenet300-100", 3, 32, 3 * 32 * 32),
        ("mlp-cifar10", 1, 28, 28 * 28),
        ("lenet5", 3, 32, 50 * 5 * 5),  # 32 -> 28 -> 14 -> 10 -> 5
        ("alexnet-s", 3, 64, 256 * 2 * 2),  # 64 -> 29 -> 15 -> 8 -> 4 -> 2
    ],
)
def test_first_linear_width_follows_the_input(name, channels, size, in_features):
    with torch.device("meta"):
        model = create_model(name, in_channels=channels, image_size=size)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert first.in_features == in_features


def test_vgg_c_one_by_one_convs_grow_the_map():
    # 32x32 ends at 2x2x512 because the padded 1x1 convs add 2 pixels each (REFERENCE.md section 5).
    assert create_model("vgg-c").classifier[0].in_features == 2048
    assert create_model("vgg-d").classifier[0].in_features == 512


@pytest.mark.parametrize(("name", "size"), [("lenet5", 8), ("vgg-d", 16), ("alexnet-s", 0)])
def test_too_small_inputs_are_rejected_at_construction(name, size):
    with pytest.raises(ValueError, match="too small"):
        create_model(name, image_size=size)
