r"""Benchmark presets: named data sources for the maths sets RLVR papers train and report on, and eval suites.

``data.source=math500`` (or ``rlvr eval MODEL --data math500``) loads the split below through the hub loader
(``rlvr.data.hub``: a local copy under ``data.path`` or ``$RLVR_DATA_DIR/<name>``, else the datasets cache or the
hub). Each preset is a registered data source whose facts travel with it: repo, config, split, the prompt and
answer fields, the answer extractor for sets whose gold sits inside a solution, the verifier and the default
prompt template (``boxed``: the problem, then "Please reason step by step, and put your final answer within
\boxed{}."). Problem ids are ``<preset>:<row index>``.

Where each fact comes from (read 2026-12 in public code and dataset cards; "unverified" marks what was not):

- ``math500``: HuggingFaceH4/MATH-500, split ``test`` (500 rows), fields problem, solution, answer, subject, level,
  unique_id (its dataset card); ``answer`` is the bare LaTeX final answer. The 500 problems of "Let's Verify Step by
  Step" (arXiv 2305.20050) from MATH (arXiv 2103.03874). Used by AAPO's evaluation (JianxXiong/AAPO,
  open-rs/evaluate.py) and lighteval.
- ``aime24``: HuggingFaceH4/aime_2024, split ``train`` (30 rows: AIME 2024 I and II), fields id, problem, solution,
  answer (a string), url, year (its dataset card); lighteval's and AAPO's aime24 task.
- ``amc23``: knoveleng/AMC-23, split ``train`` (40 rows), fields id, problem, answer, url, question (evalscope's
  amc_23 adapter reads them; AAPO's amc23 task prompts with ``problem``, gold ``answer``). ``answer`` is a float64
  column in the copy FlippyDora/amc23 with the same fields (its card), which becomes text as ``27`` / ``0.5``;
  knoveleng's own card was not read (unverified: the dtype).
- ``minerva``: knoveleng/Minerva-Math, split ``train`` (272 rows: Minerva's OCWCourses, arXiv 2206.14858), fields
  problem, solution (plus type, idx); the gold is the last ``\boxed{}`` of ``solution`` (AAPO's minerva task takes
  ``solution`` as its gold and extracts the LaTeX answer; other harnesses take its last box).
- ``olympiadbench``: knoveleng/OlympiadBench, split ``train`` (675 rows: OlympiadBench's English open-ended maths
  competition problems, arXiv 2402.14008), fields question, answer (plus id, solution, final_answer, context, unit,
  answer_type, ...); AAPO's olympiadbench task prompts with ``question``, gold ``answer``. The exact form of
  ``answer`` (with or without ``$``) is unverified; both verify the same (``rlvr.rewards.verifiers.math_text``).
- ``gsm8k``, ``gsm8k_train``: openai/gsm8k, config ``main``, splits ``test`` (1,319) and ``train`` (7,473), fields
  question, answer (its dataset card); ``answer`` is a worked solution ending in ``#### <number>`` (arXiv
  2110.14168), so the gold is what follows the last ``####``. Integer golds are checked with ``int``.
- ``math_train``: DigitalLearningGmbH/MATH-lighteval, split ``train`` (7,500 rows: MATH's training set), fields
  problem, level ("Level 1".."Level 5"), solution, type (mirrors of the same set show these fields; the card of this
  repo was not read, so the repo's split name is unverified); the gold is the last ``\boxed{}`` of ``solution``.
- ``math_l35``: ``math_train`` with ``level`` in Level 3-5, the difficulty range of SimpleRL-Zoo's MATH training set
  (arXiv 2503.18892), which AAPO's 7B runs train on (as ``SimpleRL-Zoo-Data/simplelr_qwen_level3to5``; that set also
  draws on MATH's test problems outside MATH-500, which this preset does not).

Verifier: ``math`` (math-verify) for every set with LaTeX answers; GSM8K has none (``None``: ``int`` for integer
golds, which its construction gives). The suites (``rlvr eval MODEL --suite math``) are ``SUITES`` below.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable

from rlvr.data import sources
from rlvr.data.base import verifier_for_answer
from rlvr.data.hub import HubSet, hub_problems
from rlvr.types import Problem

__all__ = ["Benchmark", "BENCHMARKS", "Suite", "SUITES", "suite"]


@dataclass(frozen=True)
class Benchmark:
    """One preset: where its rows are, which fields hold what, how its gold is found and checked."""

    name: str
    title: str
    """How a paper's table heads its column (MATH-500, AIME24, ...)."""
    repo: str
    split: str
    prompt_field: str
    answer_field: str
    config: str | None = None
    answer_extract: str | None = None
    """Answer extractor (rlvr.data.gold) applied to the answer field; None: the field is the gold."""
    verifier: str | None = "math"
    keep: tuple[str, tuple[str, ...]] | None = None
    """Only rows whose field has one of these values (``("level", ("Level 3", ...))``); None: all rows."""
    rows: int | None = None
    """Rows in the split (with ``keep``: before it), from the source's card; None when not read."""
    template: str = "boxed"

    def loader(self) -> Callable[..., list[Problem]]:
        """The data source's loader: ``fn(*, size, path)``."""
        def load(*, size: int | None, path: str | os.PathLike[str] | None) -> list[Problem]:
            problems = hub_problems(HubSet(self.repo, self.config, self.split), key=self.name, id_prefix=self.name,
                                    path=path, size=size, prompt_field=self.prompt_field,
                                    answer_field=self.answer_field, answer_extract=self.answer_extract,
                                    keep=self.keep, verifier=self.verifier or "math")
            if self.verifier is None:  # chosen per gold: int for an integer, else math
                problems = [replace(p, verifier=verifier_for_answer(p.answer)) for p in problems]
            return problems
        load.__name__ = load.__qualname__ = f"benchmark_{self.name}"
        load.__doc__ = f"The {self.title} preset: {self.repo} split {self.split} (rlvr.data.benchmarks)."
        return load


