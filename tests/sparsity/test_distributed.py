"""Masks stay identical across ranks of a 2-process gloo job, and equal a 1-process run."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from itop.sparsity.distributed import mask_checksum

from . import ddp_worker

WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(tmp_path, *args):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), str(tmp_path), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=240)


SCENARIOS = [
    "random",
    "gradient",
    "momentum",
    "random:wide",
    "gradient:wide",
    "random:truly",
    "gradient:truly",
    "gradient:gradual",  # GraNet (GMP's pruning is the same, and runs under FSDP in test_fsdp)
]
STRUCTURED = ["gradient:fan-in+ablation", "random:2:4"]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One 2-rank launch trains every scenario in turn (a launch costs seconds of start-up)."""
    out = tmp_path_factory.mktemp("ddp")
    result = torchrun(out, "12", *SCENARIOS, *STRUCTURED)
    assert result.returncode == 0, result.stderr[:3000] + "\n...\n" + result.stderr[-1500:]
    return out


def ranks_of(out, scenario):
    return [torch.load(out / scenario.replace(":", "_") / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_two_ranks_agree_and_match_one_process_with_double_batch(launched, scenario):
    ranks = ranks_of(launched, scenario)
    single = ddp_worker.train(steps=12, **ddp_worker.scenario_options(scenario))
    assert ranks[0]["itop_rate"] == ranks[1]["itop_rate"] > ranks[0]["density"]
    for name, mask in ranks[0]["masks"].items():
        assert torch.equal(mask, ranks[1]["masks"][name]), name
        assert torch.equal(mask, single["masks"][name]), name
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), key
        assert torch.allclose(value, single["model"][key], atol=1e-5), key


@pytest.mark.parametrize("scenario", STRUCTURED)
def test_structured_masks_agree_across_ranks_and_match_one_process(launched, scenario):
    ranks = ranks_of(launched, scenario)
    single = ddp_worker.train(steps=12, **ddp_worker.scenario_options(scenario))
    for name, mask in ranks[0]["masks"].items():
        assert torch.equal(mask, ranks[1]["masks"][name]), name
        assert torch.equal(mask, single["masks"][name]), name
    assert ranks[0]["itop_rate"] == single["itop_rate"]


def test_different_seeds_on_ranks_fail_loudly(tmp_path):
    result = torchrun(tmp_path, "3", "random", "--bad-seed")
    assert result.returncode != 0
    assert "sparse masks differ between ranks" in result.stderr


def test_checksum_sees_a_single_moved_weight():
    a = {"w": torch.tensor([True, False, True, False])}
    b = {"w": torch.tensor([True, True, False, False])}
    assert not torch.equal(mask_checksum(a), mask_checksum(b))
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        mask = torch.rand(37, 29, generator=gen) < 0.3
        moved = mask.clone().view(-1)
        on, off = moved.nonzero().squeeze(1), (~moved).nonzero().squeeze(1)
        moved[on[torch.randint(len(on), (), generator=gen)]] = False
        moved[off[torch.randint(len(off), (), generator=gen)]] = True
        assert not torch.equal(mask_checksum({"w": mask}), mask_checksum({"w": moved.view_as(mask)}))
        assert torch.equal(mask_checksum({"w": mask}), mask_checksum({"w": mask.clone()}))


def test_checksum_sees_structured_changes_that_cancel_in_a_linear_sum():
    """Two moves whose word differences cancel, and a move of 256 words within the same byte lane."""

    def pair(on_a, on_b):
        a, b = torch.zeros(64 * 64, dtype=torch.bool), torch.zeros(64 * 64, dtype=torch.bool)
        a[on_a], b[on_b] = True, True
        return mask_checksum({"w": a}), mask_checksum({"w": b})

    first, second = pair([8, 32], [16, 24])
    assert not torch.equal(first, second)
    first, second = pair([7], [7 + 2048])
    assert not torch.equal(first, second)


def test_checksum_of_a_length_not_multiple_of_eight_sees_the_last_entry():
    a = torch.zeros(13, dtype=torch.bool)
    b = a.clone()
    b[12] = True
    assert not torch.equal(mask_checksum({"w": a}), mask_checksum({"w": b}))
