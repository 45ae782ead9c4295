import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import itop
from itop.sparsity.density import DISTRIBUTIONS

from .helpers import assert_resume_bit_identical, assert_zero_off_mask, batches, lenet300, small_convnet, train


def make(model=None, optimizer="sgd", **kw):
    model = model or lenet300()
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    else:
        opt = optimizer(model.parameters())
    kw.setdefault("seed", 3)
    return model, opt, itop.Sparsifier(model, opt, **kw)


def test_public_state_after_init():
    model, _, sp = make(density=0.05, distribution="erk")
    assert list(sp.masks) == ["0.weight", "2.weight", "4.weight"]
    shapes = {n: tuple(p.shape) for n, p in sp.params.items()}
    expected = DISTRIBUTIONS.get("erk")(shapes, 0.05)
    for name, stats in sp.layer_stats().items():
        assert sp.masks[name].dtype == torch.bool and sp.masks[name].shape == shapes[name]
        assert stats["active"] == round(expected[name] * stats["numel"]) == int(sp.masks[name].sum())
        assert stats["explored"] == stats["density"]
    assert sp.density == pytest.approx(0.05, abs=1e-4)
    assert sp.itop_rate == sp.density
    assert (model[0].weight[~sp.masks["0.weight"]] == 0).all()
    assert model[0].bias.count_nonzero() == 300  # biases stay dense


@pytest.mark.parametrize(
    "optimizer",
    [
        "sgd",
        lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-4),
        lambda p: torch.optim.AdamW(p, lr=1e-3),
        lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.9, centered=True),
        lambda p: torch.optim.Adamax(p, lr=1e-3),  # not zero-preserving: masked after every step
        lambda p: torch.optim.Rprop(p),
    ],
)
@pytest.mark.parametrize("grow", ["random", "gradient", "momentum"])
def test_zero_off_mask_in_weights_and_optimizer_state(optimizer, grow):
    model, opt, sp = make(small_convnet(), optimizer=optimizer, density=0.2, grow=grow, update_frequency=3, total_steps=12)
    train(model, opt, sp, batches(12, (1, 12, 12), 4), check=assert_zero_off_mask)
    assert sp.itop_rate > sp.density


