"""PNG plots of runs: accuracy against sparsity, the ITOP rate Rs over training, layer density.

Figures are built as `matplotlib.figure.Figure` on an explicit Agg canvas, never through
pyplot: no global backend is switched in the caller's process (a notebook keeps its own), no
display is needed, and no figure stays registered anywhere once saved. matplotlib is imported
only when a plot is drawn, so tables and run loading work without it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable

from .runs import ReportError, Run, sparsity_of
from .table import is_dense, method_label

__all__ = ["plot_accuracy_vs_sparsity", "plot_itop_rate", "plot_layer_density"]


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError("plots need matplotlib, which is not installed "
                          "(pip install matplotlib)") from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, format="png", bbox_inches="tight")
    fig.clear()
    return path


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def plot_accuracy_vs_sparsity(runs: Iterable[Run], path: str | Path) -> Path:
    """Top-1 test accuracy against sparsity, one series per method; dense as a reference line.

    Repeated runs (seeds) show as separate markers joined through their mean. When the runs
    cover several (model, data) pairs, each series and reference line names its pair.
    """
    sparse = defaultdict(lambda: defaultdict(list))  # (data, model, method) -> sparsity -> accs
    dense = defaultdict(list)  # (data, model) -> accs
    for run in runs:
        s = run.summary
        if s is None:
            continue
        group = (str(s.get("data", "")), str(s.get("model", "")))
        if is_dense(s):
            dense[group].append(100 * float(s["test_acc"]))
        else:
            sparse[(*group, method_label(s))][sparsity_of(s)].append(100 * float(s["test_acc"]))
    if not sparse and not dense:
        raise ReportError("no finished runs to plot accuracy for")
    several = len({k[:2] for k in sparse} | set(dense)) > 1

    def label(name, data, model):
        return f"{name} ({model}, {data})" if several else name

    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    for i, ((data, model, method), points) in enumerate(sorted(sparse.items())):
        xs = sorted(points)
        ax.plot(xs, [_mean(points[x]) for x in xs], marker="o", color=f"C{i % 10}",
                label=label(method, data, model))
        for x in xs:
            if len(points[x]) > 1:
                ax.scatter([x] * len(points[x]), points[x], s=12, color=f"C{i % 10}", alpha=0.5)
    for j, ((data, model), accs) in enumerate(sorted(dense.items()), start=len(sparse)):
        ax.axhline(_mean(accs), linestyle="--", color=f"C{j % 10}" if several else "0.3",
                   label=label("Dense", data, model) + f" {_mean(accs):.2f}%")
    if not sparse:
        ax.set_xlim(0.0, 1.0)
    ax.margins(y=0.1)
    ax.set_xlabel("Sparsity (share of weights removed)")
    ax.set_ylabel("Top-1 test accuracy (%)")
    ax.set_title("Test accuracy against sparsity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


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
        ax.plot(steps, rates, linestyle="--" if dense else "-",
                marker=None if len(steps) > 1 else "o", label=label)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("Training step")
    ax.set_ylabel("ITOP rate Rs (share of weights ever active)")
    ax.set_title("In-time over-parameterization during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
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
    ax.barh([r - offset for r in rows], [float(density[n]) for n in names], height=height,
            label="density (share active at the end)")
    if explored:
        ax.barh([r + offset for r in rows], [float(explored.get(n, 0.0)) for n in names],
                height=height, label="explored (share ever active)")
    ax.set_yticks(list(rows), names, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.05)
    ax.set_xlabel("Share of the layer's weights")
    step = record.get("step")
    overall = record.get("density")
    detail = ", ".join(x for x in (f"step {step}" if step is not None else "",
                                   f"overall density {overall:g}"
                                   if isinstance(overall, (int, float)) else "") if x)
    ax.set_title(f"Per-layer density of {run.name}" + (f" ({detail})" if detail else ""), pad=24)
    ax.grid(axis="x", alpha=0.3)
    # Above the plot, under the title: bars may reach 1.0 anywhere, so no corner is free.
    ax.legend(fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2,
              frameon=False)
    return _save(fig, path)
