import pytest
import torch

from itop.sparsity.grow import GROW


def grow(name, candidates, k, **kw):
    out = GROW.get(name)(candidates, k, generator=torch.Generator().manual_seed(0), **kw)
    assert not (out & ~candidates).any()
    return out


def test_gradient_picks_largest_gradient_among_candidates():
    g = torch.tensor([5.0, -4.0, 0.1, 3.0, -0.2])
    cand = torch.tensor([False, True, True, True, True])
    assert grow("gradient", cand, 2, grad=g).tolist() == [False, True, False, True, False]


def test_gradient_exact_count_when_gradients_are_zero():
    """REFERENCE 8.2-4: the original under-grew on zero-gradient ties."""
    cand = torch.tensor([False, True, True, False, True, True])
    out = grow("gradient", cand, 3, grad=torch.zeros(6))
    assert int(out.sum()) == 3 and out.tolist() == [False, True, True, False, True, False]


def test_momentum_uses_running_average():
    cand = torch.ones(4, dtype=torch.bool)
    avg = torch.tensor([0.0, -1.0, 0.5, 0.1])
    assert grow("momentum", cand, 1, grad_average=avg).tolist() == [False, True, False, False]


def test_random_exact_and_seeded():
    cand = torch.rand(1000, generator=torch.Generator().manual_seed(1)) < 0.7
    a, b = grow("random", cand, 100), grow("random", cand, 100)
    assert int(a.sum()) == 100 and torch.equal(a, b)


def test_missing_signal_is_a_clear_error():
    with pytest.raises(ValueError, match="after loss.backward"):
        grow("gradient", torch.ones(3, dtype=torch.bool), 1, grad=None)


def test_none_grows_nothing():
    assert not grow("none", torch.ones(3, dtype=torch.bool), 0).any()
