"""Reading the run directories that `itop train` writes.

A run directory holds `config.json` (always), `metrics.jsonl` (one JSON record a line, growing
while the run trains) and `summary.json` (only once the run finished). Reports read these
files and nothing else, so a report never needs torch, a model or a dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ReportError", "Run", "load_run", "sparsity_of", "is_dense", "method_label"]

# Without these a summary cannot make a table row or a point on the accuracy plot.
_SUMMARY_KEYS = ("method", "test_acc")


class ReportError(ValueError):
    """A user-facing problem with the runs given to a report; its message is one line.

    `reason` is the message without the run directory in front (for `load_run`'s errors:
    "not a directory", "config.json: corrupt JSON at line 1: ..."), so that a caller that
    skips the directory can name it once: "skipping runs/x: config.json: corrupt JSON ...".
    """

    def __init__(self, message: str, *, reason: str | None = None):
        super().__init__(message)
        self.reason = message if reason is None else reason


@dataclass
class Run:
    """One run directory, parsed. `summary` is None while the run is unfinished."""

    name: str
    path: Path
    config: dict
    metrics: list[dict] = field(default_factory=list)
    summary: dict | None = None

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def dense(self) -> bool:
        """True for a dense baseline: nothing to explore, every layer full."""
        if self.summary is not None and str(self.summary.get("method", "")).lower() == "dense":
            return True
        if self.config.get("sparse") is False:
            return True
        density = self.config.get("density")
        return isinstance(density, (int, float)) and density >= 1.0


def sparsity_of(summary: dict) -> float:
    """The summary's sparsity, or 1 - density when only density is written."""
    if summary.get("sparsity") is not None:
        return float(summary["sparsity"])
    return round(1.0 - float(summary.get("density", 1.0)), 10)


def is_dense(summary: dict) -> bool:
    return str(summary.get("method", "")).lower() == "dense" or sparsity_of(summary) <= 0.0


def method_label(summary: dict) -> str:
    """The method name, with the original ITOP code's "(N times)" for extended (multiplier > 1) training."""
    method = str(summary.get("method", "?"))
    multiplier = summary.get("multiplier") or 1
    if isinstance(multiplier, (int, float)) and multiplier > 1 and "times" not in method:
        method += f" ({multiplier:g} times)"
    return method


def _file_error(file: Path, detail: str) -> ReportError:
    """The error `FILE: detail`; its reason names only the file's name (it is in the run)."""
    return ReportError(f"{file}: {detail}", reason=f"{file.name}: {detail}")


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _file_error(file, "not UTF-8 text") from None
    except OSError as e:
        raise _file_error(file, f"cannot read: {e.strerror or e}") from None


def _read_object(file: Path) -> dict:
    try:
        value = json.loads(_read_text(file))
    except json.JSONDecodeError as e:
        raise _file_error(file, f"corrupt JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(value, dict):
        raise _file_error(file, f"expected a JSON object, found {type(value).__name__}")
    return value


def _read_metrics(file: Path) -> list[dict]:
    """Parse metrics.jsonl. A crash can cut the last line short: that line alone is skipped."""
    lines = [(n, line) for n, line in enumerate(_read_text(file).splitlines(), 1) if line.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise _file_error(file, f"corrupt JSON at line {n}: {e.msg}") from None
        if not isinstance(record, dict):
            raise _file_error(file, f"line {n} is not a JSON object")
        records.append(record)
    return records


def _check_summary(file: Path, summary: dict) -> dict:
    missing = [k for k in _SUMMARY_KEYS if k not in summary]
    if "sparsity" not in summary and "density" not in summary:
        missing.append("sparsity")
    if missing:
        raise _file_error(file, f"missing {', '.join(repr(k) for k in missing)}")
    for key in ("test_acc", "sparsity", "density"):
        value = summary.get(key)
        if key in summary and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _file_error(file, f"{key}={value!r} is not a number")
    return summary


def load_run(path: str | Path) -> Run:
    """Load one run directory; raise ReportError (one line, naming the file) on any problem."""
    path = Path(path)
    if not path.is_dir():
        what = "not a directory" if path.exists() else "no such directory"
        raise ReportError(f"{path}: {what}", reason=what)
    config_file = path / "config.json"
    if not config_file.is_file():
        reason = "not an itop run directory (it has no config.json)"
        raise ReportError(f"{path} is {reason}", reason=reason)
    config = _read_object(config_file)
    metrics_file = path / "metrics.jsonl"
    metrics = _read_metrics(metrics_file) if metrics_file.is_file() else []
    summary_file = path / "summary.json"
    summary = None
    if summary_file.is_file():
        summary = _check_summary(summary_file, _read_object(summary_file))
    return Run(name=path.resolve().name, path=path, config=config, metrics=metrics, summary=summary)