@pytest.mark.parametrize("grow, keyword", [("random", False), ("gradient", True)])
def test_step_with_closure_keeps_masks_exact_and_matches_the_plain_loop(grow, keyword):
    """optimizer.step(closure) computes the gradients after the pre-step hook has run."""
    data = batches(8, (784,), 10)
    plain_model, plain_opt, plain = make(density=0.1, grow=grow, update_frequency=3, total_steps=8)
    train(plain_model, plain_opt, plain, data)
    model, opt, sp = make(density=0.1, grow=grow, update_frequency=3, total_steps=8)
    for x, y in data:

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure=closure) if keyword else opt.step(closure)
        sp.step()
        assert_zero_off_mask(sp)
    assert all(torch.equal(sp.masks[n], plain.masks[n]) for n in sp.masks)
    for a, b in zip(model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("grow", ["random", "gradient", "momentum"])
@pytest.mark.parametrize("redistribution", ["none", "magnitude", "nonzeros", "momentum"])
def test_count_never_drifts_and_rs_monotone(grow, redistribution):
    model, opt, sp = make(density=0.1, grow=grow, redistribution=redistribution, update_frequency=2, total_steps=10)
    total = sum(sp._nnz.values())
    before = dict(sp._nnz)
    rates = [sp.itop_rate]

    def check(s):
        assert sum(int(m.sum()) for m in s.masks.values()) == total
        if redistribution == "none":
            assert {n: int(m.sum()) for n, m in s.masks.items()} == before
        rates.append(s.itop_rate)

    train(model, opt, sp, batches(10, (784,), 10), check)
    assert rates == sorted(rates) and rates[-1] > rates[0]


def test_grown_weights_start_at_zero_and_pruned_are_not_regrown():
    pruned_log = []

    def logging_magnitude(weight, mask, k, **kw):
        new = itop.sparsity.prune.magnitude(weight, mask, k)
        pruned_log.append(mask & ~new)
        return new

    model, opt, sp = make(prune=logging_magnitude, grow="gradient", update_frequency=4, total_steps=8)
    data = batches(4, (784,), 10)
    old = {n: m.clone() for n, m in sp.masks.items()}
    train(model, opt, sp, data)
    for (name, param), pruned in zip(sp.params.items(), pruned_log):
        new = sp.masks[name]
        grown = new & ~old[name]
        assert grown.any() and pruned.any()
        assert (param[grown] == 0).all() and (opt.state[param]["momentum_buffer"][grown] == 0).all()
        assert not (new & pruned).any(), "a weight pruned in an update was regrown in the same update"


def test_dense_layers_stay_dense():
    model, opt, sp = make(density=0.05, update_frequency=2, total_steps=10)
    train(model, opt, sp, batches(10, (784,), 10))
    lenet5ish_last = sp.layer_stats()["4.weight"]
    assert lenet5ish_last["active"] == 919  # not dense at 0.05, but never above its count
    model, opt, sp = make(density=0.5, distribution="erk", update_frequency=2, total_steps=10)
    dense = [n for n, s in sp.layer_stats().items() if s["density"] == 1.0]
    train(model, opt, sp, batches(6, (784,), 10))
    assert dense and all(sp.layer_stats()[n]["density"] == 1.0 for n in dense)


def test_static_mode_keeps_topology_and_rs():
    model, opt, sp = make(update_frequency=None)
    masks = copy.deepcopy(sp.masks)
    train(model, opt, sp, batches(6, (784,), 10))
    assert all(torch.equal(masks[n], sp.masks[n]) for n in masks) and sp.itop_rate == sp.density


def test_momentum_growth_really_explores():
    """REFERENCE 8.2-2: the original's momentum growth regrew exactly what it pruned."""
    model, opt, sp = make(grow="momentum", update_frequency=2, total_steps=8)
    start = sp.itop_rate
    train(model, opt, sp, batches(8, (784,), 10))
    assert sp.itop_rate > start + 0.01


def test_grow_none_only_prunes():
    model, opt, sp = make(grow="none", update_frequency=2, total_steps=4, prune_rate=0.5)
    before = sum(sp._nnz.values())
    train(model, opt, sp, batches(2, (784,), 10))
    assert sum(int(m.sum()) for m in sp.masks.values()) < before and sp.itop_rate == pytest.approx(before / 266_200)


def test_grow_none_prunes_dense_layers_too():
    model, opt, sp = make(density=1.0, grow="none", update_frequency=1, total_steps=4, prune_rate=0.2)
    train(model, opt, sp, batches(1, (784,), 10))
    rate = sp.history[-1]["prune_rate"]
    assert rate > 0.1 and sp.history[-1]["removed"] == sum(math.ceil(rate * n) for n in (235_200, 30_000, 1_000))
    assert sp.density < 0.9


def test_redistributed_growth_prunes_erk_dense_layers():
    """Only the total must fit the room of all layers when growth is shared out."""
    model, opt, sp = make(density=0.5, grow="random", redistribution="nonzeros", update_frequency=1, total_steps=4)
    dense = [n for n, s in sp.layer_stats().items() if s["density"] == 1.0]
    total = sum(sp._nnz.values())
    train(model, opt, sp, batches(1, (784,), 10))
    rate = sp.history[-1]["prune_rate"]
    assert dense and rate > 0
    for name in dense:  # each lost its full k and, having no room, got nothing back
        numel = sp.params[name].numel()
        assert int(sp.masks[name].sum()) == sp._nnz[name] == numel - math.ceil(rate * numel)
    assert sum(sp._nnz.values()) == total


def test_threshold_prune_restores_count():
    model, opt, sp = make(prune="threshold", prune_options={"threshold": 0.02}, update_frequency=2, total_steps=4)
    before = dict(sp._nnz)
    train(model, opt, sp, batches(2, (784,), 10))
    assert sp.history[-1]["removed"] > 0 and sp._nnz == before


def test_threshold_prune_removes_every_weight_below_it_whatever_the_rate():
    model, opt, sp = make(prune="threshold", prune_options={"threshold": 0.02}, prune_rate=0.01, update_frequency=None)
    below = {n: int((sp.masks[n] & (p.abs() < 0.02)).sum()) for n, p in sp.params.items()}
    room = {n: p.numel() - sp._nnz[n] for n, p in sp.params.items()}
    assert sum(below.values()) > 0.01 * sum(sp._nnz.values())
    assert below["4.weight"] > room["4.weight"]  # the nearly dense last layer can only swap its room
    model(torch.randn(4, 784)).sum().backward()
    sp.update_topology()
    assert sp.history[-1]["removed"] == sum(min(below[n], room[n]) for n in below)


def test_misspelt_criterion_option_is_refused():
    with pytest.raises(ValueError, match="unknown option 'thresold'.*accepts: threshold"):
        make(prune="threshold", prune_options={"thresold": 0.5})
    with pytest.raises(ValueError, match="unknown option 'beta'"):
        make(grow="gradient", grow_options={"beta": 0.5})


def test_same_seed_same_masks_other_seed_other_masks():
    runs = []
    for seed in (5, 5, 6):
        model, opt, sp = make(lenet300(0), seed=seed, update_frequency=2, total_steps=6)
        train(model, opt, sp, batches(6, (784,), 10))
        runs.append(sp.masks)
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    assert not all(torch.equal(runs[0][n], runs[2][n]) for n in runs[0])


@pytest.mark.parametrize("grow", ["random", "gradient", "momentum"])
def test_resume_is_bit_identical(grow):
    kw = dict(density=0.3, grow=grow, redistribution="momentum" if grow == "momentum" else "none", update_frequency=3, total_steps=12)
    assert_resume_bit_identical(make, small_convnet, batches(12, (1, 12, 12), 4), 7, **kw)


@pytest.mark.parametrize("optimizer", ["sgd", lambda p: torch.optim.SGD(p, lr=0.05)], ids=["momentum", "no-state"])
def test_sparsifier_built_after_loading_trained_states_is_refused(optimizer):
    """Its random initial masks have zeroed loaded weights: resuming would silently lose them.
    Plain SGD keeps no optimizer state, so the loaded weights' zeros give it away."""
    data = batches(4, (784,), 10)
    model, opt, sp = make(optimizer=optimizer, density=0.1, update_frequency=2, total_steps=8)
    train(model, opt, sp, data)
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "sp": sp.state_dict()})
    model2 = lenet300(1)
    model2.load_state_dict(saved["model"])
    opt2 = (
        torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
        if optimizer == "sgd"
        else optimizer(model2.parameters())
    )
    opt2.load_state_dict(saved["opt"])
    _, _, sp2 = make(model2, optimizer=lambda _: opt2, density=0.1, update_frequency=2, total_steps=8)
    with pytest.raises(ValueError, match="build the Sparsifier first"):
        sp2.load_state_dict(saved["sp"])
    model3, _, sp3 = make(lenet300(1), optimizer=optimizer, density=0.1, update_frequency=2, total_steps=8)
    model3.load_state_dict(saved["model"])
    sp3.load_state_dict(saved["sp"])  # the right order (Sparsifier built before the model's state is loaded) is accepted


