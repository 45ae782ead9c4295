"""`itop train --preset NAME`: the SET systems' recipes, one flag each.

Each preset sets the configuration its source script used (read from the scripts; docs/set-systems.md's
table lists them); any flag given beside `--preset` overrides the preset's value. Every SET recipe:
ER layers from epsilon, SET pruning (the fraction zeta of each sign's smallest weights) with random
regrowth at zero, once per epoch with a constant zeta, weights initialised for their actual fan-in,
plain momentum SGD at a constant learning rate, and the final epoch's test accuracy (no validation
split). They train truly sparse (`--no-truly-sparse` runs the same recipe masked, to the same
numbers up to rounding).

This module is data only (it imports nothing of itop): `itop.train.config` picks the preset a
command line names and applies the rules between the SET flags.

The learning rate and weight decay are the ones that give the source's update in PyTorch's SGD on
a mean loss, which is not always the number written in the source script (derived below).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SET_RECIPE = dict(
    model="set-mlp",
    sparse=True,
    sparse_init="ER",
    death="SET",
    growth="random",
    redistribution="none",
    death_rate=0.3,
    decay_schedule="constant",
    update_every="epoch",
    init_scale="sparse",
    lr_schedule="constant",
    nesterov=False,
    valid_split=0.0,
    optimizer="sgd",
    momentum=0.9,
)


# How the SET code's update maps onto torch.optim.SGD. Read from the scripts: the official SET-MLP
# and the SET tutorials (github.com/dcmocanu/sparse-evolutionary-artificial-neural-networks) and the
# truly sparse SET-MLP of Liu, Mocanu et al. 2021 (github.com/Shiweiliuiiiiiii/SET-MLP-ONE-MILLION-NEURONS)
# share one update, `_update_w_b`:
#
#     v <- momentum * v - lr * g            w <- w + v - wd * w          (biases alike)
#
# where g is the gradient the script computes. PyTorch's SGD on a loss averaged over the batch:
#
#     buf <- momentum * buf + grad + wd' * w        w <- w - lr' * buf
#
# 1. Learning rate. Every script's Cython kernel averages a[j] * delta[j] over the batch (and the
#    biases take np.mean(delta, 0)), which is grad, the mean-loss gradient, when delta is per example.
#    The SET-MLP scripts' MSE delta is per example: g = grad, lr' = lr. The truly sparse SET-MLP's
#    CrossEntropy.delta returns (softmax - onehot) / batch, already a mean, and the kernel divides by
#    the batch again: g = grad / batch for every layer (the hidden deltas are back-propagated from
#    the divided one), so its step is lr / batch on the mean gradient: lr' = lr / batch = 0.01 / 2
#    = 0.005 (its nominal 0.01 on a mean gradient is twice its step). (The MSE scripts' delta is
#    (sigmoid - onehot) * sigmoid'(sigmoid(z)), a factor of 0.197-0.25 for outputs s in 0..1 (0.235
#    at s = 0.5), where `--loss mse` has sigmoid'(z) = s (1 - s), 0.25 at s = 0.5 and 0 at
#    saturation: another loss shape away from s = 0.5, not another step size.)
#    Keras's SGD is v <- m v - lr grad, w <- w + v: lr' = lr.
# 2. Momentum: v = -lr' * buf while lr is constant, so the same momentum.
# 3. Weight decay: the scripts shrink w by wd of itself every step, outside the learning rate and
#    the momentum; SGD's wd' goes through both, and a constant term in buf moves w by lr' / (1 -
#    momentum) times itself in all, so the same shrinkage per step is wd' = wd * (1 - momentum) / lr'
#    (equal in total; SGD spreads it over the momentum's ~10 steps, too short a time for w to change
#    much). With the scripts' wd 2e-4 and momentum 0.9: 2e-3 at lr' 0.01, 4e-4 at 0.05, 4e-3 at 0.005.
#    (The Keras script has no weight decay.)
# Measured (benchmarks/set_mlp.py --reference-dir: 784-1000-1000-1000-10, the same 4,000 digits, 5
# epochs, seeds 1-3): at lr 0.005 and wd 4e-3 itop's training loss per epoch, 0.967 0.432 0.371 0.331
# 0.301, follows the truly sparse SET-MLP's, 1.073 0.471 0.390 0.357 0.320 (at wd 2e-4 it falls to
# 0.132), and its official test accuracy is 88.78 +- 0.43% against 88.29 +- 1.63% (docs/set-systems.md).


@dataclass(frozen=True)
class Preset:
    source: str  # the script it reproduces
    values: dict = field(default_factory=dict)  # TrainConfig fields
    needs_data: str = ""  # what --data must name, when the preset cannot pick a dataset itself


PRESETS = {
    "set-mlp-lung": Preset(
        "official SET-MLP, truly sparse Python (Mocanu et al. 2018): 3312-3000-3000-3000-5 on lung.mat",
        dict(
            SET_RECIPE,
            hidden=[3000, 3000, 3000],
            activation="relu",
            loss="mse",
            epsilon=20.0,
            batch_size=2,
            lr=0.01,
            weight_decay=2e-3,
            dropout=0.0,
            epochs=100,
            test_split=1 / 3,
            truly_sparse=True,
        ),
        needs_data="lung.mat from featureselection.asu.edu (arrays X, Y): add --data path/to/lung.mat",
    ),
    "set-mlp-fashion": Preset(
        "SET tutorial (2019): 784-1000-1000-1000-10 on Fashion-MNIST",
        dict(
            SET_RECIPE,
            data="fashion-mnist",
            hidden=[1000, 1000, 1000],
            activation="relu",
            loss="mse",
            epsilon=13.0,
            batch_size=40,
            lr=0.05,
            weight_decay=4e-4,
            dropout=0.2,
            epochs=400,
            truly_sparse=True,
        ),
    ),
    "set-mlp-cifar10": Preset(
        "official SET, Keras (Mocanu et al. 2018): 3072-4000-1000-4000-10 with SReLU on CIFAR-10",
        dict(
            SET_RECIPE,
            data="cifar10",
            hidden=[4000, 1000, 4000],
            activation="srelu",
            loss="cross-entropy",
            epsilon=20.0,
            batch_size=100,
            lr=0.01,
            weight_decay=0.0,
            dropout=0.3,
            epochs=1000,
            truly_sparse=True,
        ),
    ),
    "million-neurons": Preset(
        "truly sparse SET-MLP (Liu, Mocanu et al. 2021) at over a million neurons: 784-333334-333333-333333-10",
        dict(
            SET_RECIPE,
            data="mnist5k",
            hidden=[333334, 333333, 333333],
            activation="relu",
            loss="cross-entropy",
            epsilon=10.0,
            batch_size=2,
            lr=0.005,
            weight_decay=4e-3,
            epochs=100,
            truly_sparse=True,
            # The source used dropout 0.3 (on lung); on this network and data it trained to 79% (train mode) but
            # tested at 21.5% after 3 epochs (at lr 0.01, weight decay 2e-4), measured 2026-11-29; without dropout it
            # learns (docs/performance.md).
            dropout=0.0,
        ),
    ),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)
