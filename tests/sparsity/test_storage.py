"""The storage interface the Sparsifier speaks: the same calls on a masked and a truly sparse layer."""

import pytest
import torch
from torch import nn

from itop.sparse import SparseLinear
from itop.sparsity.grow import GROW
from itop.sparsity.prune import PRUNE
from itop.sparsity.storage import MaskedStorage, Rule, TrulySparseStorage


def masked():
    torch.manual_seed(0)
    linear = nn.Linear(8, 6)
    storage = MaskedStorage("weight", linear.weight, linear)
    storage.initialize(12, torch.Generator().manual_seed(1))
    return storage


def truly_sparse():
    layer = SparseLinear(8, 6, nnz=12, generator=torch.Generator().manual_seed(1))
    return TrulySparseStorage("weight", layer, torch.optim.SGD(layer.parameters(), lr=0.1))


@pytest.mark.parametrize("build", [masked, truly_sparse])
def test_both_storages_answer_the_same_questions(build):
    storage = build()
    assert storage.shape == (6, 8) and storage.numel == 48 and storage.nnz == 12
    assert storage.active.dtype == torch.bool and storage.active.shape == storage.weight.shape
    assert int(storage.active.sum()) == 12
    assert storage.stats() == {"shape": (6, 8), "numel": 48, "active": 12, "density": 0.25}
    before = storage.topology().clone()

    kept = storage.prune(Rule(PRUNE.get("magnitude"), {}, "magnitude"), 4, None)
    assert kept.shape == storage.weight.shape and int(kept.sum()) == 8 and not (kept & ~storage.active).any()
    grad = torch.randn(storage.shape) if not storage.truly_sparse else []
    grown = storage.grow(Rule(GROW.get("random"), {}, "random"), 4, grad, torch.Generator().manual_seed(2))
    storage.replace(kept, grown, 12)

    assert storage.nnz == 12 and not torch.equal(storage.topology(), before)
    if storage.truly_sparse:  # sorted positions, the 8 survivors among them
        positions = storage.topology()
        assert bool((positions.diff() > 0).all()) and torch.isin(before[kept], positions).all()
    else:  # a mask holding the survivors
        assert bool((storage.topology() | ~kept).all())


@pytest.mark.parametrize("build", [masked, truly_sparse])
def test_criteria_breaking_their_contract_are_refused_by_name(build):
    storage = build()
    everything = Rule(lambda weight, active, k, **_: torch.zeros_like(active), {}, "greedy")
    with pytest.raises(RuntimeError, match="prune criterion 'greedy' must switch off at most 2 active weights of weight"):
        storage.prune(everything, 2, None)
    nothing = Rule(lambda *args, **_: torch.zeros(48, dtype=torch.bool), {}, "lazy")
    nothing.fn.positions = lambda *args, **_: torch.zeros(0, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="grow criterion 'lazy' must"):
        storage.grow(nothing, 3, [] if storage.truly_sparse else None, torch.Generator())


def test_a_masked_storage_masks_its_optimizer_state():
    storage = masked()
    optimizer = torch.optim.SGD([storage.param], lr=0.1, momentum=0.9)
    storage.param.grad = torch.ones_like(storage.param)
    optimizer.step()
    storage.mask_state(optimizer)
    buffer = optimizer.state[storage.param]["momentum_buffer"]
    assert not buffer[~storage.mask].any() and buffer[storage.mask].all()
    storage.refresh()
    assert storage.multiplier.dtype == storage.param.dtype and torch.equal(storage.multiplier.bool(), storage.mask)
