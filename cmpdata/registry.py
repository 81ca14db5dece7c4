"""Name -> implementation tables for the pluggable stages (flow backends, guidance samplers).

Each table is filled by a decorator at import time. Registering a name twice is a bug and
raises; looking up an unknown name raises a ``ValueError`` that lists the valid choices, so
a typo on the command line tells the user what they could have typed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from cmpdata.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of implementations of one kind of stage."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            choices = ", ".join(sorted(self._items))
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
