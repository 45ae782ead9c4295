"""PNG plots of runs: accuracy against sparsity, against Rs and against training FLOPs, the ITOP
rate Rs over training, layer density.

Figures are built as `matplotlib.figure.Figure` on an explicit Agg canvas, never through
pyplot: no global backend is switched in the caller's process (a notebook keeps its own), no
display is needed, and no figure stays registered anywhere once saved. matplotlib is imported
only when a plot is drawn, so tables and run loading work without it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from .groups import ACCURACY_KEYS, Group, differing_settings, group_runs, settings_label
from .runs import ReportError, Run, sparsity_of
from .table import _trim

__all__ = [
    "plot_accuracy_vs_sparsity",
    "plot_accuracy_vs_rs",
    "plot_accuracy_vs_training_flops",
    "plot_accuracy_vs_multiplier",
    "plot_itop_rate",
    "plot_layer_density",
]

# `--accuracy` -> how plots name that accuracy.
_ACCURACY_NAMES = {"best": "best-validation checkpoint", "final": "final epoch"}


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError("plots need matplotlib, which is not installed (pip install matplotlib)") from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    # A legend below the axes (`_legend_below`) is outside the layout, so name it to be kept.
    hanging = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None and not ax.get_legend().get_in_layout()]
    fig.savefig(path, format="png", bbox_inches="tight", bbox_extra_artists=fig.get_default_bbox_extra_artists() + hanging)
    fig.clear()
    return path


def _accuracy_key(accuracy: str) -> str:
    if accuracy not in ACCURACY_KEYS:
        raise ReportError(f"accuracy must be one of {', '.join(ACCURACY_KEYS)}, not {accuracy!r}")
    return ACCURACY_KEYS[accuracy]


def _with_accuracy(runs: Iterable[Run], accuracy: str) -> list[Run]:
    """The finished runs whose summary has the chosen accuracy; an error when none has it."""
    key = _accuracy_key(accuracy)
    finished = [r for r in runs if r.summary is not None]
    if not finished:
        raise ReportError("no finished runs to plot accuracy for")
    kept = [r for r in finished if r.summary.get(key) is not None]
    if not kept:
        raise ReportError(f"no finished run has {key} (summaries written before it existed)")
    return kept


def plot_accuracy_vs_sparsity(runs: Iterable[Run], path: str | Path, accuracy: str = "best") -> Path:
    """Top-1 test accuracy against sparsity, one series per method; dense as a reference line.

    Runs are grouped as the tables group them (`group_runs`: only runs that differ by seed share
    a point); each point is a group's mean, its seeds shown as small markers around it. A setting
    that tells groups apart (e.g. epochs) gives a series of its own, named in the legend. When the
    runs cover several (model, data) pairs, each series and reference line names its pair.
    `accuracy` "final" plots the final epoch's accuracy, leaving out runs without it.
    """
    key = _accuracy_key(accuracy)
    groups = group_runs(_with_accuracy(runs, accuracy))
    dense = [g for g in groups if g.dense]
    series = _sparsity_series([g for g in groups if not g.dense])
    several = len({k[:2] for k in series} | {_pair(g) for g in dense}) > 1

    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    for i, ((_data, _model, name), points) in enumerate(sorted(series.items())):
        color = f"C{i % 10}"
        ax.plot(
            [g.sparsity for g in points],
            [100 * g.mean(key) for g in points],
            marker="o",
            color=color,
            label=_pair_label(several, name, points[0]),
        )
        for g in points:
            if len(g.runs) > 1:
                seeds = g.values(key)
                ax.scatter([g.sparsity] * len(seeds), [100 * v for v in seeds], s=12, color=color, alpha=0.5)
    keys = differing_settings(dense)
    for j, g in enumerate(sorted(dense, key=_pair), start=len(series)):
        ax.axhline(
            100 * g.mean(key),
            linestyle="--",
            color="0.3" if len(dense) == 1 else f"C{j % 10}",
            label=_pair_label(several, _reference_name(g, keys), g) + f": {_mean_text(g, key)}",
        )
    if not series:
        ax.set_xlim(0.0, 1.0)
    ax.margins(y=0.1)
    ax.set_xlabel("Sparsity (share of weights removed)")
    ax.set_ylabel("Top-1 test accuracy (%)")
    ax.set_title("Test accuracy against sparsity" + (f" ({_ACCURACY_NAMES[accuracy]})" if accuracy != "best" else ""))
    ax.grid(alpha=0.3)
    _legend_below(ax)
    return _save(fig, path)


def _sparsity_series(sparse: list[Group]) -> dict[tuple[str, str, str], list[Group]]:
    """(data, model, legend name) -> the groups of one line, in order of sparsity. The name is
    the method plus the settings that tell groups apart besides the sparsity (e.g. epochs=3)."""
    apart = differing_settings(sparse)
    series = defaultdict(list)
    for g in sparse:
        series[(*_pair(g), _series_name(g.method, None, settings_label(g, apart)))].append(g)
    for points in series.values():
        points.sort(key=lambda g: g.sparsity)
    return series


def _pair_label(several: bool, name: str, group: Group) -> str:
    s = group.summary
    return f"{name} ({s.get('model', '?')}, {s.get('data', '?')})" if several else name


def _pair(group: Group) -> tuple[str, str]:
    return (str(group.summary.get("data", "")), str(group.summary.get("model", "")))


def _mean_text(group: Group, key: str) -> str:
    std = group.std(key)
    spread = f" ± {100 * std:.2f}" if std is not None else ""
    return f"{100 * group.mean(key):.2f}{spread}%"


_LEGEND_GAP = 8  # points between the x-axis label and a legend below the axes
_MAX_LEGEND_COLUMNS = 4


def _legend_below(ax, handles=None, labels=None) -> None:
    """The legend under the axes, in as many columns as fit within their width.

    Beside the axes, a legend of long names takes its width from the plot; below them, the saved
    image grows downwards instead (`_save` keeps everything drawn). Call it last before `_save`.
    """
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if not labels:
        return
    fig = ax.figure
    fig.tight_layout()  # the axes' final size: the legend is left out of the layout below
    renderer = fig.canvas.get_renderer()
    for columns in range(min(_MAX_LEGEND_COLUMNS, len(labels)), 0, -1):
        legend = ax.legend(handles, labels, fontsize="small", loc="upper center", frameon=False, ncol=columns)
        legend.set_in_layout(False)
        if legend.get_window_extent(renderer).width <= ax.get_window_extent(renderer).width:
            break
    bottom = ax.get_tightbbox(renderer).y0 - _LEGEND_GAP * fig.dpi / 72  # under the tick labels and x label
    legend.set_bbox_to_anchor((0.5, ax.transAxes.inverted().transform((0, bottom))[1]), transform=ax.transAxes)


def _series_name(method: str, sparsity: float | None, settings: str) -> str:
    """A line's legend name: "SET-ITOP, sparsity 0.95, batch_size=32" (parts left out when empty)."""
    name = method if sparsity is None else f"{method}, sparsity {_trim(sparsity)}"
    return name + (f", {settings}" if settings else "")


