"""Small models and a training loop shared by the engine's tests."""

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


def assert_zero_off_mask(sparsifier: itop.Sparsifier):
    for name, param in sparsifier.params.items():
        off = ~sparsifier.masks[name]
        assert (param[off] == 0).all(), f"{name}: weight non-zero off the mask"
        for key, state in sparsifier.optimizer.state.get(param, {}).items():
            if isinstance(state, torch.Tensor) and state.shape == param.shape:
                assert (state[off] == 0).all(), f"{name}: optimizer state {key} non-zero off the mask"
