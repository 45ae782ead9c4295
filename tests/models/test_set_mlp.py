"""The SET multilayer perceptron: layer structure and names, activations, dropout, registry, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from itop.models import create_model, default_input_shape, get_model_spec
from itop.models.activations import AllReLU, SReLU
from itop.models.set_mlp import SetMLP, parse_hidden


def linear_shapes(model: nn.Module) -> list[tuple[str, int, int]]:
    return [(name, m.in_features, m.out_features) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize(
    ("hidden", "expected"),
    [
        ((5, 7), [("fc1", 784, 5), ("fc2", 5, 7), ("fc3", 7, 10)]),
        ((4,), [("fc1", 784, 4), ("fc2", 4, 10)]),
        ((3, 1, 2, 6), [("fc1", 784, 3), ("fc2", 3, 1), ("fc3", 1, 2), ("fc4", 2, 6), ("fc5", 6, 10)]),
    ],
)
def test_linear_layers_follow_the_hidden_widths(hidden, expected):
    assert linear_shapes(SetMLP(784, 10, hidden=hidden)) == expected


def test_default_is_784_1000_1000_1000_10_with_relu():
    model = create_model("set-mlp")
    assert [shape[1:] for shape in linear_shapes(model)] == [(784, 1000), (1000, 1000), (1000, 1000), (1000, 10)]
    assert [type(m) for m in model.children()] == [nn.Linear, nn.ReLU] * 3 + [nn.Linear]


def test_parameters_come_in_forward_order():
    model = SetMLP(6, 2, hidden=(4, 3), activation="srelu")
    srelu = ["t_left", "a_left", "t_right", "a_right"]
    assert [name for name, _ in model.named_parameters()] == [
        "fc1.weight", "fc1.bias", *(f"act1.{p}" for p in srelu),
        "fc2.weight", "fc2.bias", *(f"act2.{p}" for p in srelu),
        "fc3.weight", "fc3.bias",
    ]  # fmt: skip


@pytest.mark.parametrize(("alpha", "layers"), [(0.6, 4), (0.75, 3), (0.6, 1)])
def test_allrelu_slopes_alternate_starting_negative(alpha, layers):
    model = SetMLP(8, 3, hidden=(5,) * layers, activation="allrelu", allrelu_slope=alpha)
    acts = [getattr(model, f"act{i}") for i in range(1, layers + 1)]
    assert all(isinstance(a, AllReLU) for a in acts)
    assert [a.slope for a in acts] == [(-alpha if i % 2 else alpha) for i in range(1, layers + 1)]


def test_srelu_has_one_unit_per_neuron_of_its_layer():
    model = SetMLP(8, 3, hidden=(5, 7), activation="srelu")
    assert [(type(model.act1), model.act1.num_features), (type(model.act2), model.act2.num_features)] == [
        (SReLU, 5),
        (SReLU, 7),
    ]


def test_dropout_only_when_positive():
    assert not any(isinstance(m, nn.Dropout) for m in SetMLP(8, 3, hidden=(5, 7)).modules())
    model = SetMLP(8, 3, hidden=(5, 7), dropout=0.3)
    drops = [(name, m.p) for name, m in model.named_modules() if isinstance(m, nn.Dropout)]
    assert drops == [("drop1", 0.3), ("drop2", 0.3)]
    assert [name for name, _ in model.named_children()] == ["fc1", "act1", "drop1", "fc2", "act2", "drop2", "fc3"]


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    model = SetMLP(8, 3, hidden=(64,), dropout=0.5)
    x = torch.randn(4, 8)
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_unknown_activation_names_the_choices():
    with pytest.raises(ValueError, match=r"^unknown activation 'tanh'; choose one of: allrelu, relu, srelu\.$"):
        SetMLP(8, 3, activation="tanh")


@pytest.mark.parametrize("hidden", [(), (0,), (5, -1), (5, 2.5), (True,), "5,,5"])
def test_bad_hidden_widths_are_rejected(hidden):
    with pytest.raises(ValueError, match="hidden") as excinfo:
        SetMLP(8, 3, hidden=hidden)
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_bad_dropout_is_rejected(dropout):
    with pytest.raises(ValueError, match="dropout"):
        SetMLP(8, 3, dropout=dropout)


@pytest.mark.parametrize(
    ("text", "widths"),
    [("3000,3000,3000", (3000, 3000, 3000)), (" 4000 , 1000,4000 ", (4000, 1000, 4000)), ("7", (7,))],
)
def test_parse_hidden_reads_comma_separated_widths(text, widths):
    assert parse_hidden(text) == widths


@pytest.mark.parametrize("text", ["", " ", "3000,", ",3000", "1000,,1000", "a,b", "0", "5,0", "-5", "3.5", "1e3", "10 20"])
def test_parse_hidden_rejects_anything_else_in_one_line(text):
    with pytest.raises(ValueError, match="positive integers separated by commas") as excinfo:
        parse_hidden(text)
    assert "\n" not in str(excinfo.value) and repr(text) in str(excinfo.value)


def test_registry_builds_set_mlp_with_keywords():
    assert get_model_spec("SetMLP").name == "set-mlp"
    assert default_input_shape("set-mlp") == (1, 28, 28)
    model = create_model(
        "set-mlp", num_classes=4, in_channels=3, image_size=8, hidden="5, 7", activation="allrelu",
        dropout=0.2, allrelu_slope=0.75,
    )  # fmt: skip
    assert isinstance(model, SetMLP)
    assert linear_shapes(model) == [("fc1", 192, 5), ("fc2", 5, 7), ("fc3", 7, 4)]
    assert (model.act1.slope, model.act2.slope, model.drop1.p) == (-0.75, 0.75, 0.2)


def test_registry_passes_no_unknown_keyword():
    with pytest.raises(TypeError):
        create_model("set-mlp", colour="blue")


def test_tabular_features_arrive_as_channels():
    model = create_model("set-mlp", num_classes=5, in_channels=3312, image_size=1, hidden=(16, 16, 16))
    assert model.fc1.in_features == 3312
    assert model(torch.randn(2, 3312, 1, 1)).shape == (2, 5)


@pytest.mark.parametrize("activation", ["relu", "srelu", "allrelu"])
def test_forward_gives_logits_of_the_class_count(activation):
    torch.manual_seed(0)
    model = create_model("set-mlp", num_classes=10, hidden=(32, 16), activation=activation, dropout=0.1)
    logits = model(torch.randn(3, 1, 28, 28))
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("activation", ["relu", "srelu", "allrelu"])
def test_huge_widths_build_on_meta_without_memory(activation):
    hidden = (333334, 333333, 333333)
    with torch.device("meta"):
        model = create_model("set-mlp", hidden=hidden, activation=activation)
    assert all(p.is_meta for p in model.parameters())
    sizes = (784, *hidden, 10)
    linear = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
    srelu = 4 * sum(hidden) if activation == "srelu" else 0
    assert sum(p.numel() for p in model.parameters()) == linear + srelu  # about 2.2e11 weights


@pytest.mark.parametrize("activation", ["relu", "srelu", "allrelu"])
def test_meta_build_materialises_on_cpu(activation):
    with torch.device("meta"):
        model = SetMLP(12, 3, hidden=(6, 5), activation=activation)
    model.to_empty(device="cpu")
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    assert all(not p.is_meta and torch.isfinite(p).all() for p in model.parameters())
    assert model.fc1.weight.abs().sum() > 0
    assert torch.isfinite(model(torch.randn(2, 12))).all()


@pytest.mark.parametrize("activation", ["relu", "srelu", "allrelu"])
def test_a_few_sgd_steps_reduce_the_loss(activation):
    torch.manual_seed(0)
    model = SetMLP(20, 3, hidden=(32, 32), activation=activation)
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(50):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]  # 0.37 / 1.11 for relu, the slowest of the three
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
