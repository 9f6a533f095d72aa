"""KL estimators (rlvr.kl), ALGORITHMS.md §0.3: x = log π_θ − log π_ref,
k1 = x, k2 = x²/2, k3 = e^{−x} + x − 1; x clamped to [−20, 20], k3 to at most 10.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from rlvr import kl

F64 = torch.float64
ESTIMATORS = ("k1", "k2", "k3")
NAN, INF = float("nan"), float("inf")


def _formula(name: str, x: float) -> tuple[float, float]:
    """(value, d value / d log π_θ) without clamps."""
    if name == "k1":
        return x, 1.0
    if name == "k2":
        return 0.5 * x * x, x
    return math.exp(-x) + x - 1, 1 - math.exp(-x)


def _eval(name, lp, ref, **kw):
    lp = lp.detach().clone().requires_grad_(True)
    out = kl.get(name)(lp, ref, **kw)
    (grad,) = torch.autograd.grad(out.sum(), lp)
    return out, grad


# ----------------------------------------------------------------------------------------------
# Values and gradients
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ESTIMATORS)
def test_values_and_gradients_vs_formula(name):
    g = torch.Generator().manual_seed(1)
    lp = -3 * torch.rand(4, 7, generator=g, dtype=F64)
    ref = -3 * torch.rand(4, 7, generator=g, dtype=F64)       # x in (−3, 3): no clamp active
    out, grad = _eval(name, lp, ref)
    vals = [[_formula(name, a - b) for a, b in zip(ra, rb)] for ra, rb in zip(lp.tolist(), ref.tolist())]
    torch.testing.assert_close(out, torch.tensor([[v for v, _ in r] for r in vals], dtype=F64), atol=1e-13, rtol=1e-13)
    torch.testing.assert_close(grad, torch.tensor([[d for _, d in r] for r in vals], dtype=F64), atol=1e-13, rtol=1e-13)


def test_docstring_examples():
    lp, ref = torch.tensor([[-1.0]], dtype=F64), torch.tensor([[-2.0]], dtype=F64)
    assert kl.k1(lp, ref).item() == 1.0                          # x = 1
    assert kl.k2(lp, ref).item() == 0.5                          # 1²/2
    assert kl.k3(lp, ref).item() == pytest.approx(math.exp(-1))  # e^{-1} + 1 − 1


@pytest.mark.parametrize("name", ESTIMATORS)
def test_no_gradient_to_reference(name):
    lp = torch.tensor([[-1.0, -0.3]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-2.0, -0.1]], dtype=F64, requires_grad=True)
    out = kl.get(name)(lp, ref)
    g_lp, g_ref = torch.autograd.grad(out.sum(), [lp, ref], allow_unused=True)
    assert g_lp is not None and g_ref is None


@given(x=st.floats(min_value=-60, max_value=60).filter(lambda v: abs(v) >= 1e-6))
def test_k3_nonnegative(x):
    ref = torch.tensor([[-1.0]], dtype=F64)
    assert kl.k3(ref + x, ref).item() >= 0
    assert kl.k3(ref + x, ref, clamp=None, max_value=None).item() >= 0


# Regression: exp(−x) + x − 1 rounded to −1.1e-16 (float64) / −6e-8 (float32) for small negative x.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_k3_nonnegative_near_zero(dtype):
    x = -torch.logspace(-12, -2, 2001, dtype=dtype)[None]
    assert (kl.k3(x, torch.zeros_like(x)) >= 0).all()


def test_k3_near_zero_is_second_order():
    # k3 = x²/2 − x³/6 + x⁴/24 − ... for small x (computed with expm1, so no cancellation near 0)
    x = torch.tensor([[1e-4, -1e-4, 1e-6, -1e-6]], dtype=F64)
    series = x**2 / 2 - x**3 / 6 + x**4 / 24
    torch.testing.assert_close(kl.k3(x, torch.zeros_like(x)), series, atol=1e-15, rtol=0)


# ----------------------------------------------------------------------------------------------
# Exact expectations on a small categorical (enumeration, no sampling)
# ----------------------------------------------------------------------------------------------

def _categorical(seed: int, V: int = 6):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(V, generator=g, dtype=F64, requires_grad=True)
    phi = 1.5 * torch.randn(V, generator=g, dtype=F64)
    return theta, phi


def _kl_loop(p: list[float], q: list[float]) -> float:
    return math.fsum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k1_and_k3_are_unbiased(seed):
    theta, phi = _categorical(seed)
    lp = torch.log_softmax(theta.detach(), -1)[None]        # every token of the vocabulary, as one [1, V] "sequence"
    ref = torch.log_softmax(phi, -1)[None]
    p = torch.softmax(theta.detach(), -1)
    exact = _kl_loop(p.tolist(), torch.softmax(phi, -1).tolist())
    assert exact > 0.05
    for name in ("k1", "k3"):
        expectation = (p * kl.get(name)(lp, ref)).sum().item()
        assert expectation == pytest.approx(exact, abs=1e-12), name
    # k2 is biased: E[x²/2] ≠ KL here
    assert abs((p * kl.k2(lp, ref)).sum().item() - exact) > 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradients_of_on_policy_expectations(seed):
    """With the sampling distribution held fixed (sg(π)), E_π[∇k] is known exactly:
    ∇E[k1] = Σπ∇logπ = 0;  ∇E[k2] = Σπ·x·∇logπ = ∇KL(π‖π_ref);  ∇E[k3] = Σ(π − π_ref)∇logπ = ∇KL(π_ref‖π)."""
    theta, phi = _categorical(seed)
    lp = torch.log_softmax(theta, -1)[None]
    ref = torch.log_softmax(phi, -1)[None]
    p, q = lp.exp().detach(), ref.exp()

    def grad_of(expr):
        (gr,) = torch.autograd.grad(expr, theta, retain_graph=True)
        return gr

    forward_kl = (lp.exp() * (lp - ref)).sum()
    reverse_kl = (q * (ref - lp)).sum()
    torch.testing.assert_close(grad_of((p * kl.k1(lp, ref)).sum()), torch.zeros_like(theta), atol=1e-14, rtol=0)
    torch.testing.assert_close(grad_of((p * kl.k2(lp, ref)).sum()), grad_of(forward_kl), atol=1e-12, rtol=0)
    torch.testing.assert_close(grad_of((p * kl.k3(lp, ref)).sum()), grad_of(reverse_kl), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------------
# Clamps
# ----------------------------------------------------------------------------------------------

def test_clamps():
    ref = torch.tensor([[-1.0, -1.0, -1.0, -1.0]], dtype=F64)
    x = torch.tensor([[30.0, -30.0, -2.5, -3.0]], dtype=F64)
    lp = ref + x
    k1, g1 = _eval("k1", lp, ref)
    k2, g2 = _eval("k2", lp, ref)
    k3, g3 = _eval("k3", lp, ref)
    # x clamped to ±20 (no gradient through the clamp) for the first two tokens
    torch.testing.assert_close(k1, torch.tensor([[20.0, -20.0, -2.5, -3.0]], dtype=F64))
    torch.testing.assert_close(g1, torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=F64))
    torch.testing.assert_close(k2, torch.tensor([[200.0, 200.0, 3.125, 4.5]], dtype=F64))
    torch.testing.assert_close(g2, torch.tensor([[0.0, 0.0, -2.5, -3.0]], dtype=F64))
    # k3: e^{−20} + 19 -> 10; e^{20} − 21 -> 10; e^{2.5} − 3.5 = 8.68 (< 10, kept); e^{3} − 4 = 16.09 -> 10
    torch.testing.assert_close(k3, torch.tensor([[10.0, 10.0, math.exp(2.5) - 3.5, 10.0]], dtype=F64))
    torch.testing.assert_close(g3, torch.tensor([[0.0, 0.0, 1 - math.exp(2.5), 0.0]], dtype=F64))
    assert torch.isfinite(k3).all() and (k3 <= 10).all()


def test_clamps_configurable_and_off():
    ref = torch.tensor([[-1.0, -1.0]], dtype=F64)
    lp = ref + torch.tensor([[30.0, -30.0]], dtype=F64)
    torch.testing.assert_close(kl.k1(lp, ref, clamp=None), torch.tensor([[30.0, -30.0]], dtype=F64))
    torch.testing.assert_close(kl.k1(lp, ref, clamp=5.0), torch.tensor([[5.0, -5.0]], dtype=F64))
    torch.testing.assert_close(kl.k2(lp, ref, clamp=None), torch.tensor([[450.0, 450.0]], dtype=F64))
    raw = kl.k3(lp, ref, clamp=None, max_value=None)
    torch.testing.assert_close(raw, torch.tensor([[math.exp(-30) + 29, math.exp(30) - 31]], dtype=F64))
    # x clamped at 20, no value cap: e^{20} − 21
    assert kl.k3(lp, ref, max_value=None)[0, 1].item() == pytest.approx(math.exp(20) - 21, rel=1e-14)
    # value cap only: min(e^{30} − 31, 3)
    assert kl.k3(lp, ref, clamp=None, max_value=3.0)[0, 1].item() == 3.0
    # impossible reference token (log π_ref = −inf): finite thanks to the clamp
    out = kl.k3(torch.tensor([[-1.0]], dtype=F64), torch.tensor([[-INF]], dtype=F64))
    # x = +inf -> 20 -> e^{−20} + 19 -> capped at 10
    assert out.item() == 10.0


# ----------------------------------------------------------------------------------------------
# loss_mask: masked positions change nothing
# ----------------------------------------------------------------------------------------------

GARBAGE = [NAN, INF, -INF, 1e300, -1e300]


def _check_mask_invariance(lp, ref, mask, lp_dirty, ref_dirty):
    for name in ESTIMATORS:
        c_out, c_grad = _eval(name, lp, ref, loss_mask=mask)
        d_out, d_grad = _eval(name, lp_dirty, ref_dirty, loss_mask=mask)
        assert torch.equal(c_out, d_out), name
        assert torch.equal(c_grad, d_grad), name
        assert torch.all(d_out[~mask] == 0) and torch.all(d_grad[~mask] == 0), name
        # valid positions: the unmasked estimator's values
        torch.testing.assert_close(d_out[mask], kl.get(name)(lp, ref)[mask], atol=0, rtol=0)


@given(data=st.data(), B=st.integers(1, 4), T=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_masked_garbage_changes_nothing_property(data, B, T, seed):
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T))).reshape(B, T)
    g = torch.Generator().manual_seed(seed)
    lp = -3 * torch.rand(B, T, generator=g, dtype=F64)
    ref = -3 * torch.rand(B, T, generator=g, dtype=F64)
    lp_d, ref_d = lp.clone(), ref.clone()
    for idx in (~mask).nonzero().tolist():
        lp_d[tuple(idx)] = data.draw(st.sampled_from(GARBAGE))
        ref_d[tuple(idx)] = data.draw(st.sampled_from(GARBAGE))
    _check_mask_invariance(lp, ref, mask, lp_d, ref_d)


def test_masked_garbage_all_combinations():
    pairs = [(a, b) for a in GARBAGE for b in GARBAGE]
    lp = torch.full((1, len(pairs) + 1), -1.0, dtype=F64)
    ref = torch.full_like(lp, -1.5)
    mask = torch.zeros_like(lp, dtype=torch.bool)
    mask[0, -1] = True
    lp_d, ref_d = lp.clone(), ref.clone()
    for i, (a, b) in enumerate(pairs):
        lp_d[0, i], ref_d[0, i] = a, b
    _check_mask_invariance(lp, ref, mask, lp_d, ref_d)


def test_all_true_mask_equals_no_mask():
    g = torch.Generator().manual_seed(3)
    lp, ref = -3 * torch.rand(3, 4, generator=g, dtype=F64), -3 * torch.rand(3, 4, generator=g, dtype=F64)
    for name in ESTIMATORS:
        assert torch.equal(kl.get(name)(lp, ref), kl.get(name)(lp, ref, loss_mask=torch.ones(3, 4, dtype=torch.bool)))


# ----------------------------------------------------------------------------------------------
# Registry and errors
# ----------------------------------------------------------------------------------------------

def test_registry():
    assert kl.get("k3") is kl.k3 and kl.get("k1") is kl.k1 and kl.get("k2") is kl.k2
    assert {"k1", "k2", "k3"} <= set(kl.names())
    assert kl.get("rlvr.kl:k2") is kl.k2
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'; valid names: k1, k2, k3"):
        kl.get("k4")
    with pytest.raises(ValueError, match="cannot import"):
        kl.get("rlvr.kl:k9")


def test_errors():
    lp = torch.zeros(2, 3, dtype=F64)
    for name in ESTIMATORS:
        with pytest.raises(ValueError, match="logprobs and ref_logprobs must be tensors of the same shape"):
            kl.get(name)(lp, torch.zeros(2, 4, dtype=F64))
        with pytest.raises(ValueError, match="logprobs and ref_logprobs must be tensors"):
            kl.get(name)(lp, 0.0)
        for bad in (torch.ones(2, 3), torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool)):
            with pytest.raises(ValueError, match=r"KL: loss_mask must be a bool tensor of shape \(2, 3\)"):
                kl.get(name)(lp, lp, loss_mask=bad)
