"""The Sparsifier driving truly sparse layers (itop.sparse.SparseLinear) in index space."""

import copy
import io
import math

import pytest
import torch
from torch import nn

import itop
from itop.sparse import SparseLinear
from itop.sparsity import index_growth
from itop.sparsity.select import top_k_mask


def mlp():
    return nn.Sequential(nn.Linear(40, 60), nn.ReLU(), nn.Linear(60, 50), nn.ReLU(), nn.Linear(50, 10))


def data(n=64):
    gen = torch.Generator().manual_seed(9)
    return torch.randn(n, 40, generator=gen, dtype=torch.float64), torch.randint(0, 10, (n,), generator=gen)


def optimizer_for(name, model):
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    return torch.optim.Adam(model.parameters(), lr=1e-2)


def train_step(model, optimizer, sparsifier, x, y):
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    return sparsifier.step()


@pytest.mark.parametrize(
    "prune,grow,opt",
    [("magnitude", "random", "sgd"), ("set", "random", "adam"), ("magnitude", "gradient", "sgd"), ("magnitude", "gradient", "adam")],
)
def test_truly_sparse_and_masked_runs_take_the_same_decisions(prune, grow, opt):
    torch.manual_seed(0)
    base = mlp().double()
    truly_model = itop.sparse.sparsify(copy.deepcopy(base), 0.1, seed=3, init_scale="dense")
    assert all(isinstance(truly_model[i], SparseLinear) for i in (0, 2, 4))
    settings = dict(density=0.1, prune=prune, grow=grow, update_frequency=3, total_steps=60, seed=3, prune_rate=0.3)
    masked, truly = run_side_by_side(copy.deepcopy(base), truly_model, opt, settings, *data(), steps=24, updates=8)
    assert truly.itop_rate == masked.itop_rate > 0.1 + 0.05
    assert truly.density == masked.density


def run_side_by_side(masked_model, truly_model, opt, settings, x, y, steps, updates):
    """Train both models on the same batches of 8, checking after every step that the truly sparse
    layers hold the masked layers' positions and weights; return both sparsifiers."""
    runs = []
    for model in (masked_model, truly_model):
        optimizer = optimizer_for(opt, model)
        runs.append((model, optimizer, itop.Sparsifier(model, optimizer, **settings)))
    masked, truly = runs[0][2], runs[1][2]
    assert set(truly.layers) == set(masked.masks)
    done = 0
    for step in range(steps):
        rows = slice((step * 8) % len(x), (step * 8) % len(x) + 8)
        changed = [train_step(*run, x[rows], y[rows]) for run in runs]
        assert changed[0] == changed[1]
        done += changed[0]
        for name, mask in masked.masks.items():
            positions = torch.nonzero(mask.reshape(-1)).squeeze(1)
            layer = truly.layers[name]
            assert torch.equal(positions, layer.indices), (step, name)
            weights = dict(masked_model.named_parameters())[name].reshape(-1)[positions]
            assert torch.allclose(weights, layer.values, atol=1e-10), (step, name)
    assert done == updates
    assert {n: s["explored"] for n, s in truly.layer_stats().items()} == {n: s["explored"] for n, s in masked.layer_stats().items()}
    return masked, truly


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_counts_exact_and_optimizer_state_follows_each_surviving_weight(opt):
    torch.manual_seed(1)
    model = itop.sparse.sparsify(mlp(), 0.1, seed=1)
    optimizer = optimizer_for(opt, model)
    sparsifier = itop.Sparsifier(model, optimizer, density=0.1, grow="gradient", update_frequency=2, total_steps=100, seed=1)
    counts = {n: layer.nnz for n, layer in sparsifier.layers.items()}
    x, y = data()
    x = x.float()
    for step in range(20):
        rows = slice((step * 8) % 64, (step * 8) % 64 + 8)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
        update_next = sparsifier.update_due
        before = {
            n: (layer.indices.clone(), {k: t.clone() for k, t in optimizer.state[layer.values].items() if t.dim() == 1})
            for n, layer in sparsifier.layers.items()
        }
        optimizer.step()
        after_step = {
            n: {k: t.clone() for k, t in optimizer.state[layer.values].items() if t.dim() == 1} for n, layer in sparsifier.layers.items()
        }
        assert sparsifier.step() == update_next
        for name, layer in sparsifier.layers.items():
            assert layer.nnz == counts[name] and layer.values.numel() == counts[name]
            assert torch.equal(layer.indices, torch.unique(layer.indices))
            if not update_next:
                continue
            old_positions = before[name][0]
            survivors = torch.isin(layer.indices, old_positions)
            assert 0 < int((~survivors).sum()) and bool(survivors.any())
            where_old = torch.searchsorted(old_positions, layer.indices[survivors])
            for key, tensor in optimizer.state[layer.values].items():
                if tensor.dim() != 1:
                    continue
                assert torch.equal(tensor[survivors], after_step[name][key][where_old]), key
                assert not tensor[~survivors].any(), key
            assert not layer.values[~survivors].any()


