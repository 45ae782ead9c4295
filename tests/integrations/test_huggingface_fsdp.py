"""SparsityCallback in the Hugging Face Trainer under accelerate's FSDP2: a tiny Llama on two gloo
ranks (hf_fsdp_worker.py under torchrun) trains SET and RigL with masks on DTensor shards, saves
the sparse state with torch.distributed.checkpoint and resumes to the uninterrupted run's masks;
DeepSpeed and FSDP1 are refused in one line that names FSDP2."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainingArguments

from itop.integrations.huggingface import SparsityCallback, refuse_sharded, sharding

from . import hf_fsdp_worker as worker

WORKER = Path(__file__).with_name("hf_fsdp_worker.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf-fsdp")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), str(out), "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[:3000] + "\n...\n" + done.stderr[-3000:]
    return torch.load(out / "results.pt", weights_only=True)


@pytest.mark.parametrize("scenario", list(worker.SCENARIOS))
def test_fsdp2_trains_sparse_shards_and_resumes_to_the_same_masks(results, scenario):
    whole, resumed = results[scenario]["whole"], results[scenario]["resumed"]
    # every step of both runs: the inactive weights and optimizer state of each shard exactly zero
    assert whole["checked_steps"] == worker.STEPS and resumed["checked_steps"] == worker.STEPS - worker.SAVE_AT
    assert whole["steps"] == resumed["steps"] == worker.STEPS and resumed["start_steps"] == worker.SAVE_AT
    assert whole["density"] == pytest.approx(worker.DENSITY, abs=0.005)
    assert worker.DENSITY < whole["itop_rate"] < 1
    active = sum(int(m.sum()) for m in whole["masks"].values())
    assert active / sum(m.numel() for m in whole["masks"].values()) == pytest.approx(whole["density"])
    assert len(whole["history"]) == 1 + worker.STEPS // 2 and all(h == whole["history"][0] for h in whole["history"])
    for name, mask in whole["masks"].items():
        assert not whole["model"][name][~mask].any(), name  # the gathered weights: inactive ones exactly zero
    # the DCP state beside the Trainer's own sharded checkpoint, no torch.save file
    assert "itop_sparsifier" in results[scenario]["checkpoint"] and "itop_sparsifier.pt" not in results[scenario]["checkpoint"]
    assert resumed["itop_rate"] == whole["itop_rate"] and resumed["history"] == whole["history"]
    for name, mask in whole["masks"].items():
        assert torch.equal(resumed["masks"][name], mask), name
    for name, weight in whole["model"].items():
        assert torch.allclose(resumed["model"][name], weight, atol=1e-6), name


def test_set_and_rigl_choose_other_masks(results):
    assert any(not torch.equal(results["set"]["whole"]["masks"][n], m) for n, m in results["rigl"]["whole"]["masks"].items())


def test_a_resume_from_another_sparse_state_is_refused_in_one_line_on_every_rank(results):
    refusals = results["refusals"]  # the worker got here on both ranks, so both refused
    assert "\n" not in refusals["weights"] and "\n" not in refusals["step"]
    assert "did not restore the model's weights from" in refusals["weights"] and "outside its saved mask" in refusals["weights"]
    assert "itop_sparsifier was saved at step 8 but the Trainer resumes at step 4" in refusals["step"]


def refusal(args):
    with pytest.raises(ValueError) as error:
        refuse_sharded(args)
    assert "\n" not in str(error.value) and "fsdp_config={'fsdp_version': 2}" in str(error.value)
    return str(error.value)


def arguments(tmp_path, **changes):
    return TrainingArguments(str(tmp_path), use_cpu=True, report_to="none", **changes)


def test_fsdp2_is_accepted_fsdp1_and_deepspeed_refused(tmp_path):
    for accepted in (
        arguments(tmp_path, fsdp=True, fsdp_config={"fsdp_version": 2}),
        arguments(tmp_path, fsdp="full_shard", fsdp_config={"version": 2}),
        SimpleNamespace(deepspeed=None, fsdp=True, fsdp_config={"fsdp_version": 2}),
        arguments(tmp_path),
    ):
        refuse_sharded(accepted)
    assert sharding(arguments(tmp_path)) is None
    assert sharding(arguments(tmp_path, fsdp=True, fsdp_config={"fsdp_version": 2})) == "FSDP2"
    assert "cannot train under FSDP1" in refusal(arguments(tmp_path, fsdp=True, fsdp_config={"fsdp_version": 1}))
    assert "cannot train under FSDP1" in refusal(SimpleNamespace(deepspeed=None, fsdp="full_shard"))  # no version: FSDP1
    assert "cannot train under DeepSpeed" in refusal(SimpleNamespace(deepspeed="ds.json", fsdp=None))


def test_an_accelerate_config_is_read_when_the_arguments_name_no_fsdp(monkeypatch):
    from accelerate.state import AcceleratorState

    plain = SimpleNamespace(deepspeed=None, fsdp=None)
    monkeypatch.setitem(AcceleratorState._shared_state, "fsdp_plugin", SimpleNamespace(fsdp_version=2))
    refuse_sharded(plain)
    monkeypatch.setitem(AcceleratorState._shared_state, "fsdp_plugin", SimpleNamespace(fsdp_version=1))
    assert "cannot train under FSDP1" in refusal(plain)
    monkeypatch.setitem(AcceleratorState._shared_state, "fsdp_plugin", None)
    monkeypatch.setitem(AcceleratorState._shared_state, "deepspeed_plugin", SimpleNamespace())
    assert "cannot train under DeepSpeed" in refusal(plain)


def test_the_callback_refuses_fsdp1_when_the_trainer_is_made_and_when_training_begins(tmp_path):
    cb = SparsityCallback(density=0.2)
    args = SimpleNamespace(deepspeed=None, fsdp=True, fsdp_config={"fsdp_version": 1})
    with pytest.raises(ValueError, match="cannot train under FSDP1"):
        cb.on_init_end(args, None, None)
    with pytest.raises(ValueError, match="cannot train under FSDP1"):
        cb.on_train_begin(args, SimpleNamespace(global_step=0), None)
