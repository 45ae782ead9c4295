"""`itop.openmp`: OpenMP's spin defaults, set before torch loads OpenMP and never over the user's."""

import os
import subprocess
import sys

from itop import openmp


def test_defaults_fill_only_what_the_user_left_unset(monkeypatch):
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setenv("KMP_BLOCKTIME", "50")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    openmp.configure()
    assert os.environ["GOMP_SPINCOUNT"] == openmp.SPIN_DEFAULTS["GOMP_SPINCOUNT"]
    assert os.environ["KMP_BLOCKTIME"] == "50"


def test_an_active_wait_policy_is_left_alone(monkeypatch):
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("KMP_BLOCKTIME", raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    openmp.configure()
    assert "GOMP_SPINCOUNT" not in os.environ and "KMP_BLOCKTIME" not in os.environ


def test_import_itop_sets_them_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_WAIT_POLICY")}
    code = "import itop, os, sys; print(os.environ.get('GOMP_SPINCOUNT'), itop.openmp.torch_loaded_first)"
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert first == [openmp.SPIN_DEFAULTS["GOMP_SPINCOUNT"], "False"]
    late = subprocess.run([sys.executable, "-c", "import torch; " + code], env=env, capture_output=True, text=True, check=True)
    assert late.stdout.split()[1] == "True"  # torch came first: its OpenMP kept its own setting, and itop knows it