def _reference_name(group: Group, keys: Iterable[str]) -> str:
    """A dense or static baseline's legend name, with the settings in `keys` that tell it apart."""
    name = group.method if group.dense else f"{group.method}, sparsity {_trim(group.sparsity)}"
    settings = settings_label(group, keys)
    return name + (f" [{settings}]" if settings else "")


_SWEPT = ("update_frequency", "update_every")  # what the points of one Rs line differ by


def plot_accuracy_vs_rs(runs: Iterable[Run], path: str | Path, accuracy: str = "best") -> Path:
    """Does exploring more weights (a higher Rs) buy accuracy? Test accuracy against Rs.

    One line per (method, sparsity, and any setting other than the update interval that tells
    groups apart, e.g. the batch size) through the means of its groups: the points of a line are
    its update intervals, in the order of the Rs they reached (the tables name each),
    with standard deviations over seeds as error bars; dense and static runs, whose Rs says
    nothing about exploration, are horizontal lines at their mean accuracy.
    """
    key = _accuracy_key(accuracy)
    groups = group_runs(_with_accuracy(runs, accuracy))
    lines = defaultdict(list)  # (data, model, method, sparsity, other settings) -> groups
    references = [g for g in groups if g.dense or g.static]
    dynamic = [g for g in groups if g.kind == "dynamic" and g.values("itop_rate")]
    apart = [k for k in differing_settings(dynamic) if k not in _SWEPT]  # e.g. batch_size: a line of its own
    for g in dynamic:
        lines[(*_pair(g), g.method, round(g.sparsity, 4), settings_label(g, apart))].append(g)
    if not lines:
        raise ReportError("no sparse run with a changing topology has Rs (itop_rate) in its summary")
    several = len({k[:2] for k in lines} | {_pair(g) for g in references}) > 1
    fig = _figure(9, 5)
    ax = fig.add_subplot()
    color = 0
    for (_data, _model, method, sparsity, other), line in sorted(lines.items()):
        line.sort(key=lambda g: g.mean("itop_rate"))
        xs = [g.mean("itop_rate") for g in line]
        ys = [100 * g.mean(key) for g in line]
        name = _series_name(method, sparsity, other)
        ax.errorbar(
            xs,
            ys,
            yerr=[100 * (g.std(key) or 0.0) for g in line],
            xerr=[g.std("itop_rate") or 0.0 for g in line],
            marker="o",
            capsize=3,
            color=f"C{color % 10}",
            label=_pair_label(several, name, line[0]),
        )
        color += 1
    keys = differing_settings(references)
    references.sort(key=lambda g: (_pair(g), not g.dense, g.sparsity, g.method))
    for g in references:
        ax.axhline(
            100 * g.mean(key),
            linestyle="--" if g.dense else ":",
            color=f"C{color % 10}",
            label=_pair_label(several, _reference_name(g, keys), g) + f": {_mean_text(g, key)}",
        )
        color += 1
    ax.margins(x=0.1, y=0.1)
    ax.set_xlabel("ITOP rate Rs (share of weights ever active, 0 to 1)")
    ax.set_ylabel(f"Top-1 test accuracy (%), {_ACCURACY_NAMES[accuracy]}")
    ax.set_title("Does exploring more weights (higher Rs) raise test accuracy?")
    ax.grid(alpha=0.3)
    _legend_below(ax)
    return _save(fig, path)


