"""A name -> entry registry: the only path from a config string to an algorithm.

An entry carries the function and the facts a training loop needs about it (for example "needs
reference samples"), so call sites never branch on names. The facts travel with the function: an
import path ``"package.module:function"`` resolves to the entry the function was registered with (the
same object its name gives), so both spellings train the same thing. In a registry with facts, a
function that was never registered is refused with an error saying how to register it (the
``register`` decorator in the function's own module), unless every fact has a safe default
(``unregistered_ok``: verifiers, whose one fact marks the exception); registries without facts (KL
estimators, model presets) accept any callable. Standard library only.
"""

from __future__ import annotations

import dataclasses
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
    decorator: str = "register"
    """How users reach ``register`` (e.g. "rlvr.losses.register"), for error messages."""
    unregistered_ok: bool = False
    """With ``make``: an import path to a function that was never registered gives a fresh entry with every fact
    at its default, instead of the error (for registries whose defaults are right for most functions)."""
    _entries: dict[str, E] = field(default_factory=dict)
    _by_fn: dict[Callable[..., Any], E] = field(default_factory=dict)

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
            if fn in self._by_fn and name not in self._entries:
                raise ValueError(f"{self.kind} {fn.__qualname__} is already registered as "
                                 f"{self._name_of(fn)!r}: one name per function, so that its import path names "
                                 "one entry")
            entry = self._build(name, fn, **facts)
            self.add(name, entry)
            self._by_fn[fn] = entry
            return fn

        return deco

    def _name_of(self, fn: Callable[..., Any]) -> str:
        return next(name for name, entry in self._entries.items() if entry is self._by_fn[fn])

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is a registered name (import paths are not names)."""
        return name in self._entries

    def entry(self, name: str) -> E:
        """The entry for ``name``, or for the function an import path 'module:function' names (importing
        its module runs its ``register`` decorator); the path of a registered function gives its entry."""
        if not isinstance(name, str):
            raise ValueError(f"{self.kind} name must be a string, got {type(name).__name__}")
        if name in self._entries:
            return self._entries[name]
        if ":" not in name:
            raise ValueError(f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}"
                             " (or an import path 'module:function')")
        fn = import_callable(name)
        if fn in self._by_fn:
            return self._by_fn[fn]
        if self.make is None:
            return fn  # type: ignore[return-value]
        if self.unregistered_ok:
            return self.make(name=name, fn=fn)
        facts = ", ".join(f"{f.name}=..." for f in dataclasses.fields(self.make) if f.name not in ("name", "fn"))
        raise ValueError(f"{name!r} is not a registered {self.kind}, so rlvr does not know what the training loop "
                         f"must provide for it: decorate it in its module with @{self.decorator}(\"my_name\", "
                         f"{facts}) (each fact defaults to off), then name it {name!r} or \"my_name\"")


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
