import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from itop.sparsity.redistribute import REDISTRIBUTE, allocate


def test_statistics():
    w = torch.tensor([1.0, -3.0, 0.0, 100.0])
    mask = torch.tensor([True, True, True, False])
    assert REDISTRIBUTE.get("magnitude")(w, mask) == pytest.approx(4 / 3)
    assert REDISTRIBUTE.get("nonzeros")(w, mask) == 3
    assert REDISTRIBUTE.get("momentum")(w, mask, grad_average=torch.tensor([2.0, 2.0, -2.0, 9.0])) == 2
    assert REDISTRIBUTE.get("none")(w, mask, removed=7) == 7


def test_allocate_proportional_and_capped():
    assert allocate(10, [1, 1], [100, 100]) == [5, 5]
    assert allocate(10, [3, 1], [100, 100]) == [8, 2] or allocate(10, [3, 1], [100, 100]) == [7, 3]
    assert allocate(10, [9, 1], [2, 100]) == [2, 8]
    assert allocate(5, [0, 0, 0], [1, 2, 2]) == [1, 2, 2]


def test_allocate_treats_non_finite_shares_as_zero():
    assert allocate(6, [float("nan"), 1.0, float("inf")], [10, 10, 10]) == [0, 6, 0]
    assert allocate(3, [float("nan"), -1.0], [2, 2]) in ([2, 1], [1, 2])


def test_allocate_refuses_impossible():
    with pytest.raises(ValueError):
        allocate(5, [1, 1], [1, 1])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.integers(0, 50)), min_size=1, max_size=8), st.data())
def test_allocate_exact_sum_within_room(layers, data):
    shares, room = zip(*layers)
    total = data.draw(st.integers(0, sum(room)))
    counts = allocate(total, shares, room)
    assert sum(counts) == total and all(0 <= c <= r for c, r in zip(counts, room))