def _ratio_ticks(axis) -> None:
    """Log-axis ticks as ratios (0.1x, 0.2x, 0.5x, 1x), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    def minor(x, _):
        return f"{x:g}x" if f"{x:.0e}"[0] in "25" else ""

    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}x"))
    axis.set_minor_formatter(FuncFormatter(minor))


def _run_flops(run: Run, absolute: bool) -> float | None:
    """The run's training FLOPs: absolute (ratio x the dense run's FLOPs) or as the ratio."""
    ratio = (run.summary or {}).get("training_flops")
    if run.dense:
        ratio = 1.0
    if ratio is None:
        return None
    return float(ratio) * float(run.summary["dense_training_flops"]) if absolute else float(ratio)


def plot_accuracy_vs_training_flops(runs: Iterable[Run], path: str | Path, accuracy: str = "best") -> Path:
    """How much accuracy does each method get for its training compute? Test accuracy against
    the training FLOPs of the whole run (log scale; absolute when every summary gives the dense
    FLOPs it is relative to, so that runs of different lengths compare), one series per method
    whose points are its groups (error bars: standard deviation over seeds); dense runs as stars."""
    key = _accuracy_key(accuracy)
    groups = group_runs(_with_accuracy(runs, accuracy))
    absolute = all((r.summary or {}).get("dense_training_flops") for g in groups for r in g.runs)

    def flops(g) -> float | None:
        values = [_run_flops(r, absolute) for r in g.runs]
        return None if None in values else sum(values) / len(values)

    series = defaultdict(list)  # (data, model, method [, sparsity] [, other settings]) -> groups
    dense = [g for g in groups if g.dense]
    sparse = [g for g in groups if not g.dense and (flops(g) or 0) > 0]
    apart = [k for k in differing_settings(sparse) if k not in _SWEPT]  # e.g. sparse_init=ER: a series of its own
    several_sparsities = len({round(g.sparsity, 4) for g in sparse}) > 1
    for g in sparse:
        series[(*_pair(g), _series_name(g.method, g.sparsity if several_sparsities else None, settings_label(g, apart)))].append(g)
    if not series:
        raise ReportError("no sparse run has training_flops in its summary")
    several = len({k[:2] for k in series} | {_pair(g) for g in dense}) > 1
    fig = _figure(9, 5)
    ax = fig.add_subplot()
    color = 0
    for (_data, _model, method), points in sorted(series.items()):
        points.sort(key=flops)
        ax.errorbar(
            [flops(g) for g in points],
            [100 * g.mean(key) for g in points],
            yerr=[100 * (g.std(key) or 0.0) for g in points],
            marker="o",
            linestyle="none",
            capsize=3,
            color=f"C{color % 10}",
            label=_pair_label(several, method, points[0]),
        )
        color += 1
    keys = differing_settings(dense)
    for g in sorted(dense, key=_pair):
        name = _reference_name(g, keys)
        ax.errorbar(
            [flops(g) if absolute else 1.0],
            [100 * g.mean(key)],
            yerr=[100 * (g.std(key) or 0.0)],
            marker="*",
            markersize=14,
            linestyle="none",
            capsize=3,
            color="0.2" if len(dense) == 1 else f"C{color % 10}",
            label=_pair_label(several, name, g) + f": {_mean_text(g, key)}",
        )
        color += 1
    ax.set_xscale("log")
    if absolute:
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())  # 2 x 10^11, 3 x 10^11 ... would overlap
        ax.set_xlabel("Training FLOPs of the whole run (log scale)")
    else:
        _ratio_ticks(ax.xaxis)
        ax.set_xlabel("Training FLOPs (ratio to dense training, log scale)")
    ax.margins(x=0.15, y=0.1)
    ax.set_ylabel(f"Top-1 test accuracy (%), {_ACCURACY_NAMES[accuracy]}")
    ax.set_title("How much test accuracy does each method get for its training FLOPs?")
    ax.grid(alpha=0.3, which="both")
    _legend_below(ax)
    return _save(fig, path)


def plot_accuracy_vs_multiplier(runs: Iterable[Run], path: str | Path, accuracy: str = "best") -> Path:
    """Does training longer (--multiplier) close the gap to dense? Test accuracy (left) and Rs
    (right, dashed) against the multiplier, one colour per method and sparsity; dense as a line."""
    key = _accuracy_key(accuracy)
    groups = group_runs(_with_accuracy(runs, accuracy))
    dynamic = [g for g in groups if g.kind == "dynamic"]
    apart = differing_settings(dynamic)  # e.g. batch_size: a line of its own (--multiplier is the x axis)
    series = defaultdict(list)  # (data, model, method without "(m times)", sparsity, other settings) -> groups
    for g in dynamic:
        series[(*_pair(g), g.method.split(" (")[0], round(g.sparsity, 4), settings_label(g, apart))].append(g)
    series = {k: v for k, v in series.items() if len({_multiplier(g) for g in v}) > 1}
    if not series:
        raise ReportError("no method was trained at two or more --multiplier values")
    fig = _figure(9, 5)
    ax = fig.add_subplot()
    rates = ax.twinx()
    for color, ((_data, _model, method, sparsity, settings), line) in enumerate(sorted(series.items())):
        line.sort(key=_multiplier)
        xs = [_multiplier(g) for g in line]
        name = _series_name(method, sparsity, settings)
        ax.errorbar(
            xs,
            [100 * g.mean(key) for g in line],
            yerr=[100 * (g.std(key) or 0.0) for g in line],
            marker="o",
            capsize=3,
            color=f"C{color % 10}",
            label=f"{name}: accuracy",
        )
        rates.plot(xs, [g.mean("itop_rate") for g in line], linestyle="--", marker="s", color=f"C{color % 10}", label=f"{name}: Rs")
    dense = [g for g in groups if g.dense]
    keys = differing_settings(dense)  # e.g. dense runs at two batch sizes: each line says which
    for shade, g in enumerate(dense):
        ax.axhline(
            100 * g.mean(key), linestyle=":", color=str(0.2 + 0.25 * (shade % 3)), label=f"{_reference_name(g, keys)}: {_mean_text(g, key)}"
        )
    ax.set_xscale("log")
    ticks = sorted({_multiplier(g) for line in series.values() for g in line})
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.set_xticks([], minor=True)  # no 3 x 10^0 between the lengths run
    ax.set_xlabel("training length (--multiplier, log scale)")
    ax.set_ylabel(f"Top-1 test accuracy (%), {_ACCURACY_NAMES[accuracy]}")
    rates.set_ylabel("ITOP rate Rs (dashed)")
    ax.set_title("Does training longer close the gap to dense?")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    more, more_labels = rates.get_legend_handles_labels()
    _legend_below(ax, handles + more, labels + more_labels)
    return _save(fig, path)


def trained_at_several_lengths(runs: Iterable[Run]) -> bool:
    """Was some sparse method trained at two or more --multiplier values (an extended-training study)?"""
    lengths = defaultdict(set)
    for run in runs:
        if run.summary is not None and not run.dense:
            lengths[(str(run.summary.get("method", "")).split(" (")[0], sparsity_of(run.summary))].add(run.config.get("multiplier", 1))
    return any(len(v) > 1 for v in lengths.values())


def _multiplier(group: Group) -> float:
    return float(group.runs[0].config.get("multiplier", 1) or 1)


def rate_curve(run: Run) -> tuple[list[int], list[float]]:
    """(steps, Rs) from the run's update and epoch records; a later record wins a shared step."""
    by_step = {}
    for record in run.metrics:
        step, rate = record.get("step"), record.get("itop_rate")
        if isinstance(step, (int, float)) and isinstance(rate, (int, float)):
            by_step[step] = float(rate)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def plot_itop_rate(runs: Iterable[Run], path: str | Path) -> Path:
    """Rs (share of weights ever active) over training steps, one line per run; dense dashed."""
    curves = [(run, *rate_curve(run)) for run in runs]
    curves = [c for c in curves if c[1]]
    if not curves:
        raise ReportError("no run has itop_rate records to plot")
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    for run, steps, rates in curves:
        dense = run.dense
        label = run.name + (" (dense)" if dense and "dense" not in run.name.lower() else "")
        ax.plot(steps, rates, linestyle="--" if dense else "-", marker=None if len(steps) > 1 else "o", label=label)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("Training step")
    ax.set_ylabel("ITOP rate Rs (share of weights ever active)")
    ax.set_title("In-time over-parameterization during training")
    ax.grid(alpha=0.3)
    _legend_below(ax)
    return _save(fig, path)


