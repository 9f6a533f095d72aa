"""Evaluation metrics from n sampled answers per problem: pass@k, max@k, maj@k, mean@n, bootstrap intervals.

Pure functions of plain numbers (numpy; max@k is ``rlvr.advantages.max_at_k``, the library's one implementation, on
torch tensors; the Student-t quantile comes from scipy); nothing here samples or scores.

Notation: one problem has n samples, c of them correct, 1 <= k <= n, C = binomial coefficient (out-of-range
C = 0). Every estimator is the exact mean over all C(n, k) size-k subsets S of the n samples, i.e. an unbiased
estimate of the metric for k fresh samples (a U-statistic); none is Monte Carlo.

    pass@k = 1 − C(n−c, k) / C(n, k) = 1 − Π_{i=n−c+1}^{n} (1 − k/i)
        Chen et al. 2021, "Evaluating Large Language Models Trained on Code", arXiv 2107.03374, Eqs. 1–2
        (their numerically stable product form; we evaluate it in log space with log1p/expm1).
    max@k  = mean_S max_{i∈S} r_i = Σ_{m=k}^{n} C(m−1, k−1) / C(n, k) · r_(m)      (r_(1) <= ... <= r_(n))
        the same U-statistic for continuous rewards; PKPO, Walder & Karkhanis 2025, arXiv 2505.15201, Eqs. 12–13.
        On 0/1 rewards it equals pass@k.
    maj@k  = mean_S [majority vote of S is correct]    (self-consistency, Wang et al. 2022, arXiv 2203.11171;
        maj@k as reported by Lewkowycz et al. 2022, "Minerva", arXiv 2206.14858). Ties are broken uniformly:
        a tie among t + 1 top groups that includes the correct one earns 1/(t + 1).
        Exact count: with x correct samples in S (x >= 1), S wins iff every wrong-answer group has < x votes
        in S, except t groups with exactly x, so
            maj@k = C(n, k)^{-1} Σ_{x>=1} C(c, x) Σ_{t>=0} N_x(t) / (t + 1),
        where N_x(t) = [y^{k−x} u^t] (1 + y)^{a} Π_{wrong groups g} (Σ_{v<x} C(|g|, v) y^v + u C(|g|, x) y^x),
        a = number of abstentions. The products are evaluated as polynomials in float64 (all terms >= 0, so
        no cancellation; counts stay below C(n, n/2), finite for n <= 1024).
    mean@n = (1/n) Σ_i r_i.

Dataset level: each metric is the mean over problems of the per-problem value, with a percentile bootstrap
interval over problems (Efron & Tibshirani 1993, "An Introduction to the Bootstrap", ch. 13); all metrics
are resampled with the same problem draws. Across seeds (``rlvr compare``, ``rlvr sweep``'s report, the studies):
the mean with a Student-t interval (``mean_ci``, ``Estimate.over_seeds``). ``Estimate`` is the one interval
estimate of rlvr, whichever way its interval was made. Bad input raises ValueError naming the argument and its
value; nothing is broadcast silently.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = [
    "pass_at_k", "default_ks", "max_at_k", "normalize_answer", "maj_at_k",
    "Estimate", "bootstrap_ci", "mean_ci", "summarize",
]

_MAJ_MAX_N = 1024            # C(1024, 512) ≈ 4.5e306 < float64 max; C(1030, 515) overflows


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------

def _int(name: str, value: Any) -> int:
    """``value`` as a Python int; ValueError for bools, floats and anything else that is not an integer."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    return int(value)


def _check_k(k: Any, n: int, name: str = "k") -> int:
    k = _int(name, k)
    if not 1 <= k <= n:
        raise ValueError(f"{name} must satisfy 1 <= {name} <= n = {n}, got {name}={k}")
    return k


def _scores_1d(scores: Any, name: str = "scores") -> np.ndarray:
    """A finite float64 vector [n], n >= 1."""
    try:
        s = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a sequence of real numbers, got {scores!r}") from e
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} must be finite, got {s[~np.isfinite(s)][0]!r} at index "
                         f"{int(np.flatnonzero(~np.isfinite(s))[0])}")
    return s


