"""Property-based tests: random layer shapes, densities, criteria and step sequences."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import itop

from .helpers import assert_zero_off_mask


@st.composite
def runs(draw):
    widths = draw(st.lists(st.integers(1, 24), min_size=2, max_size=5))
    return dict(
        widths=widths,
        density=draw(st.floats(0.01, 1.0)),
        distribution=draw(st.sampled_from(["uniform", "er", "erk"])),
        prune=draw(st.sampled_from(["magnitude", "set"])),
        grow=draw(st.sampled_from(["random", "gradient", "momentum"])),
        redistribution=draw(st.sampled_from(["none", "magnitude", "nonzeros", "momentum"])),
        prune_rate=draw(st.floats(0.01, 1.0)),
        update_frequency=draw(st.integers(1, 3)),
        steps=draw(st.integers(1, 8)),
        adam=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs())
def test_invariants_hold_after_every_step(run):
    torch.manual_seed(run["seed"])
    widths = run["widths"]
    model = nn.Sequential(*[nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])])
    opt = torch.optim.Adam(model.parameters(), lr=0.01) if run["adam"] else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = itop.Sparsifier(
        model,
        opt,
        density=run["density"],
        distribution=run["distribution"],
        prune=run["prune"],
        grow=run["grow"],
        redistribution=run["redistribution"],
        prune_rate=run["prune_rate"],
        update_frequency=run["update_frequency"],
        total_steps=run["steps"],
        seed=run["seed"],
    )
    total = sum(int(m.sum()) for m in sp.masks.values())
    per_layer = {n: int(m.sum()) for n, m in sp.masks.items()}
    assert sp.itop_rate == sp.density
    rates = [sp.itop_rate]
    for _ in range(run["steps"]):
        x = torch.randn(4, widths[0])
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        sp.step()
        assert_zero_off_mask(sp)
        assert sum(int(m.sum()) for m in sp.masks.values()) == total
        if run["redistribution"] == "none":
            assert {n: int(m.sum()) for n, m in sp.masks.items()} == per_layer
        assert sp.density == total / sum(p.numel() for p in sp.params.values())
        assert sp.itop_rate >= rates[-1] and sp.itop_rate >= sp.density
        rates.append(sp.itop_rate)
        for name, mask in sp.masks.items():
            assert (mask & ~sp.exploration.explored[name]).sum() == 0
