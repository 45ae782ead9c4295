"""Which parameters of a model are sparse.

By default the weights of Linear and Conv1d/2d/3d layers, first and last layers included (as in
the original); biases and normalisation layers stay dense. `include` replaces that default with
module types (their `.weight`) and/or parameter-name patterns (fnmatch, e.g. "encoder.*.weight");
`exclude` removes matches of the same kinds.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable, Sequence, Union

from torch import nn

Selector = Union[str, type]
DEFAULT_TYPES: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _matches(name: str, module: nn.Module, is_weight: bool, selectors: Iterable[Selector]) -> bool:
    for sel in selectors:
        if isinstance(sel, str):
            if fnmatchcase(name, sel):
                return True
        elif isinstance(sel, type) and issubclass(sel, nn.Module):
            if is_weight and isinstance(module, sel):
                return True
        else:
            raise ValueError(f"include/exclude entries must be name patterns (str) or nn.Module subclasses, got {sel!r}.")
    return False


def sparse_parameters(
    model: nn.Module,
    include: Sequence[Selector] | None = None,
    exclude: Sequence[Selector] = (),
) -> dict[str, nn.Parameter]:
    """Map from parameter name (as in `model.named_parameters()`) to each sparse parameter."""
    selectors = DEFAULT_TYPES if include is None else tuple(include)
    owner = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            owner[full] = (module, param_name == "weight")
    chosen = {}
    for name, param in model.named_parameters():
        module, is_weight = owner[name]
        if _matches(name, module, is_weight, selectors) and not _matches(name, module, is_weight, exclude):
            chosen[name] = param
    return chosen
