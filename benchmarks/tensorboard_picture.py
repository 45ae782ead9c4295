"""The curves `itop train --tensorboard` writes, read back from the event file and drawn as one PNG.

Run by hand:  python benchmarks/tensorboard_picture.py [--run runs/tb-demo] [--out docs/tensorboard_curves.png]

Trains the demo (RigL-ITOP, LeNet-300-100 at 95% sparsity on the embedded digits) with
`--tensorboard` unless --run already holds a finished run, then reads `<run>/tensorboard` with
TensorBoard's own EventAccumulator and draws the scalars TensorBoard would show, on the same
optimizer-step axis: what `tensorboard --logdir <run>/tensorboard` displays, without a browser.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

PANELS = [
    ("train/loss_running", "training loss (running mean in the epoch)"),
    ("val/accuracy", "validation accuracy"),
    ("train/lr", "learning rate"),
    ("sparsity/itop_rate", "Rs (share of weights ever active)"),
    ("sparsity/prune_rate", "prune rate at each update"),
    ("layer_explored/*", "explored share per layer"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/tb-demo")
    parser.add_argument("--out", default="docs/tensorboard_curves.png")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    run = Path(args.run)
    if not (run / "summary.json").is_file():
        done = subprocess.run(
            [sys.executable, "-m", "itop", "train", "--tensorboard", "--epochs", str(args.epochs), "--no-progress", "--save", str(run)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    fig = Figure(figsize=(12, 6.5), dpi=100)
    FigureCanvasAgg(fig)
    for i, (pattern, title) in enumerate(PANELS):
        ax = fig.add_subplot(2, 3, i + 1)
        chosen = [t for t in tags if t.startswith(pattern[:-1])] if pattern.endswith("*") else [pattern]
        for tag in chosen:
            points = events.Scalars(tag)
            ax.plot([p.step for p in points], [p.value for p in points], label=tag.split("/", 1)[1] if len(chosen) > 1 else None)
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if len(chosen) > 1:
            ax.legend(fontsize="small")
    fig.suptitle(
        f"itop train --tensorboard --epochs {args.epochs} (the demo): the curves in <run>/tensorboard, read back with TensorBoard's EventAccumulator"
    )
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out} from {run / 'tensorboard'} ({len(tags)} scalar tags: {', '.join(sorted(tags))})")


if __name__ == "__main__":
    main()
