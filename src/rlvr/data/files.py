"""Problems from local files: JSONL (one JSON object per line) or Parquet (read with pyarrow).

Every row is validated before anything else happens; all bad rows are reported in one DataError that
names the file and each bad row with its reason. Rows are numbered as a person would look them up:
JSONL by 1-based line number (blank lines are skipped but still counted), Parquet by 0-based row index.
The same number makes the problem id, ``"<file name>:<row>"``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlvr.data import gold, sources
from rlvr.data.base import DataError
from rlvr.data.rows import Bad, RowFormat, row_problems
from rlvr.types import Problem

SUFFIXES = (".jsonl", ".parquet")


@sources.register("file", argument="path", suffixes=SUFFIXES, row_fields=True, default_verifier="math")
def file_problems(path: str | Path, *, size: int | None, prompt_field: str = "prompt", answer_field: str = "answer",
                  template: str = "{prompt}", answer_extract: str | None = None,
                  verifier: str = "math") -> list[Problem]:
    """Problems from a .jsonl or .parquet file (rows as ``rlvr.data.rows`` reads them).

    ``answer_extract`` names an answer extractor (``rlvr.data.gold``) for files whose gold sits inside a longer
    field; ``size`` None keeps all rows, else the first ``size`` rows (all rows are validated either way).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown file type {path.suffix or '(none)'!r}; expected one of {SUFFIXES}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows = _jsonl_rows(path) if suffix == ".jsonl" else _parquet_rows(path)
    jsonl = suffix == ".jsonl"
    fmt = RowFormat(where=str(path), unit="line" if jsonl else "row",
                    numbering="1-based line numbers" if jsonl else "0-based row indices", id_prefix=path.name,
                    prompt_field=prompt_field, answer_field=answer_field, template=template,
                    extract=gold.extractor(answer_extract) if answer_extract else None)
    return row_problems(rows, fmt, size=size, verifier=verifier)


def _jsonl_rows(path: Path) -> list[tuple[int, Any]]:
    """(1-based line number, parsed value or Bad) for each non-blank line."""
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
            rows.append((number, Bad(f"invalid JSON ({err.msg} at column {err.colno})")))
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
