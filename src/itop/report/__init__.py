"""Reports from `itop train` run directories: markdown tables in the layout of the original ITOP
code's README (and `mean ± std` over seeds for groups of runs that differ only by seed) and PNG
plots (accuracy against sparsity, Rs and training FLOPs, ITOP rate Rs over training, per-layer
density).

    runs = [itop.report.load_run(p) for p in paths]
    print(itop.report.results_table(r.summary for r in runs if r.finished))
"""

from .cli import main
from .groups import IGNORED_KEYS, Group, group_runs
from .plots import plot_accuracy_vs_rs, plot_accuracy_vs_sparsity, plot_accuracy_vs_training_flops, plot_itop_rate, plot_layer_density
from .runs import ReportError, Run, load_run
from .table import grouped_table, results_row, results_table, runs_table

__all__ = [
    "ReportError",
    "Run",
    "load_run",
    "IGNORED_KEYS",
    "Group",
    "group_runs",
    "results_row",
    "results_table",
    "runs_table",
    "grouped_table",
    "plot_accuracy_vs_sparsity",
    "plot_accuracy_vs_rs",
    "plot_accuracy_vs_training_flops",
    "plot_itop_rate",
    "plot_layer_density",
    "main",
]
