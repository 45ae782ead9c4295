"""SparsityCallback under Lightning's ModelParallelStrategy (FSDP2: fully_shard in configure_model),
two CPU ranks on gloo: SET and RigL keep the inactive weights exactly zero while Rs grows, and a
run resumed from a distributed (directory) or single-file checkpoint restores every rank's shards of
the masks and explored sets, the step and the generator exactly, ending with the uninterrupted
run's masks and weights. FSDP1 and DeepSpeed are refused, naming the way; so is a tensor-parallel
layout, by the engine."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from itop.integrations.lightning import SHARDED_FOLDER, checkpoint_layout, refuse_sharded

from .lightning_fsdp_worker import SCENARIOS, STEPS_PER_EPOCH

WORKER = Path(__file__).with_name("lightning_fsdp_worker.py")


def torchrun(out, mode):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), str(out), mode]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[:3000] + "\n...\n" + done.stderr[-3000:]
    return [torch.load(out / f"{mode}-rank{rank}.pt", weights_only=True) for rank in (0, 1)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both ranks' results of the uninterrupted runs (which save after epoch 1) and of the resumed ones."""
    out = tmp_path_factory.mktemp("model_parallel")
    return out, torchrun(out, "train"), torchrun(out, "resume")


def test_fsdp1_and_deepspeed_are_refused_in_one_line_naming_model_parallel():
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    for kind in (DeepSpeedStrategy, FSDPStrategy):
        with pytest.raises(ValueError, match=f"cannot train under {kind.__name__}") as refused:
            checkpoint_layout(kind.__new__(kind))
        assert "ModelParallelStrategy" in str(refused.value) and "fully_shard" in str(refused.value)
        assert "\n" not in str(refused.value)
    refuse_sharded(ModelParallelStrategy())  # accepted
    assert checkpoint_layout(ModelParallelStrategy()) == "sharded"
    assert checkpoint_layout(ModelParallelStrategy(save_distributed_checkpoint=False)) == "full"
    assert checkpoint_layout(DDPStrategy()) is None


def test_sharded_fits_keep_inactive_weights_zero_while_rs_grows(runs):
    _, trained, resumed = runs
    for scenario in SCENARIOS:
        for ranks in (trained, resumed):
            ends = [rank[scenario]["final"] for rank in ranks]
            for end in ends:
                assert end["sharded"] and end["zeros"], scenario  # masks are DTensors; zeros checked on each shard
                assert end["steps"] == 2 * STEPS_PER_EPOCH and end["history"] == [0, 4, 8, 12, 16], scenario
            for name, mask in ends[0]["masks"].items():
                assert torch.equal(mask, ends[1]["masks"][name]), (scenario, name)
        at_save, end = trained[0][scenario]["at_save"], trained[0][scenario]["final"]
        assert end["density"] < at_save["itop_rate"] < end["itop_rate"], scenario


def test_resume_restores_every_ranks_state_and_matches_the_uninterrupted_run(runs):
    _, trained, resumed = runs
    for scenario in SCENARIOS:
        for rank in (0, 1):
            saved, restarted = trained[rank][scenario]["at_save"], resumed[rank][scenario]["at_start"]
            assert saved["steps"] == restarted["steps"] == STEPS_PER_EPOCH, scenario
            assert saved["seed"] == restarted["seed"] and saved["history"] == restarted["history"], scenario
            assert torch.equal(saved["generator"], restarted["generator"]), scenario
            assert saved["itop_rate"] == restarted["itop_rate"], scenario
            for key in ("masks", "explored"):
                for name, shard in saved[key].items():  # this rank's own rows
                    assert torch.equal(shard, restarted[key][name]), (scenario, rank, key, name)
        whole, again = trained[0][scenario]["final"], resumed[0][scenario]["final"]
        assert whole["itop_rate"] == again["itop_rate"], scenario
        for name, mask in whole["masks"].items():
            assert torch.equal(mask, again["masks"][name]), (scenario, name)
        for name, weight in whole["weights"].items():
            assert torch.allclose(weight, again["weights"][name], atol=1e-6), (scenario, name)


def test_checkpoints_hold_the_sparsifier_in_shards_or_whole(runs):
    out = runs[0]
    directory = out / "rigl-dcp" / "epoch=0.ckpt"
    assert (directory / SHARDED_FOLDER / ".metadata").is_file()  # inside the checkpoint: removed and copied with it
    meta = torch.load(directory / "meta.pt", weights_only=True)
    assert meta["callbacks"]["SparsityCallback"] == {"sharded": SHARDED_FOLDER, "steps": STEPS_PER_EPOCH}  # no rank-0-only shards
    single = torch.load(out / "rigl-file" / "epoch=0.ckpt", weights_only=True)["callbacks"]["SparsityCallback"]["sparsifier"]
    assert single["masks"]["net.0.weight"].shape == (64, 16) and type(single["masks"]["net.0.weight"]) is torch.Tensor  # whole


def test_a_tensor_parallel_layout_is_refused_by_the_engine(runs):
    for rank in runs[2]:
        message = rank["tensor-parallel"]
        assert message is not None and "itop follows FSDP2's layout" in message and "\n" not in message


def test_a_longer_resumed_run_stretches_the_schedule(runs):
    for rank in runs[2]:
        longer = rank["longer"]
        assert longer["steps"] == longer["total_steps"] == 3 * STEPS_PER_EPOCH and longer["zeros"]
        assert longer["history"] == [0, 4, 8, 12, 16, 20, 24]
