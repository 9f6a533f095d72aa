"""``arith``: a synthetic addition/subtraction task for the character-level tiny model.

A prompt is a bare expression ending in ``=`` (no chat template, no spaces), e.g. ``"47+38-12="``;
the answer is its integer value. ``worked_solution`` gives the completion a good model should write,
one operation per line, then the answer after ``####`` (the form rlvr.rewards extracts)::

    47+38-12=   ->   "47+38=85\\n85-12=73\\n#### 73"

Defaults (2-3 terms, operands 0..99, + and -, no negative intermediate results) are meant to be
learnable by a 1-5 M-parameter model to a pass@1 of roughly 20-50 % after pretraining, leaving room
for RL. Solutions stay under 30 characters at these defaults. Every character is printable ASCII or a
newline, so the character tokenizer of rlvr.models reads all of it.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from rlvr.data import sources
from rlvr.data.base import DataError
from rlvr.types import Problem

_PROMPT_RE = re.compile(r"(\d+(?:[+-]\d+)+)=$")
_TERM_RE = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class ArithSpec:
    """Difficulty knobs of the arith task (keyword arguments of ``arith_problems``)."""

    min_terms: int = 2
    """Fewest operands in an expression (>= 2)."""
    max_terms: int = 3
    """Most operands; the count is uniform in [min_terms, max_terms]."""
    min_operand: int = 0
    """Smallest operand (>= 0; operands are written without a sign)."""
    max_operand: int = 99
    """Largest operand; operands are uniform in [min_operand, max_operand]."""
    operators: str = "+-"
    """Operators to draw from, uniformly: any non-empty subset of "+-"."""
    allow_negative: bool = False
    """If False, expressions whose running value ever drops below 0 are redrawn."""

    def __post_init__(self) -> None:
        if not 2 <= self.min_terms <= self.max_terms:
            raise DataError(f"arith needs 2 <= min_terms <= max_terms, got {self.min_terms}, {self.max_terms}")
        if not 0 <= self.min_operand <= self.max_operand:
            raise DataError(f"arith needs 0 <= min_operand <= max_operand, got {self.min_operand}, {self.max_operand}")
        if not self.operators or set(self.operators) - set("+-"):
            raise DataError(f"arith operators must be a non-empty subset of '+-', got {self.operators!r}")


def arith_problems(size: int, seed: int = 0, **knobs: object) -> list[Problem]:
    """``size`` distinct arith problems (distinct prompts), deterministic in ``seed`` and the knobs.

    ids are ``"arith/<index>"``; verifier ``"int"``. Raises DataError for an unknown knob, or when the
    knobs allow fewer than ``size`` distinct expressions in practice.
    """
    unknown = sorted(set(knobs) - set(ArithSpec.__dataclass_fields__))
    if unknown:
        raise DataError(f"unknown arith knob(s) {unknown}; valid: {sorted(ArithSpec.__dataclass_fields__)}")
    spec = ArithSpec(**knobs)  # type: ignore[arg-type]
    rng = random.Random(seed)
    seen: set[str] = set()
    problems: list[Problem] = []
    for _ in range(50 * size + 1000):
        terms, ops = _draw(rng, spec)
        if terms is None:
            continue
        prompt = _expression(terms, ops) + "="
        if prompt in seen:
            continue
        seen.add(prompt)
        problems.append(Problem(prompt=prompt, answer=str(_evaluate(terms, ops)), verifier="int",
                                id=f"arith/{len(problems)}"))
        if len(problems) == size:
            return problems
    raise DataError(f"arith with {spec} gave only {len(problems)} distinct problems, {size} asked for; "
                    "widen the knobs (more terms, larger max_operand) or ask for fewer")


@sources.register("arith", generated=True, default_size=sources.GENERATED_SIZE, takes_task_kwargs=True,
                  default_verifier="int")
def arith_source(*, size: int, seed: int, task_kwargs: dict[str, object]) -> list[Problem]:
    """The ``arith`` data source: ``arith_problems`` with ``task_kwargs`` as its ArithSpec knobs."""
    return arith_problems(size, seed, **task_kwargs)


def _draw(rng: random.Random, spec: ArithSpec) -> tuple[list[int] | None, list[str]]:
    """One expression: operands and operators; (None, ops) when it breaks ``allow_negative``."""
    n = rng.randint(spec.min_terms, spec.max_terms)
    terms = [rng.randint(spec.min_operand, spec.max_operand) for _ in range(n)]
    ops = [rng.choice(spec.operators) for _ in range(n - 1)]
    if not spec.allow_negative and min(_running(terms, ops)) < 0:
        return None, ops
    return terms, ops


def _running(terms: list[int], ops: list[str]) -> list[int]:
    """Running values left to right: [t0, t0 op1 t1, ...]."""
    values = [terms[0]]
    for op, t in zip(ops, terms[1:]):
        values.append(values[-1] + t if op == "+" else values[-1] - t)
    return values


def _evaluate(terms: list[int], ops: list[str]) -> int:
    return _running(terms, ops)[-1]


def _expression(terms: list[int], ops: list[str]) -> str:
    return str(terms[0]) + "".join(op + str(t) for op, t in zip(ops, terms[1:]))


def parse_prompt(prompt: str) -> tuple[list[int], list[str]]:
    """Operands and operators of the expression that ends an arith prompt (``"...47+38-12="``).

    A template may add text before the expression, not after it.
    """
    match = _PROMPT_RE.search(prompt)
    if match is None:
        raise DataError(f"not an arith prompt (expected it to end in an expression like '12+7-3='): {prompt!r}")
    parts = _TERM_RE.findall(match.group(1))
    terms = [abs(int(p)) for p in parts]
    ops = [p[0] for p in parts[1:]]
    return terms, ops


def worked_solution(problem: Problem) -> str:
    """The step-by-step completion for an arith problem: one ``a<op>b=c`` line per operation, then ``#### <answer>``.

    Example: prompt ``"12+7+30="`` -> ``"12+7=19\\n19+30=49\\n#### 49"``. Raises DataError when the prompt is not
    an arith expression or its value disagrees with ``problem.answer``.
    """
    terms, ops = parse_prompt(problem.prompt)
    values = _running(terms, ops)
    if str(values[-1]) != problem.answer:
        raise DataError(f"arith problem {problem.id}: {problem.prompt!r} evaluates to {values[-1]}, "
                        f"but its answer is {problem.answer!r}")
    lines = [f"{left}{op}{t}={right}" for left, op, t, right in zip(values, ops, terms[1:], values[1:])]
    return "\n".join(lines + [f"#### {values[-1]}"])