_LEVELS_3_5 = ("level", ("Level 3", "Level 4", "Level 5"))

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("math500", "MATH-500", "HuggingFaceH4/MATH-500", "test", "problem", "answer", rows=500),
    Benchmark("aime24", "AIME24", "HuggingFaceH4/aime_2024", "train", "problem", "answer", rows=30),
    Benchmark("amc23", "AMC23", "knoveleng/AMC-23", "train", "problem", "answer", rows=40),
    Benchmark("minerva", "Minerva", "knoveleng/Minerva-Math", "train", "problem", "solution", answer_extract="boxed",
              rows=272),
    Benchmark("olympiadbench", "OlympiadBench", "knoveleng/OlympiadBench", "train", "question", "answer", rows=675),
    Benchmark("gsm8k", "GSM8K", "openai/gsm8k", "test", "question", "answer", config="main", answer_extract="hash",
              verifier=None, rows=1319),
    Benchmark("gsm8k_train", "GSM8K (train)", "openai/gsm8k", "train", "question", "answer", config="main",
              answer_extract="hash", verifier=None, rows=7473),
    Benchmark("math_train", "MATH (train)", "DigitalLearningGmbH/MATH-lighteval", "train", "problem", "solution",
              answer_extract="boxed", rows=7500),
    Benchmark("math_l35", "MATH L3-5 (train)", "DigitalLearningGmbH/MATH-lighteval", "train", "problem", "solution",
              answer_extract="boxed", keep=_LEVELS_3_5, rows=7500),
]}
"""The presets by name (each registered below as a data source of that name)."""

for _b in BENCHMARKS.values():
    sources.register(_b.name, local_copy=True, default_verifier=_b.verifier, default_template=_b.template)(_b.loader())


@dataclass(frozen=True)
class Suite:
    """An evaluation suite: its presets (one column each) and the sampling settings its source reports with."""

    name: str
    datasets: tuple[str, ...]
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    source: str


SUITES: dict[str, Suite] = {s.name: s for s in [
    Suite("math", ("math500", "aime24", "amc23", "minerva", "olympiadbench"), n=1, temperature=0.6, top_p=0.95,
          max_new_tokens=32768,
          source="AAPO's evaluation (JianxXiong/AAPO open-rs/auto_eval.sh: lighteval + vLLM, T 0.6, top-p 0.95, "
                 "32,768 new tokens, one sample per problem) on the five sets of its Table 1"),
]}
"""Evaluation suites by name (``rlvr eval --suite``)."""


def suite(name: str) -> Suite:
    """The suite ``name``; ValueError listing the suites."""
    if name not in SUITES:
        raise ValueError(f"unknown eval suite {name!r}; suites: {', '.join(sorted(SUITES))}")
    return SUITES[name]
