"""Small models and a training loop shared by the engine's tests."""

import copy

import torch
from torch import nn

import itop


def lenet300(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def small_convnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 5 * 5, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )


def batches(n, shape, classes, seed=0, batch=16):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn((batch, *shape), generator=gen), torch.randint(0, classes, (batch,), generator=gen)) for _ in range(n)]


def train(model, optimizer, sparsifier, data, check=None):
    """The three-line integration, with an optional invariant check after every step."""
    for x, y in data:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        sparsifier.step()
        if check is not None:
            check(sparsifier)


def assert_resume_bit_identical(make, model_of, data, split, **kw):
    """Train on data[:split], save the three states, load them into a fresh model (other initial
    weights, other seed) and finish; everything must equal one uninterrupted run.
    `make(model, **kw)` builds (model, optimizer, sparsifier); `model_of(seed)` a fresh model."""
    model, opt, sp = make(model_of(0), **kw)
    train(model, opt, sp, data[:split])
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "sp": sp.state_dict()})
    model2, opt2, sp2 = make(model_of(1), **dict(kw, seed=99))
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sp2.load_state_dict(saved["sp"])
    train(model2, opt2, sp2, data[split:])
    ref_model, ref_opt, ref_sp = make(model_of(0), **kw)
    train(ref_model, ref_opt, ref_sp, data)
    for key, value in ref_model.state_dict().items():
        assert torch.equal(value, model2.state_dict()[key]), key
    assert all(torch.equal(ref_sp.masks[n], sp2.masks[n]) for n in ref_sp.masks)
    assert ref_sp.itop_rate == sp2.itop_rate and ref_sp.steps == sp2.steps == len(data)


def assert_zero_off_mask(sparsifier: itop.Sparsifier):
    for name, param in sparsifier.params.items():
        off = ~sparsifier.masks[name]
        assert (param[off] == 0).all(), f"{name}: weight non-zero off the mask"
        for key, state in sparsifier.optimizer.state.get(param, {}).items():
            if isinstance(state, torch.Tensor) and state.shape == param.shape:
                assert (state[off] == 0).all(), f"{name}: optimizer state {key} non-zero off the mask"
