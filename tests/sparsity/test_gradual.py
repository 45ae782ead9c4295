"""Gradual pruning (GMP, GraNet) on Zhu & Gupta's cubic schedule, and runs started from given masks."""

import math

import pytest
import torch

import itop
from itop.sparsity.density import DISTRIBUTIONS, layer_counts

from .helpers import assert_resume_bit_identical, assert_zero_off_mask, batches, lenet300, small_convnet, train

STEPS, EVERY, START, END = 40, 4, 4, 28


def make(model, grow="none", seed=0, truly=False, **kw):
    if truly:
        itop.sparse.sparsify(model, 1.0, seed=seed)  # dense-but-indexed: the layers shrink as they are pruned
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    options = dict(density=0.1, initial_density=1.0, prune_start=START, prune_end=END, update_frequency=EVERY)
    return model, opt, itop.Sparsifier(model, opt, grow=grow, total_steps=STEPS, seed=seed, **{**options, **kw})


def expected_counts(sp, initial, step):
    """The cubic formula, written out independently of the engine."""
    shapes = {n: s["shape"] for n, s in sp.layer_stats().items()}
    final = layer_counts(shapes, DISTRIBUTIONS.get("erk")(shapes, 0.1))
    p = min(1.0, max(0.0, (step - START) / (END - START)))
    return {n: final[n] + math.floor((initial[n] - final[n]) * (1 - p) ** 3 + 0.5) for n in final}


@pytest.mark.parametrize("grow", ["none", "gradient", "random"])
def test_counts_follow_the_cubic_schedule_and_end_at_the_final_density(grow):
    model, opt, sp = make(lenet300(), grow=grow)
    initial = dict(sp.history[0]["nnz"])
    assert sp.density == 1.0 and sp.itop_rate == 1.0
    train(model, opt, sp, batches(STEPS, (784,), 10), check=assert_zero_off_mask)
    updates = [h for h in sp.history if h["step"] > 0]
    assert [h["step"] for h in updates] == list(range(EVERY, STEPS + 1, EVERY))
    for entry in updates:
        assert entry["nnz"] == expected_counts(sp, initial, entry["step"]), entry["step"]
    shapes = {n: s["shape"] for n, s in sp.layer_stats().items()}
    final = layer_counts(shapes, DISTRIBUTIONS.get("erk")(shapes, 0.1))
    assert sp.history[-1]["nnz"] == final
    assert sp.density == sum(final.values()) / sum(s["numel"] for s in sp.layer_stats().values())
    decreasing = [sum(h["nnz"].values()) for h in sp.history]
    assert all(a >= b for a, b in zip(decreasing, decreasing[1:]))


def test_granet_also_replaces_weights_at_each_update_and_gmp_does_not():
    gmp, granet = make(lenet300(), grow="none"), make(lenet300(), grow="gradient")
    for model, opt, sp in (gmp, granet):
        train(model, opt, sp, batches(STEPS, (784,), 10))
    assert all(
        h["removed"] == sum(a - b for a, b in zip(p["nnz"].values(), h["nnz"].values())) for p, h in zip(gmp[2].history, gmp[2].history[1:])
    )
    after = [h for h in granet[2].history if h["step"] > END]
    assert after and all(h["removed"] > 0 for h in after)  # zero-cost regeneration: weights replaced at the final count
    final = gmp[2].masks
    assert any(not torch.equal(final[n], granet[2].masks[n]) for n in final)


@pytest.mark.parametrize("grow", ["none", "gradient"])
def test_gmp_and_granet_resume_bit_identically(grow):
    assert_resume_bit_identical(make, lenet300, batches(STEPS, (784,), 10), split=14, grow=grow)


def test_truly_sparse_layers_shrink_with_their_counts():
    model, opt, sp = make(lenet300(), grow="none", truly=True, distribution="uniform")
    values = {n: layer.values.numel() for n, layer in sp.layers.items()}
    train(model, opt, sp, batches(STEPS, (784,), 10))
    for name, layer in sp.layers.items():
        assert layer.values.numel() == layer.nnz == round(0.1 * values[name]), name
        assert opt.state[layer.values]["momentum_buffer"].numel() == layer.nnz


def test_gradual_arguments_are_checked_in_one_line():
    for kw, words in [
        (dict(initial_density=0.05), "initial_density"),
        (dict(prune_end=50), "prune_end"),
        (dict(prune_start=30, prune_end=30), "prune_start"),
        (dict(prune_end=39, update_frequency=16), "no topology update"),
        (dict(prune="threshold"), "magnitude or set"),
    ]:
        with pytest.raises(ValueError, match=words) as error:
            make(lenet300(), **kw)
        assert "\n" not in str(error.value)
    model = lenet300()
    with pytest.raises(ValueError, match="initial_density"):
        itop.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), prune_end=10)


def test_a_run_starts_from_given_masks_and_keeps_their_counts():
    model = small_convnet()
    gen = torch.Generator().manual_seed(3)
    masks = {n: torch.rand(p.shape, generator=gen) < 0.3 for n, p in model.named_parameters() if p.dim() > 1}
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = itop.Sparsifier(model, opt, masks=masks, grow="gradient", update_frequency=3, total_steps=12)
    assert all(torch.equal(sp.masks[n], m) for n, m in masks.items())
    counts = {n: int(m.sum()) for n, m in masks.items()}
    assert sp.config["density"] == sum(counts.values()) / sum(m.numel() for m in masks.values())
    train(model, opt, sp, batches(12, (1, 12, 12), 4), check=assert_zero_off_mask)
    assert sp.history[-1]["nnz"] == counts and sp.itop_rate > sp.density
    static = itop.Sparsifier(m2 := small_convnet(), torch.optim.SGD(m2.parameters(), lr=0.05), masks=masks, update_frequency=None)
    assert all(torch.equal(static.masks[n], m) for n, m in masks.items())


def test_given_masks_that_do_not_fit_are_refused_in_one_line():
    model = small_convnet()
    good = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in model.named_parameters() if p.dim() > 1}
    first = next(iter(good))
    cases = [
        ({k: v for k, v in good.items() if k != first}, "lacks"),
        ({**good, first: torch.ones(2, 2, dtype=torch.bool)}, "shape"),
        ({**good, first: torch.zeros(good[first].shape, dtype=torch.bool)}, "keeps no weight"),
    ]
    for masks, words in cases:
        with pytest.raises(ValueError, match=words) as error:
            itop.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), masks=masks)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="density"):
        itop.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), masks=good, density=0.5)
    with pytest.raises(ValueError, match="give one of them"):
        itop.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), masks=good, initial_density=1.0)


def test_training_flops_pay_for_the_dense_start_step_by_step():
    model, opt, sp = make(lenet300(), grow="none")
    flops = itop.flops.count_flops(model, torch.zeros(1, 784))
    train(model, opt, sp, batches(STEPS, (784,), 10))
    numel = {n: s["numel"] for n, s in sp.layer_stats().items()}
    layer_flops = {n: 2 * numel[n] for n in numel}  # a Linear: 2 FLOPs per weight per example
    dense = sum(layer_flops.values())
    expected = 0.0
    for entry, after in zip(sp.history, [*sp.history[1:], {"step": STEPS}]):
        forward = sum(layer_flops[n] * entry["nnz"][n] / numel[n] for n in numel)
        expected += forward * (after["step"] - entry["step"])
    assert itop.flops.training_ratio(flops, sp) == pytest.approx(expected / (dense * STEPS), rel=1e-9)
    assert itop.flops.training_ratio(flops, sp) > 0.3  # the dense start, where a sparse run from the start pays ~0.1
