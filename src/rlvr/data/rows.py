"""Rows with named fields -> Problems: the validation the file source and the hub sources share.

A row is a mapping of field names to values (a JSON object, a Parquet or Hugging Face datasets row). Every row is
validated before a problem is made; all bad rows are reported together in one DataError that names where they
come from (a file, a hub repo and split) and each bad row with its number and reason.

prompt = ``template.format(**row, prompt=row[prompt_field])`` (so ``{prompt}`` is the prompt field's text whatever
its name, and any other field of the row can be named too); answer = ``row[answer_field]`` as text (numbers
converted: 3 and 3.0 -> "3", 0.5 -> "0.5"), then, with an answer extractor (``rlvr.data.gold``: ``boxed`` for
MATH-style solutions, ``hash`` for GSM8K's ``#### 72``), the gold it finds in that text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rlvr.data.base import DataError, render_prompt
from rlvr.types import Problem

MAX_LISTED = 20
"""Bad rows listed in one error message; the rest are counted."""


class Bad:
    """Why a row is unusable (kept apart from the row values so a row can never look like a reason)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(frozen=True)
class RowFormat:
    """How rows become problems: where they come from (for messages and ids) and which fields hold what.

    where: the rows' origin in messages (``data/x.jsonl``, ``hf openai/gsm8k (main) split test``).
    unit, numbering: what a row is called and how it is counted (``line``, "1-based line numbers").
    id_prefix: problem ids are ``<id_prefix>:<row number>``.
    extract: the answer extractor's name and function, or None (the field as it is).
    """

    where: str
    unit: str
    numbering: str
    id_prefix: str
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    template: str = "{prompt}"
    extract: tuple[str, Callable[[str], str | None]] | None = None


def answer_text(value: Any) -> str | Bad:
    """A gold answer as text: strings stripped; ints as written; floats that are whole without ".0"."""
    if isinstance(value, str):
        return value.strip() or Bad("empty answer")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Bad(f"answer is a {type(value).__name__}, not a string or number")
    if isinstance(value, float):
        if not math.isfinite(value):
            return Bad(f"answer is {value}")
        if value.is_integer():
            return str(int(value))
        return repr(value)
    return str(value)


def row_problem(row: Any, fmt: RowFormat) -> tuple[str, str] | Bad:
    """(prompt text, gold answer text) of a valid row, or why it is not valid."""
    if not isinstance(row, dict):
        return Bad(f"not a JSON object (got {type(row).__name__})")
    for field in (fmt.prompt_field, fmt.answer_field):
        if field not in row or row[field] is None:
            return Bad(f"missing field {field!r}" + (" (null)" if field in row else ""))
    prompt = row[fmt.prompt_field]
    if not isinstance(prompt, str):
        return Bad(f"prompt field {fmt.prompt_field!r} is a {type(prompt).__name__}, not a string")
    if not prompt.strip():
        return Bad(f"empty prompt (field {fmt.prompt_field!r})")
    answer = answer_text(row[fmt.answer_field])
    if isinstance(answer, Bad):
        return Bad(f"{answer.reason} (field {fmt.answer_field!r})")
    if fmt.extract is not None:
        name, extract = fmt.extract
        gold = extract(answer)
        if not gold or not gold.strip():
            return Bad(f"answer extractor {name!r} finds no answer in field {fmt.answer_field!r} "
                       f"({answer[-60:]!r})")
        answer = gold.strip()
    return prompt, answer


def row_problems(rows: Sequence[tuple[int, Any]], fmt: RowFormat, *, size: int | None,
                 verifier: str = "math") -> list[Problem]:
    """Problems from ``(row number, row or Bad)`` pairs: all rows validated, every bad one reported at once;
    ``size`` None keeps all, else the first ``size`` (more than there are is an error)."""
    good, bad = [], []
    for number, row in rows:
        parsed = row if isinstance(row, Bad) else row_problem(row, fmt)
        if isinstance(parsed, Bad):
            bad.append((number, parsed.reason))
        else:
            good.append((number, row, *parsed))
    if bad:
        raise DataError(bad_rows_message(fmt, bad))
    if not good:
        raise DataError(f"{fmt.where}: no rows")
    if size is not None and size > len(good):
        raise DataError(f"{fmt.where}: size={size} asked for, but there are only {len(good)} rows "
                        "(size=None takes all rows)")
    problems = [
        Problem(prompt=render_prompt(fmt.template, {**row, "prompt": prompt}, f"{fmt.unit} {number} of {fmt.where}"),
                answer=answer, verifier=verifier, id=f"{fmt.id_prefix}:{number}")
        for number, row, prompt, answer in good
    ]
    return problems if size is None else problems[:size]


def bad_rows_message(fmt: RowFormat, bad: list[tuple[int, str]]) -> str:
    lines = [f"{fmt.where}: {len(bad)} bad row(s) ({fmt.numbering}):"]
    lines += [f"  {fmt.unit} {number}: {reason}" for number, reason in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        lines.append(f"  and {len(bad) - MAX_LISTED} more")
    return "\n".join(lines)
