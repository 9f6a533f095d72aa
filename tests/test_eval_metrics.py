"""Value tests for rlvr.eval.metrics: pass@k, max@k and maj@k against brute-force averages over all k-subsets
(exact Fractions), large-n numerics, answer normalisation, the bootstrap interval and the dataset summary."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import numpy as np
import pytest

from rlvr.eval.metrics import (Estimate, bootstrap_ci, default_ks, maj_at_k, max_at_k, normalize_answer, pass_at_k,
                               summarize)


# ----------------------------------------------------------------------------------------------
# Oracles: plain enumeration of all size-k subsets, exact arithmetic
# ----------------------------------------------------------------------------------------------

def brute_pass(n: int, c: int, k: int) -> Fraction:
    flags = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(flags[i] for i in s) for s in subsets), len(subsets))


def brute_max(scores: list[float], k: int) -> Fraction:
    subsets = list(itertools.combinations(range(len(scores)), k))
    return sum((Fraction(max(scores[i] for i in s)) for s in subsets), Fraction(0)) / len(subsets)


def brute_maj(answers: list[str | None], correct: list[bool], k: int) -> Fraction:
    """Mean over all k-subsets of the vote outcome; correct samples vote for one merged group."""
    CORRECT = object()
    subsets = list(itertools.combinations(range(len(answers)), k))
    total = Fraction(0)
    for s in subsets:
        votes: dict[object, int] = {}
        for i in s:
            if correct[i]:
                key: object = CORRECT
            else:
                key = normalize_answer(answers[i])
                if key is None:
                    continue                                       # abstention
            votes[key] = votes.get(key, 0) + 1
        if not votes:
            continue
        top = max(votes.values())
        winners = [g for g, v in votes.items() if v == top]
        if CORRECT in winners:
            total += Fraction(1, len(winners))
    return total / len(subsets)


# ----------------------------------------------------------------------------------------------
# pass@k
# ----------------------------------------------------------------------------------------------

def test_pass_at_k_matches_brute_force_small_n():
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(brute_pass(n, c, k)), rel=1e-13, abs=1e-15), \
                    (n, c, k)


@pytest.mark.parametrize("c", [1, 2, 5, 50, 100, 150, 190, 199])
@pytest.mark.parametrize("k", [1, 2, 5, 10, 64, 100])
def test_pass_at_k_matches_exact_fraction_large_n(c, k):
    n = 200
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    got = pass_at_k(n, c, k)
    assert abs(got - float(exact)) <= 1e-12 * float(exact), (c, k, got, float(exact))


def test_pass_at_k_edges():
    assert pass_at_k(10, 0, 3) == 0.0
    assert pass_at_k(10, 10, 3) == 1.0
    assert pass_at_k(10, 8, 3) == 1.0                              # n − c = 2 < k = 3
    assert pass_at_k(10, 7, 3) < 1.0
    assert pass_at_k(10, 7, 3) == pytest.approx(1 - 1 / math.comb(10, 3), rel=1e-14)
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(np.int64(4), np.int64(1), np.int64(2)) == pytest.approx(0.5, rel=1e-15)


def test_pass_at_1_is_the_fraction_correct():
    for n in (1, 3, 7, 64, 257):
        for c in range(0, n + 1, max(1, n // 5)):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n, rel=1e-14, abs=0)


@pytest.mark.parametrize("args, word", [((5, 2, 6), "k"), ((5, 2, 0), "k"), ((5, 6, 1), "c"), ((5, -1, 1), "c"),
                                        ((0, 0, 1), "n"), ((-3, 0, 1), "n"), ((5.0, 2, 1), "n"),
                                        ((5, 2.0, 1), "c"), ((5, 2, 1.5), "k"), ((5, True, 1), "c"),
                                        ((5, 2, "1"), "k")])
def test_pass_at_k_rejects_bad_input(args, word):
    with pytest.raises(ValueError, match=rf"\b{word}\b"):
        pass_at_k(*args)


# ----------------------------------------------------------------------------------------------
# default_ks
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, expected", [(1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (8, [1, 2, 4, 8]),
                                         (10, [1, 2, 4, 8, 10]), (16, [1, 2, 4, 8, 16])])
def test_default_ks(n, expected):
    assert default_ks(n) == expected


@pytest.mark.parametrize("bad", [0, -1, 2.0, None])
def test_default_ks_rejects_bad_n(bad):
    with pytest.raises(ValueError, match="n"):
        default_ks(bad)


# ----------------------------------------------------------------------------------------------
# max@k
# ----------------------------------------------------------------------------------------------

def test_max_at_k_matches_brute_force():
    rng = random.Random(1)
    for _ in range(60):
        n = rng.randint(1, 9)
        # continuous scores, some ties, negatives
        scores = [rng.choice([rng.uniform(-2, 3), 0.5, 1.0, -1.25]) for _ in range(n)]
        for k in range(1, n + 1):
            exact = float(brute_max(scores, k))
            assert max_at_k(scores, k) == pytest.approx(exact, rel=1e-12, abs=1e-12), (scores, k)


def test_max_at_k_hand_values():
    assert max_at_k([0.0, 1.0, 3.0], 2) == pytest.approx(7 / 3, rel=1e-15)
    assert max_at_k([3.0, 0.0, 1.0], 3) == 3.0
    assert max_at_k([3.0, 0.0, 1.0], 1) == pytest.approx(4 / 3, rel=1e-15)
    assert max_at_k(np.array([2.5]), 1) == 2.5


def test_max_at_k_equals_pass_at_k_on_binary_scores():
    rng = random.Random(2)
    for n in (1, 2, 5, 16, 64, 200):
        for c in sorted({0, 1, n // 3, n - 1, n} & set(range(n + 1))):
            scores = [1.0] * c + [0.0] * (n - c)
            rng.shuffle(scores)
            for k in sorted({1, 2, n // 2, n} & set(range(1, n + 1))):
                assert max_at_k(scores, k) == pytest.approx(pass_at_k(n, c, k), rel=1e-12, abs=1e-14), (n, c, k)


def test_max_at_k_large_n_no_overflow():
    rng = np.random.default_rng(3)
    scores = rng.uniform(0, 1, size=512)
    v = max_at_k(scores, 300)
    assert math.isfinite(v) and np.sort(scores)[299] <= v <= scores.max()
    # weights sum to 1: a constant score is returned unchanged
    assert max_at_k([0.7] * 1024, 300) == pytest.approx(0.7, rel=1e-12)
    # binary, large n, against the exact closed form
    n, c, k = 1024, 3, 700
    binary = [1.0] * c + [0.0] * (n - c)
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert max_at_k(binary, k) == pytest.approx(float(exact), rel=1e-11)


@pytest.mark.parametrize("scores, k, word", [([], 1, "scores"), ([1.0, float("nan")], 1, "scores"),
                                             ([1.0, float("inf")], 1, "scores"), ([[1.0, 2.0]], 1, "scores"),
                                             (["a"], 1, "scores"), ([1.0, 2.0], 3, "k"), ([1.0, 2.0], 0, "k"),
                                             ([1.0, 2.0], 1.0, "k")])
def test_max_at_k_rejects_bad_input(scores, k, word):
    with pytest.raises(ValueError, match=word):
        max_at_k(scores, k)


# ----------------------------------------------------------------------------------------------
# normalize_answer
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, key", [
    (None, None), ("", None), ("   ", None), ("\t\n", None), ("$$", None), (".", None), ("$ $", None),
    ("42", "42"), ("  42  ", "42"), ("42.", "42"), ("$42$", "42"), (" $ 42 $ ", "42"), ("$42.$", "42"),
    ("$$x$$", "$x$"),                                              # only one pair of dollars is dropped
    ("$x$.", "$x$"),                                               # dollars are checked before the '.'
    ("42..", "42."),                                               # only one trailing '.'
    ("x  +\t 1", "x + 1"), ("\\frac{1}{2}", "\\frac{1}{2}"), ("3.5", "3.5"), ("$a$ and $b$", "a$ and $b"),
])
def test_normalize_answer(raw, key):
    assert normalize_answer(raw) == key


def test_normalize_answer_rejects_non_strings():
    with pytest.raises(ValueError, match="answer"):
        normalize_answer(42)


# ----------------------------------------------------------------------------------------------
# maj@k
# ----------------------------------------------------------------------------------------------

def _random_case(rng: random.Random) -> tuple[list[str | None], list[bool]]:
    n = rng.randint(1, 10)
    wrong_pool = ["7", " 7", "7.", "$7$", "8", "9", "x+1", "x + 1", "11", "12"]
    right_pool = ["42", "$42$", "42.", "42.0", " 42 ", None]       # several spellings, even unextracted
    p_correct = rng.choice([0.0, 0.2, 0.5, 0.8, 1.0])
    n_wrong_kinds = rng.randint(1, len(wrong_pool))
    answers, correct = [], []
    for _ in range(n):
        if rng.random() < p_correct:
            answers.append(rng.choice(right_pool))
            correct.append(True)
        elif rng.random() < 0.2:
            answers.append(rng.choice([None, "", "  "]))           # abstention
            correct.append(False)
        else:
            answers.append(rng.choice(wrong_pool[:n_wrong_kinds]))
            correct.append(False)
    return answers, correct


def test_maj_at_k_matches_brute_force_oracle():
    rng = random.Random(4)
    for _ in range(300):
        answers, correct = _random_case(rng)
        for k in range(1, len(answers) + 1):
            exact = float(brute_maj(answers, correct, k))
            assert maj_at_k(answers, correct, k) == pytest.approx(exact, rel=1e-12, abs=1e-13), \
                (answers, correct, k)


def test_maj_at_k_many_singleton_wrong_groups_matches_oracle():
    # many distinct wrong answers (ties among several groups at x = 1 and x = 2)
    answers = ["r", "r", "a", "b", "c", "d", "e", "e", "f", None, "g", "h"]
    correct = [True, True] + [False] * 10
    for k in range(1, len(answers) + 1):
        assert maj_at_k(answers, correct, k) == pytest.approx(float(brute_maj(answers, correct, k)),
                                                              rel=1e-12, abs=1e-13)


def test_maj_at_k_hand_cases():
    assert maj_at_k(["1", "$1$", "1."], [True, True, True], 2) == 1.0
    assert maj_at_k(["1", "2", None], [False, False, False], 2) == 0.0
    # k = 1: each sample alone; correct ones always win, abstentions and wrong ones never
    answers = ["5", "5", "3", None, "4", "5", "3"]
    correct = [True, True, False, False, False, True, False]
    assert maj_at_k(answers, correct, 1) == pytest.approx(3 / 7, rel=1e-15)
    # 2-2 tie at k = 4 = n: correct {"1", "1"} vs wrong {"2", "2"}: exactly one half
    assert maj_at_k(["1", "1", "2", "2"], [True, True, False, False], 4) == 0.5
    # n = 5, k = 4, answers c,c,w,w,v: subsets dropping a c -> c1 vs w2 loses (0), dropping a w -> c2 wins (1),
    # dropping v -> 2-2 tie (1/2): (0 + 0 + 1 + 1 + 1/2)/5 = 1/2
    assert maj_at_k(["1", "1", "2", "2", "3"], [True, True, False, False, False], 4) == pytest.approx(0.5, rel=1e-15)
    # three-way tie 1-1-1 at k = 3: 1/3
    assert maj_at_k(["1", "2", "3"], [True, False, False], 3) == pytest.approx(1 / 3, rel=1e-15)
    # spelling variants of one wrong answer merge: "7", "$7$", "7." is a group of 3 beating 2 correct
    assert maj_at_k(["7", "$7$", "7.", "42", "42"], [False, False, False, True, True], 5) == 0.0
    # abstentions never vote: one correct vote and two abstentions win
    assert maj_at_k(["42", None, "  "], [True, False, False], 3) == 1.0
    # the docstring example
    assert maj_at_k(["1", "2", "2"], [True, False, False], 2) == pytest.approx(1 / 3, rel=1e-15)


def test_maj_at_1_is_the_fraction_correct_random():
    rng = random.Random(5)
    for _ in range(50):
        answers, correct = _random_case(rng)
        assert maj_at_k(answers, correct, 1) == pytest.approx(sum(correct) / len(correct), rel=1e-14, abs=0)


def test_maj_at_k_large_n_finite():
    rng = random.Random(6)
    n = 256
    correct = [rng.random() < 0.3 for _ in range(n)]
    answers = [("42" if ok else rng.choice(["1", "2", "3", None] + [str(i) for i in range(100, 140)]))
               for ok in correct]
    vals = [maj_at_k(answers, correct, k) for k in (1, 16, 128, 255, 256)]
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in vals)
    assert vals[0] == pytest.approx(sum(correct) / n, rel=1e-12)
    # c = 77-ish correct in one group beats ~40 scattered wrong answers once k is large
    assert vals[-1] == 1.0 and vals[-2] > 0.99
    # a big balanced case: 128 correct vs 128 of one wrong answer at k = n is a 2-way tie
    assert maj_at_k(["a"] * 128 + ["b"] * 128, [True] * 128 + [False] * 128, 256) == pytest.approx(0.5, rel=1e-12)
    # symmetry: at any k, the two groups of equal size win equally often and ties split: exactly 1/2
    assert maj_at_k(["a"] * 128 + ["b"] * 128, [True] * 128 + [False] * 128, 101) == pytest.approx(0.5, rel=1e-10)


@pytest.mark.parametrize("answers, correct, k, word", [
    (["1", "2"], [True], 1, "length"), (["1", "2"], [True, False], 3, "k"), (["1", "2"], [True, False], 0, "k"),
    ([], [], 1, "answers"), (["1", 2], [True, False], 1, "answer"), (["1"], [0.5], 1, "correct"),
    ("12", [True, False], 1, "answers"),
])
def test_maj_at_k_rejects_bad_input(answers, correct, k, word):
    with pytest.raises(ValueError, match=word):
        maj_at_k(answers, correct, k)


# ----------------------------------------------------------------------------------------------
# bootstrap_ci
# ----------------------------------------------------------------------------------------------

def test_bootstrap_ci_deterministic_for_a_seed():
    v = np.random.default_rng(7).normal(size=200)
    a = bootstrap_ci(v, seed=3)
    b = bootstrap_ci(v, seed=3)
    c = bootstrap_ci(v, seed=4)
    assert a[0] == b[0] and a[1] == b[1]
    assert (a[0], a[1]) != (c[0], c[1])
    assert a[0].shape == () and a[0] < v.mean() < a[1]


def test_bootstrap_ci_constant_and_single_row():
    lo, hi = bootstrap_ci([0.1] * 37)
    assert lo == hi == 0.1
    lo, hi = bootstrap_ci([0.3])
    assert lo == hi == 0.3
    lo, hi = bootstrap_ci([[0.25, 7.0, -1.5]])
    assert lo.tolist() == hi.tolist() == [0.25, 7.0, -1.5]


def test_bootstrap_ci_bernoulli_width():
    p, N = 0.3, 10_000
    x = np.random.default_rng(8).permutation(np.repeat([1.0, 0.0], [3000, N - 3000]))   # sample mean exactly p
    lo, hi = bootstrap_ci(x, n_boot=2000, seed=0)
    assert lo < p < hi
    expected = 2 * 1.96 * math.sqrt(p * (1 - p) / N)
    assert abs((hi - lo) - expected) <= 0.15 * expected, (hi - lo, expected)


def test_bootstrap_ci_2d_shape_and_shared_draws():
    rng = np.random.default_rng(9)
    col = rng.random(50)
    v = np.stack([col, 2 * col + 1, col], axis=1)                  # [N, 3]
    lo, hi = bootstrap_ci(v, n_boot=500, seed=1)
    assert lo.shape == hi.shape == (3,)
    # same row draws for every column: an affine column maps to the affine interval, a copy to the same one
    assert lo[1] == pytest.approx(2 * lo[0] + 1, rel=1e-12) and hi[1] == pytest.approx(2 * hi[0] + 1, rel=1e-12)
    assert lo[2] == lo[0] and hi[2] == hi[0]
    # and the 1-D call on a column gives the same interval as that column of the 2-D call
    lo1, hi1 = bootstrap_ci(col, n_boot=500, seed=1)
    assert lo1 == pytest.approx(lo[0], rel=1e-12) and hi1 == pytest.approx(hi[0], rel=1e-12)


@pytest.mark.parametrize("values, kw, word", [([], {}, "values"), (np.zeros((0, 3)), {}, "values"),
                                              ([1.0, float("nan")], {}, "finite"), ([1.0, float("inf")], {}, "finite"),
                                              (np.zeros((2, 2, 2)), {}, "shape"), ([1.0], {"n_boot": 0}, "n_boot"),
                                              ([1.0], {"confidence": 1.0}, "confidence"),
                                              ([1.0], {"confidence": 0.0}, "confidence")])
def test_bootstrap_ci_rejects_bad_input(values, kw, word):
    with pytest.raises(ValueError, match=word):
        bootstrap_ci(values, **kw)


# ----------------------------------------------------------------------------------------------
# summarize
# ----------------------------------------------------------------------------------------------

def test_summarize_binary_keys_and_values():
    rng = random.Random(10)
    N, n = 30, 6
    scores, answers = [], []
    for _ in range(N):
        row_s, row_a = [], []
        for _ in range(n):
            ok = rng.random() < 0.4
            row_s.append(1.0 if ok else 0.0)
            row_a.append("42" if ok else rng.choice(["1", "2", None]))
        scores.append(row_s)
        answers.append(row_a)
    out = summarize(scores, answers, n_boot=300)
    assert list(out) == ["pass@1", "pass@2", "pass@4", "pass@6", "maj@1", "maj@2", "maj@4", "maj@6", "mean@6"]
    assert all(isinstance(e, Estimate) and e.lo <= e.hi for e in out.values())
    frac = float(np.mean(np.array(scores) >= 1.0))
    assert out["pass@1"].mean == pytest.approx(frac, rel=1e-12)
    assert out["maj@1"].mean == pytest.approx(frac, rel=1e-12)
    assert out["mean@6"].mean == pytest.approx(frac, rel=1e-12)
    exp_pass4 = np.mean([pass_at_k(n, int(sum(r)), 4) for r in scores])
    exp_maj4 = np.mean([maj_at_k(a, [s >= 1 for s in r], 4) for r, a in zip(scores, answers)])
    assert out["pass@4"].mean == pytest.approx(exp_pass4, rel=1e-12)
    assert out["maj@4"].mean == pytest.approx(exp_maj4, rel=1e-12)
    assert out["pass@1"].lo < out["pass@1"].mean < out["pass@1"].hi


def test_summarize_continuous_adds_max_and_threshold():
    scores = np.array([[0.2, 0.9, 1.0], [0.5, 0.5, 0.0]])
    answers = [["a", "b", "c"], ["d", "d", None]]
    out = summarize(scores, answers, ks=[1, 3], threshold=0.9, n_boot=200)
    assert list(out) == ["pass@1", "pass@3", "maj@1", "maj@3", "mean@3", "max@1", "max@3"]
    assert out["pass@1"].mean == pytest.approx((2 / 3 + 0) / 2, rel=1e-12)  # 0.9 and 1.0 pass the threshold
    assert out["pass@3"].mean == pytest.approx(0.5, rel=1e-12)
    assert out["mean@3"].mean == pytest.approx(scores.mean(), rel=1e-12)
    assert out["max@3"].mean == pytest.approx((1.0 + 0.5) / 2, rel=1e-12)
    assert out["max@1"].mean == pytest.approx(scores.mean(), rel=1e-12)
    # problem 0 at k = 3: "b" and "c" both correct -> one group of 2 beats "a": 1
    assert out["maj@3"].mean == pytest.approx(0.5, rel=1e-12)


def test_summarize_single_problem_interval_collapses():
    out = summarize([[1.0, 0.0, 0.0, 1.0]], [["x", "y", "y", "x"]], n_boot=100)
    assert list(out) == ["pass@1", "pass@2", "pass@4", "maj@1", "maj@2", "maj@4", "mean@4"]
    for e in out.values():
        assert e.lo == e.hi == pytest.approx(e.mean, rel=1e-15)
    assert out["maj@4"].mean == 0.5                               # 2-2 tie
    assert out["pass@2"].mean == pytest.approx(5 / 6, rel=1e-15)


def test_summarize_rejects_ragged_and_mismatched():
    with pytest.raises(ValueError, match=r"scores\[2\]"):
        summarize([[1, 0], [0, 1], [1], [0, 0, 0]], [["a", "b"]] * 4)
    with pytest.raises(ValueError, match=r"answers\[1\]"):
        summarize([[1, 0], [0, 1]], [["a", "b"], ["a"]])
    with pytest.raises(ValueError, match="answers"):
        summarize([[1, 0], [0, 1]], [["a", "b"]])
    with pytest.raises(ValueError, match="scores"):
        summarize([], [])
    with pytest.raises(ValueError, match="finite"):
        summarize([[1.0, float("nan")]], [["a", "b"]])
    with pytest.raises(ValueError, match="ks"):
        summarize([[1, 0]], [["a", "b"]], ks=[1, 3])
    with pytest.raises(ValueError, match="ks"):
        summarize([[1, 0]], [["a", "b"]], ks=[1, 1])
