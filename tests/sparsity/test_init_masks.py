"""Pruning at initialisation (`itop.init_masks`): SNIP, GraSP and SynFlow against scores computed
here independently, their keep directions, SynFlow's schedule and layer collapse, and a model left
as it was."""

import copy
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import itop
from itop.sparsity import init_masks as module
from itop.sparsity.density import DISTRIBUTIONS, layer_counts
from itop.sparsity.init_masks import init_masks
from itop.sparsity.init_scores import grasp_scores, linearized_state, synflow_scores

from .helpers import batches, small_convnet


def stable_top_k(scores, k, lowest=False):
    """Top-k (bottom-k) of a flat score vector, ties to the lowest index, by a stable sort."""
    order = torch.argsort(scores if lowest else -scores, stable=True)
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask


def split(flat, shapes):
    parts = flat.split([math.prod(s) for s in shapes.values()])
    return {n: p.view(s) for (n, s), p in zip(shapes.items(), parts)}


def weights(model):
    return {n: p for n, p in model.named_parameters() if p.dim() >= 2}


def snip_reference(model, data):
    """|g ⊙ w| / Σ|g ⊙ w|, g accumulated by loss.backward() batch after batch, on a copy."""
    model = copy.deepcopy(model)
    for x, y in data:
        F.cross_entropy(model(x), y).backward()
    scores = {n: (p.grad * p).abs() for n, p in weights(model).items()}
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    return flat / flat.sum(), {n: tuple(s.shape) for n, s in scores.items()}


def mlp(width=64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, width, bias=False), nn.ReLU(), nn.Linear(width, width, bias=False), nn.ReLU(), nn.Linear(width, 2, bias=False)
    )


CONV_DATA = batches(2, (1, 12, 12), 4)


def test_snip_is_the_global_top_k_of_connection_sensitivity():
    model = small_convnet()
    scores, shapes = snip_reference(model, CONV_DATA)
    masks = init_masks(model, 0.1, "snip", CONV_DATA)
    assert list(masks) == list(shapes) and all(m.dtype == torch.bool for m in masks.values())
    expected = split(stable_top_k(scores, round(0.1 * scores.numel())), shapes)
    for name in shapes:
        assert torch.equal(masks[name], expected[name]), name


def test_snip_with_erk_keeps_each_layers_counts_and_its_own_top_scores():
    model = small_convnet()
    scores, shapes = snip_reference(model, CONV_DATA)
    masks = init_masks(model, 0.1, "snip", CONV_DATA, distribution="erk")
    counts = layer_counts(shapes, DISTRIBUTIONS.get("erk")(shapes, 0.1))
    assert {n: int(m.sum()) for n, m in masks.items()} == counts
    for name, layer in split(scores, shapes).items():
        assert torch.equal(masks[name].reshape(-1), stable_top_k(layer.reshape(-1), counts[name])), name


def test_batches_caps_the_data_read():
    model = small_convnet()
    assert torch.equal(
        torch.cat([m.reshape(-1) for m in init_masks(model, 0.2, "snip", CONV_DATA, batches=1).values()]),
        torch.cat([m.reshape(-1) for m in init_masks(model, 0.2, "snip", CONV_DATA[:1]).values()]),
    )


def tiny_linear(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 3, bias=False))


def grasp_reference(model, data):
    """-θ ⊙ Hg with H the full Hessian of the summed loss (torch.autograd.functional.hessian) and
    g its gradient, in float64."""
    w1, w2 = (p.detach().double() for p in weights(model).values())
    sizes = (w1.numel(), w2.numel())

    def loss(theta):
        a, b = theta.split(sizes)
        a, b = a.view(w1.shape), b.view(w2.shape)
        return sum(F.cross_entropy(torch.tanh(x.double() @ a.T) @ b.T, y) for x, y in data)

    theta = torch.cat([w1.reshape(-1), w2.reshape(-1)])
    g = torch.func.grad(loss)(theta)
    hessian = torch.autograd.functional.hessian(loss, theta)
    return -theta * (hessian @ g)