def test_state_dict_survives_weights_only_load(tmp_path):
    model, opt, sp = make(update_frequency=2, total_steps=4)
    train(model, opt, sp, batches(2, (784,), 10))
    torch.save(sp.state_dict(), tmp_path / "sp.pt")
    state = torch.load(tmp_path / "sp.pt", weights_only=True)
    fresh_model, _, fresh = make(update_frequency=2, total_steps=4, seed=11)
    fresh_model.load_state_dict(model.state_dict())
    fresh.load_state_dict(state)
    assert fresh.itop_rate == sp.itop_rate and fresh.steps == 2


def test_load_state_dict_from_other_settings_is_refused():
    model, _, sp = make(update_frequency=2, total_steps=4)
    other_model, _, other = make(update_frequency=2, total_steps=8, prune_rate=0.3)
    other_model.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="prune_rate=0.5 but this sparsifier has prune_rate=0.3"):
        other.load_state_dict(sp.state_dict(), horizon="stretch")  # a horizon excuses the length, nothing else


def resumed_at(horizon, total_steps=24):
    """A run of 12 steps saved after 6, resumed as a run of `total_steps` with `horizon`."""
    data = batches(6, (784,), 10)
    model, opt, sp = make(density=0.1, update_frequency=2, total_steps=12)
    train(model, opt, sp, data)
    model2, opt2, sp2 = make(density=0.1, update_frequency=2, total_steps=total_steps)
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(opt.state_dict())
    sp2.load_state_dict(sp.state_dict(), horizon=horizon)
    return sp2


