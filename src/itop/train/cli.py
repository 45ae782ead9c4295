"""`itop train`: parse, set up the run directory, train, print the results row.

User mistakes (bad flags, missing data, a run directory that is not one) end with one line on
stderr and exit status 2; a diverging loss ends with exit status 1 and keeps the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from itop.data import DataError

from .checkpoint import CHECKPOINT, RunError, load_json, save_json
from .config import TrainConfig, UsageError, parse_args, resume_overrides, validate
from .distributed import World, barrier, broadcast_value, init_distributed
from .fsdp import CHECKPOINT_DIR
from .model_setup import describe_density
from .optim import describe_schedule


def _check_new(cfg: TrainConfig, world: World) -> Path:
    """The directory of a new run, after checking that no run would be overwritten.

    A directory holds a run once it has a checkpoint (the first epoch ended); a directory whose
    run stopped before that holds nothing to continue, so a new run may take it.
    """
    run_dir = Path(cfg.save)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--save {run_dir} is a file, not a directory; choose another --save.")
    if broadcast_value((run_dir / CHECKPOINT).exists(), world):
        raise RunError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or choose another --save.")
    return run_dir


def _write_config(cfg: TrainConfig, run_dir: Path, world: World) -> None:
    """config.json, written (by rank 0) only once the run is built: a bad flag leaves no directory."""
    barrier(world)
    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_json(cfg.to_dict(), run_dir / "config.json")
    barrier(world)


def _config_of(run_dir: Path, overrides: dict) -> TrainConfig:
    if not run_dir.is_dir():
        raise RunError(f"--resume {run_dir}: no such directory; pass a run directory written by itop train.")
    data = load_json(run_dir / "config.json")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(data, dict) or not set(data) <= names:
        raise RunError(f"{run_dir / 'config.json'} is not an itop configuration; the run cannot be resumed.")
    try:
        cfg = dataclasses.replace(TrainConfig(**data), **overrides)
        validate(cfg)
    except (TypeError, ValueError) as error:
        raise RunError(
            f"{run_dir / 'config.json'} holds an invalid configuration ({_one_line(error)}); the run cannot be resumed."
        ) from None
    return cfg


def _one_line(error: BaseException) -> str:
    """The message of `error` on one line. An error raised in a DataLoader worker arrives wrapped
    in the worker's traceback; its own message is the traceback's last line."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
    return " ".join(text.split())


def _runs(cfg: TrainConfig, resume: str | None, world: World) -> list[tuple[TrainConfig, Path, bool]]:
    """(configuration, directory, resuming) of each run to do: one to resume, or --iters new ones."""
    if resume is not None:
        run_dir = Path(resume)
        saved = [run_dir / CHECKPOINT, run_dir / CHECKPOINT_DIR, run_dir / f"{CHECKPOINT_DIR}.old"]  # a file, or --fsdp's DCP directory
        return [(cfg, run_dir, broadcast_value(any(path.exists() for path in saved), world))]
    cfg = dataclasses.replace(cfg, processes=world.size)
    runs = []
    for i in range(cfg.iters):
        this = dataclasses.replace(cfg, seed=cfg.seed + i, save=cfg.save if cfg.iters == 1 else f"{cfg.save}-{i + 1}")
        runs.append((this, _check_new(this, world), False))
    return runs


def train_main(argv: list[str]) -> int:
    """`itop train`; the exit status. Under torchrun the process ends here (see `_end_process`)."""
    started: list[World] = []
    status = _train(argv, started)
    if started and started[0].size > 1:
        _end_process(status)
    return status


def _end_process(status: int) -> None:
    """End a torchrun process without tearing its gloo process group down.

    By now every file is written and every rank has passed the last barrier (or stops on an error
    all ranks share). gloo aborts now and then while a process group is destroyed (1 run in 12 of a
    plain two-process DDP script, no itop code in it), which would turn a finished run into a
    failed one; the process ends with its own status instead, its sockets closing with it.
    """
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _train(argv: list[str], started: list[World]) -> int:
    from itop.allocator import keep_freed_memory
    from itop.report.table import results_table

    from .loop import Run, TrainingDiverged
    from .notices import reported_model, sparse_size_line

    world, current = World(), None
    try:
        cfg, resume = parse_args(argv)
        keep_freed_memory()  # activations reuse freed pages instead of faulting fresh ones in (itop.allocator)
        if resume is not None:
            cfg = _config_of(Path(resume), resume_overrides(argv))
        world = init_distributed(cfg.device)
        started.append(world)
        cfg.save = broadcast_value(cfg.save, world)  # its default holds the time: rank 0's everywhere
        summaries = []
        say = print if world.main else (lambda *a, **k: None)
        for this, run_dir, resuming in _runs(cfg, resume, world):
            current = run_dir
            if resume is not None and not resuming:
                say(f"{run_dir} has no finished epoch to continue from; starting it from the beginning.", flush=True)
            run = Run(this, run_dir, resume=resuming, world=world)
            if not resuming:
                _write_config(this, run_dir, world)
            density = describe_density(run.target_density, this) if this.sparse else "dense"
            say(
                f"run directory: {run.dir}  ({this.method}{', truly sparse' if this.truly_sparse else ''}, {this.model} on {this.data}, {density}, "
                f"{run.steps_per_epoch} steps/epoch x {this.total_epochs} epochs, {describe_schedule(this, run.total_steps)}, "
                f"device {run.device}, {world.size} process(es))",
                flush=True,
            )
            for note in run.notes:
                say(f"note: {note}", flush=True)
            for warning in run.warnings:
                if world.main:
                    print(f"itop train: warning: {warning}", file=sys.stderr, flush=True)
            run.fit()
            summary = run.summary()
            if world.main:
                save_json(summary, run.dir / "summary.json")
            summaries.append(summary)
            say(f"test accuracy {100 * summary['test_acc']:.2f}% ({reported_model(summary)}), Rs {summary['itop_rate']:.4f}")
            if sparse_size_line(summary):
                say(sparse_size_line(summary))
        say()
        say(results_table(summaries))
        barrier(world)  # every rank finished: the process may end (see _end_process)
        return 0
    except (UsageError, RunError, DataError) as error:
        if world.main:
            print(f"itop train: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        if world.main:
            print(f"itop train: stopped: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if world.main:
            where = current if current is not None else "<run directory>"
            print(f"itop train: interrupted; continue with --resume {where} (from the last finished epoch).", file=sys.stderr)
        return 130