def test_blockwise_gradient_growth_equals_the_dense_top_k(monkeypatch):
    monkeypatch.setattr(index_growth, "BLOCK_ENTRIES", 37)  # many blocks, ragged
    gen = torch.Generator().manual_seed(5)
    out_f, in_f, k = 30, 20, 25
    excluded = torch.randperm(out_f * in_f, generator=gen)[:90].sort().values
    sources = [
        (torch.randn(4, in_f, generator=gen, dtype=torch.float64), torch.randn(4, out_f, generator=gen, dtype=torch.float64))
        for _ in range(2)
    ]  # two backward calls in one step (gradient accumulation)
    dense = sum(g.t() @ x for x, g in sources)
    candidates = torch.ones(out_f * in_f, dtype=torch.bool)
    candidates[excluded] = False
    expected = torch.nonzero(top_k_mask(dense.abs().reshape(-1), k, candidates)).squeeze(1)
    got = index_growth.gradient_positions((out_f, in_f), k, excluded=excluded, generator=gen, sources=sources)
    assert torch.equal(got, expected)


def test_an_update_of_a_layer_too_large_to_exist_densely():
    """200,000 x 200,000 = 4e10 positions: a bool mask would take 40 GB, more than this machine has."""
    torch.manual_seed(2)
    side = 200_000
    model = nn.Sequential(SparseLinear(side, side, nnz=20_000, bias=False))
    for grow in ("random", "gradient"):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sparsifier = itop.Sparsifier(model, optimizer, density=0.5, grow=grow, update_frequency=1, total_steps=10, seed=0)
        before = model[0].indices.clone()
        optimizer.zero_grad()
        model(torch.randn(2, side)).square().sum().backward()
        optimizer.step()
        assert sparsifier.step()
        after = model[0].indices
        assert after.numel() == 20_000 and torch.equal(after, torch.unique(after))
        assert 0 < int((~torch.isin(after, before)).sum()) <= 10_000
        assert sparsifier.itop_rate > 20_000 / side**2
        assert sparsifier.layer_stats()["0.weight"]["numel"] == side * side


def test_sparsify_counts_equal_the_masked_engine_for_every_distribution():
    for distribution in ("erk", "er", "uniform"):
        torch.manual_seed(3)
        dense = mlp()
        masked_model = copy.deepcopy(dense)
        masked = itop.Sparsifier(
            masked_model, torch.optim.SGD(masked_model.parameters(), lr=0.1), density=0.2, distribution=distribution, seed=4
        )
        truly = itop.sparse.sparsify(copy.deepcopy(dense), 0.2, distribution=distribution, seed=4)
        for name, mask in masked.masks.items():
            module = truly.get_submodule(name.rsplit(".", 1)[0])
            if bool(mask.all()):
                assert type(module) is nn.Linear
            else:
                assert torch.equal(module.indices, torch.nonzero(mask.reshape(-1)).squeeze(1))


def test_sparsify_scales_for_the_actual_fan_in():
    torch.manual_seed(4)
    dense = mlp()
    truly = itop.sparse.sparsify(copy.deepcopy(dense), 0.04, distribution="uniform", seed=0)
    layer = truly[2]
    original = dense[2].weight.reshape(-1)[layer.indices]
    assert torch.allclose(layer.values, original / 0.04**0.5)


