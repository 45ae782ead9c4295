"""Parameter names and order match the original, so per-layer densities line up with REFERENCE.md.

The ERK check recomputes the capped Erdos-Renyi-kernel densities (REFERENCE.md 2.2) from the
model's weight shapes, to tie our layer shapes and names to the reference's list of layers that
ERK makes dense.
"""

from __future__ import annotations

import math

import pytest

from .helpers import build_reference, reference_masked_names


def erk_dense_layers(shapes: dict[str, tuple[int, ...]], density: float) -> set[str]:
    """Names of the layers the capped ERK allocation makes fully dense."""
    numel = {name: math.prod(shape) for name, shape in shapes.items()}
    score = {name: sum(shape) / numel[name] for name, shape in shapes.items()}
    dense: set[str] = set()
    while True:
        sparse = [name for name in shapes if name not in dense]
        rhs = sum(density * numel[n] for n in sparse) - sum((1 - density) * numel[n] for n in dense)
        epsilon = rhs / sum(score[n] * numel[n] for n in sparse)
        top = max(score[n] for n in sparse)
        if epsilon * top <= 1:
            return {name.removesuffix(".weight") for name in dense}
        dense |= {n for n in sparse if score[n] == top}


def masked_shapes(name: str) -> dict[str, tuple[int, ...]]:
    model = build_reference(name)
    params = dict(model.named_parameters())
    return {n: tuple(params[n].shape) for n in reference_masked_names(model)}


@pytest.mark.parametrize(
    ("name", "masked_in_order"),
    [
        ("lenet300-100", ["fc1.weight", "fc2.weight", "fc3.weight"]),
        ("lenet5", ["conv1.weight", "conv2.weight", "fc3.weight", "fc4.weight"]),
        ("mlp-cifar10", ["fc1.weight", "fc2.weight", "fc3.weight"]),
    ],
)
def test_small_models_mask_the_original_layers_in_order(name, masked_in_order):
    assert reference_masked_names(build_reference(name)) == masked_in_order


@pytest.mark.parametrize(
    ("name", "first", "last"),
    [
        ("alexnet-s", "features.0.weight", "classifier.6.weight"),
        ("vgg-c", "features.0.weight", "classifier.6.weight"),
        ("vgg-d", "features.0.weight", "classifier.6.weight"),
        ("vgg-like", "features.0.weight", "classifier.3.weight"),
        ("wrn-28-2", "conv1.weight", "fc.weight"),
        ("resnet18", "conv1.weight", "classifier.weight"),
        ("imagenet-resnet50", "conv1.weight", "fc.weight"),
    ],
)
def test_first_and_last_masked_layers(name, first, last):
    masked = reference_masked_names(build_reference(name))
    assert (masked[0], masked[-1]) == (first, last)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("wrn-28-2", [f"block{i}.layer.0.convShortcut.weight" for i in range(1, 4)]),
        ("resnet18", ["layer2.0.shortcut.0.weight", "layer3.0.shortcut.0.weight", "layer4.0.shortcut.0.weight"]),
        ("imagenet-resnet50", [f"layer{i}.0.downsample.0.weight" for i in range(1, 5)]),
        ("imagenet-resnet18", [f"layer{i}.0.downsample.0.weight" for i in range(2, 5)]),
    ],
)
def test_shortcut_convolutions_are_named_as_in_the_original(name, expected):
    masked = reference_masked_names(build_reference(name))
    assert [n for n in masked if "hortcut" in n or "downsample" in n] == expected


def test_wrn_with_equal_widths_has_no_shortcut_conv():
    model = build_reference("wrn-28-2")
    assert model.block1.layer[1].convShortcut is None


@pytest.mark.parametrize(
    ("name", "density", "dense"),
    [
        ("lenet300-100", 0.05, set()),
        ("lenet5", 0.05, {"fc4"}),
        ("mlp-cifar10", 0.05, {"fc3"}),
        ("alexnet-s", 0.05, {"classifier.6"}),
        ("alexnet-b", 0.05, {"classifier.6"}),
        ("vgg-c", 0.05, {"features.0", "classifier.6"}),
        ("vgg-d", 0.05, {"features.0", "classifier.6"}),
        ("vgg-like", 0.05, {"features.0", "classifier.3"}),
        ("wrn-28-2", 0.05, {"conv1", "block1.layer.0.convShortcut", "fc"}),
        ("wrn-22-8", 0.05, {"conv1", "block1.layer.0.convShortcut", "fc"}),
        ("wrn-16-8", 0.05, {"conv1", "block1.layer.0.convShortcut", "fc"}),
        ("wrn-16-10", 0.05, {"conv1", "block1.layer.0.convShortcut", "fc"}),
        ("resnet18", 0.05, {"conv1", "layer2.0.shortcut.0"}),
        ("resnet34", 0.05, {"conv1", "layer2.0.shortcut.0"}),
        ("imagenet-resnet50", 0.05, set()),
        (
            "imagenet-resnet50",
            0.2,
            {
                "layer1.0.conv1", "layer1.0.conv3", "layer1.0.downsample.0", "layer1.1.conv1",
                "layer1.1.conv3", "layer1.2.conv1", "layer1.2.conv3", "layer2.0.conv1",
            },
        ),
    ],
)  # fmt: skip
def test_erk_dense_layers_match_the_reference(name, density, dense):
    assert erk_dense_layers(masked_shapes(name), density) == dense


def test_erk_makes_the_four_equal_resnet18_layer1_convs_dense_together_at_density_0_2():
    layer1 = {f"layer1.{block}.conv{conv}" for block in (0, 1) for conv in (1, 2)}
    assert layer1 <= erk_dense_layers(masked_shapes("resnet18"), 0.2)
    assert not layer1 & erk_dense_layers(masked_shapes("resnet18"), 0.1)


def test_erk_densities_of_lenets_match_the_reference():
    for name, expected in [("lenet300-100", (0.038484, 0.111334, 0.918507)), ("lenet5", (0.72612, 0.03748, 0.03806))]:
        shapes = masked_shapes(name)
        numel = {n: math.prod(s) for n, s in shapes.items()}
        score = {n: sum(s) / numel[n] for n, s in shapes.items()}
        sparse = list(shapes)[: len(expected)]
        dense = [n for n in shapes if n not in sparse]
        rhs = sum(0.05 * numel[n] for n in sparse) - sum(0.95 * numel[n] for n in dense)
        epsilon = rhs / sum(score[n] * numel[n] for n in sparse)
        assert [round(epsilon * score[n], len(str(e)) - 2) for n, e in zip(sparse, expected)] == list(expected)
