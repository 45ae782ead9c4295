"""`torchrun -m itop train` with 2 gloo processes: same decisions as 1 process with the double
batch, one writer, and exact resume."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from itop.__main__ import main

ARGS = ["--sparse", "--model", "lenet300-100", "--data", "mnist5k", "--epochs", "3", "--growth", "gradient",
        "--update_frequency", "5", "--no-progress", "--seed", "5"]


def torchrun(*args, cwd):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd)


def load(run_dir):
    return torch.load(Path(run_dir, "checkpoint.pt"), weights_only=True)


def test_two_processes_equal_one_process_with_double_batch_and_resume(tmp_path, capsys):
    result = torchrun("-m", "itop", "train", *ARGS, "--batch-size", "100", "--save", "ddp", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("| Method |") == 1 and "2 process(es)" in result.stdout  # rank 0 alone prints

    assert main(["train", *ARGS, "--batch-size", "200", "--save", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    two, one = load(tmp_path / "ddp"), load(tmp_path / "one")
    assert two["sparsifier"]["steps"] == one["sparsifier"]["steps"] == 54
    for name, mask in two["sparsifier"]["masks"].items():
        assert torch.equal(mask, one["sparsifier"]["masks"][name]), name
    for key, value in two["model"].items():
        assert torch.allclose(value, one["model"][key], atol=1e-5), key
    summaries = [json.loads(Path(d, "summary.json").read_text()) for d in (tmp_path / "ddp", tmp_path / "one")]
    assert summaries[0]["itop_rate"] == summaries[1]["itop_rate"]

    script = str(Path(__file__).with_name("interrupted_train.py"))
    cut = torchrun(script, "3", *ARGS, "--batch-size", "100", "--save", "cut", cwd=tmp_path)
    assert cut.returncode != 0 and load(tmp_path / "cut")["epoch"] == 2
    resumed = torchrun("-m", "itop", "train", "--resume", "cut", "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = load(tmp_path / "cut")
    for key, value in two["model"].items():
        assert torch.equal(value, final["model"][key]), key
    for name, mask in two["sparsifier"]["masks"].items():
        assert torch.equal(mask, final["sparsifier"]["masks"][name]), name
