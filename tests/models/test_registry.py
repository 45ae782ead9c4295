"""The model registry: names, aliases, defaults and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from itop.models import create_model, default_input_shape, get_model_spec, list_models, register_model, registry
from itop.models.resnet_cifar import CifarResNet
from itop.models.resnet_imagenet import ImageNetResNet

EXPECTED_MODELS = [
    "alexnet-b", "alexnet-s",
    "imagenet-resnet101", "imagenet-resnet152", "imagenet-resnet18", "imagenet-resnet34", "imagenet-resnet50",
    "lenet300-100", "lenet5", "mlp-cifar10", "resnet18", "resnet34", "set-mlp",
    "vgg-c", "vgg-d", "vgg-like", "wrn-16-10", "wrn-16-8", "wrn-22-8", "wrn-28-2",
]  # fmt: skip


@pytest.fixture
def scratch_registry(monkeypatch):
    """Let a test register models without leaking them into the others."""
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))


def test_list_models_is_sorted_and_complete():
    assert list_models() == EXPECTED_MODELS


def test_aliases_are_listed_only_on_request():
    with_aliases = list_models(include_aliases=True)
    assert with_aliases == sorted(with_aliases)
    assert {"resnet50", "mlpcifar10", "resnet-34"} <= set(with_aliases) - set(list_models())


def test_unknown_name_raises_one_sentence_naming_it_and_the_sorted_choices():
    with pytest.raises(ValueError) as excinfo:
        create_model("resnet9000")
    message = str(excinfo.value)
    assert "'resnet9000'" in message
    assert ", ".join(EXPECTED_MODELS) in message
    assert message.endswith(".") and message.count(".") == 1  # one sentence


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("ResNet18", "resnet18"),
        ("ResNet34", "resnet34"),
        ("ResNet-34", "resnet34"),
        ("MLPCIFAR10", "mlp-cifar10"),
        ("resnet50", "imagenet-resnet50"),
        ("resnet101", "imagenet-resnet101"),
        ("resnet152", "imagenet-resnet152"),
        ("VGG-C", "vgg-c"),
    ],
)
def test_original_keys_resolve_case_insensitively(alias, canonical):
    assert get_model_spec(alias).name == canonical


def test_resnet18_is_the_cifar_model_and_resnet50_the_imagenet_one():
    assert isinstance(create_model("ResNet18", num_classes=100), CifarResNet)
    assert isinstance(create_model("resnet50"), ImageNetResNet)


@pytest.mark.parametrize(
    ("name", "shape"),
    [("lenet5", (1, 28, 28)), ("lenet300-100", (1, 28, 28)), ("vgg-c", (3, 32, 32)), ("imagenet-resnet50", (3, 224, 224))],
)
def test_default_input_shape_is_the_original_dataset(name, shape):
    assert default_input_shape(name) == shape


def test_create_model_fills_in_the_registered_input_size(scratch_registry):
    seen = {}

    @register_model("probe", in_channels=5, image_size=7)
    def probe(num_classes, in_channels, image_size, **kwargs):
        seen.update(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
        return nn.Identity()

    create_model("probe")
    assert seen == {"num_classes": 10, "in_channels": 5, "image_size": 7}
    create_model("PROBE", num_classes=3, in_channels=1, image_size=9, extra=True)
    assert seen == {"num_classes": 3, "in_channels": 1, "image_size": 9, "extra": True}


def test_registering_a_taken_name_or_alias_fails(scratch_registry):
    with pytest.raises(ValueError, match="already registered"):
        register_model("VGG-C")(lambda **kw: nn.Identity())
    with pytest.raises(ValueError, match="already registered"):
        register_model("new-model", aliases=("resnet50",))(lambda **kw: nn.Identity())


def test_unknown_keyword_reaches_the_model_and_fails():
    with pytest.raises(TypeError):
        create_model("lenet5", colour="blue")


def test_model_keywords_are_passed_through():
    model = create_model("wrn-28-2", drop_rate=0.0)
    assert all(block.drop_rate == 0.0 for block in model.block1.layer)
    torch.manual_seed(0)
    assert isinstance(create_model("imagenet-resnet18", init="fanin"), ImageNetResNet)
