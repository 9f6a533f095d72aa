"""Problems from local files: JSONL (one JSON object per line) or Parquet (read with pyarrow).

Every row is validated before anything else happens; all bad rows are reported in one DataError that
names the file and each bad row with its reason. Rows are numbered as a person would look them up:
JSONL by 1-based line number (blank lines are skipped but still counted), Parquet by 0-based row index.
The same number makes the problem id, ``"<file name>:<row>"``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rlvr.data import sources
from rlvr.data.base import DataError, render_prompt
from rlvr.types import Problem

SUFFIXES = (".jsonl", ".parquet")
MAX_LISTED = 20


@sources.register("file", argument="path", suffixes=SUFFIXES, row_fields=True, default_verifier="math")
def file_problems(path: str | Path, *, size: int | None, prompt_field: str = "prompt", answer_field: str = "answer",
                  template: str = "{prompt}", verifier: str = "math") -> list[Problem]:
    """Problems from a .jsonl or .parquet file.

    prompt = ``template.format(**row, prompt=row[prompt_field])`` (so ``{prompt}`` is the prompt field's
    text whatever its name, and any other field of the row can be named too); answer = ``row[answer_field]``
    as text (numbers converted: 3 and 3.0 -> "3", 0.5 -> "0.5"). ``size`` None keeps all rows, else the
    first ``size`` rows (all rows are validated either way).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown file type {path.suffix or '(none)'!r}; expected one of {SUFFIXES}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows = _jsonl_rows(path) if suffix == ".jsonl" else _parquet_rows(path)
    unit = "line" if suffix == ".jsonl" else "row"
    good, bad = [], []
    for number, row in rows:
        parsed = row if isinstance(row, _Bad) else _row_problem(row, prompt_field, answer_field)
        if isinstance(parsed, _Bad):
            bad.append((number, parsed.reason))
        else:
            good.append((number, row, *parsed))
    if bad:
        raise DataError(_bad_rows_message(path, unit, bad))
    if not good:
        raise DataError(f"{path}: no rows")
    if size is not None and size > len(good):
        raise DataError(f"{path}: size={size} asked for, but the file has only {len(good)} rows "
                        "(size=None takes all rows)")
    problems = [
        Problem(prompt=render_prompt(template, {**row, "prompt": prompt}, f"{unit} {number} of {path}"),
                answer=answer, verifier=verifier, id=f"{path.name}:{number}")
        for number, row, prompt, answer in good
    ]
    return problems if size is None else problems[:size]


class _Bad:
    """Why a row is unusable (kept apart from the row values so a row can never look like a reason)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _jsonl_rows(path: Path) -> list[tuple[int, Any]]:
    """(1-based line number, parsed value or _Bad) for each non-blank line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from err
    rows: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            rows.append((number, _Bad(f"invalid JSON ({err.msg} at column {err.colno})")))
    return rows


def _parquet_rows(path: Path) -> list[tuple[int, Any]]:
    """(0-based row index, row dict) for each row of the table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: cannot read as Parquet ({err})") from err
    return list(enumerate(table.to_pylist()))


def _row_problem(row: Any, prompt_field: str, answer_field: str) -> tuple[str, str] | _Bad:
    """(prompt text, answer text) of a valid row, or why it is not valid."""
    if not isinstance(row, dict):
        return _Bad(f"not a JSON object (got {type(row).__name__})")
    for field in (prompt_field, answer_field):
        if field not in row or row[field] is None:
            return _Bad(f"missing field {field!r}" + (" (null)" if field in row else ""))
    prompt = row[prompt_field]
    if not isinstance(prompt, str):
        return _Bad(f"prompt field {prompt_field!r} is a {type(prompt).__name__}, not a string")
    if not prompt.strip():
        return _Bad(f"empty prompt (field {prompt_field!r})")
    answer = answer_text(row[answer_field])
    if isinstance(answer, _Bad):
        return _Bad(f"{answer.reason} (field {answer_field!r})")
    return prompt, answer


def answer_text(value: Any) -> str | _Bad:
    """A gold answer as text: strings stripped; ints as written; floats that are whole without ".0"."""
    if isinstance(value, str):
        return value.strip() or _Bad("empty answer")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _Bad(f"answer is a {type(value).__name__}, not a string or number")
    if isinstance(value, float):
        if not math.isfinite(value):
            return _Bad(f"answer is {value}")
        if value.is_integer():
            return str(int(value))
        return repr(value)
    return str(value)


def _bad_rows_message(path: Path, unit: str, bad: list[tuple[int, str]]) -> str:
    numbering = "1-based line numbers" if unit == "line" else "0-based row indices"
    lines = [f"{path}: {len(bad)} bad row(s) ({numbering}):"]
    lines += [f"  {unit} {number}: {reason}" for number, reason in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        lines.append(f"  and {len(bad) - MAX_LISTED} more")
    return "\n".join(lines)
