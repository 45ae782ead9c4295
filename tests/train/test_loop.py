"""What a run says about itself: a dynamic sparse run that never updates its topology, and a
validation split too small to pick the reported model."""

import json
from pathlib import Path

import numpy as np
import pytest

from itop.train.config import parse_args
from itop.train.notices import no_update_warning, reported_model

from .test_cli import TINY, run


def cfg_of(*flags):
    return parse_args(["--model", "lenet5", "--sparse", *flags])[0]


@pytest.mark.parametrize(
    "flags, steps_per_epoch, total_steps, frequency, expected",
    [
        (
            [],
            2,
            40,
            100,
            ["40 optimizer steps", "one every 100 steps", "--update_frequency N with N below 40", "--update-every epoch", "SET-ITOP"],
        ),
        (["--epochs", "1"], 36, 36, 100, ["36 optimizer steps", "--update_frequency N with N below 36"]),
        (["--update-every", "epoch", "--epochs", "1"], 36, 36, 36, ["one after each epoch of 36 steps", "train more than 1 epoch(s)"]),
        ([], 50, 100, 100, ["100 optimizer steps"]),  # the only update would come after the last step
    ],
)
def test_a_schedule_without_a_topology_update_is_named_with_its_numbers_and_the_flag(
    flags, steps_per_epoch, total_steps, frequency, expected
):
    warning = no_update_warning(cfg_of(*flags), steps_per_epoch, total_steps, frequency)
    assert warning is not None and "\n" not in warning
    assert all(part in warning for part in expected), warning
    if "--epochs" in flags:
        assert "--update-every epoch" not in warning  # one epoch: an update after it would come too late too


@pytest.mark.parametrize(
    "flags, steps_per_epoch, total_steps, frequency",
    [
        ([], 36, 101, 100),  # one update, then a step on the new topology
        (["--update-every", "epoch", "--epochs", "2"], 36, 72, 36),
        (["--fix"], 36, 36, None),  # static sparse training on purpose
    ],
)
def test_schedules_that_update_the_topology_give_no_warning(flags, steps_per_epoch, total_steps, frequency):
    assert no_update_warning(cfg_of(*flags), steps_per_epoch, total_steps, frequency) is None


def test_reported_model_names_the_epoch_and_how_it_was_chosen():
    summary = {"best_epoch": 4, "epochs": 5, "multiplier": 1}
    assert reported_model({**summary, "reported": "best"}) == "best epoch 4 of 5 by validation accuracy"
    assert reported_model({**summary, "best_epoch": 5, "reported": "final"}) == "final epoch 5"
    assert reported_model(summary) == "best epoch 4 of 5 by validation accuracy"  # summaries written before "reported"


def write_wine_like_csv(path, rows=178, features=13, classes=3, seed=0):
    """A small tabular file like sklearn's wine data: 178 rows, 13 features, classes 0..2 last."""
    generator = np.random.default_rng(seed)
    labels = np.arange(rows) % classes
    x = generator.normal(size=(rows, features)) + 2.0 * np.eye(classes)[labels].repeat(5, axis=1)[:, :features]
    np.savetxt(path, np.column_stack([x, labels]), delimiter=",", fmt="%.5f")


def test_a_small_set_run_warns_that_its_topology_never_changes_and_reports_its_final_epoch(capsys):
    write_wine_like_csv("wine.csv")
    argv = [
        "--model",
        "set-mlp",
        "--hidden",
        "200,200",
        "--sparse",
        "--epsilon",
        "10",
        "--data",
        "wine.csv",
        "--epochs",
        "20",
        "--truly-sparse",
        "--no-progress",
        "--save",
        "wine",
    ]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "40 optimizer steps" in warnings[0] and "one every 100 steps" in warnings[0]
    assert "--update_frequency" in warnings[0] and "--update-every epoch" in warnings[0]
    assert "validation split of 12 examples is too small" in out and "reporting the final epoch" in out and "--valid_split" in out
    summary = json.loads(Path("wine/summary.json").read_text())
    assert summary["reported"] == "final" and summary["best_epoch"] == 20
    assert summary["test_acc"] == summary["final_test_acc"]
    assert f"test accuracy {100 * summary['test_acc']:.2f}% (final epoch 20)" in out


def test_a_run_with_topology_updates_and_a_large_validation_split_reports_its_best_epoch(capsys):
    code, out, err = run([*TINY, "--epochs", "2", "--save", "t"], capsys)
    assert code == 0 and "warning" not in err and "too small" not in out, err
    summary = json.loads(Path("t/summary.json").read_text())
    assert summary["reported"] == "best" and f"(best epoch {summary['best_epoch']} of 2 by validation accuracy)" in out


def test_a_validation_split_under_100_examples_does_not_pick_the_model(capsys):
    code, out, err = run([*TINY, "--epochs", "2", "--valid_split", "0.02", "--save", "v"], capsys)  # 80 of 4,000 digits
    assert code == 0, err
    assert "validation split of 80 examples is too small" in out
    summary = json.loads(Path("v/summary.json").read_text())
    assert summary["reported"] == "final" and summary["best_epoch"] == 2 and summary["test_acc"] == summary["final_test_acc"]
