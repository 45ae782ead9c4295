"""`itop report RUN_DIR [RUN_DIR ...] [--out DIR] [--accuracy best|final]`: tables and plots.

Prints the markdown results table, then writes into --out (default ./report):
  results.md                 the same table(s) and notes
  accuracy_vs_sparsity.png   finished runs only
  accuracy_vs_rs.png         finished runs: does a higher Rs raise accuracy (seeds averaged)?
  accuracy_vs_training_flops.png  finished runs: accuracy for the training FLOPs spent
  itop_rate.png              every run with Rs records, unfinished ones too (progress so far)
  layer_density_<run>.png    every sparse run with per-layer densities
Paths that are not usable run directories (a plain file, a directory without config.json, a
corrupt config.json or summary.json) are skipped with a one-line note each on stderr, since
shell globs such as `runs/*` pick them up; it is an error only when no usable run remains.
Runs without summary.json are named in a note, not in the table. Runs of several (model, data)
pairs get one table each under a heading. Where one table holds two runs of the same method
and sparsity (seeds), it gains a `Run` column so that each row says which directory it is.
Where runs differ only by seed (groups.py), or runs of one method and sparsity differ in other
settings, the table is preceded by a grouped one: one row per group, `mean ± std` over its seeds,
a `Settings` column naming what tells the groups apart. --accuracy picks the accuracy that the plots show: of the
best-validation checkpoint (the original's rule, default) or of the final epoch.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from dataclasses import replace
from pathlib import Path

from . import plots
from .groups import ACCURACY_KEYS, group_runs
from .runs import ReportError, Run, load_run, sparsity_of
from .table import grouped_table, method_label, results_table, runs_table

__all__ = ["main"]

PROG = "itop report"


class _Parser(argparse.ArgumentParser):
    """Turns argparse's usage errors into ReportError, so every user error prints one line."""

    def error(self, message):
        raise ReportError(f"{message} (see {PROG} --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Tables and plots from itop training run directories.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of itop train")
    p.add_argument("--out", default="report", metavar="DIR", help="where results.md and the PNG plots go (default: ./report)")
    p.add_argument(
        "--accuracy",
        choices=tuple(ACCURACY_KEYS),
        default="best",
        help="test accuracy the plots show: best (the best-validation checkpoint, "
        "the original's rule; default) or final (the last epoch's model)",
    )
    return p


# At most this many skipped paths are named in the error when none of the paths is a run.
_SHOWN_SKIPS = 3


def _load(paths: list[str]) -> list[Run]:
    """Load each directory once; give runs whose directory names clash their parent's name.

    Paths that are not usable runs are skipped, each with a note on stderr. When none is
    usable, the one error line says why: the path's own error when one path was given.
    """
    runs, seen, skipped = [], set(), {}
    for path in paths:
        try:
            run = load_run(path)
        except ReportError as e:
            skipped.setdefault(path, e)
            continue
        key = run.path.resolve()
        if key not in seen:
            seen.add(key)
            runs.append(run)
    if not runs:
        if len(skipped) == 1:
            raise next(iter(skipped.values()))
        shown = [f"{path}: {e.reason}" for path, e in list(skipped.items())[:_SHOWN_SKIPS]]
        more = len(skipped) - len(shown)
        raise ReportError(
            f"none of the {len(skipped)} paths given is a usable run directory ("
            + "; ".join(shown)
            + (f"; and {more} more" if more else "")
            + ")"
        )
    for path, e in skipped.items():
        print(f"{PROG}: skipping {path}: {e.reason}", file=sys.stderr)
    counts = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    runs = [replace(r, name=f"{r.path.resolve().parent.name}/{r.name}") if counts[r.name] > 1 else r for r in runs]
    return runs


def _tables(finished: list[Run]) -> str:
    groups = {}
    for run in finished:
        key = (str(run.summary.get("data", "")), str(run.summary.get("model", "")))
        groups.setdefault(key, []).append(run)
    parts = []
    for (data, model), group in sorted(groups.items()):
        cells = [(method_label(r.summary), sparsity_of(r.summary)) for r in group]
        repeated = len(set(cells)) < len(cells)
        table = runs_table(group) if repeated else results_table(r.summary for r in group)
        seeds = group_runs(group)
        alike = len({(g.method, g.sparsity) for g in seeds}) < len(seeds)  # settings tell them apart
        if alike or any(len(g.runs) > 1 for g in seeds):
            table = f"{grouped_table(seeds)}\n\n{table}"
        parts.append(f"### {model or '?'} on {data or '?'}\n\n{table}" if len(groups) > 1 else table)
    return "\n\n".join(parts)


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def _matplotlib_installed() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _plots(runs: list[Run], finished: list[Run], out: Path, accuracy: str) -> tuple[list[Path], list[str]]:
    """Draw every plot that has data; a plot without data becomes a note, not an error."""
    if not _matplotlib_installed():
        return [], ["note: no plots: matplotlib is not installed (pip install matplotlib)"]
    notes = []
    key = ACCURACY_KEYS[accuracy]
    lacking = [r.name for r in finished if r.summary.get(key) is None]
    if lacking and len(lacking) < len(finished):
        notes.append(
            f"note: --accuracy {accuracy}: {len(lacking)} run(s) without {key} left out of the accuracy plots: {', '.join(lacking)}"
        )
    jobs = [
        (lambda p: plots.plot_accuracy_vs_sparsity(finished, p, accuracy), "accuracy_vs_sparsity.png"),
        (lambda p: plots.plot_accuracy_vs_rs(finished, p, accuracy), "accuracy_vs_rs.png"),
        (lambda p: plots.plot_accuracy_vs_training_flops(finished, p, accuracy), "accuracy_vs_training_flops.png"),
        (lambda p: plots.plot_itop_rate(runs, p), "itop_rate.png"),
    ]
    if plots.trained_at_several_lengths(finished):  # only extended-training studies have this question
        jobs.append((lambda p: plots.plot_accuracy_vs_multiplier(finished, p, accuracy), "accuracy_vs_multiplier.png"))
    for run in runs:
        if not run.dense:
            jobs.append((lambda p, r=run: plots.plot_layer_density(r, p), f"layer_density_{_file_name(run.name)}.png"))
    written = []
    for draw, name in jobs:
        try:
            written.append(draw(out / name))
        except ReportError as e:
            notes.append(f"note: skipped {name}: {e}")
    return written, notes


def _report(args: argparse.Namespace) -> int:
    runs = _load(args.runs)
    finished = [r for r in runs if r.finished]
    unfinished = [r.name for r in runs if not r.finished]
    if not finished:
        raise ReportError("no finished runs (none has summary.json): " + ", ".join(unfinished))
    notes = []
    if unfinished:
        notes.append(f"note: {len(unfinished)} unfinished run(s) without summary.json, not in the table: {', '.join(unfinished)}")
    text = _tables(finished)
    out = Path(args.out)
    results = out / "results.md"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot write to {out}: {e.strerror or e}") from None
    print(text)
    for note in notes:
        print(note)
    try:
        results.write_text(text + "\n" + "".join(f"\n{n}\n" for n in notes), encoding="utf-8")
        written, plot_notes = _plots(runs, finished, out, args.accuracy)
    except OSError as e:
        raise ReportError(f"cannot write to {out}: {e.strerror or e}") from None
    for note in plot_notes:
        print(note)
    for path in [results, *written]:
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `itop report`; return the exit status (0 ok, 2 user error) instead of exiting."""
    try:
        return _report(_parser().parse_args(sys.argv[1:] if argv is None else argv))
    except ReportError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
