"""`itop doctor`: the machine, the kernels' speeds and choices, the cache, for a bug report."""

import json

import pytest

from itop import doctor
from itop.__main__ import USAGE, main
from itop.sparse import dispatch, native

FIELDS = [
    "CPU",
    "ISA",
    "cores usable",
    "other processes      busy on",
    "torch threads",
    "torch 2.",
    "numba",
    "itop",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "OMP_WAIT_POLICY",
    "torch imported before itop",
    "ITOP_KERNELS",
    "dense GEMM (1024 x 3072 weight, batch 128, float32)",
    "1024 x 3072 at density 0.05",
    "batch 128",
    "batch 2",
    "forward",
    "input_grad",
    "weight_grad",
    "chosen",
    "masked layer",
    "decisions",
]


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("ITOP_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("ITOP_KERNELS", raising=False)
    monkeypatch.delenv("ITOP_SPARSE_KERNELS", raising=False)
    monkeypatch.setattr(dispatch, "active", None)


def test_doctor_prints_the_machine_the_kernels_and_the_cache(capsys, tmp_path):
    assert main(["doctor"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    for field in FIELDS:
        assert field in out, field
    assert str(tmp_path / "kernels.json") in out and "GFLOP/s" in out
    measured = 9 if native.AVAILABLE else 8  # 3 products x 2 batches, the input transpose (numba's), the masked layer at both
    assert out.count("measured now") == measured
    assert ("input transpose (128 x 3072, float32): bands " in out) is native.AVAILABLE
    (entry,) = json.loads((tmp_path / "kernels.json").read_text())["machines"].values()
    assert f"decisions            {len(entry['decisions'])} for this machine" in out

    dispatch.active = None  # a second process reads what the first measured
    assert main(["doctor"]) == 0
    assert capsys.readouterr().out.count("from the cache") == measured


def test_doctor_under_a_forced_mode(capsys, monkeypatch):
    monkeypatch.setenv("ITOP_KERNELS", "dense")
    monkeypatch.setattr(doctor, "SHAPE", (64, 96))  # small: this checks the wording
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "ITOP_KERNELS         dense (from 'dense')" in out
    assert out.count("dense (forced by ITOP_KERNELS=dense)") == 6 and "dense (no swap)" in out
    assert ("torch (forced by ITOP_KERNELS=dense)" in out) is native.AVAILABLE  # the input transpose: PyTorch's copy


def test_doctor_help_and_a_bad_mode(capsys, monkeypatch):
    assert "doctor" in USAGE
    assert main(["doctor", "--help"]) == 0
    assert "usage: itop doctor" in capsys.readouterr().out
    monkeypatch.setenv("ITOP_KERNELS", "fast")
    assert main(["doctor"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "itop: error: ITOP_KERNELS='fast' is not a kernel choice; set it to one of auto, torch, numba, dense.\n"
    assert main(["train", "--epochs", "1"]) == 2 and capsys.readouterr().err.startswith("itop: error: ITOP_KERNELS='fast'")


def test_doctor_says_when_the_free_cores_are_not_read(capsys, monkeypatch):
    from itop.sparse import free_cores

    monkeypatch.setattr(free_cores, "_enabled", False)
    assert main(["doctor"]) == 0
    assert "other processes      not read (ITOP_FREE_CORES=all" in capsys.readouterr().out
