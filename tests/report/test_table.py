from itop.report import load_run, results_row, results_table, runs_table

from .fake import summary

HEADER = "| Method | Sparsity | Top-1 Acc | Rs | Training FLOPs | Test FLOPs |"


def test_sparse_row_matches_the_seed_layout():
    row = results_row(summary("RigL-ITOP", 0.05, 0.9312, 0.86, 0.15, 0.12))
    assert row == "| RigL-ITOP | 0.95 | 93.12 | 0.86 | 0.15x | 0.12x |"


def test_a_very_sparse_run_keeps_two_significant_digits():
    """SET's million-neuron presets train at density 0.003: their Rs and FLOPs must not read 0.00."""
    row = results_row(summary("SET-ITOP", 0.0029, 0.839, 0.0037, 0.0031, 0.0029))
    assert row == "| SET-ITOP | 0.9971 | 83.90 | 0.0037 | 0.0031x | 0.0029x |"


def test_dense_row_carries_absolute_flops():
    row = results_row(summary("Dense", 1.0, 0.768, 1.0, 1.0, 1.0))
    assert row == "| Dense | 0.0 | 76.80 | 1.0 | 1x(3.2e18) | 1x(8.2e9) |"


def test_missing_optional_numbers_print_as_dash():
    result = {"method": "RigL", "density": 0.2, "test_acc": 0.751}
    assert results_row(result) == "| RigL | 0.8 | 75.10 | - | - | - |"
    assert results_row({"method": "Dense", "sparsity": 0.0, "test_acc": 0.5}).endswith("| 1.0 | 1x | 1x |")


def test_extended_training_is_labelled_like_the_seed():
    row = results_row(summary("RigL-ITOP", 0.2, 0.769, 0.97, 0.84, 0.42, multiplier=2))
    assert row.startswith("| RigL-ITOP (2 times) | 0.8 | 76.90 | 0.97 | 0.84x |")


def test_table_is_sorted_by_data_model_sparsity_method():
    rows = [
        summary("SET-ITOP", 0.05, 0.91, 0.9, 0.1, 0.1),
        summary("Dense", 1.0, 0.95, 1.0, 1.0, 1.0),
        summary("RigL-ITOP", 0.05, 0.93, 0.86, 0.15, 0.12),
        summary("RigL-ITOP", 0.1, 0.94, 0.8, 0.2, 0.2),
    ]
    rows.append({**rows[0], "data": "cifar10"})
    lines = results_table(rows).splitlines()
    assert lines[0] == HEADER
    assert lines[1] == "| --- | --- | --- | --- | --- | --- |"
    assert [line.split(" | ")[0:2] for line in lines[2:]] == [
        ["| SET-ITOP", "0.95"],  # cifar10 sorts before mnist
        ["| Dense", "0.0"],
        ["| RigL-ITOP", "0.9"],
        ["| RigL-ITOP", "0.95"],
        ["| SET-ITOP", "0.95"],
    ]


def test_runs_table_keeps_one_row_per_seed_with_a_run_column(run_dirs, tmp_path):
    runs = [load_run(p) for p in run_dirs[:2]]
    text = runs_table(runs)
    lines = text.splitlines()
    assert lines[0] == HEADER + " Run |"
    assert lines[2].endswith("| set-90 |") and len(lines) == 4
    assert lines[3] == "| RigL-ITOP | 0.95 | 93.12 | 0.86 | 0.15x | 0.12x | rigl-95 |"


def test_runs_table_orders_seeds_by_name_and_refuses_unfinished_runs(tmp_path):
    import pytest

    from itop.report import ReportError

    from .fake import write_run

    result = summary("SET-ITOP", 0.1, 0.92, 0.7, 0.1, 0.1)
    runs = [load_run(write_run(tmp_path, f"seed{i}", 0.1, {**result, "test_acc": 0.9 + i / 100})) for i in (1, 0)]
    assert [line.split(" | ")[-1] for line in runs_table(runs).splitlines()[2:]] == ["seed0 |", "seed1 |"]
    with pytest.raises(ReportError, match="unfinished run"):
        runs_table([load_run(write_run(tmp_path, "open", 0.1, None))])
