"""Name -> function tables, so users can plug in their own criteria without editing the package."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """A small named table of functions: `register` adds one, `get` looks one up by name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, F] = {}

    def register(self, name: str, fn: F | None = None, *, overwrite: bool = False):
        """Add `fn` under `name`; usable as `@registry.register("name")`."""

        def add(f: F) -> F:
            if name in self._items and not overwrite:
                raise ValueError(f"a {self.kind} named {name!r} is already registered; pass overwrite=True to replace it.")
            self._items[name] = f
            return f

        return add(fn) if fn is not None else add

    def get(self, name: str) -> F:
        """The function registered as `name` (or as its lower-case form, so "ERK" finds "erk")."""
        for key in (name, name.lower() if isinstance(name, str) else name):
            if key in self._items:
                return self._items[key]
        raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}.")

    def unregister(self, name: str) -> None:
        """Remove `name` (a user's criterion that is no longer wanted)."""
        self._items.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
