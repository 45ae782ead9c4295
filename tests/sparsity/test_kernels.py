import copy

import pytest
import torch
from torch import nn

import itop
from itop.sparse import dispatch
from itop.sparsity import kernels

from .helpers import assert_zero_off_mask, batches, train


@pytest.fixture(autouse=True)
def fixed_rule(monkeypatch, tmp_path):
    """The rule where nothing is measured (a spent probe budget): which path a call takes is then
    known in advance. What is measured is tested in tests/sparse/test_dispatch.py."""
    monkeypatch.setattr(dispatch, "active", dispatch.Dispatcher(mode="auto", path=tmp_path / "kernels.json", budget=0))


def wide_mlp(seed=0):
    """Its first layer (600k weights) is large enough for the sparse kernels."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1000, 600), nn.ReLU(), nn.Linear(600, 100), nn.ReLU(), nn.Linear(100, 10))


def sparse_layer(density=0.04, seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(1000, 600)
    mask = torch.rand(layer.weight.shape) < density
    with torch.no_grad():
        layer.weight.mul_(mask)
    return layer, mask


@pytest.mark.parametrize("dense_grad", [False, True])
def test_sparse_linear_matches_dense_linear(dense_grad):
    layer, mask = sparse_layer()
    reference = copy.deepcopy(layer)
    kernels.use_sparse(layer, mask).dense_grad = dense_grad
    assert type(layer) is kernels.MaskedCSRLinear
    x = torch.randn(4, 50, 1000, requires_grad=True)  # 200 rows: enough work for the sparse path
    x_ref = x.detach().clone().requires_grad_()
    out, out_ref = layer(x), reference(x_ref)
    torch.testing.assert_close(out, out_ref)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (out_ref * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad)
    assert layer._itop_pattern.sampled_last is not dense_grad
    expected = reference.weight.grad if dense_grad else reference.weight.grad * mask
    torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-4, atol=1e-4)
    if not dense_grad:
        assert (layer.weight.grad[~mask] == 0).all()
    kernels.use_dense(layer)
    assert type(layer) is nn.Linear and not hasattr(layer, "_itop_pattern")


def test_sparse_path_is_deterministic_and_skipped_under_autocast():
    layer, mask = sparse_layer()
    kernels.use_sparse(layer, mask)
    x = torch.randn(200, 1000)
    assert torch.equal(layer(x), layer(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16  # F.linear under autocast, not the float32 kernel


def test_which_layers_pay_off():
    layer, mask = sparse_layer(0.04)
    assert kernels.pays_off(layer, mask, int(mask.sum()))
    assert kernels.pays_off(layer, mask, int(0.3 * mask.numel()))  # measured per call against dense
    assert not kernels.pays_off(layer, mask, int(0.31 * mask.numel()))  # too dense to probe
    small = nn.Linear(50, 100)
    assert not kernels.pays_off(small, torch.ones(100, 50, dtype=torch.bool), 100)  # too small to probe
    assert not kernels.pays_off(layer.to(torch.bfloat16), mask, int(mask.sum()))
    conv = nn.Conv2d(64, 64, 7)
    assert not kernels.pays_off(conv, torch.ones(conv.weight.shape, dtype=torch.bool), 10)


@pytest.mark.parametrize("mode", ["torch", "dense"])
def test_forced_torch_or_dense_kernels_never_swap(monkeypatch, mode):
    monkeypatch.setattr(dispatch, "active", dispatch.Dispatcher(mode=mode))
    layer, mask = sparse_layer(0.04)
    assert not kernels.pays_off(layer, mask, int(mask.sum()))


def test_sparsifier_gives_kernels_where_they_pay_and_takes_them_back():
    model = wide_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = itop.Sparsifier(model, opt, density=0.05, distribution="uniform", seed=0)
    assert {n: s["sparse_kernel"] for n, s in sp.layer_stats().items()} == {"0.weight": True, "2.weight": True, "4.weight": False}
    assert type(model[0]) is kernels.MaskedCSRLinear and type(model[4]) is nn.Linear
    sp.detach()
    assert type(model[0]) is nn.Linear
    sp.attach()
    assert type(model[0]) is kernels.MaskedCSRLinear
    plain = wide_mlp()
    itop.Sparsifier(plain, torch.optim.SGD(plain.parameters(), lr=0.05), density=0.05, distribution="uniform", seed=0, sparse_linear=False)
    assert type(plain[0]) is nn.Linear


@pytest.mark.parametrize("grow", ["random", "gradient", "momentum"])
def test_training_with_kernels_takes_the_same_decisions_as_without(grow):
    runs = []
    for sparse_linear in (True, False):
        model = wide_mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
        sp = itop.Sparsifier(
            model,
            opt,
            density=0.05,
            distribution="uniform",
            grow=grow,
            update_frequency=3,
            total_steps=9,
            seed=1,
            sparse_linear=sparse_linear,
        )
        train(model, opt, sp, batches(8, (1000,), 10, batch=200), check=assert_zero_off_mask)
        runs.append((model, sp))
    (model, sp), (plain_model, plain) = runs
    if grow == "random":
        assert model[0]._itop_pattern.sampled_last  # the last step (not an update) took the sparse path
    assert sp.layer_stats()["0.weight"]["sparse_kernel"] and not plain.layer_stats()["0.weight"]["sparse_kernel"]
    assert sp.itop_rate == plain.itop_rate > sp.density
    for name in sp.masks:
        assert torch.equal(sp.masks[name], plain.masks[name]), name
    for a, b in zip(model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_flops_are_counted_densely_under_sparse_kernels():
    model, plain = wide_mlp(), wide_mlp()
    itop.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.05), density=0.05, distribution="uniform", seed=0)
    assert type(model[0]) is kernels.MaskedCSRLinear
    x = torch.randn(200, 1000)
    assert itop.flops.count_flops(model, x).per_module == itop.flops.count_flops(plain, x).per_module


@pytest.mark.parametrize("sparsifier_first", [False, True])
def test_resume_with_sparse_kernels_is_bit_identical(sparsifier_first):
    data = batches(8, (1000,), 10, batch=200)
    kw = dict(density=0.05, distribution="uniform", grow="gradient", update_frequency=3, total_steps=8)

    def build(seed):
        model = wide_mlp(seed)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
        return model, opt, itop.Sparsifier(model, opt, seed=seed, **kw)

    model, opt, sp = build(1)
    train(model, opt, sp, data[:5])
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "sp": sp.state_dict()})
    model2, opt2, sp2 = build(7)
    if sparsifier_first:  # the kernels must read the weights loaded after their pattern was made
        sp2.load_state_dict(saved["sp"], check_weights=False)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    if not sparsifier_first:  # the documented order, whose load checks the weights
        sp2.load_state_dict(saved["sp"])
    train(model2, opt2, sp2, data[5:])
    ref, ref_opt, ref_sp = build(1)
    train(ref, ref_opt, ref_sp, data)
    assert sp2.layer_stats()["0.weight"]["sparse_kernel"]
    for key, value in ref.state_dict().items():
        assert torch.equal(value, model2.state_dict()[key]), key
    assert all(torch.equal(ref_sp.masks[n], sp2.masks[n]) for n in ref_sp.masks)


def test_copies_are_plain_linear_layers_computing_with_their_own_weights(tmp_path):
    """An EMA copy, say: no sparsifier updates its pattern, so it must not keep one."""
    model = wide_mlp()
    itop.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.05), density=0.05, distribution="uniform", seed=0)
    torch.save(model, tmp_path / "model.pt")
    for copied in (copy.deepcopy(model), torch.load(tmp_path / "model.pt", weights_only=False)):
        assert type(copied[0]) is nn.Linear and not hasattr(copied[0], "_itop_pattern")
        assert type(model[0]) is kernels.MaskedCSRLinear
        with torch.no_grad():
            copied[0].weight.add_(1.0)  # now dense
        x = torch.randn(200, 1000)
        torch.testing.assert_close(copied[0](x), nn.functional.linear(x, copied[0].weight, copied[0].bias))


def test_other_weights_and_torch_func_take_the_dense_path():
    layer, mask = sparse_layer()
    kernels.use_sparse(layer, mask)
    x = torch.randn(200, 1000)
    other = {"weight": torch.randn(600, 1000), "bias": torch.zeros(600)}
    out = torch.func.functional_call(layer, other, (x,))
    torch.testing.assert_close(out, x @ other["weight"].t())
    batched = torch.func.vmap(layer)(x.view(2, 100, 1000))
    torch.testing.assert_close(batched.reshape(200, 600), layer(x))


def test_small_batches_take_the_dense_path_under_the_fixed_rule():
    layer, mask = sparse_layer()
    kernels.use_sparse(layer, mask)
    layer(torch.randn(16, 1000)).sum().backward()
    assert not layer._itop_pattern.sampled_last and (layer.weight.grad[~mask] != 0).any()


def test_manual_gradient_update_between_scheduled_ones_is_refused_with_the_way_out():
    model = wide_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sp = itop.Sparsifier(model, opt, density=0.05, distribution="uniform", grow="gradient", update_frequency=100, total_steps=1000, seed=0)
    x, y = batches(1, (1000,), 10, batch=200)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="sparse_linear=False"):
        sp.update_topology()


def test_closure_steps_compute_densely_as_without_kernels():
    """LBFGS evaluates its closure several times inside one step, where inactive weights may move."""
    x, y = batches(1, (1000,), 10, batch=200)[0]
    runs = []
    for sparse_linear in (True, False):
        model = wide_mlp()
        opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
        sp = itop.Sparsifier(model, opt, density=0.05, distribution="uniform", update_frequency=None, seed=0, sparse_linear=sparse_linear)

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        for _ in range(2):
            opt.step(closure)
            sp.step()
            assert_zero_off_mask(sp)
        runs.append(model)
    assert type(runs[0][0]) is kernels.MaskedCSRLinear and runs[0][0]._itop_pattern.enabled
    for a, b in zip(runs[0].parameters(), runs[1].parameters()):
        torch.testing.assert_close(a, b)


def test_pattern_is_the_csr_structure_of_the_mask():
    _, mask = sparse_layer()
    mask[7] = False  # an empty row
    pattern, csr = kernels.SparsePattern(mask, torch.zeros(mask.shape)), mask.to_sparse_csr()
    assert torch.equal(pattern.structure.crow.long(), csr.crow_indices()) and torch.equal(pattern.structure.col.long(), csr.col_indices())
    assert torch.equal(pattern.flat, mask.flatten().nonzero().flatten())


@pytest.mark.parametrize("pattern", ["relu", "dropout", "residual"])
def test_inplace_activations_after_a_sparse_kernel_layer(pattern):
    """The kernel's output is a tensor of its own, so inplace ReLU, dropout and residual additions work."""
    torch.manual_seed(0)
    after = {"relu": nn.ReLU(inplace=True), "dropout": nn.Dropout(0.2, inplace=True), "residual": None}[pattern]
    model = nn.Sequential(nn.Linear(1024, 1024), *([after] if after else []), nn.Linear(1024, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sp = itop.Sparsifier(model, opt, density=0.05, include=["0.weight"], seed=0)
    assert sp.layer_stats()["0.weight"]["sparse_kernel"]
    x = torch.randn(128, 1024)
    hidden = model[0](x)
    if pattern == "residual":
        hidden += x
    else:
        hidden = model[1](hidden)
    model[-1](hidden).sum().backward()
    assert model[0].weight.grad is not None and torch.isfinite(model[0].weight.grad).all()


def test_the_step_masks_only_gradients_that_a_dense_computation_wrote(monkeypatch):
    """The sampled backward's gradient is zero at the inactive weights already: the per-step
    multiply skips it, and takes it again once a dense call may have written the gradient."""
    model = wide_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = itop.Sparsifier(model, opt, density=0.05, distribution="uniform", update_frequency=None, seed=0)
    masked = []  # per multiply: the shapes of the tensors it masked
    real_multiply = itop.sparsity.storage.multiply_all

    def spy(tensors, masks):
        masked.append({tuple(t.shape) for t in tensors})
        real_multiply(tensors, masks)

    monkeypatch.setattr(itop.sparsity.storage, "multiply_all", spy)
    first, second = (600, 1000), (100, 600)  # the sparse-path layer and a dense one
    wide = batches(3, (1000,), 10, batch=200)
    train(model, opt, sp, wide, check=assert_zero_off_mask)
    assert first in masked[0] and all(first not in shapes for shapes in masked[1:])  # a new pattern: masked once
    assert all(second in shapes for shapes in masked)  # the dense layer's gradient, every step
    train(model, opt, sp, batches(1, (1000,), 10, batch=16), check=assert_zero_off_mask)  # a small batch: dense path
    assert not model[0]._itop_pattern.sampled_last and first in masked[-1]
    train(model, opt, sp, wide[:1], check=assert_zero_off_mask)
    assert first not in masked[-1]
