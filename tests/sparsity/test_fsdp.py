"""A Sparsifier on a model sharded by FSDP2 (`fully_shard`, gloo, 2 and 4 CPU ranks) takes the
decisions of a single process on the same global batches, and resumes from DCP checkpoints saved
on any number of ranks."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from . import fsdp_worker

WORKER = Path(__file__).with_name("fsdp_worker.py")


def torchrun(tmp_path, ranks, mode):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(ranks),
        str(WORKER),
        str(tmp_path),
        mode,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[:3000] + "\n...\n" + result.stderr[-3000:]
    return result


def assert_same_run(sharded, single):
    assert sharded["history"] == single["history"]
    for name, mask in single["masks"].items():
        assert torch.equal(sharded["masks"][name], mask), name
    for key, value in single["model"].items():
        assert torch.allclose(sharded["model"][key], value, atol=1e-5), key
    assert sharded["itop_rate"] == single["itop_rate"] > sharded["density"]


@pytest.mark.parametrize("ranks", [2, 4])
def test_sharded_selections_equal_one_process(tmp_path, ranks):
    torchrun(tmp_path, ranks, "select")


@pytest.mark.parametrize("ranks", [2, 4])
def test_fsdp_runs_take_the_decisions_of_one_process(tmp_path, ranks):
    torchrun(tmp_path, ranks, "train")  # also checks inactive weights and optimizer state are exactly zero
    for scenario in fsdp_worker.SCENARIOS:
        single, _ = fsdp_worker.train(scenario)
        assert_same_run(torch.load(tmp_path / f"{scenario}.pt", weights_only=True), single)


def test_dcp_checkpoint_resumes_on_four_ranks_and_in_one_process(tmp_path):
    torchrun(tmp_path, 2, "save")
    torchrun(tmp_path, 4, "resume")
    plain = subprocess.run([sys.executable, str(WORKER), str(tmp_path), "resume-plain"], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "Warning" not in plain.stderr
    single, _ = fsdp_worker.train("rigl")
    for resumed in ("resumed4", "resumed-plain"):
        assert_same_run(torch.load(tmp_path / f"{resumed}.pt", weights_only=True), single)


def test_a_step_the_grad_scaler_skips_is_skipped_on_every_rank(tmp_path):
    torchrun(tmp_path, 2, "amp")  # the infinite gradient is on rank 1's shard only
    assert_same_run(torch.load(tmp_path / "amp.pt", weights_only=True), fsdp_worker.train_with_skipped_step())


def test_configurations_the_engine_cannot_follow_are_refused_in_one_line(tmp_path):
    torchrun(tmp_path, 2, "refusals")  # FSDP1, a Shard(1) weight, an optimizer built before fully_shard
