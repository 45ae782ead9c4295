"""Which parameters of a model are sparse.

By default the weights of Linear and Conv1d/2d/3d layers, first and last layers included (as in
the original); biases and normalisation layers stay dense. `include` replaces that default with
module types and/or parameter-name patterns (fnmatch, e.g. "encoder.*.weight"); `exclude` removes
matches of the same kinds. A module type matches every weight (a parameter of two or more
dimensions: matrices and kernels, never biases or norm scales) held by a module of that type or by
its submodules, so `nn.MultiheadAttention` covers `in_proj_weight` and `out_proj.weight` and
`nn.LSTM` its `weight_ih_l*` / `weight_hh_l*`.

A parameter registered under several names (tied weights) is chosen when any of its names matches
`include` and none matches `exclude`; it is keyed by its first name, as in `model.named_parameters()`.
Frozen parameters (`requires_grad=False`) are never sparse: no gradient would ever move the
weights that a topology update regrows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase

from torch import nn

Selector = str | type
DEFAULT_TYPES: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check(selectors: Sequence[Selector]) -> None:
    for sel in selectors:
        if not (isinstance(sel, str) or (isinstance(sel, type) and issubclass(sel, nn.Module))):
            raise ValueError(f"include/exclude entries must be name patterns (str) or nn.Module subclasses, got {sel!r}.")


def _matches(sel: Selector, name: str, holders: list[nn.Module], param: nn.Parameter) -> bool:
    """Does one selector match one name of `param`? `holders`: the modules on that name's path."""
    if isinstance(sel, str):
        return fnmatchcase(name, sel)
    return param.dim() >= 2 and any(isinstance(module, sel) for module in holders)


def _names(model: nn.Module) -> dict[int, list[tuple[str, list[nn.Module]]]]:
    """Every name each parameter is registered under, with the modules on the path to it."""
    modules = dict(model.named_modules(remove_duplicate=False))
    names: dict[int, list[tuple[str, list[nn.Module]]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        parts = name.split(".")[:-1]
        holders = [modules[".".join(parts[:i])] for i in range(len(parts) + 1)]
        names.setdefault(id(param), []).append((name, holders))
    return names


def sparse_parameters(
    model: nn.Module,
    include: Sequence[Selector] | None = None,
    exclude: Sequence[Selector] = (),
    matched_elsewhere: Callable[[Selector], bool] = lambda sel: False,
) -> dict[str, nn.Parameter]:
    """Map from parameter name (as in `model.named_parameters()`) to each sparse parameter.

    Raises ValueError for an entry that is neither a pattern nor a module type, and for an
    `include` entry that matches no parameter (a misspelt pattern would otherwise go unnoticed)
    and that `matched_elsewhere` does not claim (the truly sparse layers it chooses).
    """
    wanted = DEFAULT_TYPES if include is None else tuple(include)
    unwanted = tuple(exclude)
    _check(wanted + unwanted)
    names = _names(model)
    matched: set[int] = set()
    chosen = {}
    for name, param in model.named_parameters():
        aliases = names[id(param)]
        hits = {i for i, sel in enumerate(wanted) if any(_matches(sel, n, h, param) for n, h in aliases)}
        matched |= hits
        if not hits or not param.requires_grad:
            continue
        if not any(_matches(sel, n, h, param) for sel in unwanted for n, h in aliases):
            chosen[name] = param
    missed = [sel for i, sel in enumerate(wanted) if i not in matched and not matched_elsewhere(sel)]
    if include is not None and missed:
        raise ValueError(
            f"include entry {missed[0]!r} matches no parameter of the model; "
            "give a module type the model uses or a pattern of names from model.named_parameters()."
        )
    return chosen
