"""rlvr.rewards: extraction, verify_math / verify_int tables, the registry, and RewardPool's guarantees.

Every expected score in the tables is what a careful human grader would give. Where math-verify
disagrees, the row is marked KNOWN LIMITATION, asserts math-verify's actual answer, and the case is
listed in rlvr.rewards.verifiers' module docstring.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from rlvr.rewards import (VERIFIERS, RewardPool, RewardPoolError, VerifyResult, extract_answer, find_answer,
                          format_score, get_verifier, parse_int, verify_int, verify_math)
from rlvr.rewards.verifiers import math_text

TESTS_DIR = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------

EXTRACTION = [
    # (completion, expected answer, expected form)
    (r"so \boxed{5}", "5", "boxed"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", "boxed"),
    (r"\boxed{\{1,2\}} is the set", r"\{1,2\}", "boxed"),                 # escaped braces are literal
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}", "boxed"),        # nested braces
    (r"first \boxed{3}, no wait: \boxed{4}", "4", "boxed"),                  # last box
    (r"\boxed{\boxed{7}}", "7", "boxed"),                                    # last to open
    (r"\boxed{3} then \boxed{4", "3", "boxed"),                              # unclosed (truncated) box ignored
    (r"\boxed{} \boxed{ }", None, None),                                     # empty boxes are no answer
    (r"\fbox{12}", "12", "boxed"),
    (r"\boxed {8}", "8", "boxed"),
    (r"\boxed{$9$}", "9", "boxed"),
    ("#### 5\n" r"\boxed{6}", "6", "boxed"),                                 # a box beats ####
    ("3+4=7\n#### 7", "7", "hash"),
    ("#### 1,000\nextra line", "1,000", "hash"),
    ("#### 1\n#### 2", "2", "hash"),                                         # last ####
    ("####  -3 ", "-3", "hash"),
    ("#### 12.", "12", "hash"),
    ("####\nThe answer is 4", "4", "phrase"),                                # empty #### falls through
    ("The answer is 42.", "42", "phrase"),
    ("the answer is: 3.5.", "3.5", "phrase"),
    ("THE ANSWER IS 8", "8", "phrase"),
    ("The final answer is $\\frac{1}{2}$. I hope it is correct.", r"\frac{1}{2}", "phrase"),
    ("Answer: 17", "17", "phrase"),
    ("**Final Answer:** $7$", "7", "phrase"),
    ("Answer: 1\nwait.\nAnswer: 2", "2", "phrase"),                         # last phrase
    ("The answer is:\n\\(x^2\\)", "x^2", "phrase"),                          # phrase ends its line
    ("The answer is \\[ 3 \\]", "3", "phrase"),
    ("I think it is 42", None, None),
    ("", None, None),
    ("The answer is", None, None),
    ("#### ", None, None),
    # reasoning in think tags (DeepSeek-R1): only what follows the last </think> counts; an unclosed think has none
    (r"<think>maybe \boxed{3}</think> so \boxed{4}", "4", "boxed"),
    ("<think>the answer is 3</think>\nThe answer is 5", "5", "phrase"),
    (r"<think>\boxed{3} still thinking", None, None),
    (r"<think>\boxed{3}</think> and nothing", None, None),
    # R1's answer tag: a box or #### inside it wins, else its content
    (r"reasoning</think><answer>\boxed{7}</answer>", "7", "boxed"),
    ("<think>r</think> <answer> 42 </answer>", "42", "tag"),
    ("<answer>The answer is 6.</answer>", "6", "tag"),
    ("<answer>5</answer> then <answer>$6$</answer>", "6", "tag"),
    ("<answer>#### 9</answer>", "9", "hash"),
    (r"<answer></answer> \boxed{2}", "2", "boxed"),                         # an empty tag is no answer
    (r"<answer>unclosed \boxed{8}", "8", "boxed"),
]


@pytest.mark.parametrize("completion, answer, form", EXTRACTION)
def test_extraction_table(completion, answer, form):
    assert extract_answer(completion) == answer
    assert find_answer(completion) == (None if answer is None else (answer, form))


@pytest.mark.parametrize("completion, expected", [
    (r"\boxed{5}", 1.0), ("#### 5", 1.0), (r"The answer is \boxed{5}", 1.0),
    ("The answer is 5", 0.0), ("Answer: 5", 0.0), ("5", 0.0), ("", 0.0),
    (r"\boxed{}", 0.0), (r"\boxed{5", 0.0), ("####", 0.0),
])
def test_format_score(completion, expected):
    assert format_score(completion) == expected


@pytest.mark.parametrize("completion, plain, think", [
    (r"<think>2+2=4</think> \boxed{4}", 1.0, 1.0),
    (r"2+2=4</think>" "\n" r"\boxed{4}", 1.0, 1.0),               # the chat template wrote the opening tag
    ("<think>a</think><answer>4</answer>", 1.0, 1.0),
    (r"\boxed{4}", 1.0, 0.0),                                          # no reasoning block
    (r"<think> </think> \boxed{4}", 1.0, 0.0),                          # empty reasoning
    (r"<think>a</think><think>b</think> \boxed{4}", 1.0, 0.0),           # two blocks
    (r"<think>a<think>b</think> \boxed{4}", 1.0, 0.0),                  # a nested opening tag
    ("<think>a</think> The answer is 4", 0.0, 0.0),                     # not a requested form
    (r"<think>a \boxed{4}", 0.0, 0.0),                                  # never closed: no answer
    (r"<think>a</think> \boxed{4} </think>", 0.0, 0.0),                 # nothing after the last </think>
])
def test_format_score_with_think_tags(completion, plain, think):
    assert format_score(completion) == plain
    assert format_score(completion, think=True) == think


def test_extraction_rejects_non_strings():
    with pytest.raises(ValueError, match="completion must be a string, got int"):
        extract_answer(5)


@pytest.mark.parametrize("answer, text", [
    (r"\sqrt{8}", r"$\sqrt{8}$"),                   # bare LaTeX gets wrapped (it parses to [] otherwise)
    (r"$\frac12$", r"$\frac12$"),                   # already delimited: kept once
    (r"\(x\)", "$x$"),
    ("$18", r"$\$18$"),                             # a currency sign is escaped
    ("18 dollars", r"$18 \text{dollars}$"),         # plain unit words become \text
    ("1,000 US dollars", r"$1,000 \text{US dollars}$"),
    ("1 million", "$1 million$"),                   # magnitudes are not units
    ("5 percent", "$5 percent$"),                   # math-verify reads "percent" itself
    (r"1\,000", "$1000$"),                          # thin-space thousands separator
    (r"1\,5", r"$1\,5$"),                           # ... only before exactly 3 digits
])
def test_math_text(answer, text):
    assert math_text(answer) == text


# ----------------------------------------------------------------------------------------------
# verify_math
# ----------------------------------------------------------------------------------------------

MATH = [
    # (completion, gold, expected score)
    # fractions
    (r"So the answer is \boxed{\frac{1}{2}}.", "0.5", 1.0),
    (r"\boxed{\dfrac{3}{4}}", "0.75", 1.0),
    ("#### 3/4", r"\frac{3}{4}", 1.0),
    (r"\boxed{0.5}", r"\frac12", 1.0),
    (r"\boxed{\tfrac{2}{4}}", "1/2", 1.0),
    (r"\boxed{\frac{2}{1}}", "2", 1.0),
    (r"\boxed{1.5}", r"\frac{3}{2}", 1.0),
    (r"\boxed{\frac{1}{3}}", r"\frac{2}{3}", 0.0),
    (r"\boxed{0.33}", r"\frac{1}{3}", 0.0),            # a rounded value is not 1/3
    (r"\boxed{\frac{1}{2}}", r"$\frac{1}{2}$", 1.0),   # gold already in $...$
    ("#### 5", r"\boxed{5}", 1.0),                     # gold already boxed
    # surds
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", 1.0),          # bare LaTeX gold (must be wrapped to parse)
    (r"\boxed{2\sqrt{3}}", r"\sqrt{8}", 0.0),
    (r"\boxed{3\sqrt{2}}", r"\sqrt{18}", 1.0),
    (r"\boxed{\sqrt{2}/2}", r"\frac{1}{\sqrt{2}}", 1.0),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}", 1.0),
    # sets, tuples, intervals
    (r"\boxed{\{1,2\}}", r"\{2,1\}", 1.0),
    (r"\boxed{\{1,2,3\}}", r"\{1,2\}", 0.0),
    (r"\boxed{\{1,2\}}", r"\{1,3\}", 0.0),
    (r"\boxed{2, 3}", "3, 2", 1.0),                   # "all solutions" lists are unordered
    (r"\boxed{x \in \{1, 2\}}", r"\{1,2\}", 1.0),
    (r"\boxed{(3, 2)}", "(3,2)", 1.0),
    (r"\boxed{(2,3)}", "(3,2)", 0.0),                  # ordered pair in the wrong order
    (r"\boxed{(1,2]}", "(1,2]", 1.0),
    (r"\boxed{(1,2]}", "[1,2)", 0.0),
    (r"\boxed{[0, \infty)}", r"[0,\infty)", 1.0),
    (r"\boxed{(0, \infty)}", r"[0,\infty)", 0.0),
    (r"\boxed{(-\infty, 3) \cup (5, \infty)}", r"(-\infty,3)\cup(5,\infty)", 1.0),
    (r"\boxed{(-\infty, 3) \cup (5, \infty)}", r"(-\infty,3]\cup(5,\infty)", 0.0),
    (r"\boxed{1 \le x \le 2}", "[1,2]", 1.0),          # needs allow_set_relation_comp
    (r"\boxed{x > 2}", r"(2, \infty)", 1.0),
    (r"\boxed{x \geq 2}", r"(2, \infty)", 0.0),
    # units and currency
    ("The answer is 18 dollars.", "18", 1.0),          # plain words: our \text rewrite
    ("The answer is 18 dollars.", "19", 0.0),
    (r"\boxed{18 \text{ dollars}}", "18", 1.0),
    (r"\boxed{5\text{cm}}", "5", 1.0),
    (r"\boxed{5 \text{ cm}}", "6", 0.0),
    (r"\boxed{18}", r"18 \text{dollars}", 1.0),
    ("#### $18", "18", 1.0),
    (r"#### \$18", "18", 1.0),
    (r"The answer is 90^\circ", "90", 1.0),
    # thousands separators
    (r"\boxed{1,000}", "1000", 1.0),
    ("#### 1,000,000", "1000000", 1.0),
    (r"\boxed{1\,000}", "1000", 1.0),                  # math-verify alone reads 1*0
    (r"\boxed{1{,}000}", "1000", 1.0),
    (r"\boxed{1,000}", "100", 0.0),
    (r"\boxed{1,2}", "12", 0.0),                       # not a thousands group: the set {1, 2}
    # percentages: math-verify matches 50% with both 0.5 and 50 (documented, generous but fair)
    (r"\boxed{50\%}", "0.5", 1.0),
    (r"\boxed{50\%}", "50", 1.0),
    (r"\boxed{0.5}", r"50\%", 1.0),
    (r"\boxed{25\%}", "0.5", 0.0),
    (r"\boxed{50}", "0.5", 0.0),
    (r"\boxed{0.5\%}", "0.005", 1.0),
    # negative numbers and decimals
    (r"\boxed{-3}", "-3", 1.0),
    (r"\boxed{3}", "-3", 0.0),
    ("the answer is -3", "3", 0.0),
    (r"\boxed{-\frac{1}{2}}", "-0.5", 1.0),
    ("#### -7", "-7", 1.0),
    (r"\boxed{3.14}", "3.140", 1.0),
    (r"\boxed{3.14}", "3.15", 0.0),
    (r"\boxed{18.00}", "18", 1.0),
    (r"\boxed{0.1}", "0.01", 0.0),
    (r"\boxed{5}", "5.5", 0.0),
    (r"\boxed{1.5 \times 10^{3}}", "1500", 1.0),
    # algebra and functions
    (r"\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
    (r"\boxed{x^2+2x+1}", "(x+1)^2", 1.0),
    (r"\boxed{x^2+2x}", "(x+1)^2", 0.0),
    (r"\boxed{a^2 - b^2}", "(a-b)(a+b)", 1.0),
    (r"\boxed{\frac{x}{2}}", "0.5x", 1.0),
    (r"\boxed{2x}", "x+x", 1.0),
    (r"\boxed{y+1}", "x+1", 0.0),                      # a different variable is a different answer
    (r"\boxed{x=3}", "3", 1.0),
    (r"\boxed{\sin^2 x + \cos^2 x}", "1", 1.0),
    (r"\boxed{2^{10}}", "1024", 1.0),
    (r"\boxed{\log_2 8}", "3", 1.0),
    (r"\boxed{\binom{5}{2}}", "10", 1.0),
    (r"\boxed{5!}", "120", 1.0),
    (r"\boxed{\pi}", r"\pi", 1.0),
    (r"\boxed{2\pi}", r"\pi", 0.0),
    (r"\boxed{\infty}", r"\infty", 1.0),
    (r"\boxed{-\infty}", r"\infty", 0.0),
    (r"\boxed{3+2i}", "3+2i", 1.0),
    (r"\boxed{3-2i}", "3+2i", 0.0),
    (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", 1.0),
    (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 2 \\ 1 \end{pmatrix}", 0.0),
    # text and multiple choice
    (r"\boxed{\text{Monday}}", r"\text{Monday}", 1.0),
    (r"\boxed{\text{Tuesday}}", r"\text{Monday}", 0.0),
    (r"\boxed{A}", "A", 1.0),
    (r"\boxed{\text{(A)}}", "A", 1.0),
    (r"\boxed{B}", "A", 0.0),
    (r"\boxed{abc}", "5", 0.0),
    # "####" and "the answer is" forms
    ("3 + 4 = 7\n#### 7", "7", 1.0),
    ("#### 8", "7", 0.0),
    ("#### 1/2", "0.5", 1.0),
    ("Thus the answer is 42.", "42", 1.0),
    ("The answer is 41.", "42", 0.0),
    (r"The final answer is $\frac{1}{2}$.", "0.5", 1.0),
    ("Answer: 1/2", "0.5", 1.0),
    ("**Final Answer:** $7$", "7", 1.0),
    ("The answer is 5 apples", "5", 1.0),
    # which answer counts
    (r"First \boxed{3}, no wait, \boxed{4}", "4", 1.0),
    (r"\boxed{4} ... actually \boxed{3}", "4", 0.0),
    ("#### 5\n" r"\boxed{6}", "5", 0.0),
    ("I think it is 42", "42", 0.0),                   # no requested form: no answer
    ("", "5", 0.0),
    (r"\boxed{}", "5", 0.0),
    (r"\boxed{5", "5", 0.0),                            # truncated
    # KNOWN LIMITATIONS (a careful grader says 1.0; math-verify 0.9.0 says 0.0; see the module docstring)
    (r"\boxed{e^{i\pi}}", "-1", 0.0),
    (r"\boxed{i}", r"\sqrt{-1}", 0.0),
    ("The answer is 2 pi", r"2\pi", 0.0),
    ("The answer is 1 million", "1000000", 0.0),
    (r"\boxed{\dfrac{1}{2}\%}", "0.005", 0.0),
    (r"\boxed{\pi}", "3.14159", 0.0),
]


def test_math_table_is_big_enough():
    assert len(MATH) >= 60
    assert len({(c, g) for c, g, _ in MATH}) == len(MATH), "duplicate rows"


@pytest.mark.parametrize("completion, gold, expected", MATH)
def test_verify_math_table(completion, gold, expected):
    result = verify_math(completion, gold)
    assert result.score == expected, result
    assert result.extracted == extract_answer(completion)
    if result.extracted is None:
        assert result.reason == "no answer found"
    else:
        assert result.reason == ("correct" if expected else "wrong")


def test_verify_math_unparsable_gold(caplog):
    with caplog.at_level(logging.WARNING, logger="rlvr.rewards.verifiers"):
        assert verify_math(r"\boxed{5}", "") == VerifyResult(0.0, "5", "unparsable gold")
    assert "cannot parse gold ''" in caplog.text


def test_verify_math_times_out_with_its_own_alarm():
    """10^{10^{10}} makes sympy compute forever; math-verify's SIGALRM stops it within the budget."""
    t0 = time.monotonic()
    result = verify_math(r"\boxed{10^{10^{10}}}", "5", budget_s=1)
    elapsed = time.monotonic() - t0
    assert result == VerifyResult(0.0, "10^{10^{10}}", "timeout (math-verify, budget 1 s)")
    assert elapsed < 1 + 1.5  # budget + SIGALRM's whole-second rounding + slack


