"""Grouping runs that differ only by seed, from Run objects built in memory (no files)."""

import statistics
from pathlib import Path

import pytest

from itop.report import IGNORED_KEYS, ReportError, Run, group_runs, grouped_table
from itop.report.groups import differing_settings, settings_label

from .fake import summary

GROUP_HEADER = "| Method | Sparsity | Settings | Top-1 Acc (best val) | Final-epoch Acc | Rs | Training FLOPs | Test FLOPs | Runs |"

CONFIG = {
    "model": "lenet300",
    "data": "mnist",
    "sparse": True,
    "fix": False,
    "density": 0.1,
    "growth": "random",
    "death": "magnitude",
    "redistribution": "none",
    "death_rate": 0.5,
    "update_frequency": 100,
    "multiplier": 1,
    "epochs": 2,
    "batch_size": 100,
    "lr": 0.1,
    "seed": 0,
    "save": "runs/a",
    "processes": 1,
}


def run(name, method="SET-ITOP", density=0.1, acc=0.9, rs=0.5, finished=True, extra=None, **config):
    """A finished run of CONFIG with `config` changed; `extra` adds summary keys."""
    flops = 1.0 if method == "Dense" else 0.1
    result = summary(method, density, acc, rs, flops, flops, **(extra or {})) if finished else None
    return Run(name=name, path=Path(name), config={**CONFIG, "density": density, **config}, summary=result)


def names(groups):
    return [[r.name for r in g.runs] for g in groups]


def test_ignored_keys_are_those_that_name_the_run_or_where_it_ran():
    assert set(IGNORED_KEYS) == {
        "seed",
        "save",
        "data_dir",
        "device",
        "workers",
        "progress",
        "iters",
        "log_interval",
        "ignored",
        "tensorboard",
    }


def test_runs_differing_only_in_ignored_keys_are_one_group():
    runs = [
        run("a"),
        run(
            "b",
            seed=1,
            save="runs/b",
            device="cuda:1",
            workers=2,
            iters=3,
            data_dir="/d",
            progress=False,
            log_interval=7,
            ignored=["bench"],
        ),
        run("c", seed=2),
    ]
    groups = group_runs(runs)
    assert names(groups) == [["a", "b", "c"]]
    assert "seed" not in groups[0].settings and "save" not in groups[0].settings
    assert groups[0].settings["update_frequency"] == 100


@pytest.mark.parametrize("key, value", [("update_frequency", 25), ("lr", 0.05), ("batch_size", 128), ("hidden", [10, 10])])
def test_a_setting_that_changes_results_splits_groups(key, value):
    groups = group_runs([run("a"), run("b", seed=1, **{key: value}), run("c", seed=2)])
    assert names(groups) == [["a", "c"], ["b"]]


def test_settings_a_kind_of_run_never_reads_do_not_split_it():
    dense = [run("d0", "Dense", 1.0, sparse=False), run("d1", "Dense", 1.0, sparse=False, seed=1, update_frequency=25, growth="gradient")]
    static = [run("s0", "Static", fix=True), run("s1", "Static", fix=True, seed=1, update_frequency=25, death_rate=0.3)]
    assert names(group_runs(dense + static)) == [["d0", "d1"], ["s0", "s1"]]
    assert [g.kind for g in group_runs(dense + static)] == ["dense", "static"]
    assert names(group_runs([run("s0", "Static", fix=True), run("s1", "Static", fix=True, sparse_init="ER")])) == [["s0"], ["s1"]]


def test_old_configs_without_processes_ran_one_process_and_unfinished_runs_are_left_out():
    old = run("old")
    del old.config["processes"]
    runs = [old, run("new", seed=1), run("open", seed=2, finished=False)]
    assert names(group_runs(runs)) == [["old", "new"]]
    assert names(group_runs(runs + [run("two", processes=2)])) == [["old", "new"], ["two"]]


def test_summaries_of_another_model_or_method_are_never_grouped():
    other = run("b", seed=1)
    other.summary["model"] = "lenet5"
    assert names(group_runs([run("a"), other, run("c", "RigL-ITOP")])) == [["a"], ["b"], ["c"]]