def _bools_1d(values: Any, name: str) -> np.ndarray:
    """A bool vector from bools or 0/1 integers (floats are refused: threshold them explicitly)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of bools, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if arr.size == 0:
        return arr.astype(np.bool_)
    if np.issubdtype(arr.dtype, np.integer) and bool(np.isin(arr, (0, 1)).all()):
        return arr.astype(np.bool_)
    raise ValueError(f"{name} must hold bools (or 0/1 ints), got {values!r}")


@functools.lru_cache(maxsize=_MAJ_MAX_N + 1)          # m <= n <= 1024: at most ~4 MB in all
def _binom_row(m: int) -> np.ndarray:
    """[C(m, 0), ..., C(m, m)] in float64 (exact integers rounded once), read-only.   -> [m + 1]"""
    row = np.array([float(math.comb(m, j)) for j in range(m + 1)], dtype=np.float64)
    row.flags.writeable = False
    return row


# ----------------------------------------------------------------------------------------------
# pass@k, max@k
# ----------------------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, arXiv 2107.03374).

    Equation: 1 − C(n−c, k)/C(n, k) = 1 − Π_{i=n−c+1}^{n} (1 − k/i), the product taken in log space,
    −expm1(Σ log1p(−k/i)), so small and large results both keep full relative precision. Returns exactly
    1.0 when n − c < k (every k-subset holds a correct sample) and exactly 0.0 when c = 0.
    Raises ValueError unless n, c, k are ints with 0 <= c <= n and 1 <= k <= n.
    Example: pass_at_k(4, 1, 2) -> 0.5.
    """
    n, c = _int("n", n), _int("c", c)
    if n < 1:
        raise ValueError(f"n must be >= 1, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must satisfy 0 <= c <= n = {n}, got c={c}")
    k = _check_k(k, n)
    if n - c < k:
        return 1.0
    if c == 0:
        return 0.0
    log_fail = math.fsum(math.log1p(-k / i) for i in range(n - c + 1, n + 1))
    return -math.expm1(log_fail)


def default_ks(n: int) -> list[int]:
    """The k values reported for n samples: [1, 2, 4, ..., 2^⌊log2 n⌋] plus n itself if n is not a power of two.

    Example: default_ks(10) -> [1, 2, 4, 8, 10]; default_ks(8) -> [1, 2, 4, 8].
    """
    n = _int("n", n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got n={n}")
    ks = [1 << p for p in range(n.bit_length())]
    if ks[-1] != n:
        ks.append(n)
    return ks


def _max_at_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """max@k of each row of float64 scores [N, n] by ``rlvr.advantages.max_at_k``.   -> float64 [N]"""
    import torch

    from rlvr.advantages import max_at_k as max_at_k_rows

    return max_at_k_rows(torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float64)), k=k).numpy()


def max_at_k(scores: Sequence[float], k: int) -> float:
    """Unbiased max@k for continuous scores: mean over all size-k subsets of the n scores of max(subset).

    Equation: Σ_{m=k}^{n} C(m−1, k−1)/C(n, k) · s_(m) on the ascending order statistics s_(1..n)
    (PKPO, arXiv 2505.15201, Eq. 13). Shapes: scores [n] -> scalar. Computed in float64 by
    ``rlvr.advantages.max_at_k`` (one group; exact binomial ratios, each rounded once, so nothing overflows
    for any n). On 0/1 scores it equals pass_at_k(n, sum(scores), k). Raises ValueError for non-finite or
    empty scores and k outside 1..n.
    Example: max_at_k([0., 1., 3.], 2) -> 7/3.
    """
    s = _scores_1d(scores)
    k = _check_k(k, s.size)
    return float(_max_at_k_rows(s[None, :], k)[0])


# ----------------------------------------------------------------------------------------------
# maj@k
# ----------------------------------------------------------------------------------------------

def normalize_answer(answer: str | None) -> str | None:
    """The key majority voting groups answers by.

    None, "" and whitespace-only strings give None (an abstention). Otherwise: strip; drop one pair of
    surrounding $...$; drop one trailing '.'; collapse internal whitespace runs to one space (and strip
    again). A string that becomes empty on the way (e.g. "$$", ".") is an abstention too.
    Examples: " $ x  + 1 $ " -> "x + 1"; "42." -> "42"; "$x$." -> "$x$" (the dollars are checked before the
    '.' is dropped); "  " -> None.
    Raises ValueError for anything that is neither None nor a str.
    """
    if answer is None:
        return None
    if not isinstance(answer, str):
        raise ValueError(f"answer must be a str or None, got {answer!r} ({type(answer).__name__})")
    s = answer.strip()
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s[1:-1].strip()
    if s.endswith("."):
        s = s[:-1]
    s = " ".join(s.split())
    return s or None