def test_a_run_of_another_length_needs_a_horizon():
    with pytest.raises(ValueError, match=r"total_steps=12 but this sparsifier has total_steps=24; .*horizon='stretch'.*'keep'"):
        resumed_at(None)
    stretched, kept = resumed_at("stretch"), resumed_at("keep")
    assert stretched.schedule.total_steps == stretched.config["total_steps"] == 24
    assert kept.schedule.total_steps == kept.config["total_steps"] == 12
    assert kept.schedule.rate(12) == pytest.approx(0.005) and stretched.schedule.rate(12) == pytest.approx(0.2525)
    with pytest.raises(ValueError, match="horizon must be None, 'stretch' or 'keep'"):
        resumed_at("longer")


def saved_run():
    data = batches(6, (784,), 10)
    model, opt, sp = make(density=0.1, update_frequency=2, total_steps=12)
    train(model, opt, sp, data)
    return model, opt, sp


def test_resuming_onto_weights_that_were_not_loaded_is_refused():
    model, opt, sp = saved_run()
    _, _, fresh = make(density=0.1, update_frequency=2, total_steps=12)  # the model's weights never loaded
    with pytest.raises(
        ValueError,
        match=r"not the ones this sparse state was saved with \(\d+ weights of .* outside its saved mask "
        r"are nonzero\): the model's trained weights were not restored",
    ):
        fresh.load_state_dict(sp.state_dict())
    fresh.load_state_dict(sp.state_dict(), check_weights=False)  # on purpose
    assert fresh.steps == 6


def test_resuming_onto_other_trained_weights_with_the_same_masks_is_refused():
    model, opt, sp = saved_run()
    earlier = copy.deepcopy(model.state_dict())  # the same masks (no update since), other values
    state = sp.state_dict()
    train(model, opt, sp, batches(1, (784,), 10, seed=5))
    assert sp.steps == 7 and all(torch.equal(state["masks"][n], sp.masks[n]) for n in sp.masks)
    model2, _, sp2 = make(density=0.1, update_frequency=2, total_steps=12)
    model2.load_state_dict(model.state_dict())  # one step later than the sparsifier's state
    with pytest.raises(ValueError, match=r"the active weights of .* differ from the saved ones"):
        sp2.load_state_dict(state)
    model2.load_state_dict(earlier)
    sp2.load_state_dict(state)
    assert "fingerprint" in state and set(state["fingerprint"]) == set(sp.masks)