def test_mean_and_sample_standard_deviation():
    accs = [0.91, 0.925, 0.932]
    (group,) = group_runs([run(f"s{i}", acc=a, seed=i) for i, a in enumerate(accs)])
    assert group.mean("test_acc") == pytest.approx(statistics.mean(accs))
    assert group.std("test_acc") == pytest.approx(statistics.stdev(accs))
    assert group.std("test_acc") != pytest.approx(statistics.pstdev(accs))
    assert group.values("final_test_acc") == [] and group.mean("final_test_acc") is None
    (single,) = group_runs([run("a")])
    assert single.std("test_acc") is None and single.mean("test_acc") == 0.9
    group.runs[1].summary["itop_rate"] = "high"
    with pytest.raises(ReportError, match=r"s1.summary\.json: itop_rate='high' is not a number"):
        group.mean("itop_rate")


def sweep():
    """5 SET-ITOP update intervals at one sparsity (2 seeds each), a dense and a static run."""
    runs = [
        run(f"uf{every}-s{seed}", acc=0.9 + every / 10000 + seed / 1000, seed=seed, update_frequency=every)
        for every in (400, 25, 100, 50, 200)
        for seed in (0, 1)
    ]
    runs.append(run("dense", "Dense", 1.0, sparse=False))
    runs.append(run("static", "Static", fix=True))
    return runs


def test_settings_name_what_differs_between_groups_beyond_method_and_sparsity():
    groups = group_runs(sweep())
    assert differing_settings(groups) == ["update_frequency"]
    assert [settings_label(g, ["update_frequency"]) for g in groups] == [
        "update_frequency=400",
        "update_frequency=25",
        "update_frequency=100",
        "update_frequency=50",
        "update_frequency=200",
        "",
        "",
    ]
    # Method (growth) and sparsity (density) are their own columns; nothing else differs here.
    assert differing_settings(group_runs([run("a"), run("b", "RigL-ITOP", growth="gradient"), run("c", density=0.05)])) == []


def test_grouped_table_rows():
    runs = sweep()
    runs[0].summary["final_test_acc"] = 0.9
    runs[1].summary["final_test_acc"] = 0.95
    lines = grouped_table(group_runs(runs)).splitlines()
    assert lines[0] == GROUP_HEADER
    assert lines[1] == "| --- |" + " --- |" * 8
    sd = 100 * statistics.stdev([0.9 + 25 / 10000, 0.9 + 25 / 10000 + 0.001])
    assert f"{sd:.2f}" == "0.07"
    rest = "| 0.50 ± 0.00 | 0.10x | 0.10x | 2 |"
    assert lines[2:] == [
        "| Dense | 0.0 |  | 90.00 | - | 1.0 | 1x(3.2e18) | 1x(8.2e9) | 1 |",
        f"| SET-ITOP | 0.9 | update_frequency=25 | 90.30 ± 0.07 | - {rest}",
        f"| SET-ITOP | 0.9 | update_frequency=50 | 90.55 ± 0.07 | - {rest}",
        f"| SET-ITOP | 0.9 | update_frequency=100 | 91.05 ± 0.07 | - {rest}",
        f"| SET-ITOP | 0.9 | update_frequency=200 | 92.05 ± 0.07 | - {rest}",
        f"| SET-ITOP | 0.9 | update_frequency=400 | 94.05 ± 0.07 | 92.50 ± 3.54 {rest}",
        "| Static | 0.9 |  | 90.00 | - | 0.50 | 0.10x | 0.10x | 1 |",
    ]


def test_grouped_table_says_when_only_some_runs_have_a_value():
    runs = [run("a", extra={"final_test_acc": 0.8}), run("b", seed=1), run("c", seed=2)]
    row = grouped_table(group_runs(runs)).splitlines()[2]
    assert "| 90.00 ± 0.00 | 80.00 (1 of 3 runs) |" in row


def test_a_very_sparse_group_keeps_two_significant_digits_and_its_spread_the_same_decimals():
    runs = [run("s0", density=0.003, rs=0.0037, seed=0), run("s1", density=0.003, rs=0.0041, seed=1)]
    (line,) = grouped_table(group_runs(runs)).splitlines()[2:]
    assert "| 0.0039 ± 0.0003 |" in line, line
