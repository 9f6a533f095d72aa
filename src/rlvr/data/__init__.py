"""Problem sources: reasoning-gym tasks, the synthetic ``arith`` task, and JSONL/Parquet files.

``build_problems(source, ...)`` is the one entry point the trainer calls; ``source`` is

- ``"rg:<task>"``: a reasoning-gym task (``basic_arithmetic``, ``chain_sum``, ``gsm_symbolic``, or any
  other reasoning-gym dataset name), generated offline from ``seed`` (see rlvr.data.tasks);
- ``"arith"``: our character-friendly arithmetic task for the tiny model (see rlvr.data.arith);
- ``"champ"``: the 270 CHAMP competition problems (see rlvr.data.champ), a small, hard eval set;
  ``task_kwargs={"category": "Sequence"}`` keeps one category;
- a path ending in ``.jsonl`` or ``.parquet`` (see rlvr.data.files).

Verifier: ``verifier=`` wins when given. Otherwise generated problems get ``"int"`` when their gold is
an integer and ``"math"`` when not (chosen per problem); file problems get ``"math"``.

Also here: ``split_problems`` (deterministic train/eval split), ``problems_hash`` (identifies a problem
set in logs and checkpoints), ``worked_solution`` (reference completions for arith) and ``DataError``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from rlvr.data.arith import ArithSpec, arith_problems, worked_solution
from rlvr.data.base import DataError, problems_hash, render_prompt, split_problems, unique_prompts, verifier_for_answer
from rlvr.data.champ import champ_problems
from rlvr.data.files import file_problems
from rlvr.data.tasks import rg_problems
from rlvr.types import Problem

__all__ = [
    "ArithSpec", "DataError", "arith_problems", "build_problems", "champ_problems", "problems_hash", "split_problems",
    "unique_prompts", "verifier_for_answer", "worked_solution",
]


def build_problems(source: str | os.PathLike[str], *, size: int | None = None, seed: int = 0,
                   prompt_field: str = "prompt", answer_field: str = "answer", template: str = "{prompt}",
                   verifier: str | None = None, task_kwargs: dict[str, Any] | None = None) -> list[Problem]:
    """Problems from ``source`` (see the module docstring).

    size: number of problems. Required for generated sources (rg, arith); for files and champ None = all
        rows, else the first ``size`` rows (every row of a file is validated first).
    seed: generation seed for rg and arith (ignored by files).
    prompt_field, answer_field: the row fields holding prompt and gold answer (files only).
    template: ``str.format`` template for the prompt; ``{prompt}`` is the prompt text. Files may also
        name any field of the row (``"{question}\\nUnits: {unit}"``). A missing key is a DataError.
    verifier: rewards registry name for every problem; None = the defaults above.
    task_kwargs: generator options, passed to ``reasoning_gym.create_dataset`` for rg tasks and as
        ArithSpec knobs for arith; not allowed for files.
    """
    if isinstance(source, os.PathLike):  # a Path is always a file
        source = os.fspath(source)
    if not isinstance(source, str) or not source:
        raise DataError(f"source must be a non-empty string or path, got {source!r}")
    if verifier is not None and (not isinstance(verifier, str) or not verifier):
        raise DataError(f"verifier must be a non-empty string (a rewards registry name) or None, got {verifier!r}")
    if not isinstance(template, str):
        raise DataError(f"template must be a string, got {type(template).__name__}")
    if source == "champ":
        _check_size(size, source, required=False)
        _check_file_options(source, prompt_field, answer_field)
        extra = sorted(set(task_kwargs or {}) - {"category"})
        if extra:
            raise DataError(f"champ takes only task_kwargs 'category', got {extra}")
        problems = champ_problems(size, category=(task_kwargs or {}).get("category"))
        return [_finish(p, template, verifier) for p in problems]
    if source.startswith("rg:") or source == "arith":
        _check_size(size, source, required=True)
        _check_file_options(source, prompt_field, answer_field)
        if source == "arith":
            problems = arith_problems(size, seed, **(task_kwargs or {}))  # type: ignore[arg-type]
        else:
            problems = rg_problems(source[3:], size=size, seed=seed, task_kwargs=task_kwargs)  # type: ignore[arg-type]
        return [_finish(p, template, verifier) for p in problems]
    _check_size(size, source, required=False)
    if task_kwargs:
        raise DataError(f"task_kwargs apply to generated sources (rg:<task>, arith), not to the file {source!r}")
    return file_problems(source, size=size, prompt_field=prompt_field, answer_field=answer_field,
                         template=template, verifier=verifier or "math")


def _finish(problem: Problem, template: str, verifier: str | None) -> Problem:
    """Apply the prompt template (only ``{prompt}`` is available) and the verifier override."""
    prompt = problem.prompt if template == "{prompt}" else render_prompt(
        template, {"prompt": problem.prompt}, f"problem {problem.id}")
    return dataclasses.replace(problem, prompt=prompt, verifier=verifier or problem.verifier)


def _check_size(size: Any, source: str, *, required: bool) -> None:
    """``size`` must be a positive int (or None where it is not ``required``)."""
    if size is None:
        if required:
            raise DataError(f"source {source!r} needs size= (the number of problems to generate)")
        return
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DataError(f"size must be a positive int or None, got {size!r} (source {source!r})")


def _check_file_options(source: str, prompt_field: str, answer_field: str) -> None:
    if (prompt_field, answer_field) != ("prompt", "answer"):
        raise DataError(f"prompt_field/answer_field apply to files, not to the generated source {source!r}")