def test_verify_math_zero_budget_is_a_timeout_without_parsing():
    assert verify_math(r"\boxed{1}", "1", budget_s=0).reason == "timeout (math-verify, budget 0 s)"


def test_verify_math_refuses_non_main_threads():
    errors = []

    def run():
        try:
            verify_math(r"\boxed{1}", "1")
        except RuntimeError as err:
            errors.append(str(err))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert errors and "main thread" in errors[0]


def test_verify_math_rejects_non_string_gold():
    with pytest.raises(ValueError, match="gold must be a string, got int 5"):
        verify_math(r"\boxed{5}", 5)


# ----------------------------------------------------------------------------------------------
# verify_int
# ----------------------------------------------------------------------------------------------

INT = [
    # (completion, gold, expected score, expected reason)
    ("#### 42", "42", 1.0, "correct"),
    ("#### 41", "42", 0.0, "wrong"),
    ("#### 1,000", "1000", 1.0, "correct"),
    (r"\boxed{1{,}000}", "1000", 1.0, "correct"),
    (r"\boxed{1\,000}", "1000", 1.0, "correct"),
    ("#### 1000", "1000", 1.0, "correct"),
    ("#### +5", "5", 1.0, "correct"),
    ("#### -3", "-3", 1.0, "correct"),
    ("#### \u22123", "-3", 1.0, "correct"),           # Unicode minus
    ("#### 3", "-3", 0.0, "wrong"),
    ("#### 5.0", "5", 1.0, "correct"),                # a zero fraction is exactly the integer
    ("#### 5.00", "5", 1.0, "correct"),
    ("#### 5.5", "5", 0.0, "not an integer: '5.5'"),
    ("#### 1,00", "100", 0.0, "not an integer: '1,00'"),  # not a thousands grouping
    ("#### $18", "18", 1.0, "correct"),
    (r"\boxed{\$18}", "18", 1.0, "correct"),
    ("#### -$18", "-18", 1.0, "correct"),
    (r"\boxed{$7$}", "7", 1.0, "correct"),
    ("The answer is 12.", "12", 1.0, "correct"),
    ("#### 007", "7", 1.0, "correct"),
    ("#### 18 dollars", "18", 0.0, "not an integer: '18 dollars'"),  # exact match: units not stripped
    ("#### 5e3", "5000", 0.0, "not an integer: '5e3'"),
    (r"\boxed{\frac{4}{2}}", "2", 0.0, r"not an integer: '\\frac{4}{2}'"),
    ("#### 99999999999999999999", "99999999999999999999", 1.0, "correct"),  # no float rounding
    ("#### 99999999999999999999", "99999999999999999998", 0.0, "wrong"),
    ("no answer", "5", 0.0, "no answer found"),
]


