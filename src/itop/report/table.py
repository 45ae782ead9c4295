"""Markdown result tables in the layout of the original ITOP README.

    | Method | Sparsity | Top-1 Acc | Rs | Training FLOPs | Test FLOPs |
    | RigL-ITOP | 0.95 | 93.12 | 0.86 | 0.15x | 0.12x |
    | Dense | 0.0 | 93.50 | 1.0 | 1x(3.2e18) | 1x(8.2e9) |

FLOPs of sparse runs are ratios to the dense model; the dense row carries the absolute dense
FLOPs (whole training run; one forward of one example) that those ratios refer to.

Repeated runs (seeds) get `grouped_table`: one row per group with `mean ± std` over its seeds.
"""

from __future__ import annotations

from collections.abc import Iterable

from .groups import Group, differing_settings, settings_label, settings_sort_key
from .runs import ReportError, Run, is_dense, method_label, sparsity_of

__all__ = ["HEADER", "GROUP_HEADER", "results_row", "results_table", "runs_table", "grouped_table", "method_label", "is_dense"]

HEADER = ("Method", "Sparsity", "Top-1 Acc", "Rs", "Training FLOPs", "Test FLOPs")
GROUP_HEADER = ("Method", "Sparsity", "Settings", "Top-1 Acc (best val)", "Final-epoch Acc", "Rs", "Training FLOPs", "Test FLOPs", "Runs")


def _trim(x: float) -> str:
    """0.95 -> "0.95", 0.8 -> "0.8", 0 -> "0.0": as many decimals as needed, at most four."""
    text = f"{x:.4f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _two_places(x: float) -> str:
    """0.2041 -> "0.20"; a share below 0.01 keeps two significant digits (0.0037 -> "0.0037"), so
    a very sparse run (SET's million-neuron presets, density 0.003) does not read as 0.00."""
    return f"{x:.2g}" if 0 < abs(x) < 0.01 else f"{x:.2f}"


def _sci(x: float) -> str:
    """3.2e18 -> "3.2e18", 8.2e9 -> "8.2e9": the original ITOP code's compact scientific notation."""
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _number(summary: dict, key: str) -> float | None:
    value = summary.get(key)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ReportError(f"summary of {method_label(summary)}: {key}={value!r} is not a number") from None


def _flops(summary: dict, key: str, dense: bool) -> str:
    """The original ITOP code's cell: a dense run shows its multiple of a 1x dense run with that
    run's absolute FLOPs ("1x(3.2e18)", "2x(3.2e18)" for --multiplier 2); a sparse run its ratio
    ("0.42x")."""
    if dense:
        absolute = _number(summary, f"dense_{key}")
        multiple = _number(summary, key) or 1.0
        return f"{multiple:g}x" if absolute is None else f"{multiple:g}x({_sci(absolute)})"
    ratio = _number(summary, key)
    return "-" if ratio is None else f"{_two_places(ratio)}x"


def _cells(summary: dict) -> list[str]:
    dense = is_dense(summary)
    acc = _number(summary, "test_acc")
    rs = _number(summary, "itop_rate")
    return [
        method_label(summary).replace("|", "\\|"),
        _trim(sparsity_of(summary)),
        "-" if acc is None else f"{100 * acc:.2f}",
        "1.0" if dense else ("-" if rs is None else _two_places(rs)),
        _flops(summary, "training_flops", dense),
        _flops(summary, "test_flops", dense),
    ]


def _line(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _sort_key(summary: dict) -> tuple:
    return (str(summary.get("data", "")), str(summary.get("model", "")), sparsity_of(summary), method_label(summary))


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
    first six columns stay exactly those of the original ITOP code's README, so the rows still
    read like it.
    """
    runs = list(runs)
    for run in runs:
        if run.summary is None:
            raise ReportError(f"{run.path}: unfinished run (no summary.json) in a results table")
    runs.sort(key=lambda r: (*_sort_key(r.summary), r.name))
    rows = [_line(_cells(r.summary) + [r.name.replace("|", "\\|")]) for r in runs]
    header = (*HEADER, "Run")
    return "\n".join([_line(header), _line(["---"] * len(header)), *rows])


def _mean_std(group: Group, key: str, scale: float) -> str:
    """`mean ± std` over the group's runs ('-' when none has `key`; one value alone when one
    has it), naming how many runs it is over when some lack `key`."""
    values = group.values(key)
    if not values:
        return "-"
    text = _two_places(scale * group.mean(key))
    if len(values) > 1:  # the spread to the mean's decimals
        decimals = len(text.partition(".")[2]) if "e" not in text else 2
        text += f" ± {scale * group.std(key):.{decimals}f}"
    if len(values) < len(group.runs):
        text += f" ({len(values)} of {len(group.runs)} runs)"
    return text


def grouped_table(groups: Iterable[Group]) -> str:
    """One row per group of runs that differ only by seed, sorted by (data, model, sparsity,
    method, settings): accuracies and Rs as `mean ± std` over the random seeds, FLOPs as their mean.

    `Settings` names the config values that tell groups apart beyond method and sparsity (an
    update-frequency sweep reads `update_frequency=25`, `update_frequency=100`, ...).
    """
    groups = list(groups)
    keys = differing_settings(groups)
    groups.sort(key=lambda g: (*_sort_key(g.summary)[:2], g.sparsity, g.method, settings_sort_key(g, keys)))
    rows = []
    for g in groups:
        flops = {"method": g.method, **{k: g.mean(k) for k in ("training_flops", "test_flops", "dense_training_flops", "dense_test_flops")}}
        cells = [
            g.method,
            _trim(g.sparsity),
            settings_label(g, keys),
            _mean_std(g, "test_acc", 100),
            _mean_std(g, "final_test_acc", 100),
            "1.0" if g.dense else _mean_std(g, "itop_rate", 1),
            _flops(flops, "training_flops", g.dense),
            _flops(flops, "test_flops", g.dense),
            str(len(g.runs)),
        ]
        rows.append(_line(c.replace("|", "\\|") for c in cells))
    return "\n".join([_line(GROUP_HEADER), _line(["---"] * len(GROUP_HEADER)), *rows])
