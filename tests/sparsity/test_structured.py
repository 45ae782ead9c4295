"""Structured sparsity (`Sparsifier(structure=...)`): constant fan-in with and without SRigL's
ablation, and N:M, kept exactly after every update whatever the criteria and optimizer."""

import pytest
import torch
from torch import nn

import itop
from itop.sparsity import structured

from .helpers import assert_resume_bit_identical, assert_zero_off_mask, batches, train


def convnet(seed=0):
    """Rows of 72, 72, 32 and 16 inputs: every layer can be cut into groups of 4 and 8."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


DATA_SHAPE = (8, 6, 6)


def make(model=None, optimizer="sgd", **kw):
    model = convnet(0) if model is None else model
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
    kw = {"update_frequency": 1, "total_steps": 12, "seed": 3, "prune_rate": 0.5, **kw}
    return model, opt, itop.Sparsifier(model, opt, **kw)


def row_counts(mask):
    return mask.reshape(mask.shape[0], -1).sum(1)


def assert_structure(sp, budgets):
    for name, mask in sp.masks.items():
        counts = row_counts(mask)
        if sp.structure.kind == "fan-in":
            held = counts[counts > 0]
            assert held.unique().numel() == 1, f"{name}: fan-ins {counts.tolist()}"
            alive = held.numel()
            assert int(counts.sum()) == alive * min(mask[0].numel(), budgets[name] // alive), name
            if not sp.structure.ablation:
                assert int(counts.sum()) == budgets[name] and alive == mask.shape[0], name
        else:
            groups = mask.reshape(-1, sp.structure.m).sum(1)
            assert bool((groups == sp.structure.n).all()), f"{name}: groups hold {groups.unique().tolist()}"
    assert_zero_off_mask(sp)


CASES = [("fan-in", False), ("fan-in", True), ("2:4", False), ("1:4", False), ("3:8", False)]


@pytest.mark.parametrize("structure, ablation", CASES, ids=["fan-in", "fan-in+ablation", "2:4", "1:4", "3:8"])
@pytest.mark.parametrize("prune", ["magnitude", "set", "threshold"])
@pytest.mark.parametrize("grow", ["random", "gradient", "momentum"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_structure_holds_after_every_update(structure, ablation, prune, grow, optimizer):
    density = None if ":" in structure else 0.3
    options = {"threshold": 0.05} if prune == "threshold" else None
    model, opt, sp = make(
        optimizer=optimizer, structure=structure, ablation=ablation, density=density, prune=prune, grow=grow, prune_options=options
    )
    budgets = {n: int(m.sum()) for n, m in sp.masks.items()}
    if ":" in structure:
        assert sp.density == pytest.approx(sp.structure.n / sp.structure.m)
    before = {n: m.clone() for n, m in sp.masks.items()}
    train(model, opt, sp, batches(12, DATA_SHAPE, 3), check=lambda s: assert_structure(s, budgets))
    assert sp.steps == 12 and any(not torch.equal(before[n], sp.masks[n]) for n in before)
    assert sp.itop_rate > sp.density


def test_initial_fan_in_is_the_distributions_density_rounded_to_a_whole_row():
    _, _, sp = make(structure="fan-in", density=0.3, distribution="uniform")
    for name, stats in sp.layer_stats().items():
        fan_in = stats["numel"] // stats["shape"][0]
        assert stats["fan_in"] == max(1, round(0.3 * fan_in)) and stats["ablated"] == 0, name
        assert stats["active"] == stats["shape"][0] * stats["fan_in"] and stats["structure"] == "fan-in"


def test_n_m_density_is_n_over_m_and_a_different_density_is_refused():
    _, _, sp = make(structure="2:4")
    assert sp.density == 0.5 and sp.config["density"] == 0.5 and sp.layer_stats()["0.weight"]["structure"] == "2:4"
    with pytest.raises(ValueError, match=r"sets the density of every sparse layer to 2/4") as error:
        make(structure="2:4", density=0.1)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(structure="2-4"), "structure must be None, 'fan-in' or 'N:M'"),
        (dict(structure="4:4"), "0 < N < M"),
        (dict(structure="0:4"), "0 < N < M"),
        (dict(structure="2:4", ablation=True), "ablation=True works with structure='fan-in' only"),
        (dict(ablation=True), "pass structure='fan-in' with it"),
        (dict(structure="fan-in", ablation=True, ablation_threshold=1.5), "ablation_threshold must be in"),
        (dict(structure="fan-in", redistribution="momentum"), "use redistribution='none'"),
        (dict(structure="fan-in", grow="none"), "needs a grow criterion with scores"),
        (dict(structure="fan-in", grow=lambda candidates, k, **_: candidates), "needs a grow criterion with scores"),
    ],
)
def test_bad_structure_arguments_get_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        make(**kwargs)
    assert "\n" not in str(error.value)


def test_a_layer_whose_rows_n_m_cannot_cut_is_refused_by_name():
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(ValueError, match=r"0\.weight \(shape \(8, 10\)\) has rows of 10 inputs.*exclude=\['0\.weight'\]") as error:
        make(model, structure="2:4")
    assert "\n" not in str(error.value)
    _, _, sp = make(model, structure="2:4", exclude=["0.weight"])
    assert list(sp.masks) == ["2.weight"]


def test_truly_sparse_layers_are_refused_with_structure():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    itop.sparse.sparsify(model, 0.5, seed=0)
    with pytest.raises(ValueError, match="works on masked layers, but 0.weight is an itop.sparse layer"):
        make(model, structure="fan-in", density=0.5)


def test_a_group_with_no_free_position_regrows_pruned_weights_at_zero():
    """3:4 leaves one free position per group; a 0.75 prune rate takes up to three of a group's
    weights, so some must come back in the same update: as new weights, at zero, with no state."""
    model = nn.Sequential(nn.Linear(8, 64))
    _, opt, sp = make(model, structure="3:4", prune_rate=0.75, grow="gradient", update_frequency=2)
    data = batches(2, (8,), 64)
    x, y = data[0]
    train(model, opt, sp, data[:1])
    before = sp.masks["0.weight"].clone()
    weight_before = model[0].weight.detach().clone()
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    stepped = model[0].weight.detach().clone()
    assert sp.step()  # the update
    mask = sp.masks["0.weight"]
    assert bool((mask.reshape(-1, 4).sum(1) == 3).all())
    kept = before & mask & (model[0].weight != 0)
    assert torch.equal(model[0].weight[kept], stepped[kept])
    reborn = before & mask & (model[0].weight == 0) & (weight_before != 0)
    assert int(reborn.sum()) > 0
    assert bool((opt.state[model[0].weight]["momentum_buffer"][reborn] == 0).all())


def test_ablation_removes_neurons_whose_weights_stay_small_and_shares_their_budget():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 10), nn.ReLU(), nn.Linear(10, 3))
    with torch.no_grad():
        model[0].weight[:4].mul_(1e-4)  # four neurons whose weights lose every magnitude contest
    model[0].weight.register_hook(lambda g: g.index_fill(0, torch.arange(4), 0.0))  # and never grow
    _, opt, sp = make(model, structure="fan-in", ablation=True, density=0.25, distribution="uniform", grow="gradient", update_frequency=2)
    sp.detach()
    sp.attach()
    opt.param_groups[0]["lr"] = 0.0  # weights fixed: only the topology moves
    budget = int(sp.masks["0.weight"].sum())
    train(model, opt, sp, batches(2, (40,), 3))
    stats = sp.layer_stats()["0.weight"]
    assert stats["ablated"] == 4 and bool((row_counts(sp.masks["0.weight"])[:4] == 0).all())
    assert stats["fan_in"] == budget // 6 and stats["active"] == 6 * (budget // 6)


def test_ablation_keeps_enough_neurons_to_hold_the_budget():
    """With threshold 1 nearly every neuron falls short; the most salient stay, enough to hold the
    layer's count at most one full row each."""
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 3))
    _, opt, sp = make(model, structure="fan-in", ablation=True, ablation_threshold=1.0, density=0.75, distribution="uniform")
    train(model, opt, sp, batches(6, (8,), 3))
    counts = row_counts(sp.masks["0.weight"])
    assert int((counts > 0).sum()) >= 9 and bool((counts <= 8).all())


