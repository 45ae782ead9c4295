"""`itop train`: parse, set up the run directory, train, print the results row.

User mistakes (bad flags, missing data, a run directory that is not one) end with one line on
stderr and exit status 2; a diverging loss ends with exit status 1 and keeps the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from itop.data import DataError

from .checkpoint import RunError, load_json, save_json
from .config import TrainConfig, UsageError, parse_args
from .distributed import World, barrier, broadcast_value, init_distributed


def _prepare_new(cfg: TrainConfig, world: World) -> Path:
    """Create the run directory (rank 0) after checking that no run would be overwritten."""
    run_dir = Path(cfg.save)
    exists = broadcast_value((run_dir / "config.json").exists(), world)
    if exists:
        raise RunError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or choose another --save.")
    barrier(world)
    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_json(cfg.to_dict(), run_dir / "config.json")
    barrier(world)
    return run_dir


def _config_of(run_dir: Path) -> TrainConfig:
    if not run_dir.is_dir():
        raise RunError(f"--resume {run_dir}: no such directory; pass a run directory written by itop train.")
    data = load_json(run_dir / "config.json")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(data, dict) or not set(data) <= names:
        raise RunError(f"{run_dir / 'config.json'} is not an itop configuration; the run cannot be resumed.")
    return TrainConfig(**data)


def train_main(argv: list[str]) -> int:
    from itop.report.table import results_table

    from .loop import Run, TrainingDiverged

    world = World()
    try:
        cfg, resume = parse_args(argv)
        if resume is not None:
            cfg = _config_of(Path(resume))
        world = init_distributed(cfg.device)
        cfg.save = broadcast_value(cfg.save, world)  # its default holds the time: rank 0's everywhere
        if resume is not None:
            runs = [(cfg, Path(resume), True)]
        else:
            runs = []
            for i in range(cfg.iters):
                this = dataclasses.replace(cfg, seed=cfg.seed + i, save=cfg.save if cfg.iters == 1 else f"{cfg.save}-{i + 1}")
                runs.append((this, None, False))
        summaries = []
        say = print if world.main else (lambda *a, **k: None)
        for this, run_dir, resuming in runs:
            run = Run(this, run_dir or _prepare_new(this, world), resume=resuming, world=world)
            say(f"run directory: {run.dir}  ({this.method}, {this.model} on {this.data}, density {this.density if this.sparse else 1.0}, "
                  f"{run.steps_per_epoch} steps/epoch x {this.total_epochs} epochs, device {run.device}, {world.size} process(es))", flush=True)
            run.fit()
            summary = run.summary()
            if world.main:
                save_json(summary, run.dir / "summary.json")
            summaries.append(summary)
            say(f"test accuracy {100 * summary['test_acc']:.2f}% (best epoch {summary['best_epoch']}), Rs {summary['itop_rate']:.4f}")
        say()
        say(results_table(summaries))
        barrier(world)  # every rank finished before the process group is torn down
        return 0
    except (UsageError, RunError, DataError) as error:
        if world.main:
            print(f"itop train: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"itop train: stopped: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("itop train: interrupted; continue with --resume <run directory> from the last finished epoch.", file=sys.stderr)
        return 130
    finally:
        if world.size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
