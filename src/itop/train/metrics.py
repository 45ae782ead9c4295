"""metrics.jsonl: one JSON record per epoch and per topology update, appended as they happen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, path: Path, keep_until_step: int | None = None):
        """Open for appending; on resume, drop records after the checkpoint's step first. A new
        run (`keep_until_step` None) starts the file afresh."""
        self.path = Path(path)
        if keep_until_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if record.get("step", 0) <= keep_until_step:
                    kept.append(line)
            self.path.write_text("".join(line + "\n" for line in kept))
        self._handle = self.path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()

    def running_loss(self, step: int, loss: float, lr: float) -> None:
        """metrics.jsonl keeps epochs and updates only; the running loss is TensorBoard's."""

    def close(self) -> None:
        self._handle.close()


class NullLog:
    """What ranks other than 0 write: nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def write(self, record: dict[str, Any]) -> None:
        pass

    def running_loss(self, step: int, loss: float, lr: float) -> None:
        pass

    def close(self) -> None:
        pass


def epoch_line(record: dict[str, Any], total_epochs: int) -> str:
    val = "   -   " if record["val_acc"] is None else f"{100 * record['val_acc']:6.2f}%"
    return (
        f"epoch {record['epoch']:>{len(str(total_epochs))}}/{total_epochs} | loss {record['train_loss']:.4f} "
        f"| train {100 * record['train_acc']:6.2f}% | val {val} | lr {record['lr']:.4g} "
        f"| density {record['density']:.4f} | Rs {record['itop_rate']:.4f} | {record['seconds']:.1f} s"
    )
