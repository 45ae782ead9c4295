"""The reproduction studies in --quick mode, so the scripts cannot rot (benchmarks/reproduce)."""

import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks" / "reproduce"


def test_every_study_runs_quick_and_prints_its_tables(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPTS / "run_all.py"), "--quick", "--out", str(tmp_path / "runs"),
                           "--test-dir", str(tmp_path / "none"), "--plots", str(tmp_path / "plots")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for study in ("rs_accuracy", "extended", "equal_flops", "initialisation", "momentum"):
        assert f"## {study}:" in done.stdout
    reports = ["rs_accuracy/rs_accuracy", "rs_accuracy/rs_accuracy_batch", "extended", "equal_flops", "initialisation/lenet300-100", "initialisation/lenet5", "momentum"]
    for report in reports:
        assert (tmp_path / "plots" / report / "results.md").is_file(), report
    assert (tmp_path / "plots" / "rs_accuracy" / "rs_accuracy" / "accuracy_vs_rs.png").is_file()
    assert "| setting | embedded test: best val | final epoch | Rs | Training FLOPs | training FLOPs, absolute |" in done.stdout  # no official test set
    assert "| Dense, 5 epochs (the budget of 0.05 x 1) |" in done.stdout and "| LeNet-5, SET-ITOP, uniform, density 0.05 |" in done.stdout
    runs = list((tmp_path / "runs").iterdir())
    assert len([r for r in runs if (r / "summary.json").is_file()]) == len(runs) == 19  # runs two studies share are trained once