def test_int_table_is_big_enough():
    assert len(INT) >= 15


@pytest.mark.parametrize("completion, gold, score, reason", INT)
def test_verify_int_table(completion, gold, score, reason):
    assert verify_int(completion, gold) == VerifyResult(score, extract_answer(completion), reason)


@pytest.mark.parametrize("gold", ["5.5", "abc", "", "1,000", "5.0", None])
def test_verify_int_rejects_non_integer_gold(gold):
    with pytest.raises(ValueError, match=f"gold must be an integer string.*got {gold!r}"):
        verify_int("#### 5", gold)


@pytest.mark.parametrize("text, value", [
    ("12", 12), (" -12 ", -12), ("+0", 0), ("1,234,567", 1234567), ("$5", 5), (r"\$5", 5),
    ("3.000", 3), ("", None), ("-", None), ("1,2345", None), ("12a", None), ("1.5", None), ("--3", None),
])
def test_parse_int(text, value):
    assert parse_int(text) == value


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

def test_registry_names_and_lookup():
    assert VERIFIERS.names() == ["int", "int_last", "math"]
    assert get_verifier("math") is verify_math
    assert get_verifier("int") is verify_int
    import reward_fixtures
    assert get_verifier("reward_fixtures:pid") is reward_fixtures.pid


