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


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One launch on 2 ranks and one on 4 (each start costs seconds): selections, every scenario,
    a skipped step, the refusals and a DCP save on 2; selections, every scenario and the resume of
    that checkpoint on 4; the same checkpoint resumed in one process without FSDP."""
    out = tmp_path_factory.mktemp("fsdp")
    torchrun(out, 2, "select,train,amp,refusals,save")
    torchrun(out, 4, "select,train,resume")
    plain = subprocess.run([sys.executable, str(WORKER), str(out), "resume-plain"], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "Warning" not in plain.stderr
    return out


@pytest.mark.parametrize(
    "scenario, ranks", [(s, 2) for s in fsdp_worker.SCENARIOS] + [(s, 4) for s in fsdp_worker.FOUR_RANKS], ids=lambda v: str(v)
)
def test_fsdp_runs_take_the_decisions_of_one_process(runs, ranks, scenario):
    # the launches also checked the sharded selections against one process's, over ties, NaN, -0.0 and empty
    # shards, and that inactive weights and optimizer state stay exactly zero on every shard
    single, _ = fsdp_worker.train(scenario)
    assert_same_run(torch.load(runs / f"{scenario}-{ranks}.pt", weights_only=True), single)


def test_dcp_checkpoint_saved_on_two_ranks_resumes_on_four_and_in_one_process(runs):
    single, _ = fsdp_worker.train("rigl")
    for resumed in ("resumed4", "resumed-plain"):
        assert_same_run(torch.load(runs / f"{resumed}.pt", weights_only=True), single)


def test_a_step_the_grad_scaler_skips_is_skipped_on_every_rank(runs):
    # the infinite gradient was on rank 1's shard only
    assert_same_run(torch.load(runs / "amp.pt", weights_only=True), fsdp_worker.train_with_skipped_step())
    # the 2-rank launch also checked that FSDP1, a Shard(1) weight, an optimizer built before fully_shard,
    # export of a sharded model and structure on shards are refused in one line
