"""`torchrun -m itop train` with 2 gloo processes: same decisions as 1 process with the double
batch, one writer, and exact resume."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from itop.__main__ import main

pytestmark = pytest.mark.usefixtures("fixed_kernels")  # bit-for-bit comparisons (see the fixture)

# 3,599 training digits: each epoch ends with a global batch of 199, split 99 / 100 over the ranks
ARGS = [
    "--sparse",
    "--model",
    "lenet300-100",
    "--data",
    "mnist5k",
    "--epochs",
    "3",
    "--growth",
    "gradient",
    "--update_frequency",
    "5",
    "--no-progress",
    "--seed",
    "5",
    "--valid_split",
    "0.10025",
]


def torchrun(*args, cwd):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd)


def load(run_dir):
    return torch.load(Path(run_dir, "checkpoint.pt"), weights_only=True)


def test_two_processes_equal_one_process_with_double_batch_and_resume(tmp_path, capsys):
    result = torchrun("-m", "itop", "train", *ARGS, "--batch-size", "100", "--save", "ddp", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[:3000] + "\n...\n" + result.stderr[-1500:]
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
    shutil.copytree(tmp_path / "cut", tmp_path / "cut-on-one")
    resumed = torchrun("-m", "itop", "train", "--resume", "cut", "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[:3000] + "\n...\n" + resumed.stderr[-1500:]
    final = load(tmp_path / "cut")
    for key, value in two["model"].items():
        assert torch.equal(value, final["model"][key]), key
    for name, mask in two["sparsifier"]["masks"].items():
        assert torch.equal(mask, final["sparsifier"]["masks"][name]), name

    # re-sharded onto one process: the global batch of 2 x 100 is kept, so it continues the same run
    assert main(["train", "--resume", str(tmp_path / "cut-on-one"), "--no-progress"]) == 0
    on_one = load(tmp_path / "cut-on-one")
    assert on_one["sparsifier"]["steps"] == 54
    for name, mask in two["sparsifier"]["masks"].items():
        assert torch.equal(mask, on_one["sparsifier"]["masks"][name]), name
    for key, value in two["model"].items():
        assert torch.allclose(value, on_one["model"][key], atol=1e-5), key


def test_imagenet_folder_on_two_processes_reduces_validation_exactly(tmp_path):
    from itop.data.imagenet import make_imagenet_loader
    from itop.models import create_model
    from itop.train.evaluation import evaluate
    from tests.data.formats import write_image_tree

    write_image_tree(tmp_path / "imnet" / "train", classes=("a", "b", "c"), per_class=4)
    write_image_tree(tmp_path / "imnet" / "val", classes=("a", "b", "c"), per_class=1)
    argv = [
        "--arch",
        "resnet18",
        "-b",
        "2",
        "--test-batch-size",
        "2",
        "--epochs",
        "1",
        "-j",
        "0",
        "--label-smoothing",
        "0.1",
        "--warmup",
        "1",
        "--update_frequency",
        "2",
        "--growth",
        "gradient",
        "--density",
        "0.2",
        "--no-progress",
        "--save",
        "im",
        str(tmp_path / "imnet"),
    ]
    result = torchrun("-m", "itop", "train", *argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[:3000] + "\n...\n" + result.stderr[-1500:]
    summary = json.loads((tmp_path / "im" / "summary.json").read_text())
    assert summary["steps"] == 3  # 12 images, 2 ranks x batch 2

    model = create_model("imagenet-resnet18", num_classes=3)
    model.load_state_dict(torch.load(tmp_path / "im" / "best.pt", weights_only=True)["model"])
    loader = make_imagenet_loader(tmp_path / "imnet", "val", 2, workers=0)
    import contextlib

    assert evaluate(model, loader, torch.device("cpu"), contextlib.nullcontext)[1] == summary["test_acc"]


def test_rank_slice_splits_the_last_partial_batch_with_loss_weights():
    from itop.data.loader import DeviceLoader
    from itop.train.distributed import RankSlice, World

    def slices(n, rank):
        loader = DeviceLoader(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n), 8, shuffle=False, mean=[0.0], std=[1.0])
        ranked = RankSlice(loader, World(rank=rank, size=2))
        return len(ranked), [(y.tolist(), ranked.loss_weight) for _, y in ranked]

    length, batches = slices(21, 1)  # 8, 8, then 5 split 2 / 3
    assert length == 3 and batches[-1] == ([18, 19, 20], 1.2)
    assert slices(21, 0)[1][-1] == ([16, 17], 0.8) and slices(21, 0)[1][0] == ([0, 1, 2, 3], 1.0)
    length, batches = slices(19, 0)  # 3 left: one rank would get a single example, so it is dropped
    assert length == 2 and [y for y, _ in batches] == [[0, 1, 2, 3], [8, 9, 10, 11]]