def test_export_and_densify_round_trip():
    torch.manual_seed(5)
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sparsifier = itop.Sparsifier(model, optimizer, density=0.1, seed=0)
    exported = itop.sparse.export(model, sparsifier)
    assert type(model[0]) is nn.Linear  # the original is untouched
    assert all(isinstance(exported[i], SparseLinear) for i in (0, 2, 4))
    x = torch.randn(5, 40)
    assert torch.allclose(exported(x), model(x), atol=1e-6)
    back = itop.sparse.densify(exported)
    assert all(type(back[i]) is nn.Linear for i in (0, 2, 4))
    for i in (0, 2, 4):
        assert torch.equal(back[i].weight, model[i].weight)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_bit_identical_resume_with_weights_only_state(kind):
    def build():
        torch.manual_seed(6)
        model = itop.sparse.sparsify(mlp() if kind == "linear" else convnet(), 0.1, seed=2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        grow = "random" if kind == "linear" else "gradient"
        return (
            model,
            optimizer,
            itop.Sparsifier(
                model, optimizer, density=0.1, grow=grow, update_frequency=3, total_steps=50, seed=2, redistribution="magnitude"
            ),
        )

    x, y = data() if kind == "linear" else conv_data()
    x = x.float()
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, len(x), 8)] * (3 if kind == "linear" else 5)
    cut = 10 if kind == "linear" else 11
    whole = build()
    for xb, yb in batches:
        train_step(*whole, xb, yb)
    first = build()
    for xb, yb in batches[:cut]:
        train_step(*first, xb, yb)
    buffer = io.BytesIO()
    torch.save({"model": first[0].state_dict(), "optimizer": first[1].state_dict(), "sparsifier": first[2].state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = build()
    resumed[0].load_state_dict(saved["model"])
    resumed[1].load_state_dict(saved["optimizer"])
    resumed[2].load_state_dict(saved["sparsifier"])
    for xb, yb in batches[cut:]:
        train_step(*resumed, xb, yb)
    for (name, a), b in zip(whole[0].state_dict().items(), resumed[0].state_dict().values()):
        assert torch.equal(a, b), name
    assert whole[2].itop_rate == resumed[2].itop_rate
    assert [h["nnz"] for h in whole[2].history] == [h["nnz"] for h in resumed[2].history]
    assert len({tuple(h["nnz"].values()) for h in whole[2].history}) > 1  # redistribution moved weights between layers


def test_a_mixed_model_trains_with_masked_convs_and_truly_sparse_linears():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 30), nn.ReLU(), nn.Linear(30, 10))
    itop.sparse.sparsify(model, 0.2, seed=0, include=[nn.Linear])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sparsifier = itop.Sparsifier(model, optimizer, density=0.2, grow="gradient", update_frequency=2, total_steps=20, seed=0)
    assert list(sparsifier.masks) == ["0.weight"] and set(sparsifier.layers) == {"3.weight", "5.weight"}
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(6):
        train_step(model, optimizer, sparsifier, x, y)
    assert not model[0].weight[~sparsifier.masks["0.weight"]].any()
    assert list(sparsifier.layer_stats()) == ["0.weight", "3.weight", "5.weight"]
    assert sparsifier.itop_rate > sparsifier.density


def test_momentum_criteria_are_refused_with_the_alternative():
    model = itop.sparse.sparsify(mlp(), 0.1, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="grow='gradient'"):
        itop.Sparsifier(model, optimizer, grow="momentum")
    with pytest.raises(ValueError, match="grow='gradient'"):
        itop.Sparsifier(model, optimizer, redistribution="momentum")


