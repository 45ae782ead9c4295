import pytest
from torch import nn

from itop.sparsity.params import sparse_parameters


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))
        self.embed = nn.Embedding(10, 8)


def test_default_is_linear_and_conv_weights_including_first_and_last():
    assert list(sparse_parameters(Net())) == ["conv.weight", "head.0.weight", "head.2.weight"]


def test_include_types_and_patterns_exclude():
    net = Net()
    assert list(sparse_parameters(net, include=[nn.Embedding, "head.*.weight"])) == ["head.0.weight", "head.1.weight", "head.2.weight", "embed.weight"]
    assert list(sparse_parameters(net, exclude=["head.2.*", nn.Conv2d])) == ["head.0.weight"]


def test_bad_selector():
    with pytest.raises(ValueError, match="name patterns"):
        sparse_parameters(Net(), include=[3])
