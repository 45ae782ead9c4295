import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from itop.sparsity.select import bottom_k_mask, random_k_mask, top_k_mask


def reference_top_k(scores, k):
    """Stable full sort: largest first, ties to the lowest index."""
    idx = torch.sort(-scores.float(), stable=True).indices[:k]
    out = torch.zeros(scores.numel(), dtype=torch.bool)
    out[idx] = True
    return out


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), data=st.data(), ties=st.integers(1, 50))
def test_top_k_matches_stable_sort(n, data, ties):
    k = data.draw(st.integers(0, n))
    scores = torch.randint(0, ties, (n,)).float()  # few distinct values: many ties
    assert torch.equal(top_k_mask(scores, k), reference_top_k(scores, k))


def test_top_k_shortlist_path_is_exact():
    torch.manual_seed(0)
    scores = torch.randn(300_000)
    scores[::5] = 0.25
    for k in (1, 1000, 40_000, 70_000):
        assert torch.equal(top_k_mask(scores, k), reference_top_k(scores, k))


def test_all_equal_scores_pick_lowest_indices():
    chosen = top_k_mask(torch.zeros(200_000), 5000)
    assert chosen[:5000].all() and int(chosen.sum()) == 5000


def test_allowed_positions_only_and_exact_count():
    torch.manual_seed(1)
    scores = torch.randn(50, 40)
    for frac in (0.05, 0.9):
        allowed = torch.rand(50, 40) < frac
        k = int(allowed.sum()) // 2
        chosen = top_k_mask(scores, k, allowed)
        assert int(chosen.sum()) == k and not (chosen & ~allowed).any()
        assert scores[chosen].min() >= scores[allowed & ~chosen].max()


def test_bottom_k_and_nan():
    scores = torch.tensor([3.0, float("nan"), 1.0, 2.0])
    assert bottom_k_mask(scores, 1).tolist() == [False, False, True, False]
    assert top_k_mask(scores, 3).tolist() == [True, False, True, True]


def test_too_many_asked_raises():
    with pytest.raises(ValueError):
        top_k_mask(torch.ones(3), 2, torch.tensor([True, False, False]))
    with pytest.raises(ValueError):
        random_k_mask(torch.tensor([True, False]), 2, torch.Generator())


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), frac=st.floats(0.01, 1.0), data=st.data(), seed=st.integers(0, 2**31))
def test_random_k_exact_and_inside_allowed(n, frac, data, seed):
    allowed = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < frac
    k = data.draw(st.integers(0, int(allowed.sum())))
    chosen = random_k_mask(allowed, k, torch.Generator().manual_seed(seed))
    assert int(chosen.sum()) == k and not (chosen & ~allowed).any()
    again = random_k_mask(allowed, k, torch.Generator().manual_seed(seed))
    assert torch.equal(chosen, again)


def test_random_k_is_uniform():
    allowed = torch.ones(20, dtype=torch.bool)
    allowed[::5] = False
    gen = torch.Generator().manual_seed(0)
    hits = sum(random_k_mask(allowed, 3, gen).float() for _ in range(4000))
    rate = hits[allowed] / 4000
    assert (hits[~allowed] == 0).all()
    assert ((rate - 3 / 16).abs() < 0.03).all(), rate


def test_nan_and_infinite_scores_never_leak_outside_allowed():
    scores = torch.tensor([float("nan"), float("-inf"), 1.0, float("nan"), float("inf"), 2.0])
    allowed = torch.tensor([True, True, False, True, True, False])
    chosen = top_k_mask(scores, 4, allowed)
    assert chosen.tolist() == [True, True, False, True, True, False]
    assert top_k_mask(scores, 1, allowed).tolist() == [False, False, False, False, True, False]