def _vote_groups(answers: Sequence[str | None], correct: Any) -> tuple[int, list[int], int]:
    """(c, sizes of the wrong-answer groups, number of abstentions) for one problem.

    Every correct sample votes for the one correct group, whatever its answer (even None: the verifier
    accepted it). An incorrect sample votes for its normalised answer, or abstains when that is None.
    """
    if isinstance(answers, (str, bytes)):
        raise ValueError(f"answers must be a sequence of str | None, got the string {answers!r}")
    answers = list(answers)
    ok = _bools_1d(correct, "correct")
    if len(answers) != ok.size:
        raise ValueError(f"answers and correct must have the same length, got len(answers)={len(answers)} "
                         f"and len(correct)={ok.size}")
    counts: dict[str, int] = {}
    abstain = 0
    for a, is_ok in zip(answers, ok.tolist()):
        key = normalize_answer(a)
        if is_ok:
            continue
        if key is None:
            abstain += 1
        else:
            counts[key] = counts.get(key, 0) + 1
    return int(ok.sum()), sorted(counts.values(), reverse=True), abstain


def _maj_count(c: int, wrong: list[int], abstain: int, k: int) -> float:
    """Σ_{x>=1} C(c, x) Σ_t N_x(t)/(t + 1) (module docstring), divided by C(n, k); wrong sorted descending.

    For each x the polynomial A[t, j] = Σ (ways to pick j non-correct samples with t wrong groups at exactly x
    votes and all others below x) is built group by group; groups smaller than x and the abstentions are free
    choices and enter as one binomial row. Only columns j <= k − x and rows t <= (k − x)/x are kept.
    """
    n = c + sum(wrong) + abstain
    total = 0.0
    for x in range(1, min(c, k) + 1):
        J = k - x                                                  # non-correct samples in the subset
        big = [g for g in wrong if g >= x]                         # groups that can reach x votes
        free = n - c - sum(big)                                    # abstentions + groups of size < x
        T = min(len(big), J // x) + 1
        A = np.zeros((T, J + 1), dtype=np.float64)
        head = _binom_row(free)[:J + 1]
        A[0, :head.size] = head
        for g in big:
            row = _binom_row(g)
            L = x                                                  # kernel Σ_{v<x} C(g, v) y^v, g >= x
            if L > 1:
                # Row-wise convolution as one 1-D convolution: pad each row to J + L columns so that no
                # row's tail (columns <= J + L − 2) reaches the next row.
                pad = np.zeros((T, J + L), dtype=np.float64)
                pad[:, :J + 1] = A
                low = np.convolve(pad.ravel(), row[:L])[:T * (J + L)].reshape(T, J + L)[:, :J + 1]
            else:
                low = A.copy()
            if T > 1:                                              # T > 1 implies x <= J
                low[1:, x:] += row[x] * A[:-1, :J + 1 - x]
            A = low
        ties = A[:, J] / np.arange(1, T + 1, dtype=np.float64)
        total += float(math.comb(c, x)) * math.fsum(ties.tolist())
    return min(1.0, max(0.0, total / float(math.comb(n, k))))


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """Exact expected majority-vote accuracy of a uniformly random size-k subset of the n samples.

    The expectation over all C(n, k) subsets, computed by the generating-function count of the module
    docstring (no Monte Carlo, no subset enumeration; O(k² · #groups) float64 work per x).
    Voting: answers are grouped by ``normalize_answer``; abstentions (None) never vote. All samples marked
    correct form ONE group (they all equal the gold answer, whatever their spelling, even an unextracted
    None); incorrect samples are grouped by their normalised answer. The subset's prediction is the group
    with the most votes; a tie among t + 1 groups that includes the correct group earns 1/(t + 1); a subset
    with no votes earns 0.
    Shapes: answers [n], correct [n] (bools or 0/1 ints) -> scalar in [0, 1]. 1 <= k <= n <= 1024.
    Example: maj_at_k(["1", "2", "2"], [True, False, False], 2) -> 1/3 (two of the three pairs are a 1–1 tie
    worth 1/2; the pair of "2"s loses).
    """
    c, wrong, abstain = _vote_groups(answers, correct)
    n = c + sum(wrong) + abstain
    if n < 1:
        raise ValueError("answers must be non-empty, got 0 samples")
    if n > _MAJ_MAX_N:
        raise ValueError(f"maj_at_k supports n <= {_MAJ_MAX_N} samples (float64 subset counts), got n={n}")
    k = _check_k(k, n)
    if c == 0:
        return 0.0
    return _maj_count(c, wrong, abstain, k)


# ----------------------------------------------------------------------------------------------
# Bootstrap and dataset summary
# ----------------------------------------------------------------------------------------------

def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """(mean, h): the mean of ``values`` and the half-width of its Student-t interval,
    h = t_{(1+c)/2, n−1} · sd / sqrt(n) with the n−1 sample standard deviation; h is None for one value and
    (mean, h) = (NaN, NaN) when a value is NaN. ValueError for no values.
    Example: mean_ci([0.5, 0.6, 0.7]) -> (0.6, 0.2484...) (t_{0.975, 2} = 4.3027).
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci of no values")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    from scipy.stats import t

    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)


@dataclass(frozen=True)
class Estimate:
    """A mean and its interval [lo, hi]: over problems (a bootstrap percentile interval, ``summarize``) or over
    seeds (a Student-t interval, ``Estimate.over_seeds``). lo = hi = NaN when there is no interval (one seed, or a
    NaN among the values). ``values`` are the per-seed values of ``over_seeds`` (empty for bootstrap estimates)."""
    mean: float
    lo: float     # 95% (or `confidence`) interval
    hi: float
    values: tuple[float, ...] = ()

    @classmethod
    def over_seeds(cls, values: Sequence[float], confidence: float = 0.95) -> "Estimate":
        """The mean of per-seed values with its Student-t interval (``mean_ci``); no values: every field NaN."""
        vals = tuple(float(v) for v in values)
        if not vals:
            return cls(math.nan, math.nan, math.nan, ())
        mean, h = mean_ci(vals, confidence)
        if h is None or math.isnan(h):
            return cls(mean, math.nan, math.nan, vals)
        return cls(mean, mean - h, mean + h, vals)

    @property
    def n(self) -> int:
        """How many per-seed values the estimate holds."""
        return len(self.values)

    @property
    def half_width(self) -> float | None:
        """(hi − lo)/2, or None without an interval."""
        return None if math.isnan(self.lo) or math.isnan(self.hi) else (self.hi - self.lo) / 2


_BOOT_CHUNK = 1 << 20        # at most this many resampled entries (draws × N) in memory at once


def bootstrap_ci(values: Any, *, n_boot: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over rows (problems).

    values: [N] or [N, M] (M metrics, resampled together with the same row draws). Each of n_boot replicates
    draws N rows with replacement (numpy ``default_rng(seed)``) and takes the column means; lo and hi are
    the (1 − confidence)/2 and (1 + confidence)/2 quantiles of the replicates (Efron & Tibshirani 1993,
    ch. 13). Returns (lo, hi), each of shape [] (1-D input) or [M]. The bounds are clipped to the column's
    [min, max] (which every replicate mean lies in), so N == 1 or a constant column gives lo == hi == the
    value exactly. Deterministic for a seed. ValueError for N == 0, non-finite values, ndim not 1 or 2,
    n_boot < 1 or confidence outside (0, 1).
    """
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"values must be a numeric [N] or [N, M] array, got {values!r}") from e
    if v.ndim not in (1, 2):
        raise ValueError(f"values must have shape [N] or [N, M], got shape {v.shape}")
    if v.shape[0] == 0:
        raise ValueError(f"values must have at least one row (problem), got shape {v.shape}")
    if not np.isfinite(v).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(v))[0])
        raise ValueError(f"values must be finite, got {v[bad]!r} at index {bad}")
    n_boot = _int("n_boot", n_boot)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got n_boot={n_boot}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a float in (0, 1), got confidence={confidence!r}")
    seed = _int("seed", seed)

    v2 = v.reshape(v.shape[0], -1)                                 # [N, M]
    N = v2.shape[0]
    rng = np.random.default_rng(seed)
    reps = np.empty((n_boot, v2.shape[1]), dtype=np.float64)       # replicate means
    chunk = max(1, _BOOT_CHUNK // N)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, N, size=(stop - start, N))
        reps[start:stop] = v2[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo = np.quantile(reps, alpha, axis=0)
    hi = np.quantile(reps, 1.0 - alpha, axis=0)
    vmin, vmax = v2.min(axis=0), v2.max(axis=0)
    lo, hi = np.clip(lo, vmin, vmax), np.clip(hi, vmin, vmax)
    if v.ndim == 1:
        return lo.reshape(()), hi.reshape(())
    return lo, hi


def _rows(x: Any, name: str) -> list[list[Any]]:
    """A problem-major list of per-problem sample lists; ValueError on a non-sequence."""
    if isinstance(x, np.ndarray):
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D [N problems][n samples], got shape {x.shape}")
        return [list(r) for r in x]
    if isinstance(x, (str, bytes)) or not isinstance(x, Sequence):
        raise ValueError(f"{name} must be a 2-D sequence [N problems][n samples], got {type(x).__name__}")
    rows = []
    for i, r in enumerate(x):
        if isinstance(r, (str, bytes)) or not hasattr(r, "__len__"):
            raise ValueError(f"{name}[{i}] must be a sequence of samples, got {r!r}")
        rows.append(list(r))
    return rows


def summarize(scores: Any, answers: Any, *, ks: Sequence[int] | None = None, threshold: float = 1.0,
              n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, Estimate]:
    """Per-dataset metrics from per-problem samples.

    scores: [N problems][n samples] floats (a list of lists or a 2-D array; every problem has the same n,
        else ValueError naming the first problem whose count differs);
    answers: same shape, extracted answer strings or None;
    a sample is correct when score >= threshold.
    Keys, in this order: f"pass@{k}" for k in ks (default default_ks(n)), f"maj@{k}" for k in ks,
    f"mean@{n}" (mean score), and f"max@{k}" for k in ks ONLY when some score is not 0 or 1
    (continuous rewards). Each value is the mean over problems of the per-problem metric with a
    bootstrap CI over problems (all metrics resampled with the same draws; see ``bootstrap_ci``).
    Example: summarize([[1, 0], [0, 0]], [["4", "5"], ["1", None]])["pass@1"].mean -> 0.25.
    """
    score_rows, answer_rows = _rows(scores, "scores"), _rows(answers, "answers")
    if not score_rows:
        raise ValueError("scores must hold at least one problem, got 0")
    n = len(score_rows[0])
    if n == 0:
        raise ValueError("scores[0] must hold at least one sample, got 0")
    for i, r in enumerate(score_rows):
        if len(r) != n:
            raise ValueError(f"every problem must have the same number of samples: scores[{i}] has {len(r)}, "
                             f"scores[0] has {n}")
    if len(answer_rows) != len(score_rows):
        raise ValueError(f"answers must have one row per problem: len(answers)={len(answer_rows)}, "
                         f"len(scores)={len(score_rows)}")
    for i, r in enumerate(answer_rows):
        if len(r) != n:
            raise ValueError(f"answers[{i}] has {len(r)} samples, scores have {n} per problem")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got threshold={threshold!r}")
    S = np.stack([_scores_1d(r, f"scores[{i}]") for i, r in enumerate(score_rows)])    # [N, n]
    ks = default_ks(n) if ks is None else [_check_k(k, n, "ks[]") for k in ks]
    if not ks:
        raise ValueError("ks must be non-empty, got []")
    if len(set(ks)) != len(ks):
        raise ValueError(f"ks must not repeat a value, got ks={ks}")
    if n > _MAJ_MAX_N:
        raise ValueError(f"maj@k supports n <= {_MAJ_MAX_N} samples per problem, got n={n}")
    continuous = bool(((S != 0.0) & (S != 1.0)).any())

    names = [f"pass@{k}" for k in ks] + [f"maj@{k}" for k in ks] + [f"mean@{n}"]
    if continuous:
        names += [f"max@{k}" for k in ks]
    table = np.empty((S.shape[0], len(names)), dtype=np.float64)   # [N problems, M metrics]
    for p, (s, a) in enumerate(zip(S, answer_rows)):  # pass@k, maj@k, mean@n
        ok = s >= threshold
        c = int(ok.sum())
        c_maj, wrong, abstain = _vote_groups(a, ok)
        row = [pass_at_k(n, c, k) for k in ks]
        row += [_maj_count(c_maj, wrong, abstain, k) if c_maj else 0.0 for k in ks]
        row.append(float(s.mean()))
        table[p, :len(row)] = row
    if continuous:                                                 # max@k of every problem at once
        table[:, len(names) - len(ks):] = np.stack([_max_at_k_rows(S, k) for k in ks], axis=1)
    lo, hi = bootstrap_ci(table, n_boot=n_boot, confidence=confidence, seed=seed)
    means = table.mean(axis=0)
    return {name: Estimate(float(means[j]), float(lo[j]), float(hi[j])) for j, name in enumerate(names)}
