import pytest
import torch
from torch import nn

import itop

from .helpers import batches, lenet300, train


def make(grow, update_frequency=10, total_steps=100, density=0.1):
    model = lenet300()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sp = itop.Sparsifier(
        model, opt, density=density, distribution="uniform", grow=grow, update_frequency=update_frequency, total_steps=total_steps, seed=0
    )
    return model, opt, sp


def test_dense_counts_match_hand_computation():
    flops = itop.flops.count_flops(lenet300(), torch.zeros(1, 784))
    assert flops.per_module["0"] == 2 * 784 * 300
    assert flops.total == 2 * (784 * 300 + 300 * 100 + 100 * 10)


def test_inference_ratio_is_density_for_uniform_mlp():
    model, _, sp = make("random")
    flops = itop.flops.count_flops(model, torch.zeros(1, 784))
    ratio = itop.flops.inference_ratio(flops, {n: s["density"] for n, s in sp.layer_stats().items()})
    assert ratio == pytest.approx(0.1, abs=1e-3)


def test_training_ratio_set_and_rigl_follow_the_rigl_accounting():
    model, opt, sp = make("random")
    flops = itop.flops.count_flops(model, torch.zeros(1, 784))
    train(model, opt, sp, batches(20, (784,), 10))
    assert itop.flops.training_ratio(flops, sp) == pytest.approx(0.1, abs=1e-3)

    model, opt, sp = make("gradient")
    train(model, opt, sp, batches(20, (784,), 10))
    # (3 f_S * dT + 2 f_S + f_D) / (dT + 1) per step with f_S = 0.1 f_D, dT + 1 = 10 steps per update
    expected = (3 * 0.1 * 9 + 2 * 0.1 + 1) / 10 / 3
    assert itop.flops.training_ratio(flops, sp) == pytest.approx(expected, abs=1e-3)


def test_momentum_growth_pays_dense_gradient_every_step():
    model, opt, sp = make("momentum")
    flops = itop.flops.count_flops(model, torch.zeros(1, 784))
    assert itop.flops.training_ratio(flops, sp) == pytest.approx((2 * 0.1 + 1) / 3, abs=1e-3)


def test_conv_layer_scales_with_density():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 2))
    flops = itop.flops.count_flops(model, torch.zeros(1, 3, 8, 8))
    assert flops.per_module["0"] == 2 * 3 * 9 * 8 * 36
    half_conv = itop.flops.inference_ratio(flops, {"0.weight": 0.5, "2.weight": 1.0})
    assert half_conv == pytest.approx(1 - 0.5 * flops.per_module["0"] / flops.total)


def test_truly_sparse_layers_count_as_the_dense_layers_they_stand_for():
    import copy

    torch.manual_seed(0)
    dense = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, groups=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 60), nn.ReLU(), nn.Sequential(nn.Linear(60, 10)),
    )  # fmt: skip
    truly = itop.sparse.sparsify(copy.deepcopy(dense), 0.1, seed=0)
    assert isinstance(truly[0], itop.sparse.SparseConv2d) and isinstance(truly[4], itop.sparse.SparseLinear)
    x = torch.randn(3, 3, 8, 8)
    assert itop.flops.count_flops(truly, x) == itop.flops.count_flops(dense, x)
    ratios = []
    for model in (dense, truly):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        sparsifier = itop.Sparsifier(model, optimizer, density=0.1, grow="gradient", update_frequency=10, total_steps=100, seed=0)
        ratios.append(itop.flops.training_ratio(itop.flops.count_flops(model, x), sparsifier))
    assert ratios[0] == ratios[1] < 0.2
