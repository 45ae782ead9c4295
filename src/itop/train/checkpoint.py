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

from ..loading import first_line

CHECKPOINT = "checkpoint.pt"  # the last finished epoch's state, in a run directory
BEST_SPARSE = "best_sparse.pt"  # the best model with its sparse Linear layers stored as SparseLinear, beside best.pt
RESUME_ADVICE = "start the run again without --resume"


class RunError(ValueError):
    """A problem with a run directory or checkpoint: one line, exit status 2."""


def _file_mode() -> int:
    """What open() would give a new file under the current umask (mkstemp gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    _atomic_write(Path(path), lambda handle: torch.save(state, handle))


def save_json(data: Any, path: Path) -> None:
    _atomic_write(Path(path), lambda handle: handle.write((json.dumps(data, indent=2, default=str) + "\n").encode()))


def load_checkpoint(path: Path, advice: str = RESUME_ADVICE) -> dict[str, Any]:
    """The checkpoint at `path`, or RunError naming what is wrong with it and `advice`."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}; {advice}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise RunError(f"checkpoint {path} is corrupt or not an itop checkpoint ({first_line(error)}); {advice}.") from None
    if not isinstance(state, dict) or state.get("format") != 1:
        raise RunError(f"checkpoint {path} is not an itop checkpoint; {advice}.")
    return state


def load_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"{path.parent} is not an itop run directory (no {path.name}); pass a directory written by itop train.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunError(f"{path} is corrupt ({error}); the run cannot be resumed.") from None
