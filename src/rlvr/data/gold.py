r"""Answer extractors: the gold answer of a row whose answer field holds more than the answer (``data.answer_extract``).

Some sets store a worked solution rather than the final answer: GSM8K's ``answer`` ends with ``#### 72`` (openai/gsm8k,
arXiv 2110.14168), MATH's ``solution`` puts the final answer in ``\boxed{}`` (hendrycks/math, arXiv 2103.03874). An
extractor turns that text into the gold answer, or None when it finds none (the row is then reported as bad, with
its number, before anything loads). ``data.answer_extract`` (and ``rlvr eval --answer-extract``) names one for the
sources with row fields (files, ``hf:<repo>``); the benchmark presets carry their own (``rlvr.data.benchmarks``).

Registered here: ``boxed`` (the content of the last complete ``\boxed{}``/``\fbox{}``, nested braces kept) and
``hash`` (the rest of the line after the last ``####``, thousands separators removed: ``1,000`` -> ``1000``). Add
one with ``@rlvr.data.gold.register("name")`` on a ``str -> str | None`` function in your own module, or name any
such function by its import path ``module:function``.
"""
from __future__ import annotations

import re
from typing import Callable

from rlvr.data.base import DataError
from rlvr.registry import Registry

__all__ = ["register", "extractor", "names", "boxed", "after_hash"]

Extractor = Callable[[str], "str | None"]

_REGISTRY: Registry[Extractor] = Registry("answer extractor", decorator="rlvr.data.gold.register")
register = _REGISTRY.register  # decorator: register(name); no facts
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def names() -> list[str]:
    """Sorted names of the registered answer extractors."""
    return _REGISTRY.names()


def extractor(name: str) -> Extractor:
    """The answer extractor ``name`` (a registered name or ``module:function``); DataError listing the names."""
    try:
        return _REGISTRY.entry(name)
    except ValueError as err:
        raise DataError(f"answer_extract: {err}") from None


@register("boxed")
def boxed(text: str) -> str | None:
    r"""The last complete ``\boxed{...}`` of a solution, cleaned.

    Example: ``"so $\boxed{\dfrac{1}{2}}$."`` -> ``"\dfrac{1}{2}"``; no box -> None.
    """
    from rlvr.rewards.extract import clean_answer, last_boxed  # here: rlvr.rewards imports math-verify

    found = last_boxed(text)
    return clean_answer(found) if found is not None else None


@register("hash")
def after_hash(text: str) -> str | None:
    """The rest of the line after the last ``####``, thousands separators removed.

    Example: ``"48/2 = 24\\n#### 1,000"`` -> ``"1000"``; no ``####`` -> None.
    """
    from rlvr.rewards.extract import clean_answer

    i = text.rfind("####")
    if i < 0:
        return None
    answer = clean_answer(text[i + 4:].lstrip("#").split("\n", 1)[0])
    return _THOUSANDS_RE.sub("", answer) or None
