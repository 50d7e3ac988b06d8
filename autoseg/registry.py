"""One registry rule for every pluggable kind (planners, networks).

Things are registered by decorator, never found by scanning folders. A registry loads its
built-in modules and then its entry points (group ``autoseg.<kind>s``; the value is a module
that registers when imported) on the first lookup; a plug-in that fails to load is skipped with
a warning, so that it cannot break the built-in ones.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from autoseg.errors import AutosegError

log = logging.getLogger(__name__)

T = TypeVar("T", bound=Callable)

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Named callables of one kind, filled by decorator and by entry points.

    Args:
        kind: what is registered (``"planner"``), used in messages.
        group: the entry-point group of plug-ins (``"autoseg.planners"``).
        builtin_modules: modules that register the built-in entries when imported.
    """

    def __init__(self, kind: str, group: str, builtin_modules: tuple[str, ...] = ()) -> None:
        self.kind, self.group, self.builtin_modules = kind, group, builtin_modules
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering a callable under ``name``.

        Registering the same function again (a module re-import) is allowed; a different one
        under a taken name is a programming error (ValueError).
        """

        def decorator(fn: T) -> T:
            old = self._entries.get(name)
            if old is not None and _identity(old) != _identity(fn):
                raise ValueError(f"{self.kind} '{name}' is already registered by {old.__module__}")
            self._entries[name] = fn
            return fn

        return decorator

    def _load(self) -> None:
        """Import the built-in modules and the entry points, once."""
        if self._loaded:
            return
        self._loaded = True
        for module in self.builtin_modules:
            importlib.import_module(module)
        for ep in entry_points(group=self.group):
            if ep.name in self._entries:
                continue
            try:
                ep.load()
            except Exception as exc:  # a broken plug-in must not break the built-in entries
                log.warning(
                    "could not load %s entry point %s = %s: %s", self.kind, ep.name, ep.value, exc
                )

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The callable registered as ``name``.

        Raises:
            AutosegError: no such name (the message lists the available ones).
        """
        self._load()
        if name not in self._entries:
            raise AutosegError(
                f"unknown {self.kind} '{name}'; available {self.kind}s: {', '.join(self.names())}"
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self):
        return iter(self.names())


def _identity(fn: Callable) -> tuple[str, str]:
    return (fn.__module__, getattr(fn, "__qualname__", repr(fn)))
