r"""Verifiers: ``(completion, gold) -> VerifyResult``, and the VERIFIERS registry ("math", "int", "int_last").

A verifier is registered with the decorator in its own module, ``@rlvr.rewards.verifiers.register("name")``,
and named in a config by that name or by its import path ``module:function``; an unregistered function is also
accepted by import path, with the default facts. Scoring calls every verifier the same way; the one fact,
``main_thread=True`` (``VerifierSpec``), marks a verifier that works only in a process's main thread, so a run
that would score it elsewhere is refused before anything loads (``rlvr.trainer.build.check_scoring_thread``).
Reward worker processes resolve a registered name through ``portable_name``, so a verifier registered outside
rlvr reaches them too.

A verifier extracts the final answer from the completion (rlvr.rewards.extract) and checks it
against the gold answer. It is pure and raises only for bad *gold* data (ValueError naming it); a
bad completion is a score of 0.0 with a reason. Reasons in use: "correct", "wrong", "no answer found",
"unparsable answer", "unparsable gold", "not an integer: ...", "timeout (math-verify, budget N s)".

verify_math compares with math-verify (``parse`` + ``verify``). Before parsing, both sides go through
``math_text``: outer math delimiters are dropped, stray ``$`` become ``\$`` and the result is wrapped
in ``$...$`` (a bare LaTeX gold such as ``\sqrt{8}`` parses to nothing otherwise). Two fixes
for plain-text answers math-verify gets wrong on its own: a LaTeX thin-space thousands separator
``1\,000`` (math-verify reads 1·0) becomes ``1000``, and a number followed by plain words, "18 dollars"
(math-verify reads 18·a·do·l·l·r·s), becomes ``18 \text{dollars}``, which it reads as 18 — except when
a word is a magnitude or fraction ("1 million", "3 halves") or "percent", which stay as they are.
Set/relation comparison is on (``allow_set_relation_comp``), so ``1 \le x \le 2`` matches ``[1, 2]``.

math-verify behaviour worth knowing (0.9.0; asserted in tests/test_rewards.py):
  * Percentages match both readings: ``50\%`` equals gold ``0.5`` *and* gold ``50``; ``0.5`` and ``50``
    both equal gold ``50\%``. Generous, but right for "what percent" questions either way.
  * A bare comma list is a set: ``2, 3`` equals ``3, 2``; ``1,2`` is the set {1, 2}, not 12.
    A thousands separator is read as such only in 3-digit groups (``1,000`` = 1000).
  * Many short words after a number are dropped as units by its normaliser (``5 apples`` = 5,
    and also ``2 ab`` = 2).
Known limitations (math-verify says "wrong" where a careful grader says "right"; each one is
asserted as such in tests/test_rewards.py, so a fix upstream shows up as a failing test):
  * Complex identities are not simplified: ``e^{i\pi}`` vs ``-1``, ``i`` vs ``\sqrt{-1}``.
  * Plain-text constants and magnitudes: ``2 pi`` is read as 2·p·i (write ``2\pi``); ``1 million``
    is not 1000000.
  * A percentage of a fraction is not converted: ``\frac{1}{2}\%`` vs ``0.005`` (``0.5\%`` works).
  * An exact constant against a rounded gold is wrong: ``\pi`` vs ``3.14159``.

Timeouts: math-verify interrupts itself with SIGALRM, which works only in a process's main thread,
so verify_math refuses to run elsewhere (use RewardPool, whose workers call it in their main thread).
One call spends at most about ``budget_s`` + 1 s in math-verify: each parse/verify step gets the
whole seconds left (SIGALRM counts whole seconds).
"""
from __future__ import annotations

import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from math_verify import parse, verify
from math_verify.errors import TimeoutException

from rlvr.registry import Registry
from rlvr.rewards.extract import extract_answer, strip_math_delimiters