def test_registry_facts_mark_the_verifiers_that_need_a_main_thread():
    from rlvr.rewards import verifier_spec
    import reward_fixtures

    assert {name: verifier_spec(name).main_thread for name in VERIFIERS.names()} == \
        {"int": False, "int_last": False, "math": True}
    assert verifier_spec("rlvr.rewards.verifiers:verify_math") is verifier_spec("math")
    spec = verifier_spec("reward_fixtures:pid")        # never registered: accepted, with the default facts
    assert spec.fn is reward_fixtures.pid and spec.name == "reward_fixtures:pid" and not spec.main_thread


@pytest.mark.parametrize("name, message", [
    ("maths", "unknown verifier 'maths'; valid names: int, int_last, math"),
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz:f'"),
    ("reward_fixtures:nope", "cannot import 'reward_fixtures:nope'"),
])
def test_registry_errors(name, message):
    with pytest.raises(ValueError, match=message):
        get_verifier(name)


# ----------------------------------------------------------------------------------------------
# RewardPool
# ----------------------------------------------------------------------------------------------

TIMEOUT_S = 1.0
SLACK_S = 1.0  # generous for a shared 2-core machine; a hang would take forever, not 2 s


@pytest.fixture(scope="module")
def pool():
    """Short timeout, for the hang tests; only trivial verifiers run on it besides the hangs."""
    with RewardPool(num_workers=2, timeout_s=TIMEOUT_S) as p:
        yield p


