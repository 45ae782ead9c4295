"""Markdown result tables in the layout of the original ITOP README.

    | Method | Sparsity | Top-1 Acc | Rs | Training FLOPs | Test FLOPs |
    | RigL-ITOP | 0.95 | 93.12 | 0.86 | 0.15x | 0.12x |
    | Dense | 0.0 | 93.50 | 1.0 | 1x(3.2e18) | 1x(8.2e9) |

FLOPs of sparse runs are ratios to the dense model; the dense row carries the absolute dense
FLOPs (whole training run; one forward of one example) that those ratios refer to.
"""

from __future__ import annotations

from typing import Iterable

from .runs import ReportError, Run, sparsity_of

__all__ = ["HEADER", "results_row", "results_table", "runs_table", "method_label", "is_dense"]

HEADER = ("Method", "Sparsity", "Top-1 Acc", "Rs", "Training FLOPs", "Test FLOPs")


def is_dense(summary: dict) -> bool:
    return str(summary.get("method", "")).lower() == "dense" or sparsity_of(summary) <= 0.0


def method_label(summary: dict) -> str:
    """The method name, with the seed's "(N times)" for extended (multiplier > 1) training."""
    method = str(summary.get("method", "?"))
    multiplier = summary.get("multiplier") or 1
    if isinstance(multiplier, (int, float)) and multiplier > 1 and "times" not in method:
        method += f" ({multiplier:g} times)"
    return method


def _trim(x: float) -> str:
    """0.95 -> "0.95", 0.8 -> "0.8", 0 -> "0.0": as many decimals as needed, at most four."""
    text = f"{x:.4f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _sci(x: float) -> str:
    """3.2e18 -> "3.2e18", 8.2e9 -> "8.2e9": the seed's compact scientific notation."""
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _number(summary: dict, key: str) -> float | None:
    value = summary.get(key)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ReportError(f"summary of {method_label(summary)}: {key}={value!r} is not a number")


def _flops(summary: dict, key: str, dense: bool) -> str:
    if dense:
        absolute = _number(summary, f"dense_{key}")
        return "1x" if absolute is None else f"1x({_sci(absolute)})"
    ratio = _number(summary, key)
    return "-" if ratio is None else f"{ratio:.2f}x"


def _cells(summary: dict) -> list[str]:
    dense = is_dense(summary)
    acc = _number(summary, "test_acc")
    rs = _number(summary, "itop_rate")
    return [
        method_label(summary).replace("|", "\\|"),
        _trim(sparsity_of(summary)),
        "-" if acc is None else f"{100 * acc:.2f}",
        "1.0" if dense else ("-" if rs is None else f"{rs:.2f}"),
        _flops(summary, "training_flops", dense),
        _flops(summary, "test_flops", dense),
    ]


def _line(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _sort_key(summary: dict) -> tuple:
    return (str(summary.get("data", "")), str(summary.get("model", "")),
            sparsity_of(summary), method_label(summary))


def results_row(summary: dict) -> str:
    """One markdown row for a finished run's summary.json."""
    return _line(_cells(summary))


def results_table(summaries: Iterable[dict]) -> str:
    """Header, separator and one row per summary, sorted by (data, model, sparsity, method)."""
    rows = [results_row(s) for s in sorted(summaries, key=_sort_key)]
    return "\n".join([_line(HEADER), _line(["---"] * len(HEADER)), *rows])


def runs_table(runs: Iterable[Run]) -> str:
    """Like results_table, one row per run, with a last `Run` column naming its directory.

    For repeated runs (seeds) of one method and sparsity: each run keeps its own row, and the
    first six columns stay exactly the seed README's, so the rows still read like it.
    """
    runs = list(runs)
    for run in runs:
        if run.summary is None:
            raise ReportError(f"{run.path}: unfinished run (no summary.json) in a results table")
    runs.sort(key=lambda r: (*_sort_key(r.summary), r.name))
    rows = [_line(_cells(r.summary) + [r.name.replace("|", "\\|")]) for r in runs]
    header = (*HEADER, "Run")
    return "\n".join([_line(header), _line(["---"] * len(header)), *rows])
