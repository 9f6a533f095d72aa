"""Value tests for rlvr.advantages: every estimator against a slow loop oracle (tests/oracles.py),
the max@k identities of ALGORITHMS.md §2.2–2.4 and §2.7, large-G numerics, input validation and the
registry. Unbiasedness lives in test_unbiasedness.py, hypothesis properties in
test_advantages_properties.py.
"""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import oracles as O
from rlvr import advantages as adv
from rlvr.advantages import (aapo, dr_grpo, get, gpg, grpo, include_one, leave_one_out, max_at_k, maxpo, names,
                             passk_training, pkpo, reinforce_pp_baseline, rloo, spec)

F64 = torch.float64
TOL = dict(rtol=1e-12, atol=1e-12)
KINDS = ("random", "tied", "binary")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def T(rows) -> torch.Tensor:
    """[P, G] float64 tensor from nested lists of floats / Fractions."""
    return torch.tensor([[float(x) for x in row] for row in rows], dtype=F64)


def close(actual: torch.Tensor, expected, **tol) -> None:
    exp = expected if isinstance(expected, torch.Tensor) else T(expected)
    torch.testing.assert_close(actual, exp.to(actual.dtype), **(tol or TOL))


def make_rows(kind: str, P: int, G: int, seed: int) -> list[list[float]]:
    """Deterministic reward rows. random: U(-2, 2); tied: few distinct values; binary: {0, 1}."""
    rng = random.Random(f"{kind}-{P}-{G}-{seed}")
    if kind == "random":
        return [[rng.uniform(-2.0, 2.0) for _ in range(G)] for _ in range(P)]
    if kind == "tied":
        return [[rng.choice((-1.0, 0.0, 0.5, 2.0)) for _ in range(G)] for _ in range(P)]
    if kind == "binary":
        return [[float(rng.random() < 0.4) for _ in range(G)] for _ in range(P)]
    if kind == "constant":
        return [[rng.choice((-1.5, 0.0, 3.0))] * G for _ in range(P)]
    raise AssertionError(kind)


def batch_rows(kind: str, P: int, G: int, seed: int = 0) -> list[list[float]]:
    """``make_rows``; a P = 3 batch mixes in a constant group among informative ones (when G > 1)."""
    rows = make_rows(kind, P, G, seed)
    if P == 3 and G > 1:
        rows[1] = [rows[1][0]] * G
    return rows


def cases(max_G: int = 8, min_G: int = 1, kinds=KINDS, Ps=(1, 3)):
    """(id, rows) over kinds × G × P at seed 0."""
    return [pytest.param(batch_rows(kind, P, G), id=f"{kind}-P{P}-G{G}")
            for kind in kinds for G in range(min_G, max_G + 1) for P in Ps]


def over_batches(max_G: int = 8, min_G: int = 1, kinds=KINDS, Ps=(1, 3)):
    """Hypothesis property over reward batches ``batch_rows(kind, P, G, seed)`` (argument ``rows``), with every
    (kind, G, P) at seed 0 — the grid of ``cases`` — as explicit examples, on top of drawn seeds."""
    strategy = st.builds(batch_rows, st.sampled_from(kinds), st.sampled_from(Ps), st.integers(min_G, max_G),
                         st.integers(0, 10**6))

    def decorate(fn):
        fn = given(rows=strategy)(fn)
        for kind in kinds:
            for G in range(min_G, max_G + 1):
                for P in Ps:
                    fn = example(rows=batch_rows(kind, P, G, 0))(fn)
        return fn
    return decorate


# ----------------------------------------------------------------------------------------------
# 1. Every registered estimator equals its loop oracle
# ----------------------------------------------------------------------------------------------

