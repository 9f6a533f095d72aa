"""A name -> entry registry: the only path from a config string to an algorithm.

An entry carries the function and the facts a training loop needs about it (for example "needs
reference samples"), so call sites never branch on names. `get` also accepts an import path
``"package.module:function"`` for user-defined algorithms. Standard library only.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

E = TypeVar("E")


@dataclass
class Registry(Generic[E]):
    """Entries keyed by name.

    kind: names the registry in error messages (e.g. "advantage estimator").
    make: builds an entry from ``name=``, ``fn=`` and the registered facts (e.g. a spec dataclass);
        None means the entry is the function itself.
    """

    kind: str
    make: Callable[..., E] | None = None
    _entries: dict[str, E] = field(default_factory=dict)

    def _build(self, name: str, fn: Callable[..., Any], **facts: Any) -> E:
        if self.make is None:
            if facts:
                raise ValueError(f"{self.kind} registry takes no facts, got {sorted(facts)}")
            return fn  # type: ignore[return-value]
        return self.make(name=name, fn=fn, **facts)

    def add(self, name: str, entry: E) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def register(self, name: str, **facts: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register the function under ``name`` with the given facts; returns it unchanged."""

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name, self._build(name, fn, **facts))
            return fn

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> E:
        """The entry for ``name``; an import path 'module:function' gets an entry with default facts."""
        if not isinstance(name, str):
            raise ValueError(f"{self.kind} name must be a string, got {type(name).__name__}")
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return self._build(name, import_callable(name))
        raise ValueError(f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}"
                         " (or an import path 'module:function')")


def import_callable(path: str) -> Callable[..., Any]:
    """Resolve ``"package.module:attr"`` to a callable, with a clear error when it is not one."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"import path {path!r} must look like 'package.module:function'")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {path!r}: {err}") from err
    if not callable(obj):
        raise ValueError(f"{path!r} is not callable")
    return obj
