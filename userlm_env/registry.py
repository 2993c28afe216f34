"""A tiny name -> factory registry used for simulators, assistants, tasks and intent sources.

Factories are registered by dotted import path so that looking a name up never imports heavy
modules (torch, transformers) until the object is actually built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from userlm_env.errors import UnknownNameError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps short names to factories given as ``"module:attribute"`` paths or callables."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, str | Callable[..., T]] = {}

    def register(self, name: str, factory: str | Callable[..., T]) -> None:
        """Register ``factory`` (a callable or an import path ``"pkg.mod:Name"``) as ``name``."""
        self._entries[name] = factory

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def resolve(self, name: str) -> Callable[..., T]:
        """Return the factory registered under ``name``, importing it if needed."""
        try:
            entry = self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None
        if isinstance(entry, str):
            module_name, _, attribute = entry.partition(":")
            entry = getattr(importlib.import_module(module_name), attribute)
            self._entries[name] = entry
        return entry

    def make(self, name: str, **kwargs: Any) -> T:
        """Build the object registered under ``name`` with ``kwargs``."""
        return self.resolve(name)(**kwargs)