@pytest.fixture(scope="module")
def roomy_pool():
    """A timeout no real check comes near, even on a loaded machine: for exact-equality tests."""
    with RewardPool(num_workers=2, timeout_s=60.0) as p:
        yield p


def _batch() -> tuple[list[str], list[str], list[str]]:
    rows = [("math", c, g) for c, g, _ in MATH[32:68]]  # units .. algebra: quick rows (the suite is timed) + [("int", c, g) for c, g, _, _ in INT[:12]]
    rows += rows[:5]  # duplicates are scored once and mapped back
    names, completions, golds = (list(x) for x in zip(*rows))
    return names, completions, golds


def test_pool_matches_in_process(roomy_pool):
    names, completions, golds = _batch()
    expected = [get_verifier(n)(c, g) for n, c, g in zip(names, completions, golds)]
    assert roomy_pool.score(names, completions, golds) == expected
    with RewardPool(num_workers=0) as here:
        assert here.score(names[::5], completions[::5], golds[::5]) == expected[::5]


def test_pool_preserves_order(pool):
    golds = [str(i) for i in range(30)]
    completions = [f"#### {i if i % 3 else i + 1}" for i in range(30)]
    results = pool.score(["int"] * 30, completions, golds)
    assert [r.score for r in results] == [0.0 if i % 3 == 0 else 1.0 for i in range(30)]
    assert [r.extracted for r in results] == [c[5:] for c in completions]


