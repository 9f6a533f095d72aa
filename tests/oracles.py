"""Slow, independent reference implementations of the advantage estimators (test oracles).

Everything here is plain Python: loops, ``itertools.combinations`` and ``math.comb``. Nothing is
imported from ``rlvr.advantages`` and no closed form of the implementation is reused: the max@k
family is computed by enumerating every subset, the PKPO weights follow the subset sums of
ALGORITHMS.md §2.2 literally, and the Leave-Two-Out baseline is built as §2.3 describes it.

Conventions:
  * A *group* is a sequence of rewards g_1..g_n (one prompt). ``*_group`` functions take one group
    and return a list of n advantages; ``*_batch`` functions take a list of groups (rows) because
    they couple groups (GPG's α, REINFORCE++'s batch whitening). ``per_row`` maps a group oracle
    over rows.
  * The subset-based oracles are generic in the number type: give them ``fractions.Fraction``
    rewards and they compute exactly (sums of Fractions stay Fractions); give them floats and sums
    are ``math.fsum`` (correctly rounded), so the only error is one rounding per operation.
  * Out-of-range binomials are 0 (``comb0``).
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Callable, Sequence

Number = float | Fraction


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------

def comb0(n: int, k: int) -> int:
    """Binomial C(n, k), and 0 when k < 0, n < 0 or k > n (scipy.special.comb's convention)."""
    if n < 0 or k < 0 or k > n:
        return 0
    return math.comb(n, k)


def _sum(xs) -> Number:
    """Exact sum for Fractions/ints, correctly rounded math.fsum for floats."""
    xs = list(xs)
    if all(isinstance(x, (Fraction, int)) for x in xs):
        return sum(xs, Fraction(0))
    return math.fsum(float(x) for x in xs)


def _mean(xs) -> Number:
    xs = list(xs)
    if not xs:
        raise ValueError("mean of an empty sequence")
    return _sum(xs) / len(xs)


def _max_or_zero(values) -> Number:
    """max of the values, and 0 for the empty set (used only where §2.3's k − 1 = 0 case needs it)."""
    values = list(values)
    return max(values) if values else 0


def per_row(fn: Callable[..., list], rows: Sequence[Sequence[Number]], **kw) -> list[list]:
    """Apply a one-group oracle to every row."""
    return [list(fn(list(row), **kw)) for row in rows]


def _is_constant(g: Sequence[Number]) -> bool:
    return all(x == g[0] for x in g)


# ----------------------------------------------------------------------------------------------
# k = 1 estimators (ALGORITHMS.md §1, §4)
# ----------------------------------------------------------------------------------------------

def unbiased_std(g: Sequence[float]) -> float:
    """Bessel-corrected sample standard deviation, written out as a loop."""
    n = len(g)
    mean = math.fsum(g) / n
    terms = []
    for x in g:
        terms.append((x - mean) ** 2)
    return math.sqrt(math.fsum(terms) / (n - 1))


def grpo_group(g: Sequence[float], *, scale_by_std: bool = True, eps: float = 1e-6) -> list[float]:
    """GRPO: (g_i − mean)/(std + eps) with the unbiased std; constant group or n = 1 -> all 0."""
    n = len(g)
    if n == 1 or _is_constant(g):
        return [0.0] * n
    mean = math.fsum(g) / n
    out = []
    for x in g:
        a = x - mean
        if scale_by_std:
            a = a / (unbiased_std(g) + eps)
        out.append(a)
    return out


def dr_grpo_group(g: Sequence[float]) -> list[float]:
    """Dr. GRPO: g_i − mean(g); constant group -> exactly 0."""
    if _is_constant(g):
        return [0.0] * len(g)
    mean = math.fsum(g) / len(g)
    return [x - mean for x in g]


def rloo_group(g: Sequence[float]) -> list[float]:
    """RLOO: g_i − mean_{j≠i} g_j (needs n >= 2)."""
    n = len(g)
    if n < 2:
        raise ValueError("RLOO needs n >= 2")
    out = []
    for i in range(n):
        others = [g[j] for j in range(n) if j != i]
        out.append(g[i] - math.fsum(others) / (n - 1))
    return out


def aapo_group(g: Sequence[float], ref: Sequence[float], *, scale_by_std: bool = False, eps: float = 1e-4,
               margin_low: float = -0.2, margin_high: float = 0.28) -> list[float]:
    """AAPO (§1.1): group part (g_i − mean)[/(std + eps)] plus clip(g_i − ref_i, δ_low, δ_high)."""
    assert len(g) == len(ref)
    group = grpo_group(g, scale_by_std=scale_by_std, eps=eps)
    out = []
    for i in range(len(g)):
        gap = g[i] - ref[i]
        margin = min(max(gap, margin_low), margin_high)
        out.append(group[i] + margin)
    return out


def gpg_batch(rows: Sequence[Sequence[float]], *, scale_by_std: bool = False, eps: float = 1e-6) -> list[list[float]]:
    """GPG (§4.7): α·(g_i − mean)/F per group, α = B/(B − M), M = samples in constant groups.

    With every group constant, all advantages are 0 (α is irrelevant).
    """
    B = sum(len(r) for r in rows)
    M = sum(len(r) for r in rows if _is_constant(r))
    alpha = B / (B - M) if B > M else 1.0
    out = []
    for r in rows:
        out.append([alpha * a for a in grpo_group(r, scale_by_std=scale_by_std, eps=eps)])
    return out


def reinforce_pp_baseline_batch(rows: Sequence[Sequence[float]], *, lengths: Sequence[Sequence[float]] | None = None,
                                eps: float = 1e-8) -> list[list[float]]:
    """REINFORCE++-baseline (§4.5): a = g − group mean, then whitened over the batch.

    Whitening uses weights w (token counts, or 1 per sample): μ = Σ w a / Σ w,
    σ² = Σ w (a − μ)² / (Σ w − 1), A = (a − μ)/sqrt(σ² + eps). Σ w <= 1 gives all zeros.
    """
    a = [dr_grpo_group(r) for r in rows]
    w = [[1.0] * len(r) for r in rows] if lengths is None else [[float(x) for x in r] for r in lengths]
    flat_a = [x for row in a for x in row]
    flat_w = [x for row in w for x in row]
    total = math.fsum(flat_w)
    if total <= 1:
        return [[0.0] * len(r) for r in rows]
    mu = math.fsum(wi * ai for wi, ai in zip(flat_w, flat_a)) / total
    var = math.fsum(wi * (ai - mu) ** 2 for wi, ai in zip(flat_w, flat_a)) / (total - 1)
    sd = math.sqrt(var + eps)
    return [[(x - mu) / sd for x in row] for row in a]


# ----------------------------------------------------------------------------------------------
# Max@k family by enumeration over subsets (§2.1)
# ----------------------------------------------------------------------------------------------

def _mean_max_over_subsets(g: Sequence[Number], pool: Sequence[int], k: int, must_contain: int | None = None) -> Number:
    """mean over size-k subsets S of ``pool`` (containing ``must_contain`` if given) of max_S g."""
    vals = []
    for S in itertools.combinations(pool, k):
        if must_contain is not None and must_contain not in S:
            continue
        vals.append(max(g[j] for j in S))
    return _mean(vals)


def max_at_k_U(g: Sequence[Number], k: int) -> Number:
    """U = mean over all size-k subsets S of max_S g (needs 1 <= k <= n)."""
    n = len(g)
    assert 1 <= k <= n
    return _mean_max_over_subsets(g, range(n), k)


def include_one_q(g: Sequence[Number], k: int) -> list[Number]:
    """q_i = mean over size-k subsets S ∋ i of max_S g (needs 1 <= k <= n)."""
    n = len(g)
    assert 1 <= k <= n
    return [_mean_max_over_subsets(g, range(n), k, must_contain=i) for i in range(n)]


def leave_one_out_v(g: Sequence[Number], k: int) -> list[Number]:
    """v_i = mean over size-k subsets S ∌ i of max_S g (needs 1 <= k <= n − 1)."""
    n = len(g)
    assert 1 <= k <= n - 1
    return [_mean_max_over_subsets(g, [j for j in range(n) if j != i], k) for i in range(n)]


def maxpo_q_minus_v(g: Sequence[Number], k: int) -> list[Number]:
    """MaxPO advantage by enumeration: q_i − v_i (needs n >= k + 1)."""
    q, v = include_one_q(g, k), leave_one_out_v(g, k)
    return [qi - vi for qi, vi in zip(q, v)]


# ----------------------------------------------------------------------------------------------
# PKPO (§2.2), written as PKPO's own subset sums
# ----------------------------------------------------------------------------------------------

def _pkpo_S(g: Sequence[Number], j: int, k: int, pool: Sequence[int]) -> Number:
    """S(j, k, pool) = C(|pool|, k)^{-1} Σ_{S ⊆ pool, |S| = k, S ∋ j} max_S g   (PKPO Eq. 27)."""
    total = []
    for S in itertools.combinations(pool, k):
        if j in S:
            total.append(max(g[t] for t in S))
    return _sum(total) / math.comb(len(pool), k) if total else 0


def pkpo_s(g: Sequence[Number], k: int) -> list[Number]:
    """PKPO s_i = C(n,k)^{-1} Σ_{|S|=k, S∋i} max_S g (Eq. 19/27); needs 1 <= k <= n."""
    n = len(g)
    return [_pkpo_S(g, i, k, range(n)) for i in range(n)]


def pkpo_s_loo(g: Sequence[Number], k: int) -> list[Number]:
    """PKPO s_i^(loo) = s_i − (1/(n−1)) Σ_{j≠i} S(j, k, [n] \\ i)  (Eq. 29); needs n >= k + 1."""
    n = len(g)
    s = pkpo_s(g, k)
    out = []
    for i in range(n):
        pool = [j for j in range(n) if j != i]
        base = _sum(_pkpo_S(g, j, k, pool) for j in pool) / (n - 1)
        out.append(s[i] - base)
    return out


def pkpo_s_loo_minus_one(g: Sequence[Number], k: int) -> list[Number]:
    """PKPO s_i^(loo−1) = C(n,k)^{-1} Σ_{|S|=k, S∋i} (max_S g − max_{S\\i} g)  (Eq. 33); needs 2 <= k <= n."""
    n = len(g)
    assert 2 <= k <= n
    out = []
    for i in range(n):
        terms = []
        for S in itertools.combinations(range(n), k):
            if i in S:
                terms.append(max(g[t] for t in S) - max(g[t] for t in S if t != i))
        out.append(_sum(terms) / math.comb(n, k))
    return out


def pass_at_k_rho(n: int, c: int, k: int) -> Fraction:
    """Chen et al.'s unbiased pass@k estimate ρ(n, c, k) = 1 − C(n−c, k)/C(n, k)  (PKPO Eq. 2), exact."""
    return 1 - Fraction(comb0(n - c, k), math.comb(n, k))


def pkpo_binary_eq8(g: Sequence[Number], k: int) -> list[Fraction]:
    """PKPO's binary gradient weights (Eq. 8): k/n if correct, (k/n)·ρ(n−1, c, k−1) if incorrect. Exact."""
    n = len(g)
    c = sum(1 for x in g if x == 1)
    assert all(x in (0, 1) for x in g)
    right = Fraction(k, n)
    wrong = Fraction(k, n) * pass_at_k_rho(n - 1, c, k - 1)
    return [right if x == 1 else wrong for x in g]


# ----------------------------------------------------------------------------------------------
# MaxPO: the literal Leave-Two-Out construction (§2.3) and the binary closed form (§2.4)
# ----------------------------------------------------------------------------------------------

def _loo_minus_one_signal(g: Sequence[Number], j: int, pool: Sequence[int], k: int) -> Number:
    """a_j^{loo−1} on the sub-batch ``pool``: mean over S ⊆ pool, |S| = k, S ∋ j of (max_S g − max_{S\\j} g).

    For k = 1, S \\ j is empty and its max is taken as 0 (so the signal is g_j itself); this is the
    convention under which L2O at k = 1 reduces to RLOO, as §2.3 states.
    """
    terms = []
    for S in itertools.combinations(pool, k):
        if j in S:
            terms.append(max(g[t] for t in S) - _max_or_zero(g[t] for t in S if t != j))
    return _mean(terms)


def maxpo_l2o_literal(g: Sequence[Number], k: int) -> list[Number]:
    """MaxPO by the literal §2.3 construction, O(n² C(n, k)) work.

    A_i = a_i^{loo−1} (full group) − b_i,  b_i = (1/(n−1)) Σ_{j≠i} a_j^{loo−1}(group without i).
    Needs n >= k + 1 (each sub-batch without i must still hold a size-k subset).
    """
    n = len(g)
    assert 1 <= k <= n - 1
    out = []
    for i in range(n):
        signal = _loo_minus_one_signal(g, i, range(n), k)
        pool = [j for j in range(n) if j != i]
        baseline = _mean(_loo_minus_one_signal(g, j, pool, k) for j in pool)
        out.append(signal - baseline)
    return out


def maxpo_binary_closed_form(g: Sequence[Number], k: int) -> list[Fraction]:
    """§2.4 binary MaxPO, exact: A_correct = C(n−c,k)/C(n−1,k), A_wrong = C(n−1−c,k)/C(n−1,k) − C(n−1−c,k−1)/C(n−1,k−1)."""
    n = len(g)
    assert all(x in (0, 1) for x in g) and n >= k + 1
    c = sum(1 for x in g if x == 1)
    right = Fraction(comb0(n - c, k), math.comb(n - 1, k))
    wrong = Fraction(comb0(n - 1 - c, k), math.comb(n - 1, k)) - Fraction(comb0(n - 1 - c, k - 1), math.comb(n - 1, k - 1))
    return [right if x == 1 else wrong for x in g]


# ----------------------------------------------------------------------------------------------
# Pass@k Training (Chen et al. 2025, arXiv 2508.10751; RUCAIBox/Passk_Training code/passk_adv.py)
# ----------------------------------------------------------------------------------------------

def passk_training_chen(g: Sequence[Number], k: int, *, eps: float = 1e-6) -> list[float]:
    """Pass@k Training advantage, following the authors' code.

    c = #correct, ρ = 1 − C(n−c,k)/C(n,k), σ = sqrt(ρ(1−ρ)),
    A_pos = (1 − ρ)/(σ + eps), A_neg = (1 − ρ − C(n−c−1,k−1)/C(n−1,k−1))/(σ + eps), all 0 if σ = 0.
    Binomials are exact integers, ρ an exact Fraction; only σ and the final divisions are float.
    """
    n = len(g)
    assert all(x in (0, 1) for x in g)
    c = sum(1 for x in g if x == 1)
    rho = pass_at_k_rho(n, c, k)
    sigma2 = rho * (1 - rho)
    if sigma2 == 0:
        return [0.0] * n
    sigma = math.sqrt(sigma2)
    pos = float(1 - rho) / (sigma + eps)
    neg = float(1 - rho - Fraction(comb0(n - c - 1, k - 1), math.comb(n - 1, k - 1))) / (sigma + eps)
    return [pos if x == 1 else neg for x in g]


def passk_sigma(g: Sequence[Number], k: int) -> float:
    """σ = sqrt(ρ(1 − ρ)) of a binary group (Pass@k Training's normaliser)."""
    n = len(g)
    c = sum(1 for x in g if x == 1)
    rho = pass_at_k_rho(n, c, k)
    return math.sqrt(rho * (1 - rho))
