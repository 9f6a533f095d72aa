"""Final-answer extraction from a model completion.   str -> (answer, form) | None.   Standard library only.

Where the answer is looked for, in order; the first rule that finds a non-empty answer wins:
  1. "boxed":  the content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``). Braces nest,
               escaped braces ``\\{ \\}`` are literal. "Last" means last to open, so
               ``\\boxed{\\boxed{5}}`` gives ``5``. An unclosed box (a truncated completion) is ignored.
  2. "hash":   the rest of the line after the last ``####`` (GSM8K style).
  3. "phrase": the text after the last "the answer is" / "final answer is" / "answer:" (any case),
               up to the end of its line (or the next line when the phrase ends a line), cut at the
               first sentence end (a period followed by a space or the end).
Then the answer is cleaned: surrounding whitespace, markdown bold (``**``), one pair of math
delimiters (``$..$``, ``$$..$$``, ``\\(..\\)``, ``\\[..\\]``) and a final sentence period are removed.

Only "boxed" and "hash" are *requested forms*: ``format_score`` rewards them; "phrase" is a fallback
for models that ignore the instruction.
"""
from __future__ import annotations

import re

__all__ = ["find_answer", "extract_answer", "format_score", "clean_answer", "strip_math_delimiters",
           "REQUESTED_FORMS"]

REQUESTED_FORMS = ("boxed", "hash")
"""Answer forms a prompt asks for; ``format_score`` gives 1.0 to a completion that uses one."""

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


def _last_boxed(text: str) -> str | None:
    """Content of the last-opened complete, non-empty box."""
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


def find_answer(completion: str) -> tuple[str, str] | None:
    """The final answer and the form it was found in ("boxed", "hash", "phrase"), or None.

    Example: ``"so x = 2.\\n#### 1,000"`` -> ``("1,000", "hash")``.
    """
    if not isinstance(completion, str):
        raise ValueError(f"completion must be a string, got {type(completion).__name__}")
    for form, rule in (("boxed", _last_boxed), ("hash", _after_hashes), ("phrase", _after_phrase)):
        raw = rule(completion)
        answer = clean_answer(raw) if raw is not None else ""
        if answer:
            return answer, form
    return None


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion (see the module docstring for the rules), or None."""
    found = find_answer(completion)
    return found[0] if found else None


def format_score(completion: str) -> float:
    """1.0 when the completion gives an answer in a requested form (\\boxed{} or ####), else 0.0."""
    found = find_answer(completion)
    return 1.0 if found is not None and found[1] in REQUESTED_FORMS else 0.0
