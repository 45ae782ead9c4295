"""Groups of runs that differ only by seed: what a paper's `mean ± std` is taken over.

Two finished runs are in one group when their config.json are equal once IGNORED_KEYS are
removed (which run it is and where it ran, not what it computes), and the settings that their
kind of run never reads (a dense run's density or update frequency, a static run's growth), so
that a dense baseline trained beside an update-frequency sweep stays one group. Runs are
compared as loaded (`Run` objects), so all of this is testable without files.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from .runs import ReportError, Run, method_label, sparsity_of

__all__ = ["IGNORED_KEYS", "Group", "group_runs", "kind_of", "differing_settings", "settings_label", "settings_sort_key", "ACCURACY_KEYS"]

# Config keys that name the run or say where and how it ran, not what it computes.
IGNORED_KEYS = ("seed", "save", "data_dir", "device", "workers", "progress", "iters", "log_interval", "ignored", "tensorboard")

# Settings that a kind of run never reads: dense runs build no sparsifier; static (fix=True)
# runs never update their topology.
_UPDATE_KEYS = ("growth", "death", "redistribution", "death_rate", "update_frequency", "update_every", "decay_schedule", "threshold")
UNUSED_KEYS = {
    "dense": ("fix", "density", "sparse_init", "epsilon", "truly_sparse", *_UPDATE_KEYS),
    "static": _UPDATE_KEYS,
    "dynamic": (),
}

# Values that configs saved before a key existed ran with (as itop.train.config assumes).
_ASSUMED = {"processes": 1}

# What the Method column (sparse, fix, growth, multiplier) and Sparsity column (density) say.
_SHOWN_ELSEWHERE = frozenset({"sparse", "fix", "growth", "multiplier", "density"})

# `itop report --accuracy` -> the summary key of that test accuracy.
ACCURACY_KEYS = {"best": "test_acc", "final": "final_test_acc"}

_MISSING = object()


def kind_of(run: Run) -> str:
    """ "dense", "static" (sparse with a fixed topology) or "dynamic" (sparse, updated)."""
    if run.dense:
        return "dense"
    method = str((run.summary or {}).get("method", ""))
    if method.lower().startswith("static") or run.config.get("fix") is True:
        return "static"
    return "dynamic"


def _settings(config: dict, kind: str) -> dict:
    unused = set(IGNORED_KEYS) | set(UNUSED_KEYS[kind])
    return {**_ASSUMED, **{k: v for k, v in config.items() if k not in unused}}


@dataclass
class Group:
    """Finished runs that differ only by seed; `settings` is their shared config (less
    IGNORED_KEYS and the settings that their `kind` never reads)."""

    runs: list[Run]
    settings: dict
    kind: str

    @property
    def summary(self) -> dict:
        """The first run's summary: method, data and model are the same in all of them."""
        return self.runs[0].summary

    @property
    def method(self) -> str:
        return method_label(self.summary)

    @property
    def sparsity(self) -> float:
        return statistics.mean(sparsity_of(r.summary) for r in self.runs)

    @property
    def dense(self) -> bool:
        return self.kind == "dense"

    @property
    def static(self) -> bool:
        return self.kind == "static"

    def values(self, key: str) -> list[float]:
        """The runs' numbers under `key` in summary.json; runs without it (or null) are left out."""
        out = []
        for run in self.runs:
            value = run.summary.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ReportError(f"{run.path / 'summary.json'}: {key}={value!r} is not a number")
            out.append(float(value))
        return out

    def mean(self, key: str) -> float | None:
        values = self.values(key)
        return statistics.mean(values) if values else None

    def std(self, key: str) -> float | None:
        """Sample standard deviation over the random seeds; None with fewer than two values."""
        values = self.values(key)
        return statistics.stdev(values) if len(values) > 1 else None


def _identity(run: Run) -> tuple:
    s = run.summary
    return (str(s.get("data", "")), str(s.get("model", "")), method_label(s))


def group_runs(runs: Iterable[Run]) -> list[Group]:
    """Finished runs grouped by their settings, in the order of each group's first run.

    Unfinished runs are left out. Runs whose summaries name another data set, model or method
    are never grouped, whatever their configs say.
    """
    groups, identities = [], []
    for run in runs:
        if run.summary is None:
            continue
        kind = kind_of(run)
        settings = _settings(run.config, kind)
        identity = (kind, _identity(run))
        for group, ident in zip(groups, identities):
            if ident == identity and group.settings == settings:
                group.runs.append(run)
                break
        else:
            groups.append(Group([run], settings, kind))
            identities.append(identity)
    return groups


def differing_settings(groups: Iterable[Group]) -> list[str]:
    """Sorted config keys whose values differ between the groups that read them, except those
    that the Method and Sparsity columns already say."""
    groups = list(groups)
    keys = sorted({k for g in groups for k in g.settings} - _SHOWN_ELSEWHERE)
    out = []
    for key in keys:
        values = [g.settings.get(key, _MISSING) for g in groups if key not in UNUSED_KEYS[g.kind]]
        if any(v != values[0] for v in values[1:]):
            out.append(key)
    return out


def _text(value) -> str:
    if value is _MISSING:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


def settings_label(group: Group, keys: Iterable[str]) -> str:
    """`key=value, ...` for those of `keys` that the group's kind reads ('' when none)."""
    return ", ".join(f"{k}={_text(group.settings.get(k, _MISSING))}" for k in keys if k not in UNUSED_KEYS[group.kind])


def settings_sort_key(group: Group, keys: Iterable[str]) -> tuple:
    """Sorts groups by the values of `keys`, numbers by value (25 before 100), others as text."""
    out = []
    for key in keys:
        value = group.settings.get(key, _MISSING)
        if key in UNUSED_KEYS[group.kind] or value is _MISSING:
            out.append((2, 0.0, ""))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((0, float(value), ""))
        else:
            out.append((1, 0.0, _text(value)))
    return tuple(out)
