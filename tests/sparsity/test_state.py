"""built_over_loaded: a Sparsifier built after a trainer loaded a resumed run's weights and optimizer
state keeps them and continues with the saved masks."""

import torch
from torch import nn

import itop
from itop.sparsity.state import built_over_loaded


def model_and_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 4))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def train(model, optimizer, sparsifier, steps):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 20, generator=g)), torch.randint(0, 4, (8,), generator=g)).backward()
        optimizer.step()
        sparsifier.step()


def test_a_sparsifier_built_over_loaded_weights_keeps_them_and_the_saved_masks():
    model, optimizer = model_and_optimizer()
    options = dict(density=0.3, update_frequency=3, total_steps=20, seed=0)
    first = itop.Sparsifier(model, optimizer, **options)
    train(model, optimizer, first, 7)
    weights, moments, saved = model.state_dict(), optimizer.state_dict(), first.state_dict()

    again, optimizer2 = model_and_optimizer()
    again.load_state_dict(weights)  # as a trainer does, before any callback runs
    optimizer2.load_state_dict(moments)
    resumed = built_over_loaded(lambda: itop.Sparsifier(again, optimizer2, **{**options, "seed": 5}), again, optimizer2, saved)
    assert resumed.steps == 7 and all(torch.equal(resumed.masks[n], first.masks[n]) for n in first.masks)
    assert all(torch.equal(again.state_dict()[k], weights[k]) for k in weights)
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(optimizer.state[p]["momentum_buffer"], optimizer2.state[q]["momentum_buffer"])