def test_pool_empty_batch(pool):
    assert pool.score([], [], []) == []


def test_pool_timeout_kills_and_recovers(pool, caplog):
    before = pool.worker_pids()
    names = ["reward_fixtures:sleep_forever", "int", "reward_fixtures:sleep_forever", "int"]
    with caplog.at_level(logging.WARNING, logger="rlvr.rewards.pool"):
        t0 = time.monotonic()
        results = pool.score(names, ["hang", "#### 1", "fast #### 2", "#### 3"], ["0", "1", "2", "4"])
        elapsed = time.monotonic() - t0
    assert results == [VerifyResult(0.0, None, f"timeout after {TIMEOUT_S:g} s"), VerifyResult(1.0, "1", "correct"),
                       VerifyResult(1.0, "2", "correct"), VerifyResult(0.0, "3", "wrong")]
    assert elapsed < TIMEOUT_S + SLACK_S
    assert "timed out" in caplog.text and "sleep_forever" in caplog.text
    assert len(set(pool.worker_pids()) - set(before)) == 1  # exactly the stuck worker was replaced
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in set(before) - set(pool.worker_pids()))
    assert pool.score(["math"], [r"\boxed{\frac12}"], ["0.5"]) == [VerifyResult(1.0, r"\frac12", "correct")]


def test_pool_two_hangs_at_once(pool):
    """Both workers stuck: both are killed at the deadline; the rest waits for the replacements.
    The rest are big items: one queued behind a hang would not fit the pipe buffer and block the
    parent's send (and with it the timeout), so big items wait for an idle worker instead."""
    big = "x" * 2_000_000 + " #### 1"  # over the ~200 KiB a socketpair buffers
    hang = "reward_fixtures:sleep_forever"
    # Worker 0 takes "a" and would queue `big` next; worker 1 takes `big`, then "b".
    names = [hang, "int", hang, "int", "int", "int"]
    completions = ["a", big, "b", big + " ", "#### 2", "#### 3"]
    t0 = time.monotonic()
    results = pool.score(names, completions, ["0", "1", "0", "1", "2", "4"])
    elapsed = time.monotonic() - t0
    timeout = f"timeout after {TIMEOUT_S:g} s"
    assert [r.reason for r in results] == [timeout, "correct", timeout, "correct", "correct", "wrong"]
    assert elapsed < TIMEOUT_S + SLACK_S + 1.0  # + one worker restart