def test_a_sparsifier_state_of_other_positions_is_refused():
    model = itop.sparse.sparsify(mlp(), 0.1, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = itop.Sparsifier(model, optimizer, seed=0).state_dict()
    other = itop.sparse.sparsify(mlp(), 0.1, seed=1)
    sparsifier = itop.Sparsifier(other, torch.optim.SGD(other.parameters(), lr=0.1), seed=0)
    with pytest.raises(ValueError, match="load the model's state_dict"):
        sparsifier.load_state_dict(state)


def test_include_and_exclude_choose_truly_sparse_layers_too():
    model = itop.sparse.sparsify(mlp(), 0.1, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert set(itop.Sparsifier(model, optimizer, include=[nn.Linear]).layers) == {"0.weight", "2.weight", "4.weight"}
    assert set(itop.Sparsifier(model, optimizer, include=["2.weight"]).layers) == {"2.weight"}
    assert set(itop.Sparsifier(model, optimizer, exclude=["4.*"]).layers) == {"0.weight", "2.weight"}
    with pytest.raises(ValueError, match="matches no parameter"):
        itop.Sparsifier(model, optimizer, include=["9.weight"])


def test_gradient_growth_with_a_closure_step_matches_the_plain_loop():
    """optimizer.step(closure) runs the backward inside the step: the recorded inputs and output
    gradients must still reach the update."""
    x, y = data()
    x = x.float()
    runs = []
    for use_closure in (False, True):
        torch.manual_seed(8)
        model = itop.sparse.sparsify(mlp(), 0.1, seed=1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sparsifier = itop.Sparsifier(model, optimizer, density=0.1, grow="gradient", update_frequency=2, total_steps=20, seed=1)
        for step in range(6):
            rows = slice(step * 8, step * 8 + 8)

            def closure():
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
                loss.backward()
                return loss

            if use_closure:
                optimizer.step(closure)
            else:
                closure()
                optimizer.step()
            sparsifier.step()
        runs.append({n: layer.indices.clone() for n, layer in sparsifier.layers.items()})
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])


def convnet():
    """Strides, padding, dilation, groups and a residual connection, then a Linear head."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.down = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4)
            self.wide = nn.Conv2d(12, 12, 3, padding=2, dilation=2)
            self.norm = nn.BatchNorm2d(12)
            self.head = nn.Linear(12 * 4 * 4, 10)

        def forward(self, x):
            x = nn.functional.relu(self.stem(x), inplace=True)
            x = self.down(x)
            x = x + nn.functional.relu(self.norm(self.wide(x)))
            return self.head(x.flatten(1))

    return Net()


def conv_data(n=32):
    gen = torch.Generator().manual_seed(4)
    return torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64), torch.randint(0, 10, (n,), generator=gen)


@pytest.mark.parametrize("prune,grow,opt", [("magnitude", "random", "sgd"), ("magnitude", "gradient", "sgd"), ("set", "gradient", "adam")])
def test_truly_sparse_and_masked_convolutions_take_the_same_decisions(prune, grow, opt):
    torch.manual_seed(0)
    base = convnet().double()
    truly_model = itop.sparse.sparsify(copy.deepcopy(base), 0.3, seed=3, init_scale="dense")
    assert all(isinstance(getattr(truly_model, n), itop.sparse.SparseConv2d) for n in ("stem", "down", "wide"))
    settings = dict(density=0.3, prune=prune, grow=grow, update_frequency=2, total_steps=40, seed=3, prune_rate=0.3)
    masked, truly = run_side_by_side(copy.deepcopy(base), truly_model, opt, settings, *conv_data(), steps=12, updates=6)
    assert set(truly.layers) == {"stem.weight", "down.weight", "wide.weight", "head.weight"}
    assert truly.itop_rate == masked.itop_rate > 0.3


def test_conv_gradient_growth_scores_the_dense_gradient_block_by_block(monkeypatch):
    """Blocks that cut across groups, ragged: the same top k as the dense gradient's."""
    monkeypatch.setattr(index_growth, "BLOCK_ENTRIES", 50)
    torch.manual_seed(6)
    conv = nn.Conv2d(6, 9, 3, stride=2, padding=(1, 2), dilation=(1, 2), groups=3).double()
    x = torch.randn(5, 6, 9, 11, dtype=torch.float64, requires_grad=True)
    out = conv(x)
    grads = torch.randn_like(out)
    (dense,) = torch.autograd.grad(out, conv.weight, grads)
    layer = itop.sparse.SparseConv2d.from_dense(conv, torch.rand(conv.weight.shape) < 0.3)
    excluded, k = layer.indices, 20
    candidates = torch.ones(dense.numel(), dtype=torch.bool)
    candidates[excluded] = False
    expected = torch.nonzero(top_k_mask(dense.abs().reshape(-1), k, candidates)).squeeze(1)
    rows = itop.sparsity.truly_sparse.gradient_rows(layer)
    got = index_growth.gradient_positions(
        layer.weight_shape, k, excluded=excluded, generator=torch.Generator(), sources=[(x.detach(), grads)], gradient_rows=rows
    )
    assert torch.equal(got, expected)


def test_conv_updates_keep_exact_counts_and_never_make_a_dense_weight(monkeypatch):
    """SET and RigL on a truly sparse VGG-style stack: counts exact, positions distinct, and no
    tensor of a conv weight's dense size is made during the updates (RigL scores the dense
    gradient in blocks of output channels, here smaller than any layer)."""
    monkeypatch.setattr(index_growth, "BLOCK_ENTRIES", 100)
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 36, 10)
    )
    itop.sparse.sparsify(model, 0.1, seed=1, include=[nn.Conv2d])
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 10, (8,))
    dense_numels = {math.prod(m.weight_shape) for m in model.modules() if isinstance(m, itop.sparse.SparseConv2d)}
    made = []
    real_zeros, real_empty = torch.zeros, torch.empty

    def watch(real):
        def make(*size, **kwargs):
            tensor = real(*size, **kwargs)
            made.append(tensor.numel())
            return tensor

        return make

    for grow in ("random", "gradient"):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sparsifier = itop.Sparsifier(model, optimizer, density=0.1, grow=grow, update_frequency=1, total_steps=20, seed=0)
        counts = {n: layer.nnz for n, layer in sparsifier.layers.items()}
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            made.clear()
            monkeypatch.setattr(torch, "zeros", watch(real_zeros))
            monkeypatch.setattr(torch, "empty", watch(real_empty))
            assert sparsifier.step()
            monkeypatch.setattr(torch, "zeros", real_zeros)
            monkeypatch.setattr(torch, "empty", real_empty)
            assert not dense_numels & set(made)
            for name, layer in sparsifier.layers.items():
                assert layer.nnz == counts[name] and torch.equal(layer.indices, torch.unique(layer.indices))