def _last(run: Run, key: str) -> tuple[dict | None, dict]:
    for record in reversed(run.metrics):
        if isinstance(record.get(key), dict) and record[key]:
            return record, record[key]
    return None, {}


def plot_layer_density(run: Run, path: str | Path) -> Path:
    """Final density of each sparse layer, beside the share of it ever explored if logged."""
    record, density = _last(run, "layer_density")
    if record is None:
        raise ReportError(f"{run.name}: no metrics record has layer_density")
    _, explored = _last(run, "layer_explored")
    names = list(density)
    fig = _figure(8, max(3.0, 1.5 + 0.3 * len(names) * (2 if explored else 1)))
    ax = fig.add_subplot()
    rows = range(len(names))
    height = 0.4 if explored else 0.8
    offset = height / 2 if explored else 0.0
    ax.barh([r - offset for r in rows], [float(density[n]) for n in names], height=height, label="density (share active at the end)")
    if explored:
        ax.barh(
            [r + offset for r in rows], [float(explored.get(n, 0.0)) for n in names], height=height, label="explored (share ever active)"
        )
    ax.set_yticks(list(rows), names, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.05)
    ax.set_xlabel("Share of the layer's weights")
    step = record.get("step")
    overall = record.get("density")
    detail = ", ".join(
        x
        for x in (f"step {step}" if step is not None else "", f"overall density {overall:g}" if isinstance(overall, (int, float)) else "")
        if x
    )
    ax.set_title(f"Per-layer density of {run.name}" + (f" ({detail})" if detail else ""), pad=24)
    ax.grid(axis="x", alpha=0.3)
    # Above the plot, under the title: bars may reach 1.0 anywhere, so no corner is free.
    ax.legend(fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    return _save(fig, path)
