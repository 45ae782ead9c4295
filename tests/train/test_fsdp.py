"""`torchrun -m itop train --fsdp` with 2 gloo processes: the model, its optimizer state and masks
sharded by FSDP2, the same decisions as DDP, DCP checkpoints that resume exactly on 2 processes
and resharded onto 1, and one-line refusals."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from itop.__main__ import main

from .test_distributed import ARGS, load, torchrun

pytestmark = pytest.mark.usefixtures("fixed_kernels")


def load_dcp(run_dir, tmp_path):
    """A DCP checkpoint directory as one torch.save file (the test's own files: plain unpickling)."""
    target = tmp_path / f"{Path(run_dir).name}.pt"
    dcp_to_torch_save(Path(run_dir) / "checkpoint", target)
    return torch.load(target, weights_only=False)


def test_fsdp_run_equals_ddp_and_resumes_exactly_on_two_processes_and_on_one(tmp_path, capsys):
    ddp = torchrun("-m", "itop", "train", *ARGS, "--batch-size", "100", "--save", "ddp", cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    fsdp = torchrun("-m", "itop", "train", *ARGS, "--batch-size", "100", "--fsdp", "--save", "fsdp", cwd=tmp_path)
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    assert fsdp.stdout.count("| Method |") == 1
    assert not (tmp_path / "fsdp" / "checkpoint.pt").exists() and (tmp_path / "fsdp" / "best" / ".metadata").is_file()
    reference, sharded = load(tmp_path / "ddp"), load_dcp(tmp_path / "fsdp", tmp_path)
    assert sharded["sparsifier"]["steps"] == reference["sparsifier"]["steps"] == 54
    for name, mask in reference["sparsifier"]["masks"].items():
        assert torch.equal(sharded["sparsifier"]["masks"][name], mask), name
    for key, value in reference["model"].items():
        assert torch.allclose(sharded["model"][key], value, atol=1e-5), key
    summaries = [(tmp_path / d / "summary.json").read_text() for d in ("ddp", "fsdp")]
    assert '"itop_rate"' in summaries[1] and summaries[0].split('"itop_rate"')[1][:20] == summaries[1].split('"itop_rate"')[1][:20]

    script = str(Path(__file__).with_name("interrupted_train.py"))
    cut = torchrun(script, "3", *ARGS, "--batch-size", "100", "--fsdp", "--save", "cut", cwd=tmp_path)
    assert cut.returncode != 0 and load_dcp(tmp_path / "cut", tmp_path)["run"]["epoch"] == 2
    shutil.copytree(tmp_path / "cut", tmp_path / "cut-on-one")
    resumed = torchrun("-m", "itop", "train", "--resume", "cut", "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "epoch 3/3" in resumed.stdout and "epoch 2/3" not in resumed.stdout  # continued, not restarted
    final = load_dcp(tmp_path / "cut", tmp_path)
    for key, value in sharded["model"].items():
        assert torch.equal(final["model"][key], value), key
    for name, mask in sharded["sparsifier"]["masks"].items():
        assert torch.equal(final["sparsifier"]["masks"][name], mask), name

    assert main(["train", "--resume", str(tmp_path / "cut-on-one"), "--no-progress"]) == 0  # one process, no FSDP
    out = capsys.readouterr().out
    assert "epoch 3/3" in out and "epoch 2/3" not in out
    on_one = load_dcp(tmp_path / "cut-on-one", tmp_path)
    assert on_one["sparsifier"]["steps"] == 54
    for name, mask in sharded["sparsifier"]["masks"].items():
        assert torch.equal(on_one["sparsifier"]["masks"][name], mask), name


def test_fsdp_refusals_are_one_line_with_exit_status_2(tmp_path, capsys):
    assert main(["train", "--sparse", "--fsdp", "--truly-sparse", "--save", str(tmp_path / "t")]) == 2
    assert "--fsdp" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main(["train", *ARGS[:-4], "--epochs", "1", "--fsdp", "--save", str(tmp_path / "a")]) == 0
    assert (
        main(
            [
                "train",
                "--sparse",
                "--model",
                "lenet5",
                "--data",
                "mnist5k",
                "--epochs",
                "1",
                "--fsdp",
                "--no-progress",
                "--save",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    shutil.rmtree(tmp_path / "a" / "checkpoint")
    shutil.copytree(tmp_path / "b" / "checkpoint", tmp_path / "a" / "checkpoint")  # another model's shards
    assert main(["train", "--resume", str(tmp_path / "a"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume" in err[0], err
    result = subprocess.run([sys.executable, "-m", "itop", "train", "--resume", str(tmp_path / "missing")], capture_output=True, text=True)
    assert result.returncode == 2
