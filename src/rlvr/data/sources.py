"""The data-source registry: how a ``data.source`` string names a loader, and what the loader takes.

A source is registered in its own module with the facts build_problems and the trainer need::

    from rlvr.data import sources

    @sources.register("rg", argument="task", generated=True, default_size=2000, takes_task_kwargs=True)
    def rg_problems(task, *, size, seed, task_kwargs): ...

It is then named in one of three ways (``spec`` below):

- exactly, by its name: ``arith``, ``champ``, ``math500`` (a fixed set or a preset such as a benchmark);
- ``<name>:<argument>`` when it has an ``argument``: ``rg:basic_arithmetic`` calls the loader with
  ``task="basic_arithmetic"``, ``hf:openai/gsm8k:main@test`` with ``repo="openai/gsm8k:main@test"``;
- by a path ending in one of its ``suffixes``: ``data/train.jsonl`` (the path is the argument);
- or by the import path of its loader, ``my_package.my_module:my_source`` (importing the module registers it),
  followed by ``:<argument>`` for a source with an argument (``my_package.hub:hub_source:org/dataset``).

The loader is called with keyword arguments only: its argument (under the name ``argument`` gives), ``size``
(an int, or None = every problem the source has), and, as its facts say, ``seed`` (generated sources),
``task_kwargs`` (a dict, possibly empty), ``prompt_field``, ``answer_field``, ``template`` and ``answer_extract``
(sources of rows with named fields, which apply the template's user message and the answer extractor themselves:
``rlvr.data.rows``) and ``path`` (sources with a local copy: a folder saved by ``datasets.save_to_disk`` or a data
file, None = look it up: ``rlvr.data.hub``). It returns a list of ``Problem``; ``rlvr.data.build_problems`` checks
the options against the facts before calling it, then applies the template (for sources without row fields: only
``{prompt}``) and the verifier.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from rlvr.data.base import DataError
from rlvr.registry import Registry
from rlvr.types import Problem

__all__ = ["DataSource", "register", "source", "check_options", "names", "spellings", "suffixes"]

Loader = Callable[..., list[Problem]]
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

GENERATED_SIZE = 2000
"""The default_size of rlvr's generated sources (rg:<task>, arith): problems a run generates when data.size
is None."""


@dataclass(frozen=True)
class DataSource:
    """A registered problem source and what a caller must know about it.

    argument: the loader's keyword for the text after ``"<name>:"`` (``rg:<task>`` -> ``task=``; a file's
        path); None: the source is named exactly and takes no argument.
    suffixes: file suffixes that name this source by path (``(".jsonl",)``); needs an ``argument`` (the path).
    generated: problems are generated from a seed, so there is no "all": build_problems needs ``size`` and
        passes ``seed``.
    default_size: problems the trainer asks a generated source for when ``data.size`` is None.
    takes_task_kwargs: the loader takes ``task_kwargs`` (generator or subset options; it checks their names).
    row_fields: problems come from rows with named fields: the loader takes ``prompt_field``, ``answer_field``
        and ``template`` (which may name any field of the row) and applies the template itself.
    default_verifier: the verifier every problem gets unless build_problems is given one; None: the loader
        chooses per problem (``rlvr.data.base.verifier_for_answer``: int for an integer gold, else math).
    default_template: the prompt template (``rlvr.data.templates``) used when none is given; None: ``plain``.
    local_copy: the loader takes ``path``, where a local copy of a hub dataset lies (``rlvr.data.hub``).
    """

    name: str
    fn: Loader
    argument: str | None = None
    suffixes: tuple[str, ...] = ()
    generated: bool = False
    default_size: int | None = None
    takes_task_kwargs: bool = False
    row_fields: bool = False
    default_verifier: str | None = None
    default_template: str | None = None
    local_copy: bool = False

    def __post_init__(self) -> None:
        if not self.name or ":" in self.name:
            raise ValueError(f"data source name {self.name!r} must be non-empty and without ':'")
        if self.suffixes and self.argument is None:
            raise ValueError(f"data source {self.name!r}: suffixes need an argument (the keyword the path goes to)")
        if any(not s.startswith(".") or s != s.lower() for s in self.suffixes):
            raise ValueError(f"data source {self.name!r}: suffixes must be lower-case and start with '.', "
                             f"got {self.suffixes}")
        if self.generated != (self.default_size is not None):
            raise ValueError(f"data source {self.name!r}: a generated source needs a default_size, and only a "
                             "generated one has it")
        if self.default_size is not None and self.default_size < 1:
            raise ValueError(f"data source {self.name!r}: default_size must be >= 1, got {self.default_size}")

    @property
    def spelling(self) -> str:
        """How a config names it, for messages: ``arith``, ``rg:<task>``, ``a .jsonl or .parquet file``."""
        if self.suffixes:
            return "a " + " or ".join(self.suffixes) + " file"
        return self.name if self.argument is None else f"{self.name}:<{self.argument}>"


_REGISTRY: Registry[DataSource] = Registry("data source", DataSource, decorator="rlvr.data.sources.register")
register = _REGISTRY.register  # decorator: register(name, **DataSource facts)


def names() -> list[str]:
    """Sorted names of the registered sources."""
    return _REGISTRY.names()


def spellings() -> list[str]:
    """How each registered source is named, for messages and help (``arith``, ``rg:<task>``, ...)."""
    return [_REGISTRY.entry(n).spelling for n in names()]


def suffixes() -> tuple[str, ...]:
    """Every file suffix a registered source is named by."""
    return tuple(s for n in names() for s in _REGISTRY.entry(n).suffixes)


def source(spec: str | os.PathLike[str]) -> tuple[DataSource, str | None]:
    """The registered source ``spec`` names, and its argument (None for a source without one).

    Tried in this order: an exact name; ``<name>:<argument>``; the import path ``module:function[:argument]`` of
    a registered loader; a path with a registered suffix (a PathLike is always a path). Anything else is a
    DataError listing the valid spellings.
    """
    if isinstance(spec, os.PathLike):
        return _file_source(os.fspath(spec))
    if not isinstance(spec, str) or not spec:
        raise DataError(f"source must be a non-empty string or path, got {spec!r}")
    head, sep, rest = spec.partition(":")
    if head in _REGISTRY:
        entry = _REGISTRY.entry(head)
        if (entry.argument is not None) != bool(sep):
            raise DataError(f"source {spec!r}: name it {entry.spelling}" + (
                f" ({head} takes no argument)" if entry.argument is None else f" (the {entry.argument} is missing)"))
        if sep and not rest:
            raise DataError(f"source {spec!r}: the {entry.argument} after '{head}:' is empty ({entry.spelling})")
        return entry, rest if sep else None
    if sep and _MODULE_RE.fullmatch(head):
        try:
            return _import_path_source(spec)
        except DataError:
            if not spec.lower().endswith(suffixes()):  # else a file path with a colon in it
                raise
    return _file_source(spec)


def _file_source(path: str) -> tuple[DataSource, str]:
    """The source whose suffix ends ``path``, else a DataError: an unknown file type, or an unknown source."""
    for name in names():
        entry = _REGISTRY.entry(name)
        if entry.suffixes and path.lower().endswith(entry.suffixes):
            return entry, path
    suffix = os.path.splitext(path)[1]
    if suffix or "/" in path or os.sep in path:
        raise DataError(f"{path}: unknown file type {suffix or '(none)'!r}; expected one of {suffixes()} "
                        f"(valid sources: {_valid()})")
    raise DataError(f"unknown data source {path!r}; valid sources: {_valid()}")


def _import_path_source(spec: str) -> tuple[DataSource, str | None]:
    """``module:function`` of a registered loader, or ``module:function:argument`` for one with an argument."""
    module, _, rest = spec.partition(":")
    function, sep, argument = rest.partition(":")
    try:
        entry = _REGISTRY.entry(f"{module}:{function}")
    except ValueError as err:
        raise DataError(f"data source {spec!r}: {err} (valid sources: {_valid()})") from None
    if (entry.argument is not None) != bool(argument):
        raise DataError(f"data source {spec!r}: " + (f"{module}:{function} takes no argument" if entry.argument is None
                        else f"name it {module}:{function}:<{entry.argument}> (its {entry.argument} is missing)"))
    return entry, argument if sep else None


def _valid() -> str:
    return ", ".join(spellings()) + ", or the import path 'module:function' of a registered source"


def check_options(entry: DataSource, spec: str, *, size: Any, prompt_field: str, answer_field: str,
                  task_kwargs: dict[str, Any] | None, answer_extract: str | None = None,
                  path: str | os.PathLike[str] | None = None) -> None:
    """The options build_problems got, against the source's facts (DataError naming the option and source)."""
    if size is None and entry.generated:
        raise DataError(f"source {spec!r} needs size= (the number of problems to generate)")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DataError(f"size must be a positive int or None, got {size!r} (source {spec!r})")
    if not entry.row_fields and (prompt_field, answer_field) != ("prompt", "answer"):
        raise DataError(f"prompt_field/answer_field apply to sources with row fields ({', '.join(_with('row_fields'))}), "
                        f"not to {spec!r}")
    if not entry.row_fields and answer_extract is not None:
        raise DataError(f"answer_extract applies to sources with row fields ({', '.join(_with('row_fields'))}), not "
                        f"to {spec!r} (a preset extracts its own gold)")
    if task_kwargs and not entry.takes_task_kwargs:
        raise DataError(f"task_kwargs apply to {', '.join(_with('takes_task_kwargs'))}; {spec!r} takes none "
                        "(data.task_kwargs={} clears the main job's default)")
    if path is not None and not entry.local_copy:
        raise DataError(f"a local copy (path) applies to hub datasets ({', '.join(_with('local_copy'))}), "
                        f"not to {spec!r}")


def _with(fact: str) -> list[str]:
    """How the sources with ``fact`` set are named, for messages."""
    return [e.spelling for e in map(_REGISTRY.entry, names()) if getattr(e, fact)]
