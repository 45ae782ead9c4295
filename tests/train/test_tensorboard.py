"""`itop train --tensorboard`: curves on the optimizer-step axis, continued without duplicates on resume."""

import pytest

from itop.train import loop

from .test_cli import TINY, run

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def curves(run_dir):
    acc = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return scalars, acc.Tags()["histograms"], acc


def test_a_run_writes_its_curves_on_the_optimizer_step_axis(tmp_path, capsys):
    assert run([*TINY, "--tensorboard", "--save", str(tmp_path / "a")], capsys)[0] == 0
    scalars, histograms, acc = curves(tmp_path / "a")
    for tag in (
        "train/loss",
        "train/accuracy",
        "val/accuracy",
        "train/lr",
        "train/loss_running",
        "sparsity/density",
        "sparsity/itop_rate",
        "sparsity/prune_rate",
        "layer_density/fc1.weight",
        "layer_explored/fc3.weight",
    ):
        assert tag in scalars, tag
    assert [step for step, _ in scalars["train/loss"]] == [18, 36, 54]  # 18 steps an epoch
    assert [step for step, _ in scalars["sparsity/prune_rate"]] == list(range(7, 55, 7))  # every update
    rates = [value for _, value in scalars["sparsity/itop_rate"]]
    assert rates == sorted(rates) and rates[-1] > 0.05
    assert histograms == ["sparsity/layer_densities"] and len(acc.Histograms("sparsity/layer_densities")) == 7


def test_a_resumed_run_continues_the_curves_without_duplicates(tmp_path, capsys, monkeypatch):
    assert run([*TINY, "--tensorboard", "--save", str(tmp_path / "full")], capsys)[0] == 0
    original = loop.Run._log_update

    def stop_after_step_42(self):
        original(self)
        if self.step >= 42:  # after the update at step 42 was written, mid-epoch 3 (checkpoint at 36)
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.Run, "_log_update", stop_after_step_42)
    assert run([*TINY, "--tensorboard", "--save", str(tmp_path / "cut")], capsys)[0] == 130
    monkeypatch.setattr(loop.Run, "_log_update", original)
    assert run(["--resume", str(tmp_path / "cut"), "--no-progress", "--tensorboard"], capsys)[0] == 0
    full, cut = curves(tmp_path / "full")[0], curves(tmp_path / "cut")[0]
    assert full.keys() == cut.keys()
    for tag, points in full.items():
        steps = [step for step, _ in cut[tag]]
        assert steps == sorted(set(steps)), tag  # each step once
        assert steps == [step for step, _ in points], tag
        assert [value for _, value in cut[tag]] == pytest.approx([value for _, value in points]), tag
