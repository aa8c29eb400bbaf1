"""A tiny name -> builder registry, used for datasets and model families.

Names are only strings at the edges (CLI, yaml); inside the code a registry maps them to objects.
Registering a name twice is a programming error; looking up an unknown name is a user error that
lists the valid names (torchvision's `register_model` / `get_model` pattern).

A registry made with `plugins=GROUP` also holds the names other installed packages declare in that entry
point group (`plugins.py`): they join after the built-ins when the registry is first asked anything, and
each plugin's module is imported only when `get` first hands its name out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Generic, Iterable, Iterator, TypeVar

from oodbench.errors import OodbenchError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

T = TypeVar("T")


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> OodbenchError:
    """The one message for a name a registry does not hold, whether a registry or its light list in
    names.py (checked before the heavy imports) is asked."""
    return OodbenchError(f"unknown {kind} {name!r}; valid names: {', '.join(sorted(valid))}")


class Registry(Generic[T]):
    def __init__(self, kind: str, *, plugins: str | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._plugin_group = plugins  # the entry point group still to add (None: added, or none)
        self._unloaded: dict[str, EntryPoint] = {}  # plugin names whose module get() has not imported yet

    def _with_plugins(self) -> dict[str, T]:
        """Every item by name, the plugins' (placeholders until loaded) after the built-ins."""
        if self._plugin_group is not None:
            from oodbench import plugins

            plugins.check(self._plugin_group, self._items)  # a name clash is an error naming both
            for ep in plugins.entry_points(self._plugin_group):
                self._unloaded[ep.name] = ep
                self._items[ep.name] = None  # type: ignore[assignment]  # keeps the order: loaded on get()
            self._plugin_group = None
        return self._items

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
        items = self._with_plugins()
        if name not in items:
            raise unknown_name(self.kind, name, items)
        if name in self._unloaded:
            from oodbench import plugins

            items[name] = plugins.load(self._unloaded[name])  # a failure stays unloaded: it fails again next time
            del self._unloaded[name]
        return items[name]

    def names(self) -> list[str]:
        return sorted(self._with_plugins())

    def registered(self) -> list[str]:
        """The names in the order they were registered (the order tables show them in), plugins last."""
        return list(self._with_plugins())

    def __contains__(self, name: object) -> bool:
        return name in self._with_plugins()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