def test_load_state_dict_from_other_model_is_refused():
    _, _, sp = make()
    _, _, other = make(small_convnet())
    with pytest.raises(ValueError, match="same model"):
        other.load_state_dict(sp.state_dict())


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
def test_skipped_optimizer_step_changes_nothing(fused):
    """A GradScaler does not call a plain optimizer on a skipped step, but it does call a fused one
    (which skips inside its kernel): neither may count as a step or change the topology."""
    model = lenet300()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, fused=fused)
    model, opt, sp = make(model, optimizer=lambda _: opt, update_frequency=1, total_steps=10)
    scaler = torch.amp.GradScaler("cpu")
    x, y = batches(1, (784,), 10)[0]
    opt.zero_grad()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    model[0].weight.grad[0, 0] = float("inf")
    masks = copy.deepcopy(sp.masks)
    scaler.step(opt)
    scaler.update()
    assert sp.step() is False and sp.steps == 0
    assert all(torch.equal(masks[n], sp.masks[n]) for n in masks)
    assert_zero_off_mask(sp)  # a fused kernel skipping its first step leaves its new momentum uninitialised
    opt.zero_grad()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    scaler.step(opt)
    scaler.update()
    assert sp.step() is True and sp.steps == 1


def test_fused_optimizer_under_grad_scaler_sees_unscaled_gradients():
    """A fused optimizer unscales inside its kernel, so the hooks see scaled gradients: the running
    average (momentum growth) and the dense gradients of an update must still be the true ones."""
    data = batches(4, (784,), 10)
    runs = []
    for scaled in (False, True):
        model = lenet300()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        model, opt, sp = make(model, optimizer=lambda _, opt=opt: opt, grow="momentum", update_frequency=2, total_steps=8)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=scaled)
        for x, y in data:
            opt.zero_grad()
            scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
            scaler.step(opt)
            scaler.update()
            sp.step()
        runs.append(sp)
    plain, scaled = runs
    assert scaled.steps == plain.steps == 4
    for name in plain.masks:
        torch.testing.assert_close(scaled.grad_average[name], plain.grad_average[name])
        assert torch.equal(scaled.masks[name], plain.masks[name])


@pytest.mark.parametrize(
    "move",
    [
        lambda model: model.double(),
        pytest.param(lambda model: model.cuda(), marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
    ],
    ids=["double", "cuda"],
)
def test_model_moved_after_the_sparsifier_was_built(move):
    """model.to(...) keeps the Parameter objects: the engine's tensors follow them."""
    model, opt, sp = make(density=0.1, grow="momentum", update_frequency=2, total_steps=6)
    move(model)
    weight = model[0].weight
    for x, y in batches(4, (784,), 10):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x.to(weight)), y.to(weight.device)).backward()
        opt.step()
        sp.step()
        assert_zero_off_mask(sp)
    assert sp.steps == 4 and sp.itop_rate > sp.density
    for name, param in sp.params.items():
        assert sp.masks[name].device == param.device and sp.grad_average[name].dtype == param.dtype
        assert sp._multipliers[sp._names.index(name)].dtype == param.dtype


