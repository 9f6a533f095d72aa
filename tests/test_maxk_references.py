"""The slow reference constructions of MaxPO and PKPO (tests/maxk_references.py: literal O(G²) and enumeration)
equal the registry's estimators on every valid (G, k, baseline), to 1e-9."""

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import maxk_references as ref
from rlvr import advantages as adv

TOL = 1e-9
KINDS = ("random", "tied", "binary")


def _rewards(kind: str, G: int, seed: int) -> torch.Tensor:
    """[3, G] float64 rewards: U(0, 1), few levels (ties), or 0/1; one constant row in the tied case."""
    gen = torch.Generator().manual_seed(1000 * seed + G)
    if kind == "random":
        return torch.rand(3, G, generator=gen, dtype=torch.float64)
    if kind == "tied":
        r = torch.randint(0, 3, (3, G), generator=gen).to(torch.float64) * 0.5 - 0.25
        r[2] = 0.7                                                   # a constant group
        return r
    return (torch.rand(3, G, generator=gen) < 0.4).to(torch.float64)


def _k_range(name: str, G: int) -> range:
    return {"maxpo": range(1, G), "none": range(1, G + 1), "loo": range(1, G),
            "loo_minus_one": range(2, G + 1)}[name]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.to(torch.float64) - b).abs().max())


def _with_grid(seed: int):
    """Every (G in 3..8, kind) at ``seed`` as an explicit example (the grid these properties generalise), on top of
    the drawn seeds."""
    def decorate(fn):
        for G in range(3, 9):
            for kind in KINDS:
                fn = example(G=G, kind=kind, seed=seed)(fn)
        return fn
    return decorate


@_with_grid(seed=1)
@given(G=st.integers(3, 8), kind=st.sampled_from(KINDS), seed=st.integers(0, 10**6))
def test_maxpo_slow_constructions_equal_fast(G, kind, seed):
    r = _rewards(kind, G, seed)
    for k in _k_range("maxpo", G):
        fast = adv.maxpo(r, k=k)
        quad = ref.maxpo_l2o_quadratic(r, k)
        enum = ref.maxpo_enumeration(r, k)
        assert quad.dtype == enum.dtype == torch.float64
        assert _max_diff(fast, quad) <= TOL, (G, kind, k)
        assert _max_diff(fast, enum) <= TOL, (G, kind, k)


@_with_grid(seed=2)
@settings(max_examples=25)      # each example checks 3 baselines × every k twice (~30 ms)
@given(G=st.integers(3, 8), kind=st.sampled_from(KINDS), seed=st.integers(0, 10**6))
def test_pkpo_slow_constructions_equal_fast(G, kind, seed):
    r = _rewards(kind, G, seed)
    for baseline in ref.PKPO_BASELINES:
        for k in _k_range(baseline, G):
            fast = adv.pkpo(r, k=k, baseline=baseline)
            assert _max_diff(fast, ref.pkpo_quadratic(r, k, baseline)) <= TOL, (G, kind, k, baseline)
            assert _max_diff(fast, ref.pkpo_enumeration(r, k, baseline)) <= TOL, (G, kind, k, baseline)


def test_maxpo_quadratic_k1_is_rloo_and_chunking_does_not_matter():
    r = _rewards("random", 7, seed=3)
    assert _max_diff(adv.rloo(r), ref.maxpo_l2o_quadratic(r, 1)) <= TOL
    whole = ref.maxpo_l2o_quadratic(r, 3)
    one_row_chunks = ref.maxpo_l2o_quadratic(r, 3, chunk_elems=1)
    assert _max_diff(whole, one_row_chunks) <= 1e-15                 # matmul blocking may differ per chunk size
    assert _max_diff(ref.pkpo_enumeration(r, 3, "loo", chunk_elems=1), ref.pkpo_enumeration(r, 3, "loo")) <= 1e-15


def test_slow_constructions_accept_float32_and_compute_in_float64():
    r64 = _rewards("random", 6, seed=4)
    r32 = r64.to(torch.float32)
    out = ref.maxpo_l2o_quadratic(r32, 2)
    assert out.dtype == torch.float64
    assert _max_diff(adv.maxpo(r32.to(torch.float64), k=2), out) <= TOL


def test_slow_constructions_reject_bad_input():
    r = _rewards("random", 5, seed=5)
    with pytest.raises(ValueError, match="k"):
        ref.maxpo_l2o_quadratic(r, 5)                                # needs k <= G − 1
    with pytest.raises(ValueError, match="k"):
        ref.pkpo_quadratic(r, 1, "loo_minus_one")                    # needs k >= 2
    with pytest.raises(ValueError, match="baseline"):
        ref.pkpo_enumeration(r, 2, "mean")
    with pytest.raises(ValueError, match="G <= 16"):
        ref.maxpo_enumeration(torch.rand(1, 17, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match=r"\[P, G\]"):
        ref.pkpo_quadratic(r[0], 2, "none")
    with pytest.raises(ValueError, match="finite"):
        ref.maxpo_enumeration(torch.tensor([[0.0, math.nan, 1.0]]), 1)
