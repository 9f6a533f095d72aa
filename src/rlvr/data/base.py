"""Shared pieces of rlvr.data: the error type, prompt templates, answer typing, splitting and hashing.

Everything here is pure and independent of global random state, so a run's problem set is a function of
its config alone (and ``problems_hash`` lets a run record which set it used).
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rlvr.types import Problem

_INT_RE = re.compile(r"-?\d+")


class DataError(ValueError):
    """A problem source that cannot be turned into problems: bad file, bad row, bad option."""


def verifier_for_answer(answer: str) -> str:
    """``"int"`` when the gold answer is a plain integer (``-?\\d+``), else ``"math"``.

    Why per answer: some generators mix integer and decimal golds (reasoning-gym's gsm_symbolic has a
    money template with answers like ``"9281.25"``), and exact-integer checking is only right for the
    integer ones.
    """
    return "int" if _INT_RE.fullmatch(answer) else "math"


def render_prompt(template: str, fields: Mapping[str, Any], where: str) -> str:
    """``template.format(**fields)``, with errors that name the template, the key and ``where`` (file/row).

    ``fields`` already holds ``prompt`` (the prompt text); files add the row's other fields.
    """
    try:
        text = template.format(**fields)
    except KeyError as err:
        key = err.args[0]
        raise DataError(f"template {template!r} names key {key!r}, which {where} does not have "
                        f"(available: {', '.join(sorted(map(str, fields)))})") from None
    except (IndexError, ValueError, AttributeError, TypeError) as err:
        raise DataError(f"template {template!r} cannot be applied to {where}: {err} "
                        "(use named fields such as {prompt}; write literal braces as {{ }})") from None
    if not text.strip():
        raise DataError(f"template {template!r} gives an empty prompt for {where}")
    return text


def unique_prompts(problems: Sequence[Problem]) -> list[Problem]:
    """The problems with duplicate prompt texts removed (first occurrence kept, order kept)."""
    seen: set[str] = set()
    out = []
    for p in problems:
        if p.prompt not in seen:
            seen.add(p.prompt)
            out.append(p)
    return out


def split_problems(problems: Sequence[Problem], *, eval_size: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Split into (train, eval) with ``eval_size`` problems chosen uniformly at random by ``seed``.

    Held out means held out: problems are first made unique by prompt text (the first occurrence is
    kept), so no eval prompt also appears in training. Small generated tasks repeat prompts (two
    one-digit terms give only 200 distinct questions).
    Deterministic: the choice uses a private ``random.Random(seed)`` and only its ``random()`` stream
    (which Python keeps stable across versions), never the global RNG. Both parts keep the input order.
    At least one problem must remain for training: ``0 <= eval_size <= len(problems) - 1``.
    """
    problems = unique_prompts(problems)
    n = len(problems)
    if isinstance(eval_size, bool) or not isinstance(eval_size, int) or not 0 <= eval_size <= n - 1:
        raise DataError(f"eval_size must be an int in [0, {n - 1}] for {n} problems with distinct prompts "
                        f"(at least one stays for training), got {eval_size!r}")
    rng = random.Random(seed)
    keys = [rng.random() for _ in range(n)]
    chosen = set(sorted(range(n), key=keys.__getitem__)[:eval_size])
    train = [p for i, p in enumerate(problems) if i not in chosen]
    held_out = [p for i, p in enumerate(problems) if i in chosen]
    return train, held_out


def problems_hash(problems: Sequence[Problem]) -> str:
    """Hex sha256 (64 chars) over (id, prompt, answer, verifier) of each problem, in order.

    Each problem is hashed as one JSON line, so field boundaries are unambiguous.
    """
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([p.id, p.prompt, p.answer, p.verifier], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()