def test_bfloat16_model_masks_exact():
    model = small_convnet().to(torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sp = itop.Sparsifier(model, opt, density=0.3, grow="gradient", update_frequency=2, total_steps=6, seed=0)
    data = [(x.to(torch.bfloat16), y) for x, y in batches(6, (1, 12, 12), 4)]
    train(model, opt, sp, data, check=assert_zero_off_mask)
    assert sp.history[-1]["step"] == 6


def test_autocast_bf16_training():
    model, opt, sp = make(small_convnet(), density=0.3, grow="gradient", update_frequency=2, total_steps=6)
    for x, y in batches(6, (1, 12, 12), 4):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sp.step()
        assert_zero_off_mask(sp)


def test_manual_update_topology_uses_current_gradient():
    model, opt, sp = make(grow="gradient", update_frequency=None)
    x, y = batches(1, (784,), 10)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    before = {n: m.clone() for n, m in sp.masks.items()}
    sp.update_topology()
    assert sp.itop_rate > sp.density and any(not torch.equal(before[n], sp.masks[n]) for n in before)
    assert_zero_off_mask(sp)


def test_manual_gradient_update_after_the_optimizer_step_is_refused():
    """The step masks the gradients; growing on them would pick the lowest indices."""
    model, opt, sp = make(grow="gradient", update_frequency=None)
    x, y = batches(1, (784,), 10)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    with pytest.raises(RuntimeError, match="before optimizer.step"):
        sp.update_topology()


def test_user_registered_criteria():
    name = "test-largest-first"

    @itop.register_prune(name)
    def largest_first(weight, mask, k, **_):
        return mask & ~itop.sparsity.select.top_k_mask(weight.abs(), k, mask)

    try:
        model, opt, sp = make(prune=name, update_frequency=2, total_steps=4)
        train(model, opt, sp, batches(2, (784,), 10))
        assert sp.history[-1]["removed"] > 0
        with pytest.raises(ValueError, match="already registered"):
            itop.register_prune(name, largest_first)
    finally:
        itop.sparsity.prune.PRUNE.unregister(name)


def test_misbehaving_criterion_is_caught():
    def greedy(weight, mask, k, **_):
        return torch.zeros_like(mask)

    model, opt, sp = make(prune=greedy, update_frequency=2, total_steps=4)
    with pytest.raises(RuntimeError, match="at most"):
        train(model, opt, sp, batches(2, (784,), 10))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(density=0), "density must be"),
        (dict(density=1.5), "density must be"),
        (dict(density="0.1"), "density must be"),
        (dict(distribution="ERK2"), "unknown distribution .ERK2.; choose one of er, erk, uniform"),
        (dict(prune="biggest"), "unknown prune criterion 'biggest'; choose one of magnitude, set, threshold"),
        (dict(grow="rigl"), "unknown grow criterion 'rigl'; choose one of gradient, momentum, none, random"),
        (dict(redistribution="nonzero"), "unknown redistribution criterion 'nonzero'"),
        (dict(prune_rate=0), "prune_rate"),
        (dict(update_frequency=0), "update_frequency"),
        (dict(total_steps=0), "total_steps"),
        (dict(prune_rate=None), "prune_rate"),
        (dict(update_frequency=True), "update_frequency"),
        (dict(density=float("nan")), "density must be"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_numpy_numbers_are_accepted():
    _, _, sp = make(density=np.float32(0.1), update_frequency=np.int64(5), total_steps=np.int64(10))
    assert sp.config["density"] == pytest.approx(0.1) and sp.schedule.is_update(5)


def test_model_without_sparse_parameters():
    model = nn.Sequential(nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="no sparse parameter"):
        itop.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_optimizer_without_the_models_parameters():
    model = lenet300()
    with pytest.raises(ValueError, match="optimizer does not hold"):
        itop.Sparsifier(model, torch.optim.SGD(lenet300().parameters(), lr=0.1))


def test_layer_unused_in_a_step_still_updates_with_gradient_growth():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.used, self.unused = nn.Linear(8, 8), nn.Linear(8, 2), nn.Linear(8, 2)

        def forward(self, x):
            return self.used(self.body(x))

    torch.manual_seed(0)
    model = TwoHeads()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp = itop.Sparsifier(model, opt, density=0.5, distribution="uniform", grow="gradient", update_frequency=2, total_steps=4, seed=0)
    before = int(sp.masks["unused.weight"].sum())
    train(model, opt, sp, batches(4, (8,), 2))
    assert int(sp.masks["unused.weight"].sum()) == before and sp.steps == 4
    assert_zero_off_mask(sp)


def test_init_scale_sparse_scales_the_initial_active_weights_for_the_actual_fan_in():
    torch.manual_seed(0)
    plain, _, dense_scaled = make(lenet300(), density=0.05)
    torch.manual_seed(0)
    scaled, _, sparse_scaled = make(lenet300(), density=0.05, init_scale="sparse")
    for name, mask in dense_scaled.masks.items():
        assert torch.equal(mask, sparse_scaled.masks[name])
        density = float(mask.float().mean())
        before, after = dict(plain.named_parameters())[name], dict(scaled.named_parameters())[name]
        assert torch.allclose(after, before / density**0.5)
    with pytest.raises(ValueError, match="init_scale"):
        make(density=0.05, init_scale="fan_in")