def test_same_seed_same_structured_masks():
    runs = []
    for seed in (4, 4, 5):
        model, opt, sp = make(structure="fan-in", ablation=True, density=0.3, grow="gradient", seed=seed)
        train(model, opt, sp, batches(6, DATA_SHAPE, 3))
        runs.append(sp.masks)
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    assert not all(torch.equal(runs[0][n], runs[2][n]) for n in runs[0])


@pytest.mark.parametrize("structure, ablation, grow", [("fan-in", True, "gradient"), ("2:4", False, "random")])
def test_structured_resume_is_bit_identical(structure, ablation, grow):
    kw = dict(structure=structure, ablation=ablation, grow=grow, density=None if ":" in structure else 0.3, update_frequency=3)
    assert_resume_bit_identical(make, convnet, batches(12, DATA_SHAPE, 3), 7, **kw)


def test_a_state_saved_with_another_structure_is_refused():
    _, _, sp = make(structure="fan-in", density=0.3)
    saved = sp.state_dict()
    _, _, other = make(structure="fan-in", ablation=True, density=0.3)
    with pytest.raises(ValueError, match="structure='fan-in'"):
        other.load_state_dict(saved)


def test_structure_with_the_sparse_linear_kernels():
    """A layer large and sparse enough for the CSR kernels keeps its structure through them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 10))
    _, opt, sp = make(model, structure="fan-in", density=0.05, distribution="uniform", grow="gradient", update_frequency=2)
    budgets = {n: int(m.sum()) for n, m in sp.masks.items()}
    train(model, opt, sp, batches(4, (1024,), 10, batch=64), check=lambda s: assert_structure(s, budgets))


def test_top_in_blocks_takes_the_largest_allowed_with_ties_to_the_lowest_index():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0], [float("nan"), 0.0, 5.0, 1.0]])
    allowed = torch.tensor([[True, True, True, False], [True, True, False, True]])
    chosen = structured.top_in_blocks(scores, allowed, torch.tensor([1, 2]))
    assert chosen.tolist() == [[False, True, False, False], [False, True, False, True]]