# The estimators this file checks against a loop oracle. A newly registered estimator must be
# added here (with an oracle in tests/oracles.py) or test_every_registered_estimator_has_an_oracle fails.
ORACLE_COVERED = {"grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "gpg", "aapo", "pkpo", "maxpo", "passk_training"}
# Token-level estimators (spec.needs_values) checked against their loop oracle in test_ppo_math.py.
TOKEN_LEVEL_ORACLE_COVERED = {"gae"}


def test_every_registered_estimator_has_an_oracle():
    missing = set(names()) - ORACLE_COVERED - TOKEN_LEVEL_ORACLE_COVERED
    assert not missing, f"registered estimators without an oracle test: {sorted(missing)}"


@over_batches()
def test_grpo_matches_loop_oracle(rows):
    for kw in ({}, {"scale_by_std": False}, {"eps": 0.0}, {"eps": 0.25}):
        close(grpo(T(rows), **kw), O.per_row(O.grpo_group, rows, **kw))


@over_batches()
def test_dr_grpo_matches_loop_oracle(rows):
    close(dr_grpo(T(rows)), O.per_row(O.dr_grpo_group, rows))


@over_batches(min_G=2)
def test_rloo_matches_loop_oracle(rows):
    close(rloo(T(rows)), O.per_row(O.rloo_group, rows))


@over_batches()
def test_gpg_matches_loop_oracle(rows):
    for kw in ({}, {"scale_by_std": True}, {"scale_by_std": True, "eps": 0.5}):
        close(gpg(T(rows), **kw), O.gpg_batch(rows, **kw))


@over_batches()
def test_aapo_matches_loop_oracle(rows):
    rng = random.Random(len(rows) * 100 + len(rows[0]))
    ref = [[rng.choice((0.0, 1.0, r + 0.1, r - 0.1, r)) for r in row] for row in rows]
    for kw in ({}, {"scale_by_std": True}, {"scale_by_std": True, "eps": 0.1},
               {"margin_low": -1.0, "margin_high": 0.5}):
        got = aapo(T(rows), ref_rewards=T(ref), **kw)
        close(got, [O.aapo_group(g, rg, **kw) for g, rg in zip(rows, ref)])


@over_batches()
def test_reinforce_pp_baseline_matches_loop_oracle(rows):
    P, G = len(rows), len(rows[0])
    rng = random.Random(P * 31 + G)
    for lengths in (None, [[float(rng.randint(0, 50)) for _ in range(G)] for _ in range(P)]):
        for eps in (1e-8, 0.3):
            got = reinforce_pp_baseline(T(rows), lengths=None if lengths is None else T(lengths), eps=eps)
            close(got, O.reinforce_pp_baseline_batch(rows, lengths=lengths, eps=eps))


@pytest.mark.parametrize("rows", cases(kinds=("binary",), Ps=(1, 4)))
@pytest.mark.parametrize("eps", [1e-6, 0.0, 0.1])
def test_passk_training_matches_chen_et_al_formula(rows, eps):
    G = len(rows[0])
    for k in range(1, G + 1):
        close(passk_training(T(rows), k=k, eps=eps), O.per_row(O.passk_training_chen, rows, k=k, eps=eps))


def test_passk_training_covers_every_correct_count():
    # All c = 0..n for n = 6, every k: one row per c.
    n = 6
    rows = [[1.0] * c + [0.0] * (n - c) for c in range(n + 1)]
    for k in range(1, n + 1):
        close(passk_training(T(rows), k=k), O.per_row(O.passk_training_chen, rows, k=k))


def test_passk_training_sigma_zero_groups_are_zero():
    # σ = 0 when c = 0 (ρ = 0) or c > G − k (ρ = 1); with G = k that is every group.
    n = 5
    rows = [[1.0] * c + [0.0] * (n - c) for c in range(n + 1)]
    assert (passk_training(T(rows), k=n) == 0).all()
    A = passk_training(T(rows), k=3)            # c = 3, 4, 5 leave fewer than 3 wrong samples
    assert (A[[0, 3, 4, 5]] == 0).all() and (A[[1, 2]] != 0).all()


# ----------------------------------------------------------------------------------------------
# 2. The max@k family equals brute-force enumeration over itertools.combinations
# ----------------------------------------------------------------------------------------------

MAXK_CASES = cases(max_G=8, kinds=("random", "tied", "binary", "constant"), Ps=(2,))


@pytest.mark.parametrize("rows", MAXK_CASES)
def test_max_at_k_include_one_leave_one_out_equal_enumeration(rows):
    G = len(rows[0])
    for k in range(1, G + 1):
        close(max_at_k(T(rows), k=k), T([[O.max_at_k_U(g, k)] for g in rows])[:, 0])
        close(include_one(T(rows), k=k), O.per_row(O.include_one_q, rows, k=k))
        if k <= G - 1:
            close(leave_one_out(T(rows), k=k), O.per_row(O.leave_one_out_v, rows, k=k))


@pytest.mark.parametrize("rows", MAXK_CASES)
def test_pkpo_all_baselines_equal_enumeration(rows):
    G = len(rows[0])
    for k in range(1, G + 1):
        close(pkpo(T(rows), k=k, baseline="none"), O.per_row(O.pkpo_s, rows, k=k))
        if k <= G - 1:
            close(pkpo(T(rows), k=k, baseline="loo"), O.per_row(O.pkpo_s_loo, rows, k=k))
        if k >= 2:
            close(pkpo(T(rows), k=k, baseline="loo_minus_one"), O.per_row(O.pkpo_s_loo_minus_one, rows, k=k))
            close(pkpo(T(rows), k=k), O.per_row(O.pkpo_s_loo_minus_one, rows, k=k))   # the default baseline


@pytest.mark.parametrize("rows", MAXK_CASES)
def test_maxpo_equals_enumeration_and_literal_leave_two_out(rows):
    G = len(rows[0])
    for k in range(1, G):
        A = maxpo(T(rows), k=k)
        close(A, O.per_row(O.maxpo_q_minus_v, rows, k=k))
        close(A, O.per_row(O.maxpo_l2o_literal, rows, k=k))
        assert A.sum(-1).abs().max() < 1e-9, f"maxpo not centred for k={k}: row sums {A.sum(-1)}"


@pytest.mark.parametrize("G", range(2, 9))
def test_literal_leave_two_out_equals_q_minus_v_exactly_in_fractions(G):
    # The spec's §2.3 identity b^{L2O} = v − v^{(k−1)}, i.e. L2O advantage = q − v, in exact arithmetic.
    rng = random.Random(G)
    g = [Fraction(rng.randint(-4, 4), rng.randint(1, 3)) for _ in range(G)]
    for k in range(1, G):
        assert O.maxpo_l2o_literal(g, k) == O.maxpo_q_minus_v(g, k)


def test_docstring_examples():
    r = torch.tensor([[0.0, 1.0, 3.0]], dtype=F64)
    close(include_one(r, k=2), [[2.0, 2.0, 3.0]])          # pairs: {0,1}->1, {0,3}->3, {1,3}->3
    close(leave_one_out(r, k=2), [[3.0, 3.0, 1.0]])
    close(max_at_k(r, k=2), torch.tensor([7 / 3], dtype=F64))  # (1 + 3 + 3)/3
    close(maxpo(r, k=2), [[-1.0, -1.0, 2.0]])              # q − v
    close(pkpo(r, k=2, baseline="loo_minus_one"), [[0.0, 1 / 3, 5 / 3]])
    b = torch.tensor([[1.0, 0.0, 0.0, 1.0]], dtype=F64)
    close(grpo(b), T([[1, -1, -1, 1]]) * 0.5 / (math.sqrt(1 / 3) + 1e-6))
    close(dr_grpo(b), [[0.5, -0.5, -0.5, 0.5]])
    close(rloo(b), [[2 / 3, -2 / 3, -2 / 3, 2 / 3]])
    close(reinforce_pp_baseline(T([[1, 0], [1, 1]])),
          T([[1, -1], [0, 0]]) * 0.5 / math.sqrt(1 / 6 + 1e-8))   # a = (±0.5, 0, 0), var = 0.5/3
    close(gpg(T([[1, 0], [1, 1]])), [[1.0, -1.0], [0.0, 0.0]])    # α = 4/2
    close(aapo(T([[1, 1]]), ref_rewards=T([[0, 1]])), [[0.28, 0.0]])
    close(passk_training(T([[1, 0, 0, 0]]), k=2), [[0.5 / (0.5 + 1e-6), -1 / 6 / (0.5 + 1e-6)] + [-1 / 6 / (0.5 + 1e-6)] * 2])


# ---- large G: numerics, exact centring, ties ----------------------------------------------------

def _large_rows(G: int) -> torch.Tensor:
    """4 rows: uniform [0, 1], binary, few tied levels, a heavy-tailed one with mixed signs."""
    gen = torch.Generator().manual_seed(G)
    return torch.stack([
        torch.rand(G, generator=gen, dtype=F64),
        (torch.rand(G, generator=gen, dtype=F64) < 0.3).to(F64),
        torch.randint(0, 4, (G,), generator=gen).to(F64) * 0.25,
        torch.randn(G, generator=gen, dtype=F64) * 3.0,
    ])


def _ks(G: int) -> list[int]:
    return sorted({k for k in (1, 2, 8, G // 2, G - 1) if 1 <= k <= G - 1})


def _assert_ties_identical(r: torch.Tensor, A: torch.Tensor, tol: float = 1e-12) -> None:
    """Samples with equal rewards in the same row get equal advantages (to tol, relative to max|A|)."""
    scale = max(1.0, float(A.abs().max()))
    for p in range(r.shape[0]):
        for value in r[p].unique():
            tied = A[p][r[p] == value]
            assert float(tied.max() - tied.min()) <= tol * scale, (p, float(value), tied)


@pytest.mark.parametrize("G", [16, 64, 256])
def test_maxpo_large_G_finite_centred_and_tie_exact(G):
    r = _large_rows(G)
    for k in _ks(G):
        A = maxpo(r, k=k)
        assert torch.isfinite(A).all(), (G, k)
        scale = float(r.abs().max())
        assert float(A.sum(-1).abs().max()) < 1e-9 * scale, (G, k, A.sum(-1))
        _assert_ties_identical(r, A)
        # q − U = (n − k)/n · (q − v) (§2.3), from three independently computed outputs.
        q, U = include_one(r, k=k), max_at_k(r, k=k)
        close(q - U[:, None], (G - k) / G * A, rtol=1e-10, atol=1e-11 * scale)
        # Σ_i q_i = n U and Σ_i v_i = n U (jackknife identity)
        close(q.sum(-1), G * U, rtol=1e-11, atol=1e-11 * scale)
        close(leave_one_out(r, k=k).sum(-1), G * U, rtol=1e-11, atol=1e-11 * scale)


@pytest.mark.parametrize("G", [16, 64, 256])
def test_pkpo_large_G_finite_and_tie_exact(G):
    r = _large_rows(G)
    for k in sorted(set(_ks(G)) | {G}):
        for baseline in ("none", "loo", "loo_minus_one"):
            if (baseline == "loo" and k > G - 1) or (baseline == "loo_minus_one" and k < 2):
                continue
            A = pkpo(r, k=k, baseline=baseline)
            assert torch.isfinite(A).all(), (G, k, baseline)
            _assert_ties_identical(r, A)


@pytest.mark.parametrize("G", [16, 64, 256])
def test_binary_closed_forms_at_large_G(G):
    # One binary row per correct count c (a spread of c), compared with exact Fraction closed forms.
    cs = sorted({0, 1, 2, G // 4, G // 2, G - 2, G - 1, G})
    rows = [[1.0] * c + [0.0] * (G - c) for c in cs]
    for k in _ks(G):
        close(maxpo(T(rows), k=k), O.per_row(O.maxpo_binary_closed_form, rows, k=k), rtol=1e-11, atol=1e-11)
        close(pkpo(T(rows), k=k, baseline="none"), O.per_row(O.pkpo_binary_eq8, rows, k=k), rtol=1e-11, atol=1e-11)
        close(passk_training(T(rows), k=k), O.per_row(O.passk_training_chen, rows, k=k), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# 3. Identities (§2.2, §2.4, §2.7) and relations between estimators
# ----------------------------------------------------------------------------------------------

ID_CASES = cases(max_G=8, min_G=2, kinds=("random", "tied", "binary"), Ps=(3,))


@pytest.mark.parametrize("rows", ID_CASES)
def test_pkpo_row_sums(rows):
    # Σ s = kU;  Σ s^(loo) = −kU/(n−1);  Σ s^(loo−1) = k (U_k − U_{k−1}) >= 0.
    r, n = T(rows), len(rows[0])
    for k in range(1, n + 1):
        U = max_at_k(r, k=k)
        close(pkpo(r, k=k, baseline="none").sum(-1), k * U)
        if k <= n - 1:
            close(pkpo(r, k=k, baseline="loo").sum(-1), -k * U / (n - 1))
        if k >= 2:
            s = pkpo(r, k=k, baseline="loo_minus_one")
            close(s.sum(-1), k * (U - max_at_k(r, k=k - 1)))
            assert (s >= -1e-12).all(), "s^(loo−1) weights are nonnegative (max_S − max_{S∖i} >= 0)"


@pytest.mark.parametrize("n", range(2, 8))
def test_pkpo_row_sum_identities_hold_exactly_for_the_oracles(n):
    # The same identities in exact arithmetic on the enumeration oracles (checks the spec itself).
    rng = random.Random(n)
    g = [Fraction(rng.randint(-5, 5), 4) for _ in range(n)]
    for k in range(1, n + 1):
        U = O.max_at_k_U(g, k)
        assert sum(O.pkpo_s(g, k)) == k * U
        if k <= n - 1:
            assert sum(O.pkpo_s_loo(g, k)) == -k * U / (n - 1)
            q, v = O.include_one_q(g, k), O.leave_one_out_v(g, k)
            assert [qi - U for qi in q] == [Fraction(n - k, n) * (qi - vi) for qi, vi in zip(q, v)]
        if k >= 2:
            assert sum(O.pkpo_s_loo_minus_one(g, k)) == k * (U - O.max_at_k_U(g, k - 1))


@pytest.mark.parametrize("rows", ID_CASES)
def test_include_one_minus_U_is_rescaled_maxpo(rows):
    # q − U = (n − k)/n · (q − v)
    r, n = T(rows), len(rows[0])
    for k in range(1, n):
        close(include_one(r, k=k) - max_at_k(r, k=k)[:, None], (n - k) / n * maxpo(r, k=k))


def _binary_rows(n: int) -> list[list[float]]:
    """Every correct count c = 0..n, in a shuffled order so positions don't line up with c."""
    rng = random.Random(n)
    rows = []
    for c in range(n + 1):
        row = [1.0] * c + [0.0] * (n - c)
        rng.shuffle(row)
        rows.append(row)
    return rows


@pytest.mark.parametrize("n", range(2, 11))
def test_passk_training_times_sigma_is_rescaled_maxpo(n):
    # passk_training(eps = 0)·σ = (n − k)/n · (q − v) for binary rewards with n > k.
    # σ = 0 exactly when ρ ∈ {0, 1}: c = 0 (constant group) or n − c < k (every k-subset holds a
    # correct sample); MaxPO is 0 there too (C(n−1−c, k) = C(n−1−c, k−1) = 0), so the identity holds
    # on every row, and both sides are exactly 0 on the σ = 0 rows.
    rows = _binary_rows(n)
    r = T(rows)
    for k in range(1, n):
        sigma = T([[O.passk_sigma(g, k)] for g in rows])
        assert (sigma > 0).any(), (n, k)
        A = passk_training(r, k=k, eps=0.0)
        close(A * sigma, (n - k) / n * maxpo(r, k=k), rtol=1e-11, atol=1e-12)
        zero = (sigma == 0).squeeze(-1)
        assert (A[zero] == 0).all() and (maxpo(r, k=k)[zero].abs() < 1e-15).all()


@pytest.mark.parametrize("n", range(2, 11))
def test_maxpo_binary_closed_form(n):
    # A_correct = C(n−c,k)/C(n−1,k);  A_wrong = C(n−1−c,k)/C(n−1,k) − C(n−1−c,k−1)/C(n−1,k−1)
    rows = _binary_rows(n)
    for k in range(1, n):
        close(maxpo(T(rows), k=k), O.per_row(O.maxpo_binary_closed_form, rows, k=k))


@pytest.mark.parametrize("n", range(2, 9))
def test_maxpo_binary_closed_form_matches_enumeration_exactly(n):
    for g in _binary_rows(n):
        gf = [Fraction(int(x)) for x in g]
        for k in range(1, n):
            assert O.maxpo_binary_closed_form(gf, k) == O.maxpo_q_minus_v(gf, k)


@pytest.mark.parametrize("n", range(1, 11))
def test_pkpo_binary_eq8_equals_s(n):
    # PKPO Eq. 8: r_i = k/n if correct; (k/n)·ρ(n−1, c, k−1) if incorrect; equals s_i (baseline "none").
    rows = _binary_rows(n)
    for k in range(1, n + 1):
        close(pkpo(T(rows), k=k, baseline="none"), O.per_row(O.pkpo_binary_eq8, rows, k=k))
        if n <= 8:   # and the enumeration agrees exactly
            for g in rows:
                gf = [Fraction(int(x)) for x in g]
                assert O.pkpo_binary_eq8(gf, k) == O.pkpo_s(gf, k)


@pytest.mark.parametrize("rows", cases(min_G=2, kinds=("random", "tied", "binary", "constant")))
def test_maxpo_at_k1_is_rloo(rows):
    close(maxpo(T(rows), k=1), rloo(T(rows)))


@pytest.mark.parametrize("rows", cases(min_G=2))
def test_rloo_and_dr_grpo_are_rescaled_k1_maxpo(rows):
    # dr_grpo = (n − 1)/n · rloo (§2.4 table, K = 1); grpo(eps=0) = dr_grpo/std
    r, n = T(rows), len(rows[0])
    close(dr_grpo(r), (n - 1) / n * rloo(r))
    std = r.std(-1, keepdim=True)
    ok = (std > 0).squeeze(-1)
    close(grpo(r, eps=0.0)[ok], (dr_grpo(r) / std)[ok])


@pytest.mark.parametrize("rows", cases())
def test_aapo_with_reference_equal_to_policy_is_group_centring(rows):
    r = T(rows)
    close(aapo(r, ref_rewards=r.clone()), dr_grpo(r))                    # margin 0, group part r − mean
    close(aapo(r, ref_rewards=r.clone(), scale_by_std=True, eps=1e-4), grpo(r, eps=1e-4))
    close(aapo(r, ref_rewards=r.clone(), scale_by_std=True, eps=0.3), grpo(r, eps=0.3))


@pytest.mark.parametrize("rows", cases())
def test_aapo_margin_clip_bounds(rows):
    # Â − 0.2 <= A <= Â + 0.28, with equality when the reference gap is beyond the clip.
    r = T(rows)
    gen = torch.Generator().manual_seed(r.numel())
    for ref in (r + 5.0, r - 5.0, torch.randn(r.shape, generator=gen, dtype=F64)):
        A, hat = aapo(r, ref_rewards=ref), dr_grpo(r)
        assert ((A - hat) >= -0.2 - 1e-15).all() and ((A - hat) <= 0.28 + 1e-15).all()
    close(aapo(r, ref_rewards=r + 5.0), dr_grpo(r) - 0.2)                 # gap −5 clipped to −0.2
    close(aapo(r, ref_rewards=r - 5.0), dr_grpo(r) + 0.28)                # gap +5 clipped to 0.28
    close(aapo(r, ref_rewards=r - 0.1), dr_grpo(r) + 0.1)                 # inside the band: unclipped


def test_aapo_constant_group_keeps_margin_and_is_not_centred():
    # All-correct policy vs a half-wrong reference: group part 0, margins 0.28 where ref was wrong.
    A = aapo(T([[1, 1, 1, 1]]), ref_rewards=T([[0, 1, 0, 1]]))
    close(A, [[0.28, 0.0, 0.28, 0.0]])
    assert float(A.sum()) == pytest.approx(0.56)    # Σ A = Σ margins, not 0


def test_gpg_alpha_is_batch_over_informative_samples():
    # B = 4·3 = 12 samples; rows 1 and 3 are constant, so M = 6 and α = 12/(12 − 6) = 2.
    rows = [[1.0, 0.0, 0.5], [2.0, 2.0, 2.0], [0.0, 3.0, 0.0], [-1.0, -1.0, -1.0]]
    r = T(rows)
    close(gpg(r), 2.0 * dr_grpo(r))
    close(gpg(r, scale_by_std=True, eps=1e-6), 2.0 * grpo(r, eps=1e-6))
    # One constant row of four: α = 12/9.
    r2 = T([rows[0], rows[1], rows[2], [0.0, 1.0, 1.0]])
    close(gpg(r2), 12 / 9 * dr_grpo(r2))
    # No constant row: α = 1 and gpg is Dr. GRPO.
    r3 = T([rows[0], rows[2]])
    close(gpg(r3), dr_grpo(r3))
    # Every row constant: all zeros, no division by zero.
    r4 = T([rows[1], rows[3]])
    assert (gpg(r4) == 0).all()


def test_reinforce_pp_baseline_whitening_facts():
    r = T([[1, 0, 0.5], [2, 2, 2], [0, 3, 1]])
    A = reinforce_pp_baseline(r, eps=0.0)
    assert float(A.mean()) == pytest.approx(0.0, abs=1e-12)             # batch-whitened: mean 0 ...
    assert float(A.flatten().std()) == pytest.approx(1.0, abs=1e-12)     # ... and unbiased std 1
    assert float(A[1].abs().max()) < 1e-15   # unweighted: μ = 0 (up to rounding), constant group stays ~0
    # With token-count weights μ ≠ 0: a constant group receives the uniform nonzero value −μ/σ.
    lengths = T([[10, 1, 1], [3, 3, 3], [1, 1, 20]])
    Aw = reinforce_pp_baseline(r, lengths=lengths, eps=0.0)
    a = dr_grpo(r)
    mu = float((lengths * a).sum() / lengths.sum())
    var = float((lengths * (a - mu) ** 2).sum() / (lengths.sum() - 1))
    assert mu != 0.0
    close(Aw[1], torch.full((3,), -mu / math.sqrt(var), dtype=F64))
    # Equal lengths act like no lengths; the weighting is by token count.
    close(reinforce_pp_baseline(r, lengths=torch.full((3, 3), 7.0, dtype=F64)),
          O.reinforce_pp_baseline_batch(r.tolist(), lengths=[[7.0] * 3] * 3))
    # Total weight <= 1 (one sample, or all lengths zero but one 1): zeros, no division by zero.
    assert (reinforce_pp_baseline(T([[0.7]])) == 0).all()
    assert (reinforce_pp_baseline(r, lengths=T([[0, 0, 1], [0, 0, 0], [0, 0, 0]])) == 0).all()


# ----------------------------------------------------------------------------------------------
# dtype, detachment, layout
# ----------------------------------------------------------------------------------------------

def _call(name: str, r: torch.Tensor) -> torch.Tensor:
    """Call a registered estimator with representative hyperparameters."""
    fn = get(name)
    if name == "aapo":
        return fn(r, ref_rewards=torch.zeros_like(r))
    if name in ("pkpo", "maxpo", "passk_training"):
        return fn(r, k=2)
    return fn(r)


@pytest.mark.parametrize("name", sorted(ORACLE_COVERED))
def test_float32_in_float32_out_computed_in_float64(name):
    rows = make_rows("binary", 3, 6, seed=3)
    rows[0][:2] = [1.0, 0.0]
    r32 = T(rows).to(torch.float32) if name == "passk_training" else (T(rows) + 0.1).to(torch.float32)
    out = _call(name, r32)
    assert out.dtype == torch.float32
    close(out, _call(name, r32.to(F64)).to(torch.float32), rtol=0, atol=0)   # float64 math, one final rounding


@pytest.mark.parametrize("name", sorted(ORACLE_COVERED))
def test_output_is_detached_and_input_untouched(name):
    r = T(make_rows("binary", 2, 5, seed=4)).requires_grad_()
    before = r.detach().clone()
    out = _call(name, r)
    assert not out.requires_grad
    assert torch.equal(r.detach(), before)


@pytest.mark.parametrize("name", sorted(ORACLE_COVERED))
def test_non_contiguous_input(name):
    r = T(make_rows("binary", 5, 4, seed=5))
    rt = r.t().contiguous().t()            # same values, column-major storage
    assert not rt.is_contiguous()
    assert torch.equal(_call(name, rt), _call(name, r))


# ----------------------------------------------------------------------------------------------
# 6. Bad input -> ValueError with a helpful message
# ----------------------------------------------------------------------------------------------

ALL_CALLS = {
    "grpo": lambda r: grpo(r), "dr_grpo": lambda r: dr_grpo(r), "rloo": lambda r: rloo(r),
    "reinforce_pp_baseline": lambda r: reinforce_pp_baseline(r), "gpg": lambda r: gpg(r),
    "aapo": lambda r: aapo(r, ref_rewards=r), "pkpo": lambda r: pkpo(r, k=1, baseline="none"),
    "maxpo": lambda r: maxpo(r, k=1), "passk_training": lambda r: passk_training(r, k=1),
    "include_one": lambda r: include_one(r, k=1), "leave_one_out": lambda r: leave_one_out(r, k=1),
    "max_at_k": lambda r: max_at_k(r, k=1),
}


@pytest.mark.parametrize("name", sorted(ALL_CALLS))
@pytest.mark.parametrize("shape", [(4,), (2, 3, 2)], ids=["1d", "3d"])
def test_wrong_rank_raises(name, shape):
    with pytest.raises(ValueError, match=r"shape \[P, G\].*got shape " + re.escape(str(shape))):
        ALL_CALLS[name](torch.zeros(shape, dtype=F64))


@pytest.mark.parametrize("name", sorted(ALL_CALLS))
def test_integer_dtype_raises(name):
    with pytest.raises(ValueError, match=r"floating tensor, got dtype torch.int64"):
        ALL_CALLS[name](torch.tensor([[1, 0, 1], [0, 0, 1]]))


@pytest.mark.parametrize("name", sorted(ALL_CALLS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_rewards_raise_naming_the_index(name, bad):
    r = torch.zeros(2, 3, dtype=F64)
    r[1, 2] = bad
    with pytest.raises(ValueError, match=rf"rewards\[1, 2\] = {re.escape(str(bad))} \(1 non-finite values\)"):
        ALL_CALLS[name](r)


@pytest.mark.parametrize("name", sorted(ALL_CALLS))
def test_non_tensor_and_empty_raise(name):
    with pytest.raises(ValueError, match=r"must be a torch.Tensor of shape \[P, G\], got list"):
        ALL_CALLS[name]([[1.0, 0.0]])
    with pytest.raises(ValueError, match=r"is empty \(shape \(0, 3\)\)"):
        ALL_CALLS[name](torch.zeros(0, 3, dtype=F64))


def test_aapo_ref_rewards_validated():
    r = torch.zeros(2, 3, dtype=F64)
    for bad in (torch.zeros(2, 4, dtype=F64), torch.zeros(2, 1, dtype=F64), torch.zeros(1, 3, dtype=F64)):
        with pytest.raises(ValueError, match=r"ref_rewards must have the rewards' shape \(2, 3\).*paired.*got "
                                             + re.escape(str(tuple(bad.shape)))):
            aapo(r, ref_rewards=bad)
    ref = torch.zeros(2, 3, dtype=F64)
    ref[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"aapo: ref_rewards must be finite; ref_rewards\[0, 1\] = nan"):
        aapo(r, ref_rewards=ref)
    with pytest.raises(ValueError, match=r"margin_low <= margin_high"):
        aapo(r, ref_rewards=r, margin_low=0.3, margin_high=0.2)


def test_maxpo_needs_k_plus_one_samples_and_says_why():
    with pytest.raises(ValueError, match=r"maxpo: needs G >= 3 samples per prompt for k=2, got G=2: "
                                         r"with G = k no size-k subset leaves sample i out.*pkpo\(baseline='loo_minus_one'\)"):
        maxpo(torch.zeros(3, 2, dtype=F64), k=2)
    with pytest.raises(ValueError, match=r"needs G >= 6 .* got G=3"):
        maxpo(torch.zeros(1, 3, dtype=F64), k=5)
    with pytest.raises(ValueError, match=r"needs G >= 2 .* got G=1"):
        maxpo(torch.zeros(1, 1, dtype=F64), k=1)


def test_pkpo_group_size_and_baseline_errors():
    r = torch.zeros(1, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"pkpo\(baseline='loo'\): needs G >= 4 .*k=3, got G=3 "
                                         r"\(the leave-one-out baseline averages size-k subsets without sample i\)"):
        pkpo(r, k=3, baseline="loo")
    with pytest.raises(ValueError, match=r"pkpo\(baseline='loo_minus_one'\): k must be >= 2, got k=1"):
        pkpo(r, k=1, baseline="loo_minus_one")
    with pytest.raises(ValueError, match=r"pkpo\(baseline='loo_minus_one'\): k must be >= 2, got k=1"):
        pkpo(r, k=1)                                   # the default baseline is loo_minus_one
    with pytest.raises(ValueError, match=r"pkpo: needs G >= 4 .*got G=3"):
        pkpo(r, k=4, baseline="none")
    with pytest.raises(ValueError, match=r"needs G >= 4 .*got G=3"):
        pkpo(r, k=4, baseline="loo_minus_one")
    with pytest.raises(ValueError, match=r"baseline must be one of none, loo, loo_minus_one; got 'leave_two_out'"):
        pkpo(r, k=2, baseline="leave_two_out")


@pytest.mark.parametrize("bad", [0.5, 2.0, -1.0, 1.0 + 1e-12])
def test_passk_training_rejects_non_binary_rewards(bad):
    r = torch.tensor([[1.0, 0.0, 0.0], [0.0, bad, 1.0]], dtype=F64)
    with pytest.raises(ValueError, match=rf"binary \(0 or 1\); rewards\[1, 1\] = {re.escape(str(bad))}"):
        passk_training(r, k=2)


def test_rloo_needs_two_samples():
    with pytest.raises(ValueError, match=r"rloo: needs G >= 2 samples per prompt.*got G=1"):
        rloo(torch.ones(3, 1, dtype=F64))


@pytest.mark.parametrize("fn", [pkpo, maxpo, passk_training, include_one, leave_one_out, max_at_k],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("k", [2.0, "2", None, True, torch.tensor(2)], ids=repr)
def test_k_must_be_an_int(fn, k):
    with pytest.raises(ValueError, match=r"k must be an int, got " + re.escape(repr(k))):
        fn(torch.zeros(2, 6, dtype=F64), k=k)
    if fn is pkpo:
        for baseline in ("none", "loo", "loo_minus_one"):
            with pytest.raises(ValueError, match=r"k must be an int, got " + re.escape(repr(k))):
                pkpo(torch.zeros(2, 6, dtype=F64), k=k, baseline=baseline)


@pytest.mark.parametrize("fn", [pkpo, maxpo, passk_training, include_one, leave_one_out, max_at_k],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("k", [0, -3])
def test_k_must_be_positive(fn, k):
    with pytest.raises(ValueError, match=rf"k must be >= (1|2), got k={k}"):
        fn(torch.zeros(2, 6, dtype=F64), k=k)


@pytest.mark.parametrize("fn", [passk_training, include_one, max_at_k], ids=lambda f: f.__name__)
def test_k_larger_than_G_raises(fn):
    with pytest.raises(ValueError, match=r"needs G >= 7 samples per prompt for k=7, got G=6"):
        fn(torch.zeros(2, 6, dtype=F64), k=7)


@pytest.mark.parametrize("call", [lambda r: grpo(r, eps=-1e-6), lambda r: gpg(r, eps=-1.0),
                                  lambda r: aapo(r, ref_rewards=r, eps=-1.0),
                                  lambda r: passk_training(r, k=1, eps=-1e-6),
                                  lambda r: reinforce_pp_baseline(r, eps=-1.0)])
def test_negative_eps_raises(call):
    with pytest.raises(ValueError, match=r"eps must be >= 0"):
        call(torch.zeros(2, 3, dtype=F64))


def test_reinforce_pp_baseline_lengths_validated():
    r = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"lengths must have the rewards' shape \(2, 3\), got \(2, 2\)"):
        reinforce_pp_baseline(r, lengths=torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"lengths must have the rewards' shape \(2, 3\), got list"):
        reinforce_pp_baseline(r, lengths=[[1, 1, 1], [1, 1, 1]])
    with pytest.raises(ValueError, match=r"lengths must be finite and >= 0"):
        reinforce_pp_baseline(r, lengths=-torch.ones(2, 3))


# ----------------------------------------------------------------------------------------------
# 7. Registry
# ----------------------------------------------------------------------------------------------

def test_names_sorted_and_get_returns_the_function():
    ns = names()
    assert ns == sorted(ns)
    assert ORACLE_COVERED <= set(ns)
    for name in ns:
        assert get(name) is getattr(adv, name)
        assert spec(name).fn is get(name) and spec(name).name == name


def test_spec_facts():
    for name in names():
        s = spec(name)
        assert s.needs_reference_samples == (name == "aapo"), name
        assert s.takes_k == (name in {"pkpo", "maxpo", "passk_training"}), name
        assert s.needs_values == (name in TOKEN_LEVEL_ORACLE_COVERED), name
    centred = {n for n in names() if spec(n).centred}
    assert {"grpo", "dr_grpo", "rloo", "gpg", "maxpo", "passk_training"} <= centred
    assert not centred & {"pkpo", "aapo", "reinforce_pp_baseline"}
    # The gradient scales the unbiasedness tests use (test_unbiasedness.py) are the documented ones.
    assert spec("rloo").grad_scale.startswith("1/G")
    assert spec("dr_grpo").grad_scale.startswith("1/(G-1)")
    assert spec("maxpo").grad_scale.startswith("k/G")
    assert spec("pkpo").grad_scale.split()[0] == "1"


def test_centred_flag_is_true_to_the_numbers():
    # centred=True: rows sum to 0 on informative input; centred=False: a counter-example exists.
    r = T([[0.0, 1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    for name in names():
        if spec(name).needs_values:
            continue                     # token-level (gae): not group-centred, see test_ppo_math.py
        out = _call(name, r)
        if name == "reinforce_pp_baseline":
            # Unweighted, μ = 0 (each group-centred row sums to 0) so rows stay centred; token-count
            # weights make μ ≠ 0 and shift every row by −μ/σ.
            out = reinforce_pp_baseline(r, lengths=T([[1, 9, 2, 3, 4], [5, 5, 5, 5, 5], [1, 1, 30, 1, 1]]))
        if spec(name).centred:
            assert float(out.sum(-1).abs().max()) < 1e-12, name
        else:
            assert float(out.sum(-1).abs().max()) > 1e-3, name


def test_an_import_path_gives_the_registered_entry_with_its_facts():
    assert get("rlvr.advantages:rloo") is rloo
    for name in names():
        module_path = f"{spec(name).fn.__module__}:{spec(name).fn.__name__}"
        assert spec(module_path) is spec(name), name          # the same entry: the same facts
    s = spec("rlvr.advantages:maxpo")
    assert s.name == "maxpo" and s.takes_k and s.centred     # was: default facts (takes_k False)
    assert spec("rlvr.advantages:aapo").needs_reference_samples and spec("rlvr.advantages:gae").needs_values
    close(get("rlvr.advantages:maxpo")(T([[0, 1, 3]]), k=2), [[-1.0, -1.0, 2.0]])
    with pytest.raises(ValueError, match=r"'oracles:grpo_group' is not a registered advantage estimator.*"
                                         r"@rlvr.advantages.register\("):
        spec("oracles:grpo_group")                            # a function never registered: refused, with how
    with pytest.raises(ValueError, match=r"cannot import 'rlvr.advantages:no_such_fn'"):
        get("rlvr.advantages:no_such_fn")
    with pytest.raises(ValueError, match=r"cannot import 'no_such_module_xyz:f'"):
        get("no_such_module_xyz:f")
    with pytest.raises(ValueError, match=r"is not callable"):
        get("rlvr.advantages:_PKPO_BASELINES")
    with pytest.raises(ValueError, match=r"must look like 'package.module:function'"):
        get(":rloo")


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'gpro'; valid names: "
                                         + re.escape(", ".join(names()))):
        get("gpro")
    with pytest.raises(ValueError, match=r"name must be a string, got int"):
        get(3)


def test_duplicate_registration_raises_and_keeps_the_original():
    before = names()
    with pytest.raises(ValueError, match=r"advantage estimator 'grpo' is already registered"):
        adv.register("grpo")(lambda rewards: rewards)
    assert get("grpo") is grpo and names() == before


def test_registry_class_add_and_lookup():
    from rlvr.registry import Registry
    reg = Registry("widget")
    reg.add("b", 2)
    reg.add("a", 1)
    assert reg.names() == ["a", "b"] and reg.entry("a") == 1
    with pytest.raises(ValueError, match=r"widget 'a' is already registered"):
        reg.add("a", 3)
    with pytest.raises(ValueError, match=r"unknown widget 'c'; valid names: a, b"):
        reg.entry("c")

