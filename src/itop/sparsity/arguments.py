"""Checks of the arguments users pass to `Sparsifier`, so that a mistake is a ValueError naming it."""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Callable, Mapping


def is_real(value) -> bool:
    """A finite real number (numpy scalars included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value) -> bool:
    """An integer (numpy integers included), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# The arguments the sparsifier itself passes to every prune / grow criterion (not options).
PRUNE_ARGUMENTS = {"weight", "mask", "k", "grad"}
GROW_ARGUMENTS = {"candidates", "k", "weight", "grad", "grad_average", "generator"}


def checked_options(fn: Callable, options: Mapping[str, Any] | None, what: str, given: set[str]) -> dict[str, Any]:
    """`options` as a dict, after checking that `fn` has a parameter of each name (a typo must
    not silently fall back to a default)."""
    options = dict(options or {})
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C function: nothing to check against
        return options
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - given
    unknown = sorted(set(options) - named)
    if unknown:
        accepted = ", ".join(sorted(named)) or "none"
        raise ValueError(f"{what} has an unknown option {unknown[0]!r} for {getattr(fn, '__name__', fn)}; it accepts: {accepted}.")
    return options
