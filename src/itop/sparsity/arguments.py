"""Checks of the arguments users pass to `Sparsifier`, so that a mistake is a ValueError naming it."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any


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


def check_numbers(density, prune_rate, update_frequency, total_steps, grad_average_beta, init_scale) -> None:
    """The Sparsifier's numeric arguments and init_scale, each refused with what it takes."""
    if not is_real(density) or not 0 < density <= 1:
        raise ValueError(f"density must be a number in (0, 1], got {density!r}.")
    if not is_real(prune_rate) or not 0 < prune_rate <= 1:
        raise ValueError(f"prune_rate must be a number in (0, 1], got {prune_rate!r}.")
    if update_frequency is not None and (not is_int(update_frequency) or update_frequency < 1):
        raise ValueError(f"update_frequency must be a positive integer or None (static sparse training), got {update_frequency!r}.")
    if not is_int(total_steps) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer (the run's length in optimizer steps), got {total_steps!r}.")
    if not is_real(grad_average_beta) or not 0 <= grad_average_beta < 1:
        raise ValueError(f"grad_average_beta must be a number in [0, 1), got {grad_average_beta!r}.")
    if init_scale not in ("dense", "sparse"):
        raise ValueError(
            f"init_scale must be 'dense' (keep the initial weights, as the original) or 'sparse' (scale the initial "
            f"active weights by 1/sqrt(layer density), for the layer's actual fan-in), got {init_scale!r}."
        )
