"""CondensedSequential: one kernel call for a chain of condensed layers at batch 1, equal to the
layers run one by one; everything else runs as nn.Sequential."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from itop.sparse import condensed_chain, condensed_ops, dispatch, native
from itop.sparse.condensed import CondensedLinear
from itop.sparse.condensed_chain import CondensedSequential, fusable, fuse_chains

pytestmark = pytest.mark.skipif(condensed_ops.kernels() is None, reason="numba is not installed")


def condensed(n_in, n_out, k, dtype=torch.float32, ablated=(), bias=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(n_in, n_out, bias=bias).to(dtype)
    mask = torch.zeros(n_out, n_in, dtype=torch.bool)
    for row in range(n_out):
        if row not in ablated:
            mask[row, torch.randperm(n_in, generator=generator)[:k]] = True
    with torch.no_grad():
        linear.weight.mul_(mask)
    return CondensedLinear.from_dense(linear, mask)


def chain(dtype=torch.float32, **options):
    torch.manual_seed(0)
    layers = [
        condensed(40, 30, 6, dtype, **options),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        condensed(30, 20, 5, dtype, seed=1),
        nn.ReLU(),
        nn.Identity(),
        condensed(20, 7, 4, dtype, seed=2),
    ]
    return nn.Sequential(*layers).eval()


@pytest.fixture
def calls(monkeypatch):
    """Every call of the fused kernel, recorded."""
    made, kernel = [], condensed_ops.kernels().chain_vector
    monkeypatch.setattr(condensed_ops.kernels(), "chain_vector", lambda *args: made.append(args) or kernel(*args))
    return made


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("options", [{}, {"ablated": (0, 3, 29)}, {"bias": False}, {"ablated": (1,), "bias": False}])
def test_one_input_through_the_fused_chain_equals_the_layers_one_by_one(calls, monkeypatch, dtype, tolerance, threads, options):
    monkeypatch.setattr(dispatch, "active", dispatch.Dispatcher(mode="numba"))
    monkeypatch.setattr(native, "threads_for", lambda work: threads)
    plain = chain(dtype, **options)
    fused = fuse_chains(copy.deepcopy(plain))
    assert isinstance(fused, CondensedSequential)
    x = torch.randn(1, 40, dtype=dtype)
    with torch.no_grad():
        expected = plain(x)
        torch.testing.assert_close(fused(x), expected, rtol=0, atol=tolerance)
        torch.testing.assert_close(fused(x[0]), expected[0], rtol=0, atol=tolerance)
        dense = nn.Sequential(*[m.to_dense() if isinstance(m, CondensedLinear) else m for m in plain]).eval()
        torch.testing.assert_close(fused(x), dense(x), rtol=0, atol=tolerance * 10)
    assert len(calls) == 3 and calls[0][-1] == threads


def test_batches_training_and_autograd_run_as_nn_sequential(calls):
    fused = fuse_chains(chain())
    x = torch.randn(3, 40)
    with torch.no_grad():
        fused(x)  # a batch of 3
    fused(x[:1])  # autograd: the values require gradients
    fused.train()
    with torch.no_grad():
        fused(x[:1])  # training mode: dropout is not the identity
    assert calls == []
    fused.eval()
    with torch.no_grad():
        fused(x[:1])
    assert len(calls) == 1


def test_values_changed_in_place_are_seen(calls):
    fused = fuse_chains(chain())
    x = torch.randn(1, 40)
    with torch.no_grad():
        before = fused(x)
        fused[0].values.mul_(2)
        after = fused(x)
        torch.testing.assert_close(after, fuse_chains(copy.deepcopy(fused))(x))
    assert not torch.equal(before, after) and len(calls) == 3


def test_the_state_dict_and_copies_are_the_sequentials():
    plain = chain()
    fused = fuse_chains(copy.deepcopy(plain))
    assert list(fused.state_dict()) == list(plain.state_dict())
    x = torch.randn(1, 40)
    with torch.no_grad():
        fused(x)
        for copied in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
            assert "_packed_chain" not in copied.__dict__ or copied is not fused
            torch.testing.assert_close(copied(x), fused(x))


def test_only_sequentials_of_two_or_more_condensed_layers_fuse():
    torch.manual_seed(0)
    inner = nn.Sequential(condensed(8, 8, 2), nn.ReLU(), condensed(8, 4, 2))
    model = nn.Module()
    model.body = inner
    model.other = nn.Sequential(condensed(8, 8, 2), nn.Tanh(), condensed(8, 4, 2))  # Tanh: not fusable
    model.single = nn.Sequential(condensed(8, 8, 2), nn.ReLU())
    fuse_chains(model)
    assert isinstance(model.body, CondensedSequential)
    assert type(model.other) is nn.Sequential and type(model.single) is nn.Sequential
    assert not fusable(nn.Sequential(nn.ReLU(), condensed(8, 8, 2), condensed(8, 4, 2)))
    assert not fusable(nn.Sequential(condensed(8, 8, 2), condensed(6, 4, 2)))  # widths that do not chain
    assert condensed_chain.fusable(nn.Sequential(condensed(8, 8, 2), condensed(8, 4, 2)))


@pytest.mark.parametrize("faster, threads", [("numba1", 1), ("numba", 2)])
def test_the_chains_threads_are_measured_once(monkeypatch, tmp_path, calls, faster, threads):
    monkeypatch.setattr(dispatch, "active", dispatch.Dispatcher(mode="auto", path=tmp_path / "kernels.json"))
    monkeypatch.setattr(native, "configured_threads", lambda: 2)
    probes, timings = [], {"numba1": 2.0, "numba": 2.0}
    timings[faster] = 1.0
    monkeypatch.setattr(condensed_chain, "_timings", lambda packed, configured: probes.append(1) or timings)
    torch.manual_seed(0)
    fused = fuse_chains(nn.Sequential(condensed(256, 256, 128), nn.ReLU(), condensed(256, 256, 128)).eval())
    with torch.no_grad():
        for _ in range(3):
            fused(torch.randn(1, 256))
    assert probes == [1] and [call[-1] for call in calls] == [threads] * 3
