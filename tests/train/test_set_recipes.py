"""The SET systems from `itop train`: presets, --epsilon, --truly-sparse, tabular files, the SET loss."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from itop.sparse import SparseLinear
from itop.train.config import parse_args
from itop.train.model_setup import SigmoidMSE, build_model

from .test_cli import interrupt_in_epoch, records, run

SET_TINY = [
    "--model",
    "set-mlp",
    "--data",
    "mnist5k",
    "--hidden",
    "64,48",
    "--sparse",
    "--epsilon",
    "4",
    "--death",
    "SET",
    "--death-rate",
    "0.3",
    "--decay-schedule",
    "constant",
    "--update-every",
    "epoch",
    "--epochs",
    "3",
    "--batch-size",
    "64",
    "--lr",
    "0.05",
    "--lr-schedule",
    "constant",
    "--no-progress",
    "--seed",
    "5",
]


# Each preset against its source script's recipe (the table in docs/set-systems.md); lr and weight decay are the
# ones that take the script's step in torch's SGD (tests/train/test_presets.py).
PRESET_TABLE = {
    "set-mlp-lung": dict(
        hidden=[3000, 3000, 3000],
        activation="relu",
        epsilon=20.0,
        death_rate=0.3,
        batch_size=2,
        lr=0.01,
        momentum=0.9,
        weight_decay=2e-3,
        dropout=0.0,
        epochs=100,
        loss="mse",
    ),
    "set-mlp-fashion": dict(
        hidden=[1000, 1000, 1000],
        activation="relu",
        epsilon=13.0,
        death_rate=0.3,
        batch_size=40,
        lr=0.05,
        momentum=0.9,
        weight_decay=4e-4,
        dropout=0.2,
        epochs=400,
        loss="mse",
        data="fashion-mnist",
    ),
    "set-mlp-cifar10": dict(
        hidden=[4000, 1000, 4000],
        activation="srelu",
        epsilon=20.0,
        death_rate=0.3,
        batch_size=100,
        lr=0.01,
        momentum=0.9,
        weight_decay=0.0,
        dropout=0.3,
        epochs=1000,
        loss="cross-entropy",
        data="cifar10",
    ),
    "million-neurons": dict(
        hidden=[333334, 333333, 333333],
        activation="relu",
        epsilon=10.0,
        death_rate=0.3,
        batch_size=2,
        lr=0.005,
        momentum=0.9,
        weight_decay=4e-3,
        dropout=0.0,
        loss="cross-entropy",
        data="mnist5k",
        truly_sparse=True,
    ),
}


@pytest.mark.parametrize("name", sorted(PRESET_TABLE))
def test_each_preset_is_its_source_recipe(name):
    extra = ["--data", "lung.mat"] if name == "set-mlp-lung" else []
    cfg, _ = parse_args(["--preset", name, *extra])
    for key, value in PRESET_TABLE[name].items():
        assert getattr(cfg, key) == value, key
    assert cfg.model == "set-mlp" and cfg.sparse and cfg.sparse_init == "ER" and cfg.death == "SET" and cfg.growth == "random"
    assert cfg.update_every == "epoch" and cfg.decay_schedule == "constant" and cfg.lr_schedule == "constant"
    assert cfg.init_scale == "sparse" and not cfg.nesterov and cfg.valid_split == 0.0


def test_flags_beside_a_preset_override_it():
    cfg, _ = parse_args(["--preset", "million-neurons", "--epochs", "3", "--no-truly-sparse", "--update_frequency", "50"])
    assert cfg.epochs == 3 and not cfg.truly_sparse and cfg.hidden == [333334, 333333, 333333]
    assert cfg.update_every == "" and cfg.update_frequency == 50
    cfg, _ = parse_args(["--preset", "set-mlp-fashion", "--density", "0.05", "--sparse_init", "erk"])
    assert cfg.epsilon is None and cfg.density == 0.05 and cfg.sparse_init == "erk"


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--preset", "nope"], "unknown --preset 'nope'"),
        (["--preset", "set-mlp-lung"], "add --data path/to/lung.mat"),
        (["--model", "lenet5", "--hidden", "10,10"], "--hidden shapes the SET-MLP"),
        (["--model", "set-mlp", "--sparse", "--epsilon", "5", "--density", "0.1"], "give --epsilon or --density, not both"),
        (["--model", "set-mlp", "--sparse", "--epsilon", "5", "--sparse_init", "ERK"], "--epsilon defines ER layer densities"),
        (["--model", "set-mlp", "--epsilon", "5"], "add --sparse"),
        (["--model", "set-mlp", "--truly-sparse"], "add --sparse"),
        (["--model", "set-mlp", "--sparse", "--truly-sparse", "--growth", "momentum"], "dense gradient averages"),
        (["--model", "set-mlp", "--hidden", "10,x"], "positive integers separated by commas"),
        (["--model", "set-mlp", "--activation", "tanh"], "--activation must be relu, srelu or allrelu"),
        (["--model", "set-mlp", "--update-every", "week"], "'epoch' or a positive number"),
        (["--model", "set-mlp", "--test-split", "0.2"], "--test-split holds out a share of a .mat/.npz/.csv file"),
        (["--model", "set-mlp", "--loss", "hinge"], "--loss must be cross-entropy or mse"),
    ],
)
def test_bad_set_flags_are_one_line_errors(argv, fragment, capsys):
    code, out, err = run([*argv, "--no-progress"], capsys)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert not Path("runs").exists()


def test_a_model_too_large_to_exist_densely_is_refused_masked_before_anything_is_allocated(capsys):
    code, _, err = run(
        [
            "--model",
            "set-mlp",
            "--data",
            "mnist5k",
            "--hidden",
            "333334,333333,333333",
            "--sparse",
            "--epsilon",
            "10",
            "--no-progress",
            "--save",
            "m",
        ],
        capsys,
    )
    assert code == 2 and "--truly-sparse" in err and "GiB" in err and not Path("m").exists()


def test_truly_sparse_build_of_a_model_too_large_to_exist_densely():
    cfg, _ = parse_args(
        ["--model", "set-mlp", "--hidden", "200000,30", "--sparse", "--epsilon", "2", "--truly-sparse", "--activation", "srelu"]
    )
    torch.manual_seed(0)
    model, density = build_model(cfg, num_classes=10, in_channels=1, image_size=28)
    sparse = [m for m in model.modules() if isinstance(m, SparseLinear)]
    assert [m.nnz for m in sparse] == [2 * (784 + 200_000), 2 * (200_000 + 30), 2 * (30 + 10)]
    assert not any(t.is_meta for t in model.state_dict().values())
    assert max(p.numel() for p in model.parameters()) < 500_000  # nothing of the dense 784 x 200,000 shape
    assert density == pytest.approx((2 * 200_784 + 2 * 200_030 + 80) / (784 * 200_000 + 200_000 * 30 + 300))
    model(torch.randn(2, 1, 28, 28)).sum().backward()  # the SReLU, built on meta, was materialised
    assert model.act1.t_left.grad is not None


def test_truly_sparse_and_masked_runs_agree(capsys):
    """Same seed: the same masks, updates and numbers up to floating-point rounding."""
    assert run([*SET_TINY, "--truly-sparse", "--save", "truly"], capsys)[0] == 0
    assert run([*SET_TINY, "--save", "masked"], capsys)[0] == 0
    truly, masked = (torch.load(f"{d}/checkpoint.pt", weights_only=True) for d in ("truly", "masked"))
    for name in ("fc1", "fc2"):
        positions = truly["model"][f"{name}.indices"]
        mask = masked["sparsifier"]["masks"][f"{name}.weight"].reshape(-1)
        assert torch.equal(torch.nonzero(mask).squeeze(1), positions)
        weight = masked["model"][f"{name}.weight"].reshape(-1)
        assert torch.allclose(weight[positions], truly["model"][f"{name}.values"], atol=1e-5)
        assert torch.allclose(masked["model"][f"{name}.bias"], truly["model"][f"{name}.bias"], atol=1e-5)
    updates = [records(d, "update") for d in ("truly", "masked")]
    assert [r["step"] for r in updates[0]] == [57, 114, 171]  # once per epoch: 57 batches of 64 of the 3,600 training digits
    assert [r["itop_rate"] for r in updates[0]] == pytest.approx([r["itop_rate"] for r in updates[1]])
    losses = [[r["train_loss"] for r in records(d, "epoch")] for d in ("truly", "masked")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_a_resumed_truly_sparse_run_equals_the_uninterrupted_one(capsys, monkeypatch):
    argv = [*SET_TINY, "--truly-sparse", "--activation", "srelu", "--dropout", "0.2"]
    assert run([*argv, "--save", "full"], capsys)[0] == 0
    restore = interrupt_in_epoch(monkeypatch, 3)
    assert run([*argv, "--save", "cut"], capsys)[0] == 130
    restore()
    code, _, err = run(["--resume", "cut", "--no-progress"], capsys)
    assert code == 0, err
    full, cut = (torch.load(f"{d}/checkpoint.pt", weights_only=True) for d in ("full", "cut"))
    assert full["model"].keys() == cut["model"].keys() and "fc1.indices" in full["model"]
    for key, value in full["model"].items():
        assert torch.equal(value, cut["model"][key]), key
    for key, value in full["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], cut["optimizer"]["state"][key]["momentum_buffer"])


def test_a_tabular_file_trains_with_its_own_test_split(capsys):
    generator = np.random.default_rng(0)
    labels = np.repeat([1, 2, 3], 100)  # classes 1..3, as lung.mat numbers its classes from 1
    features = generator.normal(size=(300, 12)) + 3.0 * np.eye(3)[labels - 1].repeat(4, axis=1)
    np.savez("table.npz", X=features * 50 + 7, Y=labels)  # far from standardised: the reader z-scores it
    code, out, err = run(
        [
            "--model",
            "set-mlp",
            "--data",
            "table.npz",
            "--test-split",
            "0.2",
            "--valid_split",
            "0",
            "--hidden",
            "32",
            "--sparse",
            "--epsilon",
            "3",
            "--epochs",
            "4",
            "--batch-size",
            "16",
            "--lr",
            "0.05",
            "--loss",
            "mse",
            "--no-progress",
            "--save",
            "tab",
        ],
        capsys,
    )
    assert code == 0, err
    summary = json.loads(Path("tab/summary.json").read_text())
    assert summary["test_acc"] > 0.8 and "15 steps/epoch" in out  # 240 training rows in batches of 16
    assert summary["final_test_acc"] == summary["test_acc"]  # no validation split: the last epoch is the best


def test_the_set_loss_is_half_the_squared_error_of_sigmoid_outputs():
    logits, target = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.0, 0.0]]), torch.tensor([1, 0])
    sig = torch.sigmoid(logits)
    expected = 0.5 * ((sig[0] - torch.tensor([0, 1.0, 0])) ** 2).sum() + 0.5 * ((sig[1] - torch.tensor([1.0, 0, 0])) ** 2).sum()
    assert SigmoidMSE()(logits, target) == pytest.approx(float(expected) / 2)
    assert SigmoidMSE("sum")(logits, target) == pytest.approx(float(expected))
