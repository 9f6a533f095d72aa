"""Advantage-estimator benchmark: time every registered estimator and check the max@k ones exactly.

Two parts:

* Slow reference constructions of MaxPO and PKPO, written independently of ``rlvr.advantages``
  (own binomial tables, own q/v formulas), used as baselines for timing and for exactness:
    - ``maxpo_l2o_quadratic`` / ``pkpo_quadratic``: the literal leave-one-out / Leave-Two-Out
      constructions, O(G²) work per group (the "quadratic-time implementation" of the MaxPO paper);
    - ``maxpo_enumeration`` / ``pkpo_enumeration``: brute force over all C(G, k) subsets (G <= 16).
  All take rewards [P, G] (any floating dtype), compute in float64 and return float64 [P, G].
* ``run`` times the registry estimators at [P, G] (median of repeats after a warm-up; token-level
  ones such as gae, which need values [B, T], are skipped), times the
  slow constructions for the maxpo and pkpo rows, and records the largest |fast − slow|;
  ``format_table`` / ``to_markdown`` render the rows; ``add_arguments`` / ``command`` are the
  argparse hooks for ``rlvr bench advantages``.

Notation as in ``rlvr.advantages``: in one group of n rewards, q_i (include-one), v_i^(k)
(leave-one-out, size-k subsets without i) and U^(k) (the max@k U-statistic) are means of max_S r
over size-k subsets S. The max over the empty set is taken as 0, so v^(0) ≡ 0; it only enters
MaxPO at k = 1, where it cancels between the loo−1 signal and the L2O baseline.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import os
import platform
import statistics
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from rlvr import advantages as adv

Tensor = torch.Tensor
_F64 = torch.float64

__all__ = [
    "maxpo_l2o_quadratic", "pkpo_quadratic", "maxpo_enumeration", "pkpo_enumeration",
    "run", "format_table", "to_markdown", "machine_info", "add_arguments", "command",
    "PKPO_BASELINES", "TOL", "MAX_ENUMERATION_G",
]

PKPO_BASELINES = ("none", "loo", "loo_minus_one")
TOL = 1e-9                      # largest |fast − slow| accepted
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


# ----------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------

def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                                          # not Linux
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo where available), cores, torch version and threads, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": _available_cores(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}


def _time_calls(fn: Callable[[], Tensor], repeats: int, budget_s: float | None = None) -> tuple[Tensor, list[float]]:
    """One warm-up call (its output is returned for checking), then timed calls (seconds).

    With ``budget_s``, the number of timed calls is cut to what fits in about budget_s judging
    by the warm-up (at least one).
    """
    t0 = time.perf_counter()
    out = fn()
    warm = time.perf_counter() - t0
    if budget_s is not None:
        repeats = max(1, min(repeats, int(budget_s / max(warm, 1e-9))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return out, times


def _cases(name: str, facts: adv.AdvantageSpec, G: int, k: int) -> list[dict[str, Any]]:
    """Benchmark rows for one registered estimator at group size G: label, kwargs, k_eff, reward
    kind, and the slow constructions (label -> callable(rewards) -> [P, G]) for maxpo/pkpo.
    Token-level estimators (``facts.needs_values``, e.g. gae) get no row: they need values and a
    mask [B, T], not just rewards [P, G]."""
    if facts.needs_values:
        return []
    if name == "pkpo":
        rows = []
        for b in PKPO_BASELINES:
            k_eff = min(k, G - 1) if b == "loo" else min(k, G)
            if k_eff < (2 if b == "loo_minus_one" else 1):
                continue                                            # no valid k at this G
            slow = {"quadratic": functools.partial(pkpo_quadratic, k=k_eff, baseline=b)}
            if G <= MAX_ENUMERATION_G:
                slow["enumeration"] = functools.partial(pkpo_enumeration, k=k_eff, baseline=b)
            rows.append({"label": f"pkpo[{b}]", "kwargs": {"k": k_eff, "baseline": b}, "k": k_eff,
                         "binary": False, "slow": slow})
        return rows
    case: dict[str, Any] = {"label": name, "kwargs": {}, "k": None, "binary": False, "slow": {}}
    if name == "passk_training":                                    # needs 0/1 rewards, valid for k <= G
        case["binary"] = True
        case["k"] = min(k, G)
    elif facts.takes_k:                                             # maxpo, and any k-estimator added later
        case["k"] = min(k, G - 1)
    if case["k"] is not None:
        if case["k"] < 1:
            return []
        case["kwargs"]["k"] = case["k"]
    if name == "maxpo":
        case["slow"] = {"quadratic": functools.partial(maxpo_l2o_quadratic, k=case["k"])}
        if G <= MAX_ENUMERATION_G:
            case["slow"]["enumeration"] = functools.partial(maxpo_enumeration, k=case["k"])
    return [case]


def _warm_allocator(nbytes: int = 16 * 2**20) -> None:
    """Allocate and free one 16 MiB block before timing.

    glibc serves blocks above its mmap threshold (128 KiB at start) with fresh, page-faulting
    mmaps, and raises the threshold to the size of the first such block that is freed. A training
    process has long passed that point; without this step whichever estimator is timed first pays
    page faults on every [P, G] temporary (we measured 2x on maxpo at [1024, 64]).
    """
    block = torch.empty(nbytes // 8, dtype=_F64)
    block.fill_(0.0)
    del block


def run(P: int = 1024, groups: Sequence[int] = (8, 16, 64, 256), k: int = 8, repeats: int = 7,
        seed: int = 0, *, threads: int | None = None, slow_budget_s: float = 10.0, tol: float = TOL,
        strict: bool = False, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Time every registered rewards-only estimator on float64 rewards [P, G] for each G in ``groups``.

    Token-level estimators (``spec(name).needs_values``: gae) are left out; they take values and a
    mask [B, T] as well, and cost O(B·T), not O(P·G).

    Rewards ~ U(0, 1) (binary, P(1) = 0.3, for passk_training; AAPO gets U(0, 1) ref_rewards),
    drawn once per G from ``seed``. Each timing is the median of ``repeats`` calls after one
    warm-up call (time.perf_counter), with torch using ``threads`` threads (default: every core
    this process may use; restored afterwards). k-estimators use k_eff = min(k, G−1) (maxpo,
    pkpo[loo]) or min(k, G) (pkpo[none], pkpo[loo_minus_one], passk_training); pkpo gives one row
    per baseline. maxpo and pkpo rows also time the quadratic construction and, for G <= 16, the
    enumeration (timed repeats cut to fit ``slow_budget_s`` per construction and row, at least 1;
    the count used is in the row), and record max |fast − slow| over the warm-up outputs.

    Returns one dict per row with keys: estimator, G, k (None if not a k-estimator), P, ms
    (median ms per call), us_per_group, repeats, quadratic_ms, quadratic_repeats,
    speedup_quadratic, diff_quadratic, enumeration_ms, enumeration_repeats, speedup_enumeration,
    diff_enumeration, max_abs_diff, ok (every diff <= tol). Absent measurements are None.
    With ``strict``, a diff above tol raises RuntimeError once all rows are done.
    """
    if P < 1 or repeats < 1 or k < 1 or any(G < 2 for G in groups):
        raise ValueError(f"run: need P >= 1, repeats >= 1, k >= 1 and every G >= 2; got P={P}, "
                         f"repeats={repeats}, k={k}, groups={tuple(groups)}")
    say = progress or (lambda _msg: None)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or _available_cores())
    rows: list[dict[str, Any]] = []
    _warm_allocator()
    try:
        for G in groups:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + G)
            rewards = torch.rand(P, G, generator=gen, dtype=_F64)
            binary = (torch.rand(P, G, generator=gen, dtype=_F64) < 0.3).to(_F64)
            ref = torch.rand(P, G, generator=gen, dtype=_F64)
            for name in adv.names():
                facts = adv.spec(name)
                for case in _cases(name, facts, G, k):
                    x = binary if case["binary"] else rewards
                    kwargs = dict(case["kwargs"])
                    if facts.needs_reference_samples:
                        kwargs["ref_rewards"] = ref
                    fast_out, times = _time_calls(functools.partial(facts.fn, x, **kwargs), repeats)
                    ms = statistics.median(times) * 1e3
                    row: dict[str, Any] = {
                        "estimator": case["label"], "G": G, "k": case["k"], "P": P, "ms": ms,
                        "us_per_group": ms * 1e3 / P, "repeats": len(times),
                        "quadratic_ms": None, "quadratic_repeats": None, "speedup_quadratic": None,
                        "diff_quadratic": None, "enumeration_ms": None, "enumeration_repeats": None,
                        "speedup_enumeration": None, "diff_enumeration": None,
                    }
                    for kind, slow in case["slow"].items():
                        slow_out, slow_times = _time_calls(functools.partial(slow, x), repeats, slow_budget_s)
                        slow_ms = statistics.median(slow_times) * 1e3
                        row[f"{kind}_ms"] = slow_ms
                        row[f"{kind}_repeats"] = len(slow_times)
                        row[f"speedup_{kind}"] = slow_ms / ms
                        row[f"diff_{kind}"] = float((fast_out.to(_F64) - slow_out).abs().max())
                    diffs = [row[d] for d in ("diff_quadratic", "diff_enumeration") if row[d] is not None]
                    row["max_abs_diff"] = max(diffs) if diffs else None
                    row["ok"] = all(d <= tol for d in diffs)             # NaN compares False: not ok
                    rows.append(row)
                    say(f"{case['label']:<24} G={G:<4} {ms:10.3f} ms"
                        + (f"  O(G²) {row['speedup_quadratic']:.1f}×" if row["speedup_quadratic"] else "")
                        + (f"  |Δ| {row['max_abs_diff']:.1e}" if row["max_abs_diff"] is not None else ""))
    finally:
        torch.set_num_threads(old_threads)
    bad = [r for r in rows if not r["ok"]]
    if strict and bad:
        raise RuntimeError("fast and slow constructions disagree beyond "
                           f"{tol:g}: " + ", ".join(f"{r['estimator']} G={r['G']} |Δ|={r['max_abs_diff']:.3g}" for r in bad))
    return rows


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

