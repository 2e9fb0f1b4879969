"""A small named registry that fails loudly: duplicates are errors, a miss lists the valid names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from kd2deploy.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (builders, losses, datasets, backends).

    Args:
        kind: what the registry holds, used in error messages ("model", "loss").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; a second use of a name raises."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """Returns the object registered as ``name`` or raises a ConfigError listing valid names."""
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(self.unknown(name)) from None

    def check(self, name: str) -> str:
        """Returns ``name`` if registered, else raises ValueError (for use inside pydantic validators)."""
        if name not in self._items:
            raise ValueError(self.unknown(name))
        return name

    def unknown(self, name: str) -> str:
        return f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
