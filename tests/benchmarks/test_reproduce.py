"""The reproduction studies in --quick mode, so the scripts cannot rot (benchmarks/reproduce)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks" / "reproduce"


def test_every_study_runs_quick_and_prints_its_tables(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "run_all.py"),
            "--quick",
            "--out",
            str(tmp_path / "runs"),
            "--test-dir",
            str(tmp_path / "none"),
            "--plots",
            str(tmp_path / "plots"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for study in ("rs_accuracy", "extended", "equal_flops", "initialisation", "momentum", "baselines"):
        assert f"## {study}:" in done.stdout
    reports = [
        "rs_accuracy/rs_accuracy",
        "rs_accuracy/rs_accuracy_batch",
        "extended",
        "equal_flops",
        "initialisation/lenet300-100",
        "initialisation/lenet5",
        "momentum",
        "baselines/lenet300-100",
        "baselines/lenet5",
    ]
    for report in reports:
        assert (tmp_path / "plots" / report / "results.md").is_file(), report
    assert (tmp_path / "plots" / "rs_accuracy" / "rs_accuracy" / "accuracy_vs_rs.png").is_file()
    assert (
        "| setting | embedded test: best val | final epoch | Rs | Training FLOPs | training FLOPs, absolute |" in done.stdout
    )  # no official test set
    assert "| Dense, 5 epochs (the budget of 0.05 x 1) |" in done.stdout and "| LeNet-5, SET-ITOP, uniform, density 0.05 |" in done.stdout
    for row in ("LeNet-300-100, Dense", "LeNet-300-100, SynFlow, density 0.05", "LeNet-300-100, GMP, density 0.05"):
        assert f"| {row} |" in done.stdout  # the baselines study (7)
    assert "| LeNet-300-100, GraNet, density 0.05 |" in done.stdout and "| LeNet-5, SNIP, density 0.05 |" in done.stdout
    assert "LeNet-300-100, density 0.05: best DST RigL-ITOP" in done.stdout and "  against GMP " in done.stdout
    runs = list((tmp_path / "runs").iterdir())
    assert len([r for r in runs if (r / "summary.json").is_file()]) == len(runs) == 23  # runs two studies share are trained once
    methods = {json.loads((r / "summary.json").read_text())["method"] for r in runs}
    assert {"GMP", "GraNet", "SNIP", "SynFlow"} <= methods, methods


def test_the_structured_study_runs_quick(tmp_path):
    command = [sys.executable, str(SCRIPTS / "structured.py"), "--quick", "--out", str(tmp_path / "runs"), "--test-dir", str(tmp_path)]
    done = subprocess.run([*command, "--plots", str(tmp_path / "plots")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("LeNet-300-100, RigL-ITOP SRigL (fan-in + ablation), density 0.05", "LeNet-300-100, RigL-ITOP 2:4, density 0.5"):
        assert f"| {row} |" in done.stdout
    assert "| LeNet-5, RigL-ITOP SRigL (fan-in + ablation), density 0.05 |" in done.stdout
    assert (tmp_path / "plots" / "lenet5" / "results.md").is_file()


def test_a_run_that_diverges_is_reported_and_left_out(tmp_path, monkeypatch, capsys):
    import argparse

    monkeypatch.syspath_prepend(str(SCRIPTS))
    import common

    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        run_dir = Path(command[command.index("--save") + 1])
        run_dir.mkdir(parents=True)
        if "--seed" in command and command[command.index("--seed") + 1] == "1":
            message = "itop train: stopped: the loss became nan in epoch 11 (step 1230); lower --lr."
            return subprocess.CompletedProcess(command, 1, "", message + "\n")
        (run_dir / "summary.json").write_text('{"test_acc": 0.9}')
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(common.subprocess, "run", fake_run)
    args = argparse.Namespace(out=str(tmp_path / "runs"), workers=1, quick=True, test_dir=str(tmp_path / "none"))
    jobs = [common.Job("Dense", (), seed) for seed in (0, 1)]
    results = common.run_grid(jobs, args)
    assert list(results) == [jobs[0]] and results[jobs[0]]["test_acc"] == 0.9
    assert "diverged, left out of the table: Dense, seed 1 (itop train: stopped: the loss became nan" in capsys.readouterr().out
    assert (tmp_path / "runs" / jobs[1].name / common.DIVERGED).is_file()
    assert common.train(jobs[1], tmp_path / "runs", True, 1) is None and len(calls) == 2  # not retried
