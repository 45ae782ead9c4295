import pytest
import torch

from itop.sparsity.prune import PRUNE


def removed(fn, weight, mask, k, **kw):
    new = PRUNE.get(fn)(weight, mask, k, **kw)
    assert not (new & ~mask).any(), "pruning may only switch weights off"
    return mask & ~new


def test_magnitude_removes_exactly_k_smallest_active_even_with_ties():
    """REFERENCE 8.2-5: the original removed every tied weight; we remove exactly k."""
    w = torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0, 2.0, 0.0])
    mask = torch.tensor([True] * 6 + [False])
    gone = removed("magnitude", w, mask, 1)
    assert gone.tolist() == [True, False, False, False, False, False, False]


def test_magnitude_ignores_inactive_zeros():
    w = torch.tensor([0.0, 0.0, 0.3, -0.1, 0.2])
    mask = torch.tensor([False, False, True, True, True])
    assert removed("magnitude", w, mask, 2).tolist() == [False, False, False, True, True]


def test_set_removes_smallest_positive_and_negative_closest_to_zero():
    """REFERENCE 8.2-1: the original kept only the most negative weights."""
    w = torch.tensor([0.1, 0.2, 0.9, -0.05, -0.3, -2.0])
    mask = torch.ones(6, dtype=torch.bool)
    assert removed("set", w, mask, 2).tolist() == [True, False, False, True, False, False]
    assert removed("set", w, mask, 4).tolist() == [True, True, False, True, True, False]


def test_set_removes_the_same_share_of_each_sign():
    """SET's zeta applies to each sign: 8 positive and 2 negative weights at zeta 0.5 lose 4 and 1."""
    w = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, -0.05, -0.9])
    gone = removed("set", w, torch.ones(10, dtype=torch.bool), 5)
    assert gone.tolist() == [True] * 4 + [False] * 4 + [True, False]
    w = torch.cat([torch.linspace(0.1, 1.0, 70), -torch.linspace(0.1, 1.0, 30)])
    gone = removed("set", w, torch.ones(100, dtype=torch.bool), 30)  # zeta 0.3 of 70 and of 30
    assert int(gone[:70].sum()) == 21 and int(gone[70:].sum()) == 9
    assert gone[:21].all() and gone[70:79].all()


def test_set_with_one_sign_only_still_exact():
    w = torch.tensor([0.4, 0.1, 0.3, 0.2])
    gone = removed("set", w, torch.ones(4, dtype=torch.bool), 3)
    assert gone.tolist() == [False, True, True, True]


def test_threshold_removes_small_weights_up_to_k():
    w = torch.tensor([0.0005, -0.0002, 0.5, 0.0009, -0.7])
    mask = torch.ones(5, dtype=torch.bool)
    assert removed("threshold", w, mask, 10, threshold=1e-3).sum() == 3
    assert removed("threshold", w, mask, 2, threshold=1e-3).tolist() == [True, True, False, False, False]


@pytest.mark.parametrize("name", ["magnitude", "set", "threshold"])
def test_k_zero_removes_nothing(name):
    w = torch.randn(10)
    mask = torch.rand(10) < 0.5
    assert not removed(name, w, mask, 0).any()
