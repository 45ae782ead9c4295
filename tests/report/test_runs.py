import json

import pytest

from itop.report import ReportError, load_run

from .fake import summary, write_run


def test_finished_run_loads_config_metrics_and_summary(run_dirs):
    run = load_run(run_dirs[0])
    assert run.name == "rigl-95" and run.path == run_dirs[0]
    assert run.config["density"] == 0.05 and run.config["sparse"] is True
    assert [r["kind"] for r in run.metrics] == ["update", "update", "epoch"] * 2
    assert run.summary["method"] == "RigL-ITOP"
    assert run.finished and not run.dense


def test_dense_run_is_recognised(run_dirs):
    run = load_run(run_dirs[2])
    assert run.dense and all(r["kind"] == "epoch" for r in run.metrics)


def test_truncated_last_metrics_line_is_skipped(run_dirs):
    run = load_run(run_dirs[3])
    assert not run.finished and run.summary is None
    assert len(run.metrics) == 6 and run.metrics[-1]["epoch"] == 2


def test_corrupt_metrics_line_before_the_end_is_an_error(tmp_path):
    path = write_run(tmp_path, "r", 0.1, None)
    lines = (path / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:20]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError, match=r"metrics\.jsonl: corrupt JSON at line 2"):
        load_run(path)


def test_blank_lines_and_missing_metrics_are_fine(tmp_path):
    path = write_run(tmp_path, "r", 0.1, None)
    (path / "metrics.jsonl").write_text('\n{"kind": "epoch", "step": 1}\n\n')
    assert load_run(path).metrics == [{"kind": "epoch", "step": 1}]
    (path / "metrics.jsonl").unlink()
    assert load_run(path).metrics == []


def test_directory_without_config_is_not_a_run(tmp_path):
    with pytest.raises(ReportError) as info:
        load_run(tmp_path)
    assert str(tmp_path) in str(info.value) and "not an itop run directory" in str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_missing_path_is_reported(tmp_path):
    with pytest.raises(ReportError, match="no such directory"):
        load_run(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReportError, match="not a directory") as info:
        load_run(tmp_path / "file")
    assert str(info.value) == f"{tmp_path / 'file'}: not a directory"


@pytest.mark.parametrize(
    "name, text, reason",
    [
        (None, None, "not an itop run directory (it has no config.json)"),
        ("config.json", '{"model": ', "config.json: corrupt JSON at line 1: Expecting value"),
        ("summary.json", "[]", "summary.json: expected a JSON object, found list"),
        ("summary.json", b"\xff", "summary.json: not UTF-8 text"),
        ("metrics.jsonl", '1\n{"kind": "epoch"}\n', "metrics.jsonl: line 1 is not a JSON object"),
    ],
)
def test_reason_leaves_out_the_run_directory(tmp_path, name, text, reason):
    """Callers that skip a path name it themselves and add `reason`."""
    path = write_run(tmp_path, "r", 0.1, summary("SET", 0.1, 0.9, 0.5, 0.1, 0.1))
    if name is None:
        (path / "config.json").unlink()
    elif isinstance(text, bytes):
        (path / name).write_bytes(text)
    else:
        (path / name).write_text(text)
    with pytest.raises(ReportError) as info:
        load_run(path)
    assert info.value.reason == reason
    assert str(path) in str(info.value) and str(info.value).endswith(reason.split(": ", 1)[-1])


@pytest.mark.parametrize("name", ["config.json", "summary.json"])
def test_corrupt_json_names_the_file(tmp_path, name):
    path = write_run(tmp_path, "r", 0.1, summary("SET", 0.1, 0.9, 0.5, 0.1, 0.1))
    (path / name).write_text('{"model": ')
    with pytest.raises(ReportError, match=rf"{name}: corrupt JSON"):
        load_run(path)


def test_json_that_is_not_an_object_is_rejected(tmp_path):
    path = write_run(tmp_path, "r", 0.1, None)
    (path / "config.json").write_text("[1, 2]")
    with pytest.raises(ReportError, match="config.json: expected a JSON object, found list"):
        load_run(path)


def test_summary_without_the_table_keys_is_rejected(tmp_path):
    result = summary("SET", 0.1, 0.9, 0.5, 0.1, 0.1)
    del result["test_acc"]
    path = write_run(tmp_path, "r", 0.1, result)
    with pytest.raises(ReportError, match="summary.json: missing 'test_acc'"):
        load_run(path)
    (path / "summary.json").write_text(json.dumps({**result, "test_acc": "high"}))
    with pytest.raises(ReportError, match="test_acc='high' is not a number"):
        load_run(path)