__all__ = ["VerifyResult", "VerifierSpec", "verify_math", "verify_int", "verify_int_last", "math_text", "parse_int",
           "VERIFIERS", "get_verifier", "verifier_spec", "register", "portable_name", "MATH_BUDGET_S"]

logger = logging.getLogger(__name__)

MATH_BUDGET_S = 3.0
"""Default seconds one verify_math call may spend in math-verify (RewardPool's default is 5 s)."""


@dataclass(frozen=True)
class VerifyResult:
    """One verdict. score: the reward in [0, 1]; extracted: the answer found (None if none);
    reason: why, in a few words ("correct", "wrong", "no answer found", "timeout ...", ...)."""

    score: float
    extracted: str | None
    reason: str


Verifier = Callable[[str, str], VerifyResult]


@dataclass(frozen=True)
class VerifierSpec:
    """A registered verifier and what a caller must know about it."""

    name: str
    fn: Verifier
    main_thread: bool = False
    """Works only in a process's main thread (math-verify's SIGALRM timeouts): score it in RewardPool workers,
    or in-process (``reward.num_workers=0``) only from the main thread."""


VERIFIERS: Registry[VerifierSpec] = Registry("verifier", VerifierSpec, decorator="rlvr.rewards.verifiers.register",
                                             unregistered_ok=True)
register = VERIFIERS.register  # decorator: register(name, main_thread=False); the function is returned unchanged


# ----------------------------------------------------------------------------------------------
# Text normalisation before math-verify
# ----------------------------------------------------------------------------------------------

_THIN_SPACE_THOUSANDS_RE = re.compile(r"(?<=\d)\\,(?=\d{3}(?!\d))")
_NUMBER_WORDS_RE = re.compile(r"^([+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)\s+([A-Za-z]{2,}(?:\s+[A-Za-z]{2,}){0,2})$")
_NOT_UNITS = frozenset("""hundred hundreds thousand thousands million millions billion billions trillion trillions
    dozen dozens half halves third thirds quarter quarters fourth fourths fifth fifths percent pi""".split())
_UNESCAPED_DOLLAR_RE = re.compile(r"(?<!\\)\$")


def math_text(answer: str) -> str:
    """The LaTeX string handed to math-verify's ``parse`` for an answer or a gold.   str -> str

    Examples: ``"\\sqrt{8}"`` -> ``"$\\sqrt{8}$"``; ``"18 dollars"`` -> ``"$18 \\text{dollars}$"``;
    ``"$18"`` -> ``"$\\$18$"``; ``"1\\,000"`` -> ``"$1000$"``.
    """
    s = strip_math_delimiters(answer)
    s = _THIN_SPACE_THOUSANDS_RE.sub("", s)
    m = _NUMBER_WORDS_RE.match(s)
    if m and not any(w.lower() in _NOT_UNITS for w in m.group(2).split()):
        s = f"{m.group(1)} \\text{{{m.group(2)}}}"
    s = _UNESCAPED_DOLLAR_RE.sub(r"\\$", s)
    return f"${s}$"


# ----------------------------------------------------------------------------------------------
# verify_math
# ----------------------------------------------------------------------------------------------

class _OutOfTime(Exception):
    """The budget of one verify_math call ran out."""


def _seconds_left(deadline: float) -> int:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _OutOfTime
    return max(1, math.ceil(left))


def _parse(text: str, deadline: float) -> list[Any]:
    """math-verify parse with the time left; [] when it cannot parse; _OutOfTime on timeout."""
    seconds = _seconds_left(deadline)
    try:
        return parse(text, parsing_timeout=seconds, raise_on_error=True)
    except TimeoutException as err:
        raise _OutOfTime from err
    except Exception:  # noqa: BLE001 - any parser failure means "cannot parse"
        logger.debug("math-verify could not parse %r", text, exc_info=True)
        return []


_GOLD_CACHE: dict[str, tuple[Any, ...]] = {}
_GOLD_CACHE_SIZE = 4096


