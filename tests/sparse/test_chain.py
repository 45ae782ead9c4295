"""A run of truly sparse Linear layers with ReLUs between them, through one autograd node
(`itop.sparse.chain`): used only where it computes the numbers of the layers one by one, bit for bit."""

import pytest
import torch
from torch import nn

import itop
from itop.models.set_mlp import SetMLP
from itop.sparse import SparseLinear, chain, native

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason="the chain runs numba's kernels")


def sparse_mlp(dtype=torch.float32, dropout=0.0):
    torch.manual_seed(0)
    model = SetMLP(60, 5, hidden=[40, 30, 20], dropout=dropout).to(dtype)
    itop.sparse.sparsify(model, 0.2, seed=3)
    return model


def count_chain_calls(monkeypatch) -> list:
    calls = []
    original = chain.forward_run
    monkeypatch.setattr(chain, "forward_run", lambda layers, x: calls.append(len(layers)) or original(layers, x))
    return calls


def train(model, grow, steps, use_chain, monkeypatch, batch=2):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=4e-3)
    sparsifier = itop.Sparsifier(model, optimizer, density=0.2, grow=grow, update_frequency=4, seed=1)
    generator = torch.Generator().manual_seed(5)
    with monkeypatch.context() as patch:
        if not use_chain:
            patch.setattr(chain, "usable", lambda layers, x: False)
        for _ in range(steps):
            x = torch.randn(batch, 60, generator=generator, dtype=next(model.parameters()).dtype)
            y = torch.randint(0, 5, (batch,), generator=generator)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            sparsifier.step()
    return model.state_dict()


def test_a_chain_is_a_sparse_layer_then_relu_and_sparse_layer_pairs():
    a, b, c = SparseLinear(4, 4, nnz=4), SparseLinear(4, 4, nnz=4), SparseLinear(4, 4, nnz=4)
    assert chain.run_length([a, nn.ReLU(), b, nn.ReLU(), c, nn.ReLU()], 0) == 5
    assert chain.run_length([a, nn.ReLU(), b, nn.Dropout(0.1), c], 0) == 3
    assert chain.run_length([a, nn.ReLU(), nn.Linear(4, 4)], 0) == 0  # one sparse layer: nothing to fuse
    assert chain.run_length([a, nn.LeakyReLU(), b], 0) == 0
    assert chain.run_length([nn.ReLU(), a, nn.ReLU(), b], 1) == 3


@pytest.mark.parametrize("grow", ["random", "gradient"])
def test_training_through_the_chain_equals_the_layers_one_by_one_bit_for_bit(one_thread, monkeypatch, grow):
    calls = count_chain_calls(monkeypatch)
    fused = train(sparse_mlp(), grow, 14, True, monkeypatch)
    # RigL's update steps record inputs and gradients per layer: those steps take the layers one by one
    assert len(calls) == (14 if grow == "random" else 11) and set(calls) == {4}
    calls.clear()
    separate = train(sparse_mlp(), grow, 14, False, monkeypatch)
    assert not calls
    assert fused.keys() == separate.keys()
    for name, value in fused.items():
        assert torch.equal(value, separate[name]), name


@pytest.mark.parametrize("batch", [1, 2])
def test_the_input_gradient_and_float64_equal_the_layers_one_by_one(one_thread, monkeypatch, batch):
    model = sparse_mlp(torch.float64)
    calls = count_chain_calls(monkeypatch)
    x = torch.randn(batch, 60, dtype=torch.float64, requires_grad=True)
    out = model(x)
    out.add_(1.0)  # the caller may change the output in place: the chain does not keep it for backward
    out.square().sum().backward()
    assert calls == [4]
    got = [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    x.grad = None
    monkeypatch.setattr(chain, "usable", lambda layers, x: False)
    out = model(x)
    out.add_(1.0)
    out.square().sum().backward()
    want = [x.grad] + [p.grad for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_the_chain_is_not_taken_where_it_would_compute_otherwise(one_thread, monkeypatch):
    model = sparse_mlp()
    calls = count_chain_calls(monkeypatch)
    x = torch.randn(2, 60)
    model(torch.randn(4, 60)).sum().backward()  # a batch above 2
    with torch.no_grad():
        model(x)  # evaluation: each layer's own inference path
    torch.set_num_threads(2)
    model(x).sum().backward()  # the layers' products would have per-thread parts
    torch.set_num_threads(1)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False):
        model(x).sum().backward()
    sparse_mlp(dropout=0.2)(x).sum().backward()  # dropout between the layers breaks the run
    with pytest.raises(ValueError, match="SparseLinear expects inputs of shape"):
        model(torch.randn(2, 61))  # a wrong width: the layer's own error, never the kernel's
    assert calls == []
    handle = model.fc2.register_forward_hook(lambda *args: None)
    model(x).sum().backward()  # a hook on a layer must see its call: fc3 and fc4 alone form the chain
    handle.remove()
    assert calls == [2]
    model(x).sum().backward()
    assert calls == [2, 4]
