"""Models by name, timm-style, so configs and the command line can say `--model vgg-c`.

Each family module registers its factories with `@register_model(name, ...)`; a factory has the
signature `fn(num_classes, in_channels, image_size, **kwargs) -> nn.Module`. The registry also
remembers each model's natural input (MNIST 1x28x28, CIFAR 3x32x32, ImageNet 3x224x224), used
when `create_model` is not told the input size. Lookup ignores case, and aliases keep the
original code's keys (`ResNet18`, `ResNet-34`, `MLPCIFAR10`, `resnet50`) working.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

ModelFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its factory and the input it was designed for."""

    name: str
    factory: ModelFactory
    in_channels: int
    image_size: int


_MODELS: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower()


def register_model(
    name: str,
    *,
    in_channels: int = 3,
    image_size: int = 32,
    aliases: Iterable[str] = (),
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator adding a factory under `name` (and `aliases`); the defaults give its usual input."""

    def add(factory: ModelFactory) -> ModelFactory:
        canonical = _key(name)
        for key in (canonical, *map(_key, aliases)):
            if key in _MODELS or key in _ALIASES:
                raise ValueError(f"a model named {key!r} is already registered.")
        _MODELS[canonical] = ModelSpec(canonical, factory, in_channels, image_size)
        for alias in aliases:
            _ALIASES[_key(alias)] = canonical
        return factory

    return add


def get_model_spec(name: str) -> ModelSpec:
    """The registered entry for `name` (case-insensitive, aliases allowed)."""
    key = _key(name)
    key = _ALIASES.get(key, key)
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}.")
    return _MODELS[key]


def list_models(include_aliases: bool = False) -> list[str]:
    """Sorted names of the registered models (and of their aliases if asked)."""
    names = list(_MODELS)
    if include_aliases:
        names += list(_ALIASES)
    return sorted(names)


def default_input_shape(name: str) -> tuple[int, int, int]:
    """(channels, height, width) of the input the model was designed for."""
    spec = get_model_spec(name)
    return spec.in_channels, spec.image_size, spec.image_size


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int | None = None,
    image_size: int | None = None,
    **kwargs,
) -> nn.Module:
    """Build model `name`; a missing input size means the model's usual input (see the module doc)."""
    spec = get_model_spec(name)
    return spec.factory(
        num_classes=num_classes,
        in_channels=spec.in_channels if in_channels is None else in_channels,
        image_size=spec.image_size if image_size is None else image_size,
        **kwargs,
    )