def _parse_gold(text: str, deadline: float) -> tuple[Any, ...]:
    """_parse, memoised: golds repeat G times per prompt. A timed-out parse is not cached."""
    hit = _GOLD_CACHE.get(text)
    if hit is None:
        hit = tuple(_parse(text, deadline))
        if len(_GOLD_CACHE) >= _GOLD_CACHE_SIZE:
            _GOLD_CACHE.clear()
        _GOLD_CACHE[text] = hit
    return hit


def _equivalent(gold: list[Any], pred: list[Any], deadline: float) -> bool:
    """True if any (gold, pred) parse pair is equivalent — math-verify's ``any`` over pairs, with
    our own handling of its timeout (math-verify's own would log and say False)."""
    for g in gold:
        for p in pred:
            seconds = _seconds_left(deadline)
            try:
                if verify(g, p, timeout_seconds=seconds, raise_on_error=True, allow_set_relation_comp=True):
                    return True
            except TimeoutException as err:
                raise _OutOfTime from err
            except Exception:  # noqa: BLE001 - a failed comparison is "not equal", as in math-verify
                logger.debug("math-verify comparison failed", exc_info=True)
    return False


@register("math", main_thread=True)
def verify_math(completion: str, gold: str, *, budget_s: float = MATH_BUDGET_S) -> VerifyResult:
    """Score 1.0 if the completion's final answer is mathematically equal to ``gold`` (math-verify).

    gold: the reference answer, as LaTeX or plain text, with or without ``$``; e.g. ``"\\frac{1}{2}"``.
    budget_s: seconds this call may spend in math-verify (about; see the module docstring).
    Must run in the main thread (SIGALRM). Example: ``verify_math("\\boxed{0.5}", "\\frac12")`` ->
    ``VerifyResult(1.0, "0.5", "correct")``.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("verify_math must run in a main thread (math-verify times out with SIGALRM); "
                           "use rlvr.rewards.RewardPool to score from other threads")
    if not isinstance(gold, str):
        raise ValueError(f"gold must be a string, got {type(gold).__name__} {gold!r}")
    extracted = extract_answer(completion)
    if extracted is None:
        return VerifyResult(0.0, None, "no answer found")
    deadline = time.monotonic() + budget_s
    try:
        gold_parsed = list(_parse_gold(math_text(gold), deadline))
        if not gold_parsed:
            logger.warning("math-verify cannot parse gold %r", gold)
            return VerifyResult(0.0, extracted, "unparsable gold")
        pred_parsed = _parse(math_text(extracted), deadline)
        if not pred_parsed:
            return VerifyResult(0.0, extracted, "unparsable answer")
        ok = _equivalent(gold_parsed, pred_parsed, deadline)
    except _OutOfTime:
        return VerifyResult(0.0, extracted, f"timeout (math-verify, budget {budget_s:g} s)")
    return VerifyResult(1.0, extracted, "correct") if ok else VerifyResult(0.0, extracted, "wrong")


# ----------------------------------------------------------------------------------------------
# verify_int
# ----------------------------------------------------------------------------------------------

_INT_RE = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.0+)?$")
_GOLD_INT_RE = re.compile(r"^[+-]?\d+$")


def parse_int(answer: str) -> int | None:
    """The integer an answer states exactly, or None.   str -> int | None

    Accepted: ``1000``, ``1,000`` (3-digit groups), ``1{,}000``, ``1\\,000``, ``+5``, ``-3`` (also the
    Unicode minus), ``5.0`` / ``5.00`` (a zero fraction is still exactly 5), a leading currency sign
    ``$5`` / ``\\$5``, outer math delimiters and ``\\text{}``-free LaTeX only.
    Rejected: ``5.5``, ``1,00``, ``5e3``, ``18 dollars`` (units are not stripped: exact match), ``1/1``.
    """
    s = strip_math_delimiters(answer).replace("\u2212", "-").replace("{,}", ",").replace("\\,", "")
    sign = ""
    if s and s[0] in "+-":
        sign, s = s[0], s[1:].lstrip()
    for currency in ("\\$", "$"):
        if s.startswith(currency):
            s = s[len(currency):].lstrip()
            break
    s = sign + s
    if not _INT_RE.match(s):
        return None
    return int(s.split(".")[0].replace(",", ""))


@register("int")
def verify_int(completion: str, gold: str) -> VerifyResult:
    """Score 1.0 if the completion's final answer is exactly the integer ``gold``.

    gold: an integer string (``"-12"``); anything else raises ValueError naming it.
    Example: ``verify_int("#### 1,000", "1000")`` -> ``VerifyResult(1.0, "1,000", "correct")``.
    """
    if not isinstance(gold, str) or not _GOLD_INT_RE.match(gold.strip()):
        raise ValueError(f"verify_int: gold must be an integer string like '-12', got {gold!r}")
    extracted = extract_answer(completion)
    if extracted is None:
        return VerifyResult(0.0, None, "no answer found")
    value = parse_int(extracted)
    if value is None:
        return VerifyResult(0.0, extracted, f"not an integer: {extracted[:40]!r}")
    if value == int(gold.strip()):
        return VerifyResult(1.0, extracted, "correct")
    return VerifyResult(0.0, extracted, "wrong")


_LAST_INT_RE = re.compile(r"(?<![\w.])[-\u2212+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?!\w|[.,]\d)")


@register("int_last")
def verify_int_last(completion: str, gold: str) -> VerifyResult:
    """Like ``verify_int``, but without a marked answer the last integer in the text is the answer.

    The lenient "flexible extract" of GSM8K-style evaluations: a marked answer (``\\boxed{}``,
    ``####``, "the answer is") wins; otherwise the last integer token of the completion (thousands
    separators allowed; digits inside words or decimals are not integers). It rewards a model that
    ends with its result even when it does not use a requested format. Use ``int`` for strict grading.
    Example: ``verify_int_last("1 + 6 = 7", "7")`` -> ``VerifyResult(1.0, "7", "correct")``.
    """
    if not isinstance(gold, str) or not _GOLD_INT_RE.match(gold.strip()):
        raise ValueError(f"verify_int_last: gold must be an integer string like '-12', got {gold!r}")
    if extract_answer(completion) is not None:
        return verify_int(completion, gold)
    found = _LAST_INT_RE.findall(completion)
    if not found:
        return VerifyResult(0.0, None, "no answer found")
    extracted = found[-1]
    value = parse_int(extracted)
    if value is None:
        return VerifyResult(0.0, extracted, f"not an integer: {extracted[:40]!r}")
    return VerifyResult(float(value == int(gold.strip())), extracted, "correct" if value == int(gold.strip())
                        else "wrong")


# ----------------------------------------------------------------------------------------------
# Lookup
# ----------------------------------------------------------------------------------------------

def get_verifier(name: str) -> Verifier:
    """The verifier registered as ``name``, or imported from ``"package.module:function"``.

    Unknown names raise ValueError listing the registered ones.
    """
    return VERIFIERS.entry(name).fn


def verifier_spec(name: str) -> VerifierSpec:
    """The verifier ``name`` (as ``get_verifier`` reads it) with its facts; an unregistered import path has the
    defaults."""
    return VERIFIERS.entry(name)


def portable_name(name: str) -> str:
    """How a fresh process (a reward worker) names the verifier ``name``: the name itself when importing rlvr
    registers it (rlvr's own verifiers) or it is already an import path, else the import path of the registered
    function, whose import runs its ``register`` decorator there. Raises ValueError for an unknown name."""
    fn = get_verifier(name)
    if ":" in name or fn.__module__ in (__name__, "__main__"):
        return name
    return f"{fn.__module__}:{fn.__name__}"
