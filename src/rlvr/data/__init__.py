"""Problem sources: reasoning-gym tasks, the synthetic ``arith`` task, CHAMP, and JSONL/Parquet files.

``build_problems(source, ...)`` is the one entry point the trainer calls. Sources are registered
(``rlvr.data.sources``: each module below registers its own, with its facts), so ``source`` is

- ``"rg:<task>"``: a reasoning-gym task (``basic_arithmetic``, ``chain_sum``, ``gsm_symbolic``, or any
  other reasoning-gym dataset name), generated offline from ``seed`` (see rlvr.data.tasks);
- ``"arith"``: our character-friendly arithmetic task for the tiny model (see rlvr.data.arith);
- ``"champ"``: the 270 CHAMP competition problems (see rlvr.data.champ), a small, hard eval set;
  ``task_kwargs={"category": "Sequence"}`` keeps one category;
- a path ending in ``.jsonl`` or ``.parquet`` (see rlvr.data.files);
- ``"hf:<repo>[:<config>][@<split>]"``: a Hugging Face dataset, from a local copy, the datasets cache or the hub
  (see rlvr.data.hub);
- a benchmark preset: ``math500``, ``aime24``, ``amc23``, ``minerva``, ``olympiadbench``, ``gsm8k``, ``gsm8k_train``,
  ``math_train``, ``math_l35`` (see rlvr.data.benchmarks, which says where each comes from);
- any other registered source: its name, ``<name>:<argument>``, or its loader's import path
  ``module:function`` (a new dataset is one module that registers its loader, see rlvr.data.sources).

Verifier: ``verifier=`` wins when given. Otherwise the source's ``default_verifier`` (arith ``"int"``, champ,
files, hf: and the LaTeX presets ``"math"``); reasoning-gym and GSM8K problems get ``"int"`` when their gold is an
integer and ``"math"`` when not (chosen per problem). Prompt template: ``template=`` (a name or a format string,
rlvr.data.templates), else the source's ``default_template``, else ``plain``.

Also here: ``split_problems`` (deterministic train/eval split), ``problems_hash`` (identifies a problem
set in logs and checkpoints), ``worked_solution`` (reference completions for arith) and ``DataError``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from rlvr.data import sources, templates
from rlvr.data.arith import ArithSpec, arith_problems, worked_solution
from rlvr.data.base import DataError, problems_hash, render_prompt, split_problems, unique_prompts, verifier_for_answer
from rlvr.data.champ import champ_problems
from rlvr.data.files import file_problems  # noqa: F401  (registers the file source)
from rlvr.data.hub import hf_source  # noqa: F401  (registers the hf source)
from rlvr.data.tasks import rg_problems  # noqa: F401  (registers the rg source)
from rlvr.data import benchmarks  # noqa: E402,F401  (registers the benchmark presets)
from rlvr.types import Problem

__all__ = [
    "ArithSpec", "DataError", "arith_problems", "build_problems", "champ_problems", "problems_hash", "sources",
    "split_problems", "templates", "unique_prompts", "verifier_for_answer", "worked_solution",
]


def build_problems(source: str | os.PathLike[str], *, size: int | None = None, seed: int = 0,
                   prompt_field: str = "prompt", answer_field: str = "answer", template: str | None = None,
                   verifier: str | None = None, task_kwargs: dict[str, Any] | None = None,
                   answer_extract: str | None = None, path: str | os.PathLike[str] | None = None) -> list[Problem]:
    """Problems from ``source`` (see the module docstring): a lookup in the source registry, the options
    checked against the source's facts, then its loader.

    size: number of problems. Required for generated sources (rg, arith); for the others None = all
        problems, else the first ``size`` (every row of a file or split is validated first).
    seed: generation seed of generated sources (ignored by the others).
    prompt_field, answer_field: the row fields holding prompt and gold answer (sources with row fields: files, hf:).
    template: a template name or a ``str.format`` string (rlvr.data.templates); its user message is the prompt,
        ``{prompt}`` the problem text. Sources with row fields may also name any field of the row
        (``"{question}\\nUnits: {unit}"``). A missing key is a DataError. None: the source's default template.
    verifier: rewards registry name for every problem; None = the source's default (see above).
    task_kwargs: options of sources that take them: passed to ``reasoning_gym.create_dataset`` for rg tasks,
        as ArithSpec knobs for arith, ``category`` for champ; not allowed for the others.
    answer_extract: answer extractor (rlvr.data.gold: ``boxed``, ``hash``) for sources with row fields whose answer
        field holds a worked solution; None = the field is the gold.
    path: a local copy for hub datasets (hf:, presets): a ``save_to_disk`` folder or a data file (rlvr.data.hub).
    """
    entry, argument = sources.source(source)
    spec = os.fspath(source)
    if verifier is not None and (not isinstance(verifier, str) or not verifier):
        raise DataError(f"verifier must be a non-empty string (a rewards registry name) or None, got {verifier!r}")
    user = templates.template(template, entry.default_template).user
    sources.check_options(entry, spec, size=size, prompt_field=prompt_field, answer_field=answer_field,
                          task_kwargs=task_kwargs, answer_extract=answer_extract, path=path)
    kwargs: dict[str, Any] = {"size": size}
    if entry.argument is not None:
        kwargs[entry.argument] = argument
    if entry.generated:
        kwargs["seed"] = seed
    if entry.takes_task_kwargs:
        kwargs["task_kwargs"] = dict(task_kwargs or {})
    if entry.row_fields:
        kwargs.update(prompt_field=prompt_field, answer_field=answer_field, template=user,
                      answer_extract=answer_extract)
    if entry.local_copy:
        kwargs["path"] = path
    problems = entry.fn(**kwargs)
    if not isinstance(problems, list) or not all(isinstance(p, Problem) for p in problems):
        raise DataError(f"source {spec!r}: its loader {entry.name!r} must return a list of Problem, got "
                        f"{type(problems).__name__}")
    return [_finish(p, "{prompt}" if entry.row_fields else user, verifier or entry.default_verifier)
            for p in problems]


def _finish(problem: Problem, template: str, verifier: str | None) -> Problem:
    """Apply the prompt template (only ``{prompt}`` is available) and the verifier override."""
    prompt = problem.prompt if template == "{prompt}" else render_prompt(
        template, {"prompt": problem.prompt}, f"problem {problem.id}")
    return dataclasses.replace(problem, prompt=prompt, verifier=verifier or problem.verifier)