@pytest.mark.parametrize("verifier, reason", [
    ("reward_fixtures:exit_hard", "worker crashed: exit code 1"),
    ("reward_fixtures:segfault", "worker crashed: killed by signal SIGSEGV"),
])
def test_pool_worker_crash_is_scored_and_recovers(pool, caplog, verifier, reason):
    restarts = pool.restarts
    with caplog.at_level(logging.WARNING, logger="rlvr.rewards.pool"):
        results = pool.score([verifier, "int", "int"], ["die", "#### 5", "#### 6"], ["1", "5", "7"])
    assert results == [VerifyResult(0.0, None, reason), VerifyResult(1.0, "5", "correct"), VerifyResult(0.0, "6", "wrong")]
    assert "crashed" in caplog.text
    assert pool.restarts == restarts + 1
    assert pool.score(["math"] * 2, ["#### 3", r"\boxed{4}"], ["3", "3"]) == [
        VerifyResult(1.0, "3", "correct"), VerifyResult(0.0, "4", "wrong")]


def test_pool_runs_custom_verifiers_in_workers(pool):
    results = pool.score(["reward_fixtures:pid"] * 6, [str(i) for i in range(6)], ["0"] * 6)
    pids = {int(r.reason) for r in results}
    assert pids <= set(pool.worker_pids()) and os.getpid() not in pids


@pytest.mark.parametrize("verifier, message", [
    ("reward_fixtures:raises", r"verifier 'reward_fixtures:raises' raised.*KeyError: 'no such thing: 9'"),
    ("reward_fixtures:returns_float", "returned float, expected VerifyResult"),
])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_pool_verifier_exceptions_raise_after_the_batch(pool, verifier, message, num_workers):
    if num_workers == 0:
        target = RewardPool(num_workers=0)
    else:
        target = pool
    with pytest.raises(RewardPoolError, match=message):
        target.score(["int", verifier], ["#### 1", "x"], ["1", "9"])
    assert target.score(["int"], ["#### 1"], ["1"]) == [VerifyResult(1.0, "1", "correct")]


def test_pool_checks_inputs_before_running(pool):
    with pytest.raises(ValueError, match="equal lengths, got 2, 1, 1"):
        pool.score(["int", "int"], ["#### 1"], ["1"])
    with pytest.raises(ValueError, match="unknown verifier 'nope'; valid names: int, int_last, math"):
        pool.score(["int", "nope"], ["#### 1", "x"], ["1", "1"])
    with pytest.raises(ValueError, match="verify_int: gold must be an integer string"):
        pool.score(["int"], ["#### 1"], ["one"])  # raised in the worker, re-raised here


def test_pool_rejects_non_string_items(pool):
    with pytest.raises(ValueError, match=r"item 1 must be three strings .* got \('str', 'NoneType', 'str'\)"):
        pool.score(["int", "int"], ["#### 1", None], ["1", "1"])


def test_pool_replaces_a_worker_killed_between_calls(pool, caplog):
    from multiprocessing.connection import wait

    victim = pool.worker_pids()[0]
    os.kill(victim, 9)
    # The pool learns of a death through the process sentinel, which forkserver signals after it reaps
    # the child; on a loaded machine that can lag the kill, and a fast batch could finish first.
    assert wait([pool._workers[0].process.sentinel], timeout=10)
    with caplog.at_level(logging.WARNING, logger="rlvr.rewards.pool"):
        results = pool.score(["int"] * 6, [f"#### {i}" for i in range(6)], [str(i) for i in range(6)])
    assert [r.reason for r in results] == ["correct"] * 6
    assert victim not in pool.worker_pids()
    assert f"pid {victim}" in caplog.text and "SIGKILL" in caplog.text  # idle, or still starting


@pytest.mark.parametrize("kwargs, message", [
    ({"num_workers": -1}, "num_workers must be an int >= 0"),
    ({"num_workers": 1.5}, "num_workers must be an int >= 0"),
    ({"timeout_s": 0}, "timeout_s must be a positive finite number"),
    ({"timeout_s": float("inf")}, "timeout_s must be a positive finite number"),
    ({"start_method": "fork"}, "start_method must be 'forkserver' or 'spawn'"),
])
def test_pool_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RewardPool(**kwargs)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_pool_leaves_no_processes_after_close():
    seen: set[int] = set()
    with RewardPool(num_workers=2, timeout_s=TIMEOUT_S) as p:
        seen |= set(p.worker_pids())
        p.score(["reward_fixtures:exit_hard", "reward_fixtures:sleep_forever"], ["die", "hang"], ["1", "1"])
        seen |= set(p.worker_pids())
        # Two workers were replaced; when one worker met both bad items in turn, its first replacement
        # came and went between the two pid snapshots, so only three pids may have been seen.
        assert p.restarts == 2 and len(seen) >= 3
        assert p.score(["int"], ["#### 1"], ["1"])[0].score == 1.0
    deadline = time.monotonic() + 2.0
    while not all(_gone(pid) for pid in seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in seen)
    assert not any(c.pid in seen for c in mp.active_children())
    p.close()  # idempotent
    with pytest.raises(RuntimeError, match="after close"):
        p.score(["int"], ["#### 1"], ["1"])