_COLUMNS = ("estimator", "G", "k", "ms/call", "µs per group", "vs O(G²) ×", "vs enum ×", "max |Δ|")
_MIN_WIDTH = {"ms/call": 7, "µs per group": 6, "vs O(G²) ×": 6, "vs enum ×": 6, "max |Δ|": 7}


def _num(x: float) -> str:
    """3 significant digits, no exponent for ordinary magnitudes."""
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if x >= 0.001 else f"{x:.1e}"


def _cells(row: dict[str, Any]) -> list[str]:
    def speed(key: str) -> str:
        return "—" if row[key] is None else f"{_num(row[key])}×"

    diff = row["max_abs_diff"]
    return [row["estimator"], str(row["G"]), "—" if row["k"] is None else str(row["k"]),
            _num(row["ms"]), _num(row["us_per_group"]), speed("speedup_quadratic"),
            speed("speedup_enumeration"),
            "—" if diff is None else f"{diff:.1e}" + ("" if row["ok"] else " ✗")]


def _notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line on repeats: the fast rows' count, and the slow timings that used fewer."""
    if not rows:
        return []
    fast = sorted({r["repeats"] for r in rows})
    notes = [f"P = {rows[0]['P']} prompts; each time is the median of {'/'.join(map(str, fast))} calls after a warm-up."]
    fewer = [f"{r['estimator']} G={r['G']} ({kind}: {r[kind + '_repeats']})"
             for r in rows for kind in ("quadratic", "enumeration")
             if r[kind + "_repeats"] is not None and r[kind + "_repeats"] < r["repeats"]]
    if fewer:
        notes.append("Slow constructions timed with fewer calls: " + ", ".join(fewer) + ".")
    bad = [r for r in rows if not r["ok"]]
    if bad:
        notes.append(f"✗ = fast and slow constructions differ by more than {TOL:g}.")
    return notes


