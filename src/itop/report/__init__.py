"""Reports from `itop train` run directories: markdown tables in the seed README's layout and
PNG plots (accuracy against sparsity, ITOP rate Rs over training, per-layer density).

    runs = [itop.report.load_run(p) for p in paths]
    print(itop.report.results_table(r.summary for r in runs if r.finished))
"""

from .cli import main
from .plots import plot_accuracy_vs_sparsity, plot_itop_rate, plot_layer_density
from .runs import ReportError, Run, load_run
from .table import results_row, results_table, runs_table

__all__ = [
    "ReportError", "Run", "load_run",
    "results_row", "results_table", "runs_table",
    "plot_accuracy_vs_sparsity", "plot_itop_rate", "plot_layer_density",
    "main",
]
