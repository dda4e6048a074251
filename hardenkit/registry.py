"""Named registries for pluggable components (strategies, detectors, models, attacks).

Built-ins register themselves on import. Third-party plugins are discovered lazily through
entry points (group ``hardenkit.<kind>``); set ``HARDENKIT_DISABLE_PLUGINS=1`` to turn
discovery off. A name is never silently replaced: registering an existing name raises
:class:`~hardenkit.errors.RegistryError` unless ``override=True`` is passed explicitly.

Example:
    >>> from hardenkit.registry import Registry
    >>> shapes: Registry[int] = Registry("shapes")
    >>> shapes.register("square", 4)
    4
    >>> shapes.get("square")
    4
    >>> shapes.register("square", 5)
    Traceback (most recent call last):
    ...
    hardenkit.errors.RegistryError: shapes 'square' is already registered ...
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from .errors import RegistryError
from .logging import get_logger

__all__ = ["Registry"]

T = TypeVar("T")
_log = get_logger("hardenkit.registry")


class Registry(Generic[T]):
    """A name → object mapping with entry-point plugin discovery and no silent override."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._plugins_loaded = False

    def register(self, name: str, obj: T, *, override: bool = False) -> T:
        """Register ``obj`` under ``name``; returns ``obj`` so it can be used as a decorator."""
        key = name.strip().lower()
        if not key:
            raise RegistryError(f"{self.kind} name must be a non-empty string.")
        if key in self._items and not override and self._items[key] is not obj:
            raise RegistryError(
                f"{self.kind} {key!r} is already registered ({self._describe(self._items[key])}).",
                hint="choose another name, or pass override=True to replace it on purpose",
            )
        self._items[key] = obj
        return obj

    def decorator(self, name: str, *, override: bool = False) -> Callable[[T], T]:
        """``@registry.decorator("name")`` registers the decorated object."""

        def wrap(obj: T) -> T:
            return self.register(name, obj, override=override)

        return wrap

    def unregister(self, name: str) -> None:
        """Remove ``name`` (used by tests and plugin reloads)."""
        self._items.pop(name.strip().lower(), None)

    def get(self, name: str) -> T:
        """Look ``name`` up, loading entry-point plugins on first miss."""
        key = name.strip().lower()
        if key not in self._items:
            self.load_plugins()
        if key not in self._items:
            raise RegistryError(
                f"Unknown {self.kind} {name!r}. Available: {', '.join(self.names()) or '(none)'}.",
                hint=f"use one of the registered {self.kind} names or install the plugin",
            )
        return self._items[key]

    def names(self) -> list[str]:
        """Sorted registered names (plugins included)."""
        self.load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def load_plugins(self) -> None:
        """Discover entry points of ``entry_point_group`` once (no-op when disabled)."""
        if self._plugins_loaded or self.entry_point_group is None:
            return
        if os.environ.get("HARDENKIT_DISABLE_PLUGINS", "").lower() in {"1", "true", "yes"}:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name.strip().lower() in self._items:
                _log.warning(
                    "registry.plugin_shadowed", kind=self.kind, plugin=ep.name, value=ep.value
                )
                continue
            try:
                obj = ep.load()
            except Exception as exc:
                _log.warning(
                    "registry.plugin_failed", kind=self.kind, plugin=ep.name, error=str(exc)
                )
                continue
            self.register(ep.name, obj)

    @staticmethod
    def _describe(obj: object) -> str:
        mod = getattr(obj, "__module__", type(obj).__module__)
        qual = getattr(obj, "__qualname__", type(obj).__qualname__)
        return f"{mod}.{qual}"
