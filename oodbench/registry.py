"""A tiny name -> builder registry, used for datasets and model families.

Names are only strings at the edges (CLI, yaml); inside the code a registry maps them to objects.
Registering a name twice is a programming error; looking up an unknown name is a user error that
lists the valid names (torchvision's `register_model` / `get_model` pattern).
"""

from __future__ import annotations

from typing import Callable, Generic, Iterable, Iterator, TypeVar

from oodbench.errors import OodbenchError

T = TypeVar("T")


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> OodbenchError:
    """The one message for a name a registry does not hold, whether a registry or its light list in
    names.py (checked before the heavy imports) is asked."""
    return OodbenchError(f"unknown {kind} {name!r}; valid names: {', '.join(sorted(valid))}")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            self.add(name, item)
            return item

        return decorator

    def add(self, name: str, item: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise unknown_name(self.kind, name, self._items) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def registered(self) -> list[str]:
        """The names in the order they were registered (the order tables show them in)."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
