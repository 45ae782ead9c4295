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
    assert list(sparse_parameters(net, include=[nn.Embedding, "head.*.weight"])) == [
        "head.0.weight",
        "head.1.weight",
        "head.2.weight",
        "embed.weight",
    ]
    assert list(sparse_parameters(net, exclude=["head.2.*", nn.Conv2d])) == ["head.0.weight"]


def test_bad_selector():
    with pytest.raises(ValueError, match="name patterns"):
        sparse_parameters(Net(), include=[3])


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2)
        self.lstm = nn.LSTM(8, 8)
        self.head = nn.Linear(8, 2)


def test_module_types_cover_the_weights_of_their_submodules_and_odd_names():
    net = Attention()
    assert list(sparse_parameters(net)) == ["attn.out_proj.weight", "head.weight"]
    assert list(sparse_parameters(net, include=[nn.MultiheadAttention])) == ["attn.in_proj_weight", "attn.out_proj.weight"]
    assert list(sparse_parameters(net, include=[nn.LSTM])) == ["lstm.weight_ih_l0", "lstm.weight_hh_l0"]
    assert list(sparse_parameters(net, exclude=[nn.MultiheadAttention])) == ["head.weight"]


class Tied(nn.Module):
    def __init__(self, embedding_first):
        super().__init__()
        embedding, decoder = nn.Embedding(10, 8), nn.Linear(8, 10, bias=False)
        decoder.weight = embedding.weight
        for name, module in (("emb", embedding), ("dec", decoder))[:: 1 if embedding_first else -1]:
            self.add_module(name, module)
        self.mid = nn.Linear(8, 8)


@pytest.mark.parametrize("embedding_first", [True, False])
def test_tied_weight_is_chosen_by_any_of_its_names_whatever_the_order(embedding_first):
    net = Tied(embedding_first)
    first = "emb.weight" if embedding_first else "dec.weight"
    assert sorted(sparse_parameters(net)) == sorted([first, "mid.weight"])
    assert list(sparse_parameters(net, exclude=["dec.weight"])) == ["mid.weight"]


def test_frozen_parameters_are_never_sparse():
    net = Net()
    net.head[0].weight.requires_grad_(False)
    assert list(sparse_parameters(net)) == ["conv.weight", "head.2.weight"]


def test_include_entry_that_matches_nothing_is_refused():
    with pytest.raises(ValueError, match="include entry 'encoder.*' matches no parameter"):
        sparse_parameters(Net(), include=["head.0.weight", "encoder.*"])
    with pytest.raises(ValueError, match="nn.LSTM|LSTM"):
        sparse_parameters(Net(), include=[nn.LSTM])