def format_table(rows: Sequence[dict[str, Any]], title: str | None = None):
    """A rich Table of the rows (columns: estimator, G, k, ms/call, µs per group, vs O(G²) ×, vs enum ×, max |Δ|)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    notes = _notes(rows)
    table = Table(title=title or "advantage estimators", caption=escape("\n".join(notes)) or None,
                  caption_justify="left", box=box.SIMPLE_HEAD)                # fits 80 columns
    for col in _COLUMNS:
        if col == "estimator":
            table.add_column(col, justify="left", no_wrap=True)
        else:                                                       # "3.3e-16", "ms/call" unbroken
            table.add_column(col, justify="right", min_width=_MIN_WIDTH.get(col))
    for row in rows:
        style = None if row["ok"] else "bold red"
        table.add_row(*(escape(cell) for cell in _cells(row)), style=style)   # "pkpo[loo]" is not markup
    return table


def to_markdown(rows: Sequence[dict[str, Any]], info: dict[str, Any] | None = None) -> str:
    """A markdown table of the rows (same columns as ``format_table``), with the notes on repeats
    and, when ``info`` (see ``machine_info``) is given, a line naming the machine."""
    lines = []
    if info:
        lines += [f"Machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']} with "
                  f"{info['threads']} threads; Python {info['python']}.", ""]
    lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _COLUMNS) + " |")
    lines.append("|" + "|".join(":---" if c == "estimator" else "---:" for c in _COLUMNS) + "|")
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(row)) + " |")
    notes = _notes(rows)
    if notes:
        lines += [""] + notes
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# CLI hooks: `rlvr bench advantages`
# ----------------------------------------------------------------------------------------------

def _group_list(text: str) -> tuple[int, ...]:
    try:
        groups = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--groups must be comma-separated integers, got {text!r}") from None
    if not groups or any(G < 2 for G in groups):
        raise argparse.ArgumentTypeError(f"--groups needs group sizes >= 2, got {text!r}")
    return groups


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``rlvr bench advantages`` to ``parser`` and return it."""
    parser.add_argument("--prompts", type=_positive_int, default=1024, help="P, prompts per batch (default 1024)")
    parser.add_argument("--groups", type=_group_list, default=(8, 16, 64, 256),
                        help="comma-separated group sizes G (default 8,16,64,256)")
    parser.add_argument("--k", type=_positive_int, default=8, help="max@k order; capped per G (default 8)")
    parser.add_argument("--repeats", type=_positive_int, default=7, help="timed calls per row, median reported (default 7)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random rewards (default 0)")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch threads (default: every core this process may use)")
    parser.add_argument("--markdown", type=Path, default=None, metavar="PATH", help="also write the table as markdown here")
    return parser


