"""Final-answer extraction from a model completion.   str -> (answer, form) | None.   Standard library only.

Reasoning first (``<think>...</think>``, DeepSeek-R1's format, arXiv 2501.12948): when the completion closes a
think block, only the text after the last ``</think>`` can hold the final answer (a tentative answer inside the
reasoning does not count); a completion that opens ``<think>`` and never closes it has no answer (its reasoning
was cut off). Then, in the rest, the first rule that finds a non-empty answer wins:
  1. "tag":    the content of the last complete ``<answer>...</answer>`` block (R1's answer tag); inside it a
               ``\\boxed{}`` or ``####`` answer wins over the whole content.
  2. "boxed":  the content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``). Braces nest,
               escaped braces ``\\{ \\}`` are literal. "Last" means last to open, so
               ``\\boxed{\\boxed{5}}`` gives ``5``. An unclosed box (a truncated completion) is ignored.
  3. "hash":   the rest of the line after the last ``####`` (GSM8K style).
  4. "phrase": the text after the last "the answer is" / "final answer is" / "answer:" (any case),
               up to the end of its line (or the next line when the phrase ends a line), cut at the
               first sentence end (a period followed by a space or the end).
Then the answer is cleaned: surrounding whitespace, markdown bold (``**``), one pair of math
delimiters (``$..$``, ``$$..$$``, ``\\(..\\)``, ``\\[..\\]``) and a final sentence period are removed.

"tag", "boxed" and "hash" are *requested forms*: ``format_score`` rewards them; "phrase" is a fallback for
models that ignore the instruction. ``format_score(..., think=True)`` (templates that ask for reasoning in think
tags, ``rlvr.data.templates``) also requires the whole completion to be one think block then the answer.
"""
from __future__ import annotations

import re

__all__ = ["find_answer", "extract_answer", "format_score", "clean_answer", "strip_math_delimiters", "last_boxed",
           "after_think", "REQUESTED_FORMS"]

REQUESTED_FORMS = ("tag", "boxed", "hash")
"""Answer forms a prompt asks for; ``format_score`` gives 1.0 to a completion that uses one."""

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK_RE = re.compile(r"\s*(?:<think>)?(.*?)</think>(.*)", re.DOTALL)

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_PHRASE_RE = re.compile(r"final answer is|the answer is|answer\s*:", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)")
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _braced(text: str, start: int) -> str | None:
    """Content from ``start`` (just after an opening brace) to its matching close, or None if unclosed."""
    depth, i = 1, start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # a command or an escaped character: "\{" and "\}" do not count
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last-opened complete, non-empty ``\\boxed{}`` / ``\\fbox{}`` of ``text``, or None."""
    found = None
    for match in _BOX_RE.finditer(text):
        content = _braced(text, match.end())
        if content is not None and content.strip():
            found = content
    return found


def _after_hashes(text: str) -> str | None:
    i = text.rfind("####")
    if i < 0:
        return None
    return text[i + 4:].lstrip("#").split("\n", 1)[0]


def _after_phrase(text: str) -> str | None:
    matches = list(_PHRASE_RE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end():].lstrip(" \t\r\n:*")
    line = rest.split("\n", 1)[0]
    end = _SENTENCE_END_RE.search(line)
    return line[:end.start()] if end else line


def strip_math_delimiters(text: str) -> str:
    """Remove one outer pair of ``$$..$$``, ``$..$``, ``\\(..\\)`` or ``\\[..\\]`` and surrounding spaces."""
    s = text.strip()
    for left, right in _DELIMITERS:
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left):len(s) - len(right)].strip()
    return s


def clean_answer(answer: str) -> str:
    """Strip whitespace, markdown bold, one pair of math delimiters and a final period.   str -> str

    Example: ``" **$\\frac{1}{2}$.** "`` -> ``"\\frac{1}{2}"``.
    """
    s = answer.strip().strip("*").strip()
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1].rstrip()
    s = strip_math_delimiters(s)
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1].rstrip()
    return s


def after_think(completion: str) -> str | None:
    """The part of a completion that may hold its final answer: everything after the last ``</think>``; the whole
    completion when it has no think tags; None when it opens ``<think>`` and never closes it (cut off)."""
    i = completion.rfind(THINK_CLOSE)
    if i >= 0:
        return completion[i + len(THINK_CLOSE):]
    return None if THINK_OPEN in completion else completion


def _answer_in(text: str) -> tuple[str, str] | None:
    """The rules of the module docstring, in order, on text outside any reasoning block."""
    tags = _ANSWER_TAG_RE.findall(text)
    if tags:
        content = tags[-1].replace("<answer>", "")
        inner = _answer_in(content)
        if inner is not None:
            return inner if inner[1] in ("boxed", "hash") else (inner[0], "tag")
        if clean_answer(content):
            return clean_answer(content), "tag"
    for form, rule in (("boxed", last_boxed), ("hash", _after_hashes), ("phrase", _after_phrase)):
        raw = rule(text)
        answer = clean_answer(raw) if raw is not None else ""
        if answer:
            return answer, form
    return None


def find_answer(completion: str) -> tuple[str, str] | None:
    """The final answer and the form it was found in ("tag", "boxed", "hash", "phrase"), or None.

    Example: ``"so x = 2.\\n#### 1,000"`` -> ``("1,000", "hash")``; ``"<think>2+2=4</think> \\boxed{4}"`` ->
    ``("4", "boxed")``.
    """
    if not isinstance(completion, str):
        raise ValueError(f"completion must be a string, got {type(completion).__name__}")
    rest = after_think(completion)
    return None if rest is None else _answer_in(rest)


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion (see the module docstring for the rules), or None."""
    found = find_answer(completion)
    return found[0] if found else None


def format_score(completion: str, think: bool = False) -> float:
    """1.0 when the completion gives an answer in a requested form (an answer tag, \\boxed{} or ####), else 0.0.

    think=True: the completion must also be exactly one non-empty ``<think>...</think>`` block followed by that
    answer, with no other think tag. The opening ``<think>`` may be missing, since some chat templates write it
    into the prompt (DeepSeek-R1-Distill's generation prompt ends with it).
    """
    found = find_answer(completion)
    if found is None or found[1] not in REQUESTED_FORMS:
        return 0.0
    if not think:
        return 1.0
    m = _THINK_RE.fullmatch(completion)
    if m is None:
        return 0.0
    reasoning, rest = m.groups()
    tags = (THINK_OPEN, THINK_CLOSE)
    well_formed = reasoning.strip() and not any(t in reasoning or t in rest for t in tags)
    return 1.0 if well_formed else 0.0