@pytest.mark.slow
def test_workers_exit_when_the_parent_dies(tmp_path):
    """A parent killed while its worker hangs in a verifier must not leave the worker running."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, threading
        sys.path.insert(0, {str(TESTS_DIR)!r})
        from rlvr.rewards import RewardPool
        if __name__ == "__main__":
            pool = RewardPool(num_workers=1, timeout_s=60)
            pool.score(["int"], ["#### 1"], ["1"])  # worker is up
            print(*pool.worker_pids(), flush=True)
            threading.Timer(0.3, os._exit, args=(0,)).start()  # die while the worker hangs
            pool.score(["reward_fixtures:sleep_forever"], ["hang"], ["1"])
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    pids = [int(x) for x in out.stdout.split()]
    assert len(pids) == 1, out.stderr
    deadline = time.monotonic() + 5.0
    while not _gone(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pids[0])


@pytest.mark.slow
def test_script_without_main_guard_fails_clearly(tmp_path):
    """Workers re-run an unguarded main script, which starts a pool in the worker: a clear error."""
    script = tmp_path / "unguarded.py"
    script.write_text("from rlvr.rewards import RewardPool\n"
                      "RewardPool(num_workers=1).score(['int'], ['#### 1'], ['1'])\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode != 0
    assert "reward workers keep dying while starting" in out.stderr
    assert "if __name__ == '__main__'" in out.stderr


@pytest.mark.slow
def test_spawn_pool_matches_forkserver(roomy_pool):
    names, completions, golds = _batch()
    with RewardPool(num_workers=2, timeout_s=60.0, start_method="spawn") as p:
        assert p.score(names, completions, golds) == roomy_pool.score(names, completions, golds)
        assert p.score(["reward_fixtures:exit_hard"], ["die"], ["1"])[0].reason == "worker crashed: exit code 1"


# ---------------------------------------------------------------------------------------------
# verify_int_last: a marked answer wins, else the last integer token
# ---------------------------------------------------------------------------------------------

INT_LAST_CASES = [
    ("1 + 6 = 7", "7", 1.0, "7"),
    ("1 + 6 = 7.", "7", 1.0, "7"),
    ("So 9 - 8 = 11.", "1", 0.0, "11"),
    ("To add 6 and 7 we need addition and", "13", 0.0, "7"),
    ("The result is -4, I think.", "-4", 1.0, "-4"),
    ("x2 is 3.5 and -4", "-4", 1.0, "-4"),          # "x2" is a word, 3.5 a decimal: neither is an integer token
    ("total 1,000 apples", "1000", 1.0, "1,000"),
    ("3.5", "3", 0.0, None),
    ("a 12b", "12", 0.0, None),                      # digits inside a word are not an answer
    ("so 12, then 13", "13", 1.0, "13"),
    ("no numbers here", "1", 0.0, None),
    ("\\boxed{5} and later 6", "5", 1.0, "5"),       # a marked answer wins over the last number
    ("#### 8\n9", "9", 0.0, "8"),
    ("\u22123 is it", "-3", 1.0, "\u22123"),
]


@pytest.mark.parametrize("completion, gold, score, extracted", INT_LAST_CASES)
def test_verify_int_last_table(completion, gold, score, extracted):
    from rlvr.rewards import verify_int_last

    r = verify_int_last(completion, gold)
    assert (r.score, r.extracted) == (score, extracted), r


def test_verify_int_last_is_registered_and_checks_its_gold():
    from rlvr.rewards import get_verifier, verify_int_last

    assert get_verifier("int_last") is verify_int_last
    with pytest.raises(ValueError, match="gold must be an integer"):
        verify_int_last("7", "7.5")