def command(args: argparse.Namespace) -> int:
    """Run the benchmark, print the machine and the table; write markdown if asked.

    Returns 0, or 1 when a fast estimator differs from a slow construction by more than TOL.
    """
    from rich.console import Console

    console = Console()
    start = time.perf_counter()
    rows = run(P=args.prompts, groups=args.groups, k=args.k, repeats=args.repeats, seed=args.seed,
               threads=args.threads, progress=lambda msg: console.print(msg, style="dim", markup=False, highlight=False))
    elapsed = time.perf_counter() - start
    old = torch.get_num_threads()
    torch.set_num_threads(args.threads or _available_cores())
    info = machine_info()                                           # the thread count the run used
    torch.set_num_threads(old)
    console.print(f"{info['cpu']}, {info['cores']} cores; torch {info['torch']}, {info['threads']} threads; "
                  f"Python {info['python']}; benchmark took {elapsed:.1f} s", markup=False, highlight=False)
    console.print(format_table(rows, title=f"advantage estimators, P={args.prompts}, k={args.k}"))
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(to_markdown(rows, info))
        console.print(f"wrote {args.markdown}", markup=False, highlight=False)
    bad = [r for r in rows if not r["ok"]]
    if bad:
        console.print(f"[bold red]{len(bad)} row(s) differ from the slow constructions by more than {TOL:g}[/]")
        return 1
    return 0
