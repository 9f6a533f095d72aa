"""Hypothesis property tests for rlvr.advantages (ALGORITHMS.md §2.3, §2.7 item 8, §5 item 1).

Rewards are quantised to multiples of 1/8 in [-10, 10] (optionally drawn from four levels, to force
ties): r + c is then exact in float64, so shift invariance and the "exactly 0" properties are
meaningful, and tolerances can be scaled to the rewards' magnitude. Profiles come from conftest.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import oracles as O
from rlvr.advantages import (aapo, dr_grpo, get, gpg, grpo, maxpo, names, passk_training, pkpo,
                             reinforce_pp_baseline, rloo, spec)

F64 = torch.float64
Q = 8                                    # quantum 1/8
EIGHTHS = st.integers(-10 * Q, 10 * Q)   # rewards in [-10, 10]
LEVELS = st.sampled_from([-8, 0, 3, 8])  # few distinct values: many ties


@st.composite
def rewards(draw, min_G: int = 1, max_G: int = 8, max_P: int = 3, binary: bool = False) -> torch.Tensor:
    P = draw(st.integers(1, max_P))
    G = draw(st.integers(min_G, max_G))
    if binary:
        elems = st.integers(0, 1)
    else:
        elems = draw(st.sampled_from([EIGHTHS, LEVELS]))
    a = draw(arrays(np.int64, (P, G), elements=elems))
    r = torch.from_numpy(a).to(F64)
    return r if binary else r / Q


@st.composite
def rewards_and_k(draw, *, k_min: int = 1, slack: int = 1, max_G: int = 8, binary: bool = False):
    """(rewards, k) with k_min <= k <= G − slack."""
    r = draw(rewards(min_G=k_min + slack, max_G=max_G, binary=binary))
    k = draw(st.integers(k_min, r.shape[1] - slack))
    return r, k


def _tol(*ts: torch.Tensor) -> float:
    """Absolute tolerance scaled to the magnitude of the values involved."""
    m = max([1.0] + [float(t.abs().max()) for t in ts])
    return 1e-10 * m


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-10, atol=_tol(a, b))


# An estimator call for every registered name, given rewards and a drawn k (ignored where unused).
def call(name: str, r: torch.Tensor, k: int, ref: torch.Tensor | None = None, **kw) -> torch.Tensor:
    fn = get(name)
    if name == "aapo":
        return fn(r, ref_rewards=ref if ref is not None else torch.zeros_like(r), **kw)
    if spec(name).takes_k:
        return fn(r, k=k, **kw)
    return fn(r, **kw)


def _valid(name: str, r: torch.Tensor, k: int, baseline: str = "loo_minus_one") -> bool:
    G = r.shape[1]
    if name == "rloo":
        return G >= 2
    if name == "maxpo":
        return G >= k + 1
    if name == "pkpo":
        return {"none": G >= k, "loo": G >= k + 1, "loo_minus_one": G >= k >= 2}[baseline]
    if name == "passk_training":
        return G >= k and bool(((r == 0) | (r == 1)).all())
    return True


# ----------------------------------------------------------------------------------------------
# Centring where spec(name).centred claims it
# ----------------------------------------------------------------------------------------------

CENTRED = [n for n in names() if spec(n).centred]


@pytest.mark.parametrize("name", CENTRED)
@given(data=st.data())
def test_centred_estimators_sum_to_zero_per_row(name, data):
    binary = name == "passk_training"
    r, k = data.draw(rewards_and_k(k_min=1, slack=1, binary=binary))
    out = call(name, r, k)
    assert float(out.sum(-1).abs().max()) <= 1e-10 * max(1.0, float(out.abs().max())) * r.shape[1]


# ----------------------------------------------------------------------------------------------
# Shift invariance A(r + c) = A(r)
# ----------------------------------------------------------------------------------------------

SHIFT_INVARIANT = ["grpo", "dr_grpo", "rloo", "maxpo", "pkpo", "gpg"]   # pkpo with baseline loo_minus_one


@pytest.mark.parametrize("name", SHIFT_INVARIANT)
@given(data=st.data(), c=EIGHTHS.map(lambda x: x / Q))
def test_shift_invariance(name, data, c):
    r, k = data.draw(rewards_and_k(k_min=2 if name == "pkpo" else 1, slack=0 if name == "pkpo" else 1))
    assume(_valid(name, r, k))
    kw = {"baseline": "loo_minus_one"} if name == "pkpo" else {}
    assert_close(call(name, r + c, k, **kw), call(name, r, k, **kw))


@given(rk=rewards_and_k(k_min=1, slack=0), c=EIGHTHS.map(lambda x: x / Q))
def test_pkpo_none_and_loo_shift_by_their_row_sums(rk, c):
    # s(r + c) = s(r) + c·k/n and s^(loo)(r + c) = s^(loo)(r) − c·k/(n(n−1)): they are not shift invariant.
    r, k = rk
    n = r.shape[1]
    assert_close(pkpo(r + c, k=k, baseline="none"), pkpo(r, k=k, baseline="none") + c * k / n)
    if n >= k + 1:
        assert_close(pkpo(r + c, k=k, baseline="loo"), pkpo(r, k=k, baseline="loo") - c * k / (n * (n - 1)))


# ----------------------------------------------------------------------------------------------
# Scale: A(a·r) = a·A(r) for a > 0 (equivariant); GRPO with eps = 0 is invariant
# ----------------------------------------------------------------------------------------------

POSITIVE = st.sampled_from([0.125, 0.5, 2.0, 3.0, 10.0, 1.0 / 3.0])


@pytest.mark.parametrize("name,baseline", [("dr_grpo", None), ("rloo", None), ("maxpo", None), ("gpg", None),
                                           ("pkpo", "none"), ("pkpo", "loo"), ("pkpo", "loo_minus_one")])
@given(data=st.data(), a=POSITIVE)
def test_scale_equivariance(name, baseline, data, a):
    r, k = data.draw(rewards_and_k(k_min=2 if baseline == "loo_minus_one" else 1,
                                   slack=0 if baseline in ("none", "loo_minus_one") else 1))
    assume(_valid(name, r, k, baseline or "loo_minus_one"))
    kw = {"baseline": baseline} if baseline else {}
    assert_close(call(name, a * r, k, **kw), a * call(name, r, k, **kw))


@given(r=rewards(), a=POSITIVE)
def test_grpo_scale_invariant_without_eps(r, a):
    assert_close(grpo(a * r, eps=0.0), grpo(r, eps=0.0))
    assert_close(gpg(a * r, scale_by_std=True, eps=0.0), gpg(r, scale_by_std=True, eps=0.0))


# ----------------------------------------------------------------------------------------------
# Permutation equivariance (samples within a group, and prompts within a batch), all estimators
# ----------------------------------------------------------------------------------------------

# Token-level estimators (spec.needs_values: gae) take values [B, T] and a mask besides the rewards;
# their properties are tested in test_ppo_math.py.
REWARDS_ONLY = [n for n in names() if not spec(n).needs_values]


@pytest.mark.parametrize("name", REWARDS_ONLY)
@given(data=st.data())
def test_permutation_equivariance(name, data):
    binary = name == "passk_training"
    r, k = data.draw(rewards_and_k(k_min=2 if name == "pkpo" else 1, slack=1, binary=binary))
    assume(_valid(name, r, k))
    P, G = r.shape
    cols = torch.tensor(data.draw(st.permutations(range(G))))
    rows = torch.tensor(data.draw(st.permutations(range(P))))
    ref = torch.from_numpy(data.draw(arrays(np.int64, (P, G), elements=EIGHTHS))).to(F64) / Q
    kw = {}
    if name == "reinforce_pp_baseline" and data.draw(st.booleans()):
        lengths = torch.from_numpy(data.draw(arrays(np.int64, (P, G), elements=st.integers(0, 40)))).to(F64)
        kw = {"lengths": lengths}
    out = call(name, r, k, ref=ref, **kw)
    kw_p = {"lengths": kw["lengths"][rows][:, cols]} if kw else {}
    out_p = call(name, r[rows][:, cols], k, ref=ref[rows][:, cols], **kw_p)
    assert_close(out_p, out[rows][:, cols])


# ----------------------------------------------------------------------------------------------
# Order: a higher reward never gets a lower advantage (within a group)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,baseline", [("grpo", None), ("dr_grpo", None), ("rloo", None), ("maxpo", None),
                                           ("pkpo", "none"), ("pkpo", "loo"), ("pkpo", "loo_minus_one")])
@given(data=st.data())
def test_advantage_is_monotone_in_reward(name, baseline, data):
    r, k = data.draw(rewards_and_k(k_min=2 if baseline == "loo_minus_one" else 1,
                                   slack=0 if baseline in ("none", "loo_minus_one") else 1))
    assume(_valid(name, r, k, baseline or "loo_minus_one"))
    out = call(name, r, k, **({"baseline": baseline} if baseline else {}))
    tol = _tol(out)
    for p in range(r.shape[0]):
        order = torch.argsort(r[p], stable=True)
        a = out[p][order]
        assert bool((a[1:] - a[:-1] >= -tol).all()), (r[p], out[p])
        # and ties get equal advantages
        rs = r[p][order]
        same = rs[1:] == rs[:-1]
        assert bool(((a[1:] - a[:-1]).abs()[same] <= tol).all())


# ----------------------------------------------------------------------------------------------
# Constant groups -> exactly 0; G = 1 -> 0 and no NaN
# ----------------------------------------------------------------------------------------------

EXACT_ZERO_ON_CONSTANT = ["grpo", "dr_grpo", "rloo", "gpg", "maxpo", "pkpo", "passk_training"]  # pkpo: loo_minus_one


@pytest.mark.parametrize("name", EXACT_ZERO_ON_CONSTANT)
@given(data=st.data())
def test_constant_groups_give_exactly_zero(name, data):
    binary = name == "passk_training"
    r, k = data.draw(rewards_and_k(k_min=2 if name == "pkpo" else 1, slack=0 if name == "pkpo" else 1, binary=binary))
    assume(_valid(name, r, k))
    P, G = r.shape
    const_rows = data.draw(st.lists(st.booleans(), min_size=P, max_size=P))
    for p, is_const in enumerate(const_rows):
        if is_const:
            r[p] = r[p, 0]
    kw = {"baseline": "loo_minus_one"} if name == "pkpo" else {}
    out = call(name, r, k, **kw)
    for p in range(P):
        if bool((r[p] == r[p, 0]).all()):
            assert bool((out[p] == 0).all()), (name, r[p], out[p])


@given(data=st.data())
def test_pkpo_none_and_loo_on_constant_groups(data):
    # Constant c: s_i = k·c/n and s_i^(loo) = −k·c/(n(n−1)) (§2.2, §2.6).
    n = data.draw(st.integers(1, 8))
    k = data.draw(st.integers(1, n))
    c = data.draw(EIGHTHS) / Q
    r = torch.full((2, n), c, dtype=F64)
    assert_close(pkpo(r, k=k, baseline="none"), torch.full_like(r, k * c / n))
    if n >= k + 1:
        assert_close(pkpo(r, k=k, baseline="loo"), torch.full_like(r, -k * c / (n * (n - 1))))


@given(r=rewards(min_G=1, max_G=1, max_P=6), ref=arrays(np.int64, (6, 1), elements=EIGHTHS))
def test_single_sample_groups_are_zero_and_finite(r, ref):
    assert bool((grpo(r) == 0).all()) and bool((grpo(r, scale_by_std=False) == 0).all())
    assert bool((dr_grpo(r) == 0).all())
    assert bool((gpg(r) == 0).all()) and bool((gpg(r, scale_by_std=True) == 0).all())
    out = reinforce_pp_baseline(r)
    assert bool(torch.isfinite(out).all()) and bool((out == 0).all())
    refr = torch.from_numpy(ref[: r.shape[0]]).to(F64) / Q
    for scale_by_std in (False, True):
        a = aapo(r, ref_rewards=refr, scale_by_std=scale_by_std)
        assert bool(torch.isfinite(a).all())
        assert torch.equal(a, (r - refr).clamp(-0.2, 0.28))          # group part exactly 0: only the margin


# ----------------------------------------------------------------------------------------------
# Agreement with the enumeration oracles on arbitrary (small) inputs
# ----------------------------------------------------------------------------------------------

@settings(max_examples=50)
@given(rk=rewards_and_k(k_min=1, slack=0, max_G=6))
def test_max_at_k_family_matches_enumeration(rk):
    r, k = rk
    rows = r.tolist()
    n = r.shape[1]
    torch.testing.assert_close(pkpo(r, k=k, baseline="none"), torch.tensor(O.per_row(O.pkpo_s, rows, k=k), dtype=F64),
                               rtol=1e-12, atol=1e-12)
    if k >= 2:
        torch.testing.assert_close(pkpo(r, k=k, baseline="loo_minus_one"),
                                   torch.tensor(O.per_row(O.pkpo_s_loo_minus_one, rows, k=k), dtype=F64),
                                   rtol=1e-12, atol=1e-12)
    if n >= k + 1:
        torch.testing.assert_close(pkpo(r, k=k, baseline="loo"),
                                   torch.tensor(O.per_row(O.pkpo_s_loo, rows, k=k), dtype=F64), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(maxpo(r, k=k), torch.tensor(O.per_row(O.maxpo_q_minus_v, rows, k=k), dtype=F64),
                                   rtol=1e-12, atol=1e-12)


@settings(max_examples=50)
@given(rk=rewards_and_k(k_min=1, slack=0, max_G=10, binary=True))
def test_passk_training_matches_chen_formula(rk):
    r, k = rk
    torch.testing.assert_close(passk_training(r, k=k),
                               torch.tensor(O.per_row(O.passk_training_chen, r.tolist(), k=k), dtype=F64),
                               rtol=1e-12, atol=1e-12)


@given(r=rewards(min_G=2))
def test_maxpo_k1_is_rloo_and_dr_grpo_rescaled(r):
    n = r.shape[1]
    assert_close(maxpo(r, k=1), rloo(r))
    assert_close(dr_grpo(r), (n - 1) / n * rloo(r))
