"""Slow reference constructions of MaxPO and PKPO on tensors: the literal O(G²) leave-one-out / Leave-Two-Out
constructions and brute force over all C(G, k) subsets (G <= 16).

Written independently of ``rlvr.advantages`` (own binomial tables, own q/v formulas); vectorised over prompts and
chunked, so they run at benchmark sizes too. They are the oracles of tests/test_maxk_references.py and
tests/test_slow_exactness.py, and the baselines that ``python -m benchmarks advantages`` times the library's
estimators against (the benchmark imports them as ``tests.maxk_references``).

* ``maxpo_l2o_quadratic`` / ``pkpo_quadratic``: the literal leave-one-out / Leave-Two-Out constructions, O(G²) work
  per group (the "quadratic-time implementation" of the MaxPO paper);
* ``maxpo_enumeration`` / ``pkpo_enumeration``: brute force over all C(G, k) subsets (G <= 16).
All take rewards [P, G] (any floating dtype), compute in float64 and return float64 [P, G].

Notation as in ``rlvr.advantages``: in one group of n rewards, q_i (include-one), v_i^(k) (leave-one-out, size-k
subsets without i) and U^(k) (the max@k U-statistic) are means of max_S r over size-k subsets S. The max over the
empty set is taken as 0, so v^(0) ≡ 0; it only enters MaxPO at k = 1, where it cancels between the loo−1 signal and
the L2O baseline.
"""

from __future__ import annotations

import functools
import itertools
import math
from fractions import Fraction
from typing import Iterator

import torch

Tensor = torch.Tensor
_F64 = torch.float64

__all__ = ["maxpo_l2o_quadratic", "pkpo_quadratic", "maxpo_enumeration", "pkpo_enumeration", "PKPO_BASELINES",
           "MAX_ENUMERATION_G"]

PKPO_BASELINES = ("none", "loo", "loo_minus_one")
MAX_ENUMERATION_G = 16          # C(16, 8) = 12870 subsets
_CHUNK_ELEMS = 1 << 20          # float64 elements per [chunk, ...] intermediate (8 MiB)


# ----------------------------------------------------------------------------------------------
# Shared pieces (independent of rlvr.advantages on purpose)
# ----------------------------------------------------------------------------------------------

