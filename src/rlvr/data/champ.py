"""CHAMP: 270 competition-level maths problems with final answers (champ-dataset 1.0.0, MIT licence).

The problems ship inside the ``champ-dataset`` package (``champ_dataset.load("v0")``), so loading is
offline. Categories: Number-Theory 80, Inequality 50, Polynomial 50, Sequence 50, Combinatorics 40.
Answers are LaTeX or free-form text ("x=2, y=1", "2^n/(n+1)"), so problems are checked with the
``math`` verifier (math-verify). Order is the dataset's natural order of identifiers
(``P_Combinatorics_1`` .. ``P_Sequence_50``), which is stable across runs.
"""
from __future__ import annotations

from typing import Any

from rlvr.data import sources
from rlvr.data.base import DataError
from rlvr.types import Problem

CHAMP_VERSION = "v0"
CHAMP_SIZE = 270


def champ_problems(size: int | None = None, *, category: str | None = None) -> list[Problem]:
    """The CHAMP problems (all 270, or the first ``size``), optionally of one category; id = identifier."""
    import champ_dataset  # imported here: the 72 MB JSON takes about a second to read

    items = list(champ_dataset.load(CHAMP_VERSION).problems.values())
    if category is not None:
        known = sorted({p.category for p in items})
        if category not in known:
            raise DataError(f"champ has no category {category!r}; categories: {', '.join(known)}")
        items = [p for p in items if p.category == category]
    if size is not None and size > len(items):
        raise DataError(f"champ has {len(items)} problems{f' in {category}' if category else ''}, "
                        f"asked for size={size}")
    problems = []
    for p in items[:size]:
        if not p.text.strip() or not p.answer.strip():
            raise DataError(f"champ problem {p.identifier} has an empty text or answer")
        problems.append(Problem(prompt=p.text.strip(), answer=p.answer.strip(), verifier="math",
                                id=f"champ/{p.identifier}"))
    return problems


@sources.register("champ", takes_task_kwargs=True, default_verifier="math")
def champ_source(*, size: int | None, task_kwargs: dict[str, Any]) -> list[Problem]:
    """The ``champ`` data source: ``task_kwargs={"category": "Sequence"}`` keeps one category."""
    extra = sorted(set(task_kwargs) - {"category"})
    if extra:
        raise DataError(f"champ takes only task_kwargs 'category', got {extra}")
    return champ_problems(size, category=task_kwargs.get("category"))
