"""The SET presets take their source script's step: the script's update, restated here from its code,
against torch's SGD built by `itop train` from the preset (src/itop/train/presets.py derives it)."""

import pytest
import torch

from itop.train.config import parse_args
from itop.train.model_setup import loss_function
from itop.train.optim import build_optimizer

# Each source script's own numbers: (lr, weight decay, momentum, loss, gradient divided by the batch
# how many times). The truly sparse SET-MLP of Liu, Mocanu et al. 2021 returns (softmax - onehot) / batch
# from CrossEntropy.delta and its Cython kernel divides by the batch again; the official SET-MLP and
# the SET tutorial divide once (MSE delta per example); Keras's SGD takes the mean-loss gradient.
SOURCES = {
    "set-mlp-lung": dict(lr=0.01, weight_decay=2e-4, momentum=0.9, loss="mse", divisions=1),
    "set-mlp-fashion": dict(lr=0.05, weight_decay=2e-4, momentum=0.9, loss="mse", divisions=1),
    "set-mlp-cifar10": dict(lr=0.01, weight_decay=0.0, momentum=0.9, loss="cross-entropy", divisions=1),
    "million-neurons": dict(lr=0.01, weight_decay=2e-4, momentum=0.9, loss="cross-entropy", divisions=2),
}


def preset_config(name):
    return parse_args(["--preset", name, *(["--data", "lung.mat"] if name == "set-mlp-lung" else [])])[0]


def script_steps(source, w, b, batches, weight_decay):
    """The SET scripts' `_update_w_b` on one layer z = x @ w + b: the per-example delta of the loss at
    the output (divided by the batch once more where the script does), the Cython kernel's
    a^T delta / batch, the biases' mean(delta), then v <- m v - lr g, w <- w + v - wd w."""
    w, b = w.clone(), b.clone()
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    for x, y in batches:
        batch, onehot = len(x), torch.nn.functional.one_hot(y, w.shape[1]).double()
        z = x @ w + b
        if source["loss"] == "cross-entropy":
            delta = torch.softmax(z, 1) - onehot
        else:  # 0.5 x the squared error of the sigmoid outputs, as `--loss mse` (the step is what is tested)
            s = torch.sigmoid(z)
            delta = (s - onehot) * s * (1 - s)
        delta = delta / batch ** (source["divisions"] - 1)
        gw, gb = x.T @ delta / batch, delta.mean(0)
        vw, vb = source["momentum"] * vw - source["lr"] * gw, source["momentum"] * vb - source["lr"] * gb
        w, b = w + vw - weight_decay * w, b + vb - weight_decay * b
    return w, b


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_each_preset_takes_its_scripts_step(name):
    """Without weight decay the script's update and torch's SGD from the preset agree step by step
    (the million-neuron code's step is lr / batch: with its nominal 0.01 they part from the first step)."""
    cfg, source = preset_config(name), SOURCES[name]
    batch = cfg.batch_size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch * 12, 7, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 4, (batch * 12,), generator=generator)
    layer = torch.nn.Linear(7, 4).double()
    w0, b0 = layer.weight.detach().T.clone(), layer.bias.detach().clone()
    batches = list(zip(x.split(batch), y.split(batch)))
    cfg.weight_decay = 0.0
    optimizer, criterion = build_optimizer(cfg, layer), loss_function(cfg)
    for inputs, labels in batches:
        optimizer.zero_grad()
        criterion(layer(inputs), labels).backward()
        optimizer.step()
    expected = script_steps(source, w0, b0, batches, 0.0)
    assert torch.allclose(layer.weight.detach().T, expected[0], rtol=1e-9, atol=1e-12)
    assert torch.allclose(layer.bias.detach(), expected[1], rtol=1e-9, atol=1e-12)
    assert not torch.allclose(layer.weight.detach().T, w0)  # it did move


def test_script_steps_does_divide_twice_for_the_million_neuron_code():
    """The restated update itself: with the doubled division, lr 0.01 at batch 2 moves half as far as lr 0.01."""
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 5, generator=generator, dtype=torch.float64), torch.tensor([0, 2])
    w, b = torch.randn(5, 3, generator=generator, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    once = script_steps(dict(SOURCES["million-neurons"], divisions=1), w, b, [(x, y)], 0.0)[0] - w
    twice = script_steps(SOURCES["million-neurons"], w, b, [(x, y)], 0.0)[0] - w
    assert torch.allclose(twice, once / 2)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_each_preset_shrinks_the_weights_as_its_script_does(name):
    """The scripts shrink w by wd of itself every step, outside lr and momentum; torch's weight decay
    goes through both. With no gradient, 2,000 steps of the preset's SGD shrink w as the script's do."""
    cfg, source = preset_config(name), SOURCES[name]
    layer = torch.nn.Linear(3, 2).double()
    torch.nn.init.ones_(layer.weight), torch.nn.init.ones_(layer.bias)
    optimizer = build_optimizer(cfg, layer)
    for _ in range(2000):
        optimizer.zero_grad()
        (layer.weight.sum() + layer.bias.sum()).mul(0).backward()
        optimizer.step()
    expected = (1 - source["weight_decay"]) ** 2000  # the script: w <- w + 0 - wd w (biases alike)
    assert float(layer.weight[0, 0].detach()) == pytest.approx(expected, rel=0.01)
    assert float(layer.bias[0].detach()) == pytest.approx(expected, rel=0.01)