def _as_f64(rewards: Tensor, who: str) -> Tensor:
    """Validate rewards [P, G] (floating, finite, non-empty) and return a detached float64 copy."""
    if not isinstance(rewards, Tensor) or rewards.dim() != 2:
        got = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        raise ValueError(f"{who}: rewards must be a tensor of shape [P, G], got {got}")
    if not rewards.is_floating_point() or rewards.numel() == 0:
        raise ValueError(f"{who}: rewards must be a non-empty floating tensor, got {rewards.dtype} "
                         f"of shape {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError(f"{who}: rewards must be finite")
    return rewards.detach().to(_F64)


def _check_k(k: int, lo: int, hi: int, who: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not lo <= k <= hi:
        raise ValueError(f"{who}: needs {lo} <= k <= {hi} for this group size, got k={k!r}")


def _comb(a: int, b: int) -> int:
    """C(a, b) for any integers, 0 outside 0 <= b <= a."""
    return math.comb(a, b) if 0 <= b <= a else 0


@functools.lru_cache(maxsize=1024)
def _ratio_table(a_lo: int, a_hi: int, b: int, c: int, d: int) -> tuple[float, ...]:
    """(C(a, b) / C(c, d) for a = a_lo..a_hi), exact integers rounded once to float64."""
    den = _comb(c, d)
    if den == 0:
        raise ValueError(f"C({c}, {d}) = 0 cannot be a denominator")
    return tuple(float(Fraction(_comb(a, b), den)) for a in range(a_lo, a_hi + 1))


def _ratios(a_lo: int, a_hi: int, b: int, c: int, d: int) -> Tensor:
    """float64 [a_hi − a_lo + 1]: C(a, b)/C(c, d) for a = a_lo..a_hi."""
    return torch.tensor(_ratio_table(a_lo, a_hi, b, c, d), dtype=_F64)


def _chunks(n_rows: int, elems_per_row: int, budget: int = _CHUNK_ELEMS) -> Iterator[slice]:
    """Row slices of [0, n_rows) holding about ``budget`` elements each (at least one row)."""
    step = max(1, budget // max(1, elems_per_row))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def _suffix_sum(t: Tensor, *, strict: bool) -> Tensor:
    """Σ_{l >= m} t_l (or Σ_{l > m} when strict) along the last dim, exact shifts (no subtraction)."""
    s = t.flip(-1).cumsum(-1).flip(-1)
    if not strict:
        return s
    return torch.cat([s[..., 1:], torch.zeros_like(s[..., :1])], -1)


def _prefix_sum_strict(t: Tensor) -> Tensor:
    """Σ_{p < m} t_p along the last dim."""
    return torch.cat([torch.zeros_like(t[..., :1]), t[..., :-1].cumsum(-1)], -1)


# --- sorted-group formulas: y [..., n] ascending; results indexed by sorted position ------------

def _sorted_q(y: Tensor, k: int) -> Tensor:
    """Include-one value at each sorted position.   y [..., n] ascending -> [..., n]; 1 <= k <= n.

    q_(m) = [C(m−1, k−1) y_m + Σ_{l>m} C(l−2, k−2) y_l] / C(n−1, k−1).
    """
    n = y.shape[-1]
    diag = _ratios(0, n - 1, k - 1, n - 1, k - 1)            # a = m − 1, m = 1..n
    off = _ratios(-1, n - 2, k - 2, n - 1, k - 1)            # a = l − 2, l = 1..n
    return diag * y + _suffix_sum(off * y, strict=True)


def _sorted_v(y: Tensor, k: int) -> Tensor:
    """Leave-one-out value (size-k subsets) at each sorted position.   [..., n] -> [..., n]; 0 <= k <= n−1.

    v_(m) = Σ_{p=1}^{n−1} C(p−1, k−1)/C(n−1, k) · z_p with z = y without position m, i.e.
    Σ_{p<m} w_p y_p + Σ_{p>=m} w_p y_{p+1}. k = 0 gives 0 (max over the empty set).
    """
    n = y.shape[-1]
    w = _ratios(0, n - 2, k - 1, n - 1, k)                   # a = p − 1, p = 1..n−1
    lo = _prefix_sum_strict(torch.cat([y[..., :-1] * w, torch.zeros_like(y[..., :1])], -1))
    hi = torch.cat([_suffix_sum(y[..., 1:] * w, strict=False), torch.zeros_like(y[..., :1])], -1)
    return lo + hi


def _sorted_u(y: Tensor, k: int) -> Tensor:
    """Max@k U-statistic of each sorted group.   [..., n] -> [...]; 1 <= k <= n.

    U = Σ_m C(m−1, k−1)/C(n, k) · y_m.
    """
    n = y.shape[-1]
    return (_ratios(0, n - 1, k - 1, n, k) * y).sum(-1)


def _drop_one_index(n: int) -> Tensor:
    """long [n, n−1]: row m lists 0..n−1 without m (the positions left after removing position m)."""
    full = torch.arange(n).expand(n, n)
    return full[~torch.eye(n, dtype=torch.bool)].reshape(n, n - 1)


# --- pairwise-rank formulas on unsorted groups: O(n²) per group, no sort ------------------------

def _below(r: Tensor) -> Tensor:
    """bool [..., n, n]: below[..., i, j] = sample j precedes sample i in the ascending order with
    ties broken by index (r_j < r_i, or r_j == r_i and j < i). A strict total order, so every
    subset has exactly one maximal element."""
    n = r.shape[-1]
    ri, rj = r.unsqueeze(-1), r.unsqueeze(-2)
    idx = torch.arange(n)
    earlier = idx.unsqueeze(0) < idx.unsqueeze(1)            # [i, j]: j < i
    return (rj < ri) | ((rj == ri) & earlier)


def _pairwise_q(r: Tensor, k: int) -> Tensor:
    """Include-one value by pairwise ranks.   r [p, n] -> [p, n]; 1 <= k <= n.

    With c_i = #{j below i}: S ∋ i has maximum i in C(c_i, k−1) ways and maximum l (i below l) in
    C(c_l − 1, k−2) ways, so q_i = [C(c_i, k−1) r_i + Σ_{l above i} C(c_l − 1, k−2) r_l] / C(n−1, k−1).
    """
    n = r.shape[-1]
    below = _below(r)
    c = below.sum(-1)                                        # [p, n] tie-broken 0-based rank
    own = _ratios(0, n - 1, k - 1, n - 1, k - 1)[c]           # C(c_i, k−1)/C(n−1, k−1)
    top = _ratios(-1, n - 2, k - 2, n - 1, k - 1)[c]          # C(c_l − 1, k−2)/C(n−1, k−1)
    above = below.transpose(-1, -2).to(_F64)                 # above[i, l] = i below l
    return own * r + (above * (top * r).unsqueeze(-2)).sum(-1)


def _pairwise_v(r: Tensor, k: int) -> Tensor:
    """Leave-one-out value (size-k subsets without i) by pairwise ranks.   [p, n] -> [p, n]; 0 <= k <= n−1.

    A size-k S ∌ i has maximum l ≠ i in C(c_l − [i below l], k−1) ways, so
    v_i = Σ_{l≠i} C(c_l − [i below l], k−1) r_l / C(n−1, k). k = 0 gives 0.
    """
    n = r.shape[-1]
    below = _below(r)
    c = below.sum(-1)
    cnt = c.unsqueeze(-2) - below.transpose(-1, -2).long()   # [i, l] = c_l − [i below l]
    w = _ratios(0, n - 1, k - 1, n - 1, k)[cnt]              # [p, n, n]
    w = w.masked_fill(torch.eye(n, dtype=torch.bool), 0.0)   # l ≠ i
    return (w * r.unsqueeze(-2)).sum(-1)


# ----------------------------------------------------------------------------------------------
# Quadratic reference constructions
# ----------------------------------------------------------------------------------------------

def maxpo_l2o_quadratic(rewards: Tensor, k: int, *, chunk_elems: int = _CHUNK_ELEMS) -> Tensor:
    """MaxPO by the literal Leave-Two-Out construction.   rewards [P, G] -> float64 [P, G]; 1 <= k <= G−1.

    For each sample i:
      1. the group without i, R_{−i} (all of them at once: a [chunk, G, G−1] tensor);
      2. inside R_{−i}, every remaining j's PKPO loo−1 signal a_j = q_j^(k) − v_j^(k−1)
         (v_j^(k−1) leaves j out as well: two samples left out);
      3. the L2O baseline b_i = mean_j a_j;
      4. A_i = (q_i^(k) − v_i^(k−1)) on the full group, minus b_i.
    How: the full-group terms use the O(G²) pairwise-rank formulas (no sort); the reduced groups
    use the sorted closed forms with prefix/suffix sums, O(G) each, the reduced groups being
    built from one sort of the full group by deleting one sorted position (deleting an element
    keeps a row sorted, so no per-i re-sort). Total O(G²) work and memory per group; P is
    processed in chunks of about ``chunk_elems`` elements per intermediate (≈ 8 MiB each).
    """
    r = _as_f64(rewards, "maxpo_l2o_quadratic")
    n_prompts, n = r.shape
    _check_k(k, 1, n - 1, "maxpo_l2o_quadratic")
    drop = _drop_one_index(n)
    out = torch.empty_like(r)
    for sl in _chunks(n_prompts, n * n, chunk_elems):
        x = r[sl]
        signal = _pairwise_q(x, k) - _pairwise_v(x, k - 1)          # [p, n] on the full group
        g, perm = torch.sort(x, dim=-1)
        reduced = g[:, drop]                                        # [p, n, n−1]: without sorted position m
        a = _sorted_q(reduced, k) - _sorted_v(reduced, k - 1)       # loo−1 signals inside R_{−i}
        b_sorted = a.mean(-1)                                       # [p, n]: baseline of position m
        b = torch.empty_like(b_sorted).scatter_(-1, perm, b_sorted)  # back to sample order
        out[sl] = signal - b
    return out


def pkpo_quadratic(rewards: Tensor, k: int, baseline: str = "loo_minus_one", *,
                   chunk_elems: int = _CHUNK_ELEMS) -> Tensor:
    """PKPO weights by per-sample leave-one-out recomputation.   rewards [P, G] -> float64 [P, G].

    With n = G and s_j(X) = (k/|X|) q_j^(k)(X) (PKPO Eq. 19/27):
      "none":          s_i = (k/n) q_i                                    (1 <= k <= n)
      "loo":           s_i − (1/(n−1)) Σ_{j≠i} s_j(R_{−i})                 (PKPO Eq. 29; 1 <= k <= n−1)
      "loo_minus_one": (k/n) (q_i − U^(k−1)(R_{−i}))                       (Eqs. 33–34; 2 <= k <= n)
    where R_{−i} is the group without i and U^(k−1)(R_{−i}) = v_i^(k−1) is recomputed as the
    max@(k−1) U-statistic of the reduced group (the reduced-group recomputation, not a pairwise
    formula for v). q_i uses the O(G²) pairwise-rank formula; the reduced groups [chunk, G, G−1]
    are built from one sort of the full group and use the sorted closed forms, O(G) each.
    """
    r = _as_f64(rewards, "pkpo_quadratic")
    n_prompts, n = r.shape
    if baseline not in PKPO_BASELINES:
        raise ValueError(f"pkpo_quadratic: baseline must be one of {', '.join(PKPO_BASELINES)}; got {baseline!r}")
    lo, hi = {"none": (1, n), "loo": (1, n - 1), "loo_minus_one": (2, n)}[baseline]
    _check_k(k, lo, hi, f"pkpo_quadratic(baseline={baseline!r})")
    drop = _drop_one_index(n)
    out = torch.empty_like(r)
    for sl in _chunks(n_prompts, n * n, chunk_elems):
        x = r[sl]
        s = k / n * _pairwise_q(x, k)
        if baseline == "none":
            out[sl] = s
            continue
        g, perm = torch.sort(x, dim=-1)
        reduced = g[:, drop]                                        # [p, n, n−1]
        if baseline == "loo":
            s_reduced = k / (n - 1) * _sorted_q(reduced, k)         # s_j(R_{−i}) for every j ≠ i
            b_sorted = s_reduced.sum(-1) / (n - 1)
        else:
            b_sorted = k / n * _sorted_u(reduced, k - 1)
        out[sl] = s - torch.empty_like(b_sorted).scatter_(-1, perm, b_sorted)
    return out


# ----------------------------------------------------------------------------------------------
# Enumeration reference constructions
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _subsets(n: int, k: int) -> tuple[Tensor, Tensor]:
    """All size-k subsets of range(n): index long [C, k] and incidence float64 [C, n] (C = C(n, k))."""
    idx = torch.tensor(list(itertools.combinations(range(n), k)), dtype=torch.long).reshape(-1, k)
    inc = torch.zeros(idx.shape[0], n, dtype=_F64).scatter_(1, idx, 1.0)
    return idx, inc


def _check_enumerable(n: int, who: str) -> None:
    if n > MAX_ENUMERATION_G:
        raise ValueError(f"{who}: enumeration is only for G <= {MAX_ENUMERATION_G}, got G={n}")


def maxpo_enumeration(rewards: Tensor, k: int, *, chunk_elems: int = _CHUNK_ELEMS) -> Tensor:
    """MaxPO A_i = q_i − v_i by brute force over all size-k subsets.   [P, G] -> float64 [P, G]; G <= 16, 1 <= k <= G−1.

    M [p, C] = max over each subset; q = M · I / C(G−1, k−1) with the incidence I [C, G];
    v = M · (1 − I) / C(G−1, k). Chunked over P (about ``chunk_elems`` gathered elements per chunk).
    """
    r = _as_f64(rewards, "maxpo_enumeration")
    n_prompts, n = r.shape
    _check_enumerable(n, "maxpo_enumeration")
    _check_k(k, 1, n - 1, "maxpo_enumeration")
    idx, inc = _subsets(n, k)
    out = torch.empty_like(r)
    for sl in _chunks(n_prompts, idx.numel(), chunk_elems):
        m = r[sl][:, idx].amax(-1)                                  # [p, C]
        out[sl] = m @ inc / math.comb(n - 1, k - 1) - m @ (1.0 - inc) / math.comb(n - 1, k)
    return out


def pkpo_enumeration(rewards: Tensor, k: int, baseline: str = "loo_minus_one", *,
                     chunk_elems: int = _CHUNK_ELEMS) -> Tensor:
    """PKPO weights by brute force over all size-k subsets.   [P, G] -> float64 [P, G]; G <= 16.

    With M [p, C] the subset maxima, I the incidence [C, G] and n = G:
      "none":          s_i = C(n, k)^{-1} Σ_{S∋i} max_S                       = M·I / C(n, k)
      "loo":           s_i − (1/(n−1)) Σ_{j≠i} S(j, k, [n]∖i), and Σ_{j≠i} S(j, k, [n]∖i)
                       = k C(n−1, k)^{-1} Σ_{S∌i} max_S                       (via M·(1 − I))
      "loo_minus_one": C(n, k)^{-1} Σ_{S∋i} (max_S − max_{S∖i}), literally (PKPO Eq. 33): only the
                       subset's (index-tie-broken) argmax gets the top-1 minus top-2 gap.
    """
    r = _as_f64(rewards, "pkpo_enumeration")
    n_prompts, n = r.shape
    _check_enumerable(n, "pkpo_enumeration")
    if baseline not in PKPO_BASELINES:
        raise ValueError(f"pkpo_enumeration: baseline must be one of {', '.join(PKPO_BASELINES)}; got {baseline!r}")
    lo, hi = {"none": (1, n), "loo": (1, n - 1), "loo_minus_one": (2, n)}[baseline]
    _check_k(k, lo, hi, f"pkpo_enumeration(baseline={baseline!r})")
    idx, inc = _subsets(n, k)
    n_sub = idx.shape[0]
    out = torch.empty_like(r)
    for sl in _chunks(n_prompts, idx.numel(), chunk_elems):
        sub = r[sl][:, idx]                                         # [p, C, k]
        if baseline == "loo_minus_one":
            top1, pos = sub.max(-1)                                 # first argmax within the subset
            top2 = sub.scatter(-1, pos.unsqueeze(-1), -math.inf).amax(-1)
            arg = idx.expand(sub.shape[0], n_sub, k).gather(-1, pos.unsqueeze(-1)).squeeze(-1)  # [p, C] sample index
            s = torch.zeros(sub.shape[0], n, dtype=_F64).scatter_add_(-1, arg, top1 - top2)
            out[sl] = s / math.comb(n, k)
            continue
        m = sub.amax(-1)
        s = m @ inc / math.comb(n, k)
        if baseline == "loo":
            s = s - k / ((n - 1) * math.comb(n - 1, k)) * (m @ (1.0 - inc))
        out[sl] = s
    return out