def test_grasp_score_is_minus_theta_hessian_gradient():
    model = tiny_linear()
    data = batches(2, (3,), 3, batch=5)
    expected = grasp_reference(model, data)
    scores = grasp_scores(model, weights(model), data, F.cross_entropy)
    got = torch.cat([s.reshape(-1) for s in scores.values()]).double()
    normalised = expected / (expected.sum().abs() + 1e-10)
    assert torch.allclose(got, normalised, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(got, -normalised, rtol=1e-4, atol=1e-6)  # the sign matters


def test_grasp_keeps_the_lowest_scores():
    model = tiny_linear()
    data = batches(2, (3,), 3, batch=5)
    expected = grasp_reference(model, data)
    masks = init_masks(model, 0.4, "grasp", data)
    kept = torch.cat([m.reshape(-1) for m in masks.values()])
    assert int(kept.sum()) == round(0.4 * kept.numel())
    assert expected[kept].max() <= expected[~kept].min()  # the highest scores are the ones removed
    scores = grasp_scores(model, weights(model), data, F.cross_entropy)
    assert torch.equal(kept, stable_top_k(torch.cat([s.reshape(-1) for s in scores.values()]), int(kept.sum()), lowest=True))


def synflow_chain(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4, bias=False), nn.Linear(4, 3, bias=False))


def test_synflow_score_on_a_linear_chain():
    # R = 1ᵀ|W2||W1|1: ∂R/∂|W1|_ij = Σ_k |W2|_ki, ∂R/∂|W2|_ki = Σ_j |W1|_ij.
    model = synflow_chain()
    w1, w2 = (p.detach().double().abs() for p in weights(model).values())
    expected = {"0.weight": w2.sum(0)[:, None] * w1, "1.weight": w2 * w1.sum(1)[None, :]}
    masks = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in weights(model).items()}
    scores = synflow_scores(model, linearized_state(model), masks, (1, 5))
    for name in expected:
        assert torch.allclose(scores[name], expected[name], rtol=1e-12), name
    flat = torch.cat([s.reshape(-1) for s in expected.values()])
    one_round = init_masks(model, 0.3, "synflow", input_shape=(1, 5), rounds=1)
    assert torch.equal(torch.cat([m.reshape(-1) for m in one_round.values()]), stable_top_k(flat, round(0.3 * flat.numel())))


def test_synflow_follows_the_exponential_schedule(monkeypatch):
    model = mlp(width=16)
    shapes = {n: p.shape for n, p in weights(model).items()}
    total = sum(math.prod(s) for s in shapes.values())
    seen = []

    def recording(model, state, masks, input_shape):
        seen.append({n: m.clone() for n, m in masks.items()})
        return synflow_scores(model, state, masks, input_shape)

    monkeypatch.setattr(module, "synflow_scores", recording)
    density, rounds = 0.05, 10
    masks = init_masks(model, density, "synflow", input_shape=(1, 4), rounds=rounds)
    seen.append(masks)
    counts = [sum(int(m.sum()) for m in step.values()) for step in seen]
    assert counts == [total] + [round(density ** (k / rounds) * total) for k in range(1, rounds)] + [round(density * total)]
    for before, after in zip(seen, seen[1:]):  # a pruned weight stays pruned
        assert all(not bool((after[n] & ~before[n]).any()) for n in shapes)


@pytest.mark.filterwarnings("ignore:itop.init_masks")
def test_synflow_never_brings_a_pruned_weight_back(monkeypatch):
    # Scores that rank the pruned weights first: the next round must still choose among the kept ones.
    monkeypatch.setattr(module, "synflow_scores", lambda model, state, masks, shape: {n: (~m).double() for n, m in masks.items()})
    seen = []
    monkeypatch.setattr(module, "_select", lambda *a, _select=module._select, **kw: seen.append(_select(*a, **kw)) or seen[-1])
    init_masks(mlp(width=16), 0.1, "synflow", input_shape=(1, 4), rounds=4)
    for before, after in zip(seen, seen[1:]):
        assert all(not bool((after[n] & ~before[n]).any()) for n in before)


def test_synflow_with_a_distribution_ends_at_its_layer_counts():
    model = mlp(width=16)
    shapes = {n: tuple(p.shape) for n, p in weights(model).items()}
    masks = init_masks(model, 0.1, "synflow", input_shape=(1, 4), rounds=5, distribution="er")
    assert {n: int(m.sum()) for n, m in masks.items()} == layer_counts(shapes, DISTRIBUTIONS.get("er")(shapes, 0.1))


