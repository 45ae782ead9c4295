"""Checkpoints written atomically and read without executing code.

A checkpoint is written to a temporary file in the same directory, flushed to disk, then renamed
over the old one, so a crash leaves either the previous checkpoint or the new one, never half of
one. Loading uses `weights_only=True`: a checkpoint holds only tensors and plain containers.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class RunError(ValueError):
    """A problem with a run directory or checkpoint: one line, exit status 2."""


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    _atomic_write(Path(path), lambda handle: torch.save(state, handle))


def save_json(data: Any, path: Path) -> None:
    _atomic_write(Path(path), lambda handle: handle.write((json.dumps(data, indent=2, default=str) + "\n").encode()))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at `path`, or RunError naming what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}; the run stopped before its first epoch ended, start it again without --resume.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunError(f"checkpoint {path} is corrupt or not an itop checkpoint ({first_line[:120]}); start the run again without --resume.") from None
    if not isinstance(state, dict) or state.get("format") != 1:
        raise RunError(f"checkpoint {path} is not an itop checkpoint; start the run again without --resume.")
    return state


def load_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"{path.parent} is not an itop run directory (no {path.name}); pass a directory written by itop train.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunError(f"{path} is corrupt ({error}); the run cannot be resumed.") from None
