import statistics
import sys

from itop.report import main

from .fake import summary, write_run, write_study

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_prints_table_notes_and_writes_files(run_dirs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*map(str, run_dirs), "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    assert stderr == ""
    lines = stdout.splitlines()
    assert lines[:5] == [
        "| Method | Sparsity | Top-1 Acc | Rs | Training FLOPs | Test FLOPs |",
        "| --- | --- | --- | --- | --- | --- |",
        "| Dense | 0.0 | 94.68 | 1.0 | 1x(3.2e18) | 1x(8.2e9) |",
        "| SET-ITOP | 0.9 | 92.05 | 0.71 | 0.10x | 0.10x |",
        "| RigL-ITOP | 0.95 | 93.12 | 0.86 | 0.15x | 0.12x |",
    ]
    assert "note: 1 unfinished run(s) without summary.json, not in the table: crashed" in lines
    names = [
        "results.md",
        "accuracy_vs_sparsity.png",
        "accuracy_vs_rs.png",
        "accuracy_vs_training_flops.png",
        "itop_rate.png",
        "layer_density_rigl-95.png",
        "layer_density_set-90.png",
        "layer_density_crashed.png",
    ]
    assert [line for line in lines if line.startswith("wrote ")] == [f"wrote {out / name}" for name in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name in names[1:]:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert (out / "results.md").read_text().startswith("\n".join(lines[:5]) + "\n")
    assert "crashed" in (out / "results.md").read_text()


def test_default_out_is_report_in_the_current_directory(run_dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([str(run_dirs[0])]) == 0
    assert (tmp_path / "report" / "results.md").is_file()


def test_seeds_get_a_run_column_and_models_get_their_own_tables(tmp_path, capsys):
    result = summary("SET-ITOP", 0.1, 0.92, 0.7, 0.1, 0.1)
    dirs = [
        write_run(tmp_path / "a", "seed0", 0.1, result),
        write_run(tmp_path / "b", "seed0", 0.1, result),
        write_run(tmp_path, "lenet5", 0.1, {**result, "model": "lenet5"}),
    ]
    assert main([*map(str, dirs), "--out", str(tmp_path / "out")]) == 0
    stdout = capsys.readouterr().out
    assert "### lenet5 on mnist\n\n| Method |" in stdout
    assert "### lenet300 on mnist\n\n" in stdout
    assert "| SET-ITOP | 0.9 | 92.00 | 0.70 | 0.10x | 0.10x | a/seed0 |" in stdout
    assert (tmp_path / "out" / "layer_density_b_seed0.png").is_file()


def not_runs(root):
    """Entries a shell glob like `runs/*` also picks up, and the note each should get."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text("not a run")
    (root / "empty").mkdir()
    broken = write_run(root, "broken", 0.1, summary("SET-ITOP", 0.1, 0.5, 0.5, 0.1, 0.1))
    (broken / "config.json").write_text('{"model": ')
    listed = write_run(root, "listed", 0.1, None)
    (listed / "config.json").write_text("[1, 2]")
    no_acc = summary("SET-ITOP", 0.1, 0.5, 0.5, 0.1, 0.1)
    del no_acc["test_acc"]
    write_run(root, "no-acc", 0.1, no_acc)
    return {
        root / "broken": "config.json: corrupt JSON at line 1: Expecting value",
        root / "empty": "not an itop run directory (it has no config.json)",
        root / "listed": "config.json: expected a JSON object, found list",
        root / "no-acc": "summary.json: missing 'test_acc'",
        root / "notes.txt": "not a directory",
        root / "unmatched-*": "no such directory",
    }


def test_paths_that_are_not_runs_are_skipped_with_a_note(run_dirs, tmp_path, capsys):
    root = tmp_path / "runs"
    notes = not_runs(root)
    paths = sorted([*run_dirs, *notes])  # as the shell expands runs/*
    out = tmp_path / "out"
    assert main([*map(str, paths), "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    assert stderr.splitlines() == [f"itop report: skipping {path}: {reason}" for path, reason in sorted(notes.items())]
    lines = stdout.splitlines()
    assert lines[2:5] == [
        "| Dense | 0.0 | 94.68 | 1.0 | 1x(3.2e18) | 1x(8.2e9) |",
        "| SET-ITOP | 0.9 | 92.05 | 0.71 | 0.10x | 0.10x |",
        "| RigL-ITOP | 0.95 | 93.12 | 0.86 | 0.15x | 0.12x |",
    ]
    assert len([line for line in lines if line.startswith("| ")]) == 5
    assert "note: 1 unfinished run(s) without summary.json, not in the table: crashed" in lines
    assert sorted(p.name for p in out.glob("layer_density_*")) == [
        "layer_density_crashed.png",
        "layer_density_rigl-95.png",
        "layer_density_set-90.png",
    ]
    for name in ("broken", "listed", "no-acc", "notes", "empty"):
        assert name not in (out / "results.md").read_text()


def test_a_path_given_twice_is_noted_once(run_dirs, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    argv = [str(run_dirs[0]), str(tmp_path / "notes.txt"), str(tmp_path / "notes.txt"), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    note = f"itop report: skipping {tmp_path / 'notes.txt'}: not a directory\n"
    assert capsys.readouterr().err == note


def error_of(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("itop report: error: ") and err.count("\n") == 1
    return err


def test_missing_directory(tmp_path, capsys):
    assert "no such directory" in error_of([str(tmp_path / "nope")], capsys)


def test_not_a_run_directory(tmp_path, capsys):
    err = error_of([str(tmp_path)], capsys)
    assert f"{tmp_path} is not an itop run directory" in err


def test_no_usable_run_among_several_paths(tmp_path, capsys):
    notes = not_runs(tmp_path / "runs")
    paths = sorted(notes)
    err = error_of([*map(str, paths[:2])], capsys)
    assert err == (
        "itop report: error: none of the 2 paths given is a usable run directory ("
        + "; ".join(f"{p}: {notes[p]}" for p in paths[:2])
        + ")\n"
    )
    err = error_of([*map(str, paths), "--out", str(tmp_path / "out")], capsys)
    assert "none of the 6 paths given is a usable run directory" in err
    assert f"{paths[2]}: {notes[paths[2]]}; and 3 more)" in err
    assert not (tmp_path / "out").exists()


def test_single_corrupt_run_is_an_error_naming_the_file(tmp_path, capsys):
    not_runs(tmp_path / "runs")
    err = error_of([str(tmp_path / "runs" / "broken")], capsys)
    assert f"{tmp_path / 'runs' / 'broken' / 'config.json'}: corrupt JSON at line 1" in err


def test_skipped_paths_are_noted_before_the_no_finished_runs_error(run_dirs, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main([str(run_dirs[3]), str(tmp_path / "notes.txt")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"itop report: skipping {tmp_path / 'notes.txt'}: not a directory",
        "itop report: error: no finished runs (none has summary.json): crashed",
    ]


def test_no_finished_runs(run_dirs, capsys):
    err = error_of([str(run_dirs[3])], capsys)
    assert "no finished runs" in err and "crashed" in err


def test_unknown_flag_and_missing_arguments(run_dirs, capsys):
    assert "unrecognized arguments: --bogus" in error_of([str(run_dirs[0]), "--bogus"], capsys)
    assert "required: RUN_DIR" in error_of([], capsys)


def test_unwritable_output(run_dirs, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file, not a directory")
    assert "cannot write to" in error_of([str(run_dirs[0]), "--out", str(tmp_path / "taken")], capsys)


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "RUN_DIR" in capsys.readouterr().out


def test_without_matplotlib_the_table_is_still_written(run_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("itop.report.cli._matplotlib_installed", lambda: False)
    assert main([str(run_dirs[0]), "--out", str(tmp_path / "out")]) == 0
    assert "note: no plots: matplotlib is not installed" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["results.md"]


def test_python_dash_m(run_dirs, tmp_path):
    import subprocess

    done = subprocess.run([sys.executable, "-m", "itop.report", str(run_dirs[3])], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("itop report: error: no finished")


GROUPED = [
    "| Method | Sparsity | Settings | Top-1 Acc (best val) | Final-epoch Acc | Rs | Training FLOPs | Test FLOPs | Runs |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    "| Dense | 0.0 |  | 95.10 ± 0.14 | 94.60 ± 0.14 | 1.0 | 1x(3.2e18) | 1x(8.2e9) | 2 |",
    "| SET-ITOP | 0.9 | update_frequency=25 | 93.20 ± 0.20 | 92.70 ± 0.20 | 0.91 ± 0.01 | 0.10x | 0.10x | 3 |",
    "| SET-ITOP | 0.9 | update_frequency=100 | 92.20 ± 0.20 | 91.70 ± 0.20 | 0.61 ± 0.01 | 0.10x | 0.10x | 3 |",
    "| SET-ITOP | 0.9 | update_frequency=400 | 91.20 ± 0.20 | 90.70 ± 0.20 | 0.31 ± 0.01 | 0.10x | 0.10x | 3 |",
    "| Static | 0.9 |  | 90.10 ± 0.14 | 89.60 ± 0.14 | 0.11 ± 0.01 | 0.10x | 0.10x | 2 |",
]


def test_seeds_get_a_grouped_table_before_the_per_run_table(tmp_path, capsys):
    dirs = write_study(tmp_path / "runs")
    out = tmp_path / "out"
    assert main([*map(str, dirs), "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    assert stderr == ""
    lines = stdout.splitlines()
    assert lines[:7] == GROUPED
    assert lines[7] == ""
    assert lines[8] == "| Method | Sparsity | Top-1 Acc | Rs | Training FLOPs | Test FLOPs | Run |"
    assert len([line for line in lines[10:] if line.startswith("| ")]) == len(dirs)
    assert "| SET-ITOP | 0.9 | 93.20 | 0.91 | 0.10x | 0.10x | set-uf25-s1 |" in lines
    assert (out / "results.md").read_text().startswith("\n".join(lines[: 10 + len(dirs)]) + "\n")
    sd = statistics.stdev([93.0, 93.2, 93.4])
    assert f"{sd:.2f}" == "0.20"
    for name in ("accuracy_vs_rs.png", "accuracy_vs_training_flops.png"):
        assert f"wrote {out / name}" in lines
        assert (out / name).read_bytes()[:8] == PNG_MAGIC and (out / name).stat().st_size > 5000


def test_old_summaries_without_final_accuracy_show_a_dash(tmp_path, capsys):
    dirs = write_study(tmp_path / "runs", final=False)
    assert main([*map(str, dirs), "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3] == ("| SET-ITOP | 0.9 | update_frequency=25 | 93.20 ± 0.20 | - | 0.91 ± 0.01 | 0.10x | 0.10x | 3 |")


def test_single_runs_that_differ_in_a_setting_get_the_settings_column(run_dirs, tmp_path, capsys):
    result = summary("SET-ITOP", 0.1, 0.92, 0.7, 0.1, 0.1)
    dirs = [
        write_run(tmp_path, "uf25", 0.1, result, update_frequency=25),
        write_run(tmp_path, "uf50", 0.1, result, update_frequency=50),
        run_dirs[0],
    ]
    assert main([*map(str, dirs), "--out", str(tmp_path / "out")]) == 0
    stdout = capsys.readouterr().out
    assert "| Settings |" in stdout and "| update_frequency=25 |" in stdout and "| update_frequency=50 |" in stdout
    assert "±" not in stdout  # one run per group: plain values


def test_runs_of_different_methods_get_no_grouped_table(run_dirs, tmp_path, capsys):
    assert main([*map(str, run_dirs), "--out", str(tmp_path / "out")]) == 0
    stdout = capsys.readouterr().out
    assert "Settings" not in stdout and stdout.startswith("| Method | Sparsity | Top-1 Acc | Rs |")


def plot_notes(stdout):
    return [line for line in stdout.splitlines() if line.startswith("note: ")]


def test_accuracy_final_plots_the_final_epoch_and_notes_runs_without_it(tmp_path, capsys):
    new = write_study(tmp_path / "new")
    old = write_run(tmp_path, "old", 0.1, summary("SET-ITOP", 0.1, 0.9, 0.5, 0.1, 0.1))
    out = tmp_path / "out"
    assert main([*map(str, new), str(old), "--out", str(out), "--accuracy", "final"]) == 0
    stdout = capsys.readouterr().out
    assert plot_notes(stdout) == ["note: --accuracy final: 1 run(s) without final_test_acc left out of the accuracy plots: old"]
    for name in ("accuracy_vs_sparsity.png", "accuracy_vs_rs.png", "accuracy_vs_training_flops.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    # the table is the same whichever accuracy the plots show
    assert main([*map(str, new), str(old), "--out", str(tmp_path / "best")]) == 0
    best = capsys.readouterr().out
    assert plot_notes(best) == []
    assert best.split("wrote ")[0] == stdout.split("note: ")[0]


def test_accuracy_final_without_any_final_accuracy_skips_the_accuracy_plots(tmp_path, capsys):
    dirs = write_study(tmp_path / "runs", final=False)
    out = tmp_path / "out"
    assert main([*map(str, dirs), "--out", str(out), "--accuracy", "final"]) == 0
    stdout = capsys.readouterr().out
    reason = "no finished run has final_test_acc (summaries written before it existed)"
    assert plot_notes(stdout) == [
        f"note: skipped {name}: {reason}" for name in ("accuracy_vs_sparsity.png", "accuracy_vs_rs.png", "accuracy_vs_training_flops.png")
    ]
    assert not (out / "accuracy_vs_rs.png").exists() and (out / "itop_rate.png").is_file()


def test_accuracy_plots_without_data_are_skipped_with_a_note(tmp_path, capsys):
    dense = summary("Dense", 1.0, 0.95, 1.0, 1.0, 1.0)
    static = summary("Static", 0.1, 0.9, 0.1, 0.1, 0.1)
    set_without = summary("SET-ITOP", 0.1, 0.92, None, None, 0.1)
    dirs = [
        write_run(tmp_path, "dense", 1.0, dense),
        write_run(tmp_path, "static", 0.1, static, fix=True),
        write_run(tmp_path, "set", 0.1, set_without),
    ]
    out = tmp_path / "out"
    assert main([*map(str, dirs[:2]), "--out", str(out)]) == 0
    assert plot_notes(capsys.readouterr().out) == [
        "note: skipped accuracy_vs_rs.png: no sparse run with a changing topology has Rs (itop_rate) in its summary"
    ]
    assert (out / "accuracy_vs_training_flops.png").is_file()
    assert main([str(dirs[0]), str(dirs[2]), "--out", str(tmp_path / "out2")]) == 0
    assert plot_notes(capsys.readouterr().out) == [
        "note: skipped accuracy_vs_rs.png: no sparse run with a changing topology has Rs (itop_rate) in its summary",
        "note: skipped accuracy_vs_training_flops.png: no sparse run has training_flops in its summary",
    ]


def test_accuracy_flag_takes_best_or_final(run_dirs, capsys):
    err = error_of([str(run_dirs[0]), "--accuracy", "last"], capsys)
    assert "argument --accuracy: invalid choice: 'last'" in err
    assert main(["--help"]) == 0
    assert "--accuracy {best,final}" in capsys.readouterr().out