def test_synflow_avoids_the_layer_collapse_that_snip_shows():
    model = mlp(width=64)
    data = batches(1, (4,), 2, batch=32)
    with pytest.warns(UserWarning) as caught:
        snip = init_masks(model, 0.003, "snip", data)
    assert not bool(snip["2.weight"].any())  # the largest layer is cut off: the network is disconnected
    message = str(caught[0].message)
    assert message.startswith("itop.init_masks: snip keeps no weight of 2.weight;") and 'distribution="erk"' in message
    assert "\n" not in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        synflow = init_masks(model, 0.001, "synflow", data, rounds=100)
    assert sum(int(m.sum()) for m in synflow.values()) == round(0.001 * 4480) == 4
    assert all(bool(m.any()) for m in synflow.values())


def test_synflow_takes_the_input_shape_from_the_data():
    model = small_convnet()
    from_data = init_masks(model, 0.1, "synflow", CONV_DATA, rounds=3)
    given = init_masks(model, 0.1, "synflow", input_shape=(1, 1, 12, 12), rounds=3)
    assert all(torch.equal(from_data[n], given[n]) for n in given)


def model_with_state():
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.3))
    model.append(nn.Sequential(nn.Conv2d(6, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5 * 5, 16), nn.BatchNorm1d(16)))
    model.append(nn.Linear(16, 4))
    torch.manual_seed(1)
    model[0].weight.grad = torch.randn_like(model[0].weight)  # a gradient left from earlier
    model[1].bias.requires_grad_(False)
    model[4].eval()  # mixed modes
    return model


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
def test_the_model_and_random_state_are_left_as_they_were(method):
    model = model_with_state()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    grad_values = {n: None if g is None else g.clone() for n, g in grads.items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*CONV_DATA[0]), batch_size=8, shuffle=True)
    rng = torch.get_rng_state()
    first = init_masks(model, 0.2, method, loader, rounds=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # weights and BN statistics, bit for bit
    for name, param in model.named_parameters():
        assert param.grad is grads[name] and (param.grad is None or torch.equal(param.grad, grad_values[name])), name
        assert param.requires_grad == flags[name]
    assert {n: m.training for n, m in model.named_modules()} == modes
    second = init_masks(model, 0.2, method, loader, rounds=3)  # the same model and data: the same masks
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert all(first[n].device == p.device for n, p in model.named_parameters() if n in first)


def test_keys_are_the_sparsifiers_masks():
    model = small_convnet()
    for kw in ({}, {"exclude": ["0.weight"]}, {"include": [nn.Conv2d]}):
        sparsifier = itop.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), density=0.5, **kw)
        assert list(init_masks(model, 0.5, "snip", CONV_DATA, **kw)) == list(sparsifier.masks)


def test_density_one_keeps_everything():
    model = small_convnet()
    masks = init_masks(model, 1.0, "grasp", CONV_DATA)
    assert all(bool(m.all()) for m in masks.values())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="magnitude"), "unknown init_masks method 'magnitude'"),
        (dict(density=0), r"density must be in \(0, 1\]"),
        (dict(density=1.5), r"density must be in \(0, 1\]"),
        (dict(density=float("nan")), r"density must be in \(0, 1\]"),
        (dict(data=None), "snip scores weights by the loss's gradient and needs data="),
        (dict(method="grasp", data=None), "grasp scores weights"),
        (dict(data=[]), "empty data iterable"),
        (dict(method="synflow", data=[]), "empty data iterable"),
        (dict(method="synflow", data=None), "synflow needs input_shape="),
        (dict(distribution="lognormal"), "unknown distribution 'lognormal'"),
        (dict(rounds=0), "rounds must be a positive integer"),
    ],
)
def test_errors_are_one_line(kwargs, match):
    call = dict(model=small_convnet(), density=0.1, method="snip", data=CONV_DATA) | kwargs
    with pytest.raises(ValueError, match=match) as error:
        init_masks(**call)
    assert "\n" not in str(error.value)


def test_exported_as_itop_init_masks():
    assert itop.init_masks is init_masks and "init_masks" in itop.__all__
