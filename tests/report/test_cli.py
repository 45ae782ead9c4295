import sys


from itop.report import main

from .fake import summary, write_run

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
        "| RigL-ITOP | 0.95 | 93.12 | 0.86 | 0.15x | 0.12x |"]
    assert "note: 1 unfinished run(s) without summary.json, not in the table: crashed" in lines
    names = ["results.md", "accuracy_vs_sparsity.png", "itop_rate.png",
             "layer_density_rigl-95.png", "layer_density_set-90.png", "layer_density_crashed.png"]
    assert [line for line in lines if line.startswith("wrote ")] == [
        f"wrote {out / name}" for name in names]
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
    dirs = [write_run(tmp_path / "a", "seed0", 0.1, result),
            write_run(tmp_path / "b", "seed0", 0.1, result),
            write_run(tmp_path, "lenet5", 0.1, {**result, "model": "lenet5"})]
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
    assert stderr.splitlines() == [f"itop report: skipping {path}: {reason}"
                                   for path, reason in sorted(notes.items())]
    lines = stdout.splitlines()
    assert lines[2:5] == [
        "| Dense | 0.0 | 94.68 | 1.0 | 1x(3.2e18) | 1x(8.2e9) |",
        "| SET-ITOP | 0.9 | 92.05 | 0.71 | 0.10x | 0.10x |",
        "| RigL-ITOP | 0.95 | 93.12 | 0.86 | 0.15x | 0.12x |"]
    assert len([line for line in lines if line.startswith("| ")]) == 5
    assert "note: 1 unfinished run(s) without summary.json, not in the table: crashed" in lines
    assert sorted(p.name for p in out.glob("layer_density_*")) == [
        "layer_density_crashed.png", "layer_density_rigl-95.png", "layer_density_set-90.png"]
    for name in ("broken", "listed", "no-acc", "notes", "empty"):
        assert name not in (out / "results.md").read_text()


def test_a_path_given_twice_is_noted_once(run_dirs, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    argv = [str(run_dirs[0]), str(tmp_path / "notes.txt"), str(tmp_path / "notes.txt"),
            "--out", str(tmp_path / "out")]
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
    assert err == ("itop report: error: none of the 2 paths given is a usable run directory ("
                   + "; ".join(f"{p}: {notes[p]}" for p in paths[:2]) + ")\n")
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
        "itop report: error: no finished runs (none has summary.json): crashed"]


def test_no_finished_runs(run_dirs, capsys):
    err = error_of([str(run_dirs[3])], capsys)
    assert "no finished runs" in err and "crashed" in err


def test_unknown_flag_and_missing_arguments(run_dirs, capsys):
    assert "unrecognized arguments: --bogus" in error_of([str(run_dirs[0]), "--bogus"], capsys)
    assert "required: RUN_DIR" in error_of([], capsys)


def test_unwritable_output(run_dirs, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file, not a directory")
    assert "cannot write to" in error_of([str(run_dirs[0]), "--out", str(tmp_path / "taken")],
                                         capsys)


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

    done = subprocess.run([sys.executable, "-m", "itop.report", str(run_dirs[3])],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("itop report: error: no finished")
