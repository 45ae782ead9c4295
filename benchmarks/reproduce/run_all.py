"""The reproduction studies in order, each printing its tables, with its wall time.

    python benchmarks/reproduce/run_all.py [--seeds 5] [--quick] [--plots docs/results]

Each study is its own script (rs_accuracy, extended, equal_flops, initialisation, momentum,
baselines) and can be run alone, as can study 6 (structured.py), which this command leaves out; they
share the run directories under --out, so a run two studies need is trained once, and a stopped
study resumes. `--plots DIR` puts each study's `itop report` output (results.md
and PNGs) in DIR/<study>.
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

STUDIES = ("rs_accuracy", "extended", "equal_flops", "initialisation", "momentum", "baselines")


def main() -> None:
    argv = sys.argv[1:]
    plots = None
    if "--plots" in argv:
        at = argv.index("--plots")
        plots = argv[at + 1]
        argv = argv[:at] + argv[at + 2 :]
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))  # the studies import `common` from beside them
    total = time.perf_counter()
    for study in STUDIES:
        extra = ["--plots", str(Path(plots) / study)] if plots else []
        print(f"\n## {study}: python benchmarks/reproduce/{study}.py {' '.join(argv + extra)}", flush=True)
        started = time.perf_counter()
        sys.argv = [str(here / f"{study}.py"), *argv, *extra]
        try:  # in this process, as `python <study>.py` would run it: each new process would import torch again
            runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as stop:
            if stop.code not in (None, 0):
                raise SystemExit(f"{study} failed: {stop.code}") from None
        sys.stdout.flush()
        print(f"({study}: {time.perf_counter() - started:.0f} s wall time)", flush=True)
    print(f"\n(all studies: {time.perf_counter() - total:.0f} s wall time)")


if __name__ == "__main__":
    main()
