"""Exit status of two-process `torchrun -m itop train` runs on CPUs (gloo), N runs in a row.

Run by hand:  python benchmarks/torchrun_exit.py [--runs 30] [--plain 12]

gloo aborts now and then while a process group is torn down; itop train ends its processes
without that teardown once its files are written (`itop/train/cli.py`, `_end_process`). This
prints the exit status of each itop run, and, as the baseline, of a plain two-process DDP script
with no itop code in it that destroys its process group as usual (`--plain N` runs).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from machine import print_header

PLAIN = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(20):
    opt.zero_grad(); model(torch.randn(32, 64)).sum().backward(); opt.step()
dist.barrier()
dist.destroy_process_group()
"""


def torchrun(args: list[str], cwd: str) -> int:
    """The exit status of one two-process run; a failed run's output is kept in <cwd>/failed-<n>.txt."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        failed = len(list(Path(cwd).glob("failed-*.txt")))
        Path(cwd, f"failed-{failed}.txt").write_text(f"{' '.join(args)}\n{done.stdout}\n{done.stderr}")
    return done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--plain", type=int, default=12)
    parser.add_argument("--keep", default=None, help="a directory for the runs and the output of failed ones (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.keep or tmp
        Path(tmp, "plain.py").write_text(PLAIN)
        print_header(f"two-process torchrun (gloo) exit statuses: {args.plain} plain DDP runs, {args.runs} itop train runs")
        started = time.perf_counter()
        plain = [torchrun(["plain.py"], tmp) for _ in range(args.plain)]
        print(f"plain DDP script, {args.plain} runs: exit statuses {dict(Counter(plain))} ({time.perf_counter() - started:.0f} s)")
        started, statuses = time.perf_counter(), []
        for i in range(args.runs):
            statuses.append(
                torchrun(["-m", "itop", "train", "--epochs", "1", "--batch-size", "500", "--no-progress", "--save", f"run{i}"], tmp)
            )
            print(f"\r  itop train run {i + 1}/{args.runs}: status {statuses[-1]}", end="", flush=True)
        print(
            f"\ritop train (demo, 1 epoch), {args.runs} two-process runs in a row: exit statuses {dict(Counter(statuses))} "
            f"({time.perf_counter() - started:.0f} s)"
        )


if __name__ == "__main__":
    main()
