"""`itop train --resume` checks that the checkpoint's weights are the ones its sparse state belongs
to: a checkpoint whose weights were replaced stops in one line, and nothing is written."""

from pathlib import Path

import torch

from itop.__main__ import main

TINY = [
    "--sparse",
    "--model",
    "lenet300-100",
    "--data",
    "mnist5k",
    "--epochs",
    "2",
    "--batch-size",
    "500",
    "--update_frequency",
    "4",
    "--no-progress",
    "--seed",
    "3",
]


def test_a_checkpoint_with_other_weights_is_refused_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--epochs", "1", "--save", "r"]) == 0
    checkpoint = torch.load("r/checkpoint.pt", weights_only=True)
    torch.manual_seed(1)
    checkpoint["model"] = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in checkpoint["model"].items()}
    torch.save(checkpoint, "r/checkpoint.pt")
    before = Path("r/checkpoint.pt").read_bytes()
    capsys.readouterr()
    code = main(["train", "--resume", "r"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot be resumed: the model's weights are not the ones this sparse state was saved with" in lines[0]
    assert Path("r/checkpoint.pt").read_bytes() == before
