"""Policy losses (rlvr.losses): closed-form values and gradients, clip cases, equivalences, masking, errors, registry.

Spec: ALGORITHMS.md §0.4 (PPO clip, dual clip), §1.5–1.6 (AAPO = reinforce + token_mean), §3 (ASymPO,
SPO, naive current-policy loss), §4.7 (GPG), §4.8 (CISPO), §4.9 (decoupled PPO), §5 item 3.
Everything is float64; reference values come from tests/loss_oracles.py (plain-Python loops) or from
hand arithmetic written out in the comments.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from hypothesis import example, given, settings, strategies as st

import loss_oracles as O
from rlvr import losses
from rlvr.losses import PolicyLossInputs


def aggregate(per_tok, mask, mode, normalizer=None):
    """rlvr's aggregate with the rows in prompt groups of two (b // 2), as loss_oracles counts them."""
    tokens = losses.group_token_counts(mask, torch.arange(mask.shape[0]) // 2)
    return losses.aggregate(per_tok, mask, mode, normalizer, group_tokens=tokens)


F64 = torch.float64
MODES = losses.AGGREGATIONS
ALL_LOSSES = ("ppo_clip", "reinforce", "cispo", "decoupled_ppo", "current_policy", "spo", "asympo")
TOL = dict(atol=1e-12, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def make_batch(seed: int, *, B: int = 6, T: int = 7, adv_per_token: bool = False, spread: float = 1.5,
               empty_row: int | None = 2) -> dict[str, torch.Tensor]:
    """Random float64 batch: ragged (non-prefix) mask with one fully masked row, ratios well outside the clip band."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) < 0.7
    mask[:, 0] |= torch.rand(B, generator=g) < 0.5
    for b in range(B):                      # every other row has at least one valid token
        if not mask[b].any():
            mask[b, int(torch.randint(T, (1,), generator=g))] = True
    if empty_row is not None:
        mask[empty_row] = False
    lp = -(0.05 + 3 * torch.rand(B, T, generator=g, dtype=F64))
    old = lp + (2 * torch.rand(B, T, generator=g, dtype=F64) - 1) * spread
    behav = old + (2 * torch.rand(B, T, generator=g, dtype=F64) - 1) * 0.8
    ref = lp + 0.3 * torch.randn(B, T, generator=g, dtype=F64)
    adv = torch.randn(B, T, generator=g, dtype=F64) if adv_per_token else torch.randn(B, generator=g, dtype=F64)
    return dict(logprobs=lp, old_logprobs=old, behavior_logprobs=behav, ref_logprobs=ref, advantages=adv,
                loss_mask=mask)


def _seed(*parts) -> int:
    """A deterministic seed from the test's parameters (``hash`` of a str is salted per process)."""
    return zlib.crc32(repr(parts).encode())


def run_loss(name: str, batch: dict[str, torch.Tensor], mode: str | None = None, **kw):
    """(per-token loss, stats, aggregate or None, grad w.r.t. logprobs or None)."""
    lp = batch["logprobs"].detach().clone().requires_grad_(True)
    x = PolicyLossInputs(**{**batch, "logprobs": lp})
    per_tok, stats = losses.get(name)(x, **kw)
    if mode is None:
        return per_tok, stats, None, None
    value = aggregate(per_tok, x.loss_mask, mode)
    (grad,) = torch.autograd.grad(value, lp)
    return per_tok, stats, value, grad


def one_token(name: str, *, lp: float, adv: float, old: float | None = None, behav: float | None = None, **kw):
    """(loss, ∂loss/∂lp) of a single-token batch (token_mean of one token = the token's loss)."""
    t = lambda v: None if v is None else torch.tensor([[v]], dtype=F64)  # noqa: E731
    batch = dict(logprobs=t(lp), old_logprobs=t(old), behavior_logprobs=t(behav),
                 advantages=torch.tensor([adv], dtype=F64), loss_mask=torch.ones(1, 1, dtype=torch.bool))
    _, stats, value, grad = run_loss(name, batch, "token_mean", **kw)
    return value.item(), grad.item(), stats


# ----------------------------------------------------------------------------------------------
# 1. Autograd gradient == closed form, chained through every aggregation mode
# ----------------------------------------------------------------------------------------------

CONFIGS = [
    ("reinforce", {}),
    ("current_policy", {}),
    ("spo", {}),
    ("spo", {"neg_scale": 0.3}),
    ("asympo", {}),
    ("cispo", {}),
    ("cispo", {"clip_eps_low": 0.2, "clip_eps_high": 0.25}),
    ("ppo_clip", {}),
    ("ppo_clip", {"clip_eps_low": 0.1, "clip_eps_high": 0.28, "dual_clip": 3.0}),
    ("decoupled_ppo", {}),
    ("decoupled_ppo", {"clip_eps_high": 0.3, "dual_clip": 2.0, "behavior_weight_cap": 1.5}),
]


def _with_config_examples(fn):
    """Every config at offset 0 (the batches of ``_seed(name, mode, adv_per_token)`` that
    test_random_batches_exercise_every_clip_case checks) as explicit examples, on top of drawn offsets."""
    for config in CONFIGS:
        fn = example(config=config, offset=0)(fn)
    return fn


@_with_config_examples
@settings(max_examples=20)    # each example runs 5 aggregation modes × 2 advantage shapes against the loop oracle
@given(config=st.sampled_from(CONFIGS), offset=st.integers(0, 2**30))
def test_gradient_equals_closed_form(config, offset):
    """Autograd of every loss through every aggregation mode (per-sequence and per-token advantages) equals the
    closed-form per-token gradient times the aggregation weights of the loop oracle."""
    name, kw = config
    for mode in MODES:
        for adv_per_token in (False, True):
            batch = make_batch(_seed(name, mode, adv_per_token) + offset, adv_per_token=adv_per_token)
            per_tok, _, value, grad = run_loss(name, batch, mode, **kw)
            lists = {k: v.tolist() for k, v in batch.items()}
            L, G = O.per_token(name, lists["logprobs"], lists["loss_mask"], lists["advantages"],
                               lists["old_logprobs"], lists["behavior_logprobs"], **kw)
            W = O.aggregation_weights(lists["loss_mask"], mode)
            torch.testing.assert_close(per_tok, torch.tensor(L, dtype=F64), **TOL)
            assert value.item() == pytest.approx(O.aggregate(L, lists["loss_mask"], mode), rel=1e-12, abs=1e-12)
            expected = torch.tensor(G, dtype=F64) * torch.tensor(W, dtype=F64)
            torch.testing.assert_close(grad, expected, **TOL)
            assert torch.all(grad[~batch["loss_mask"]] == 0)
            assert torch.all(per_tok[~batch["loss_mask"]] == 0)


@pytest.mark.parametrize("name,kw", [c for c in CONFIGS if c[0] in ("ppo_clip", "decoupled_ppo", "cispo")])
def test_random_batches_exercise_every_clip_case(name, kw):
    """Guard for the test above: its random ratios hit the inside, clipped and (where set) dual-clipped cases."""
    found: set[str] = set()
    for adv_per_token in (False, True):
        for mode in MODES:
            batch = make_batch(_seed(name, mode, adv_per_token), adv_per_token=adv_per_token)
            _, stats, _, grad = run_loss(name, batch, mode, **kw)
            m = batch["loss_mask"]
            for key, s in stats.items():
                if s.shape == m.shape and key != "ratio" and key != "behavior_weight" and (s[m] > 0).any():
                    found.add(key)
            if (grad[m] != 0).any():
                found.add("has_gradient")
    expected = {"has_gradient"} | {"cispo": {"clipped"}}.get(name, {"clipped_low", "clipped_high"})
    if kw.get("dual_clip"):
        expected.add("dual_clipped")
    if kw.get("behavior_weight_cap"):
        expected.add("behavior_weight_capped")
    assert expected <= found


# ----------------------------------------------------------------------------------------------
# 2. Hand-computed cases
# ----------------------------------------------------------------------------------------------

OLD = -2.0  # log π_old of the token; lp = OLD + log ρ gives the ratio ρ


def _lp(rho: float) -> float:
    return OLD + math.log(rho)


class TestPPOClipByHand:
    def test_clipped_high(self):
        # A = 1, ρ = 1.5, ε = 0.2: max(−1·1.5, −1·clip(1.5, 0.8, 1.2)) = max(−1.5, −1.2) = −1.2; constant -> grad 0
        v, g, s = one_token("ppo_clip", lp=_lp(1.5), old=OLD, adv=1.0)
        assert v == pytest.approx(-1.2, abs=1e-12) and g == 0.0
        assert s["clipped_high"].item() == 1.0 and s["clipped_low"].item() == 0.0
        assert s["ratio"].item() == pytest.approx(1.5, abs=1e-12)

    def test_clipped_low(self):
        # A = −1, ρ = 0.5: max(1·0.5, 1·clip(0.5, 0.8, 1.2)) = max(0.5, 0.8) = 0.8; constant -> grad 0
        v, g, s = one_token("ppo_clip", lp=_lp(0.5), old=OLD, adv=-1.0)
        assert v == pytest.approx(0.8, abs=1e-12) and g == 0.0
        assert s["clipped_low"].item() == 1.0 and s["clipped_high"].item() == 0.0

    def test_inside_band(self):
        # A = 1, ρ = 1.1: max(−1.1, −1.1) = −1.1; d(−A·ρ)/dlp = −A·ρ = −1.1
        v, g, s = one_token("ppo_clip", lp=_lp(1.1), old=OLD, adv=1.0)
        assert v == pytest.approx(-1.1, abs=1e-12) and g == pytest.approx(-1.1, abs=1e-12)
        assert s["clipped_high"].item() == 0.0 and s["clipped_low"].item() == 0.0

    def test_negative_advantage_above_band_is_not_clipped(self):
        # A = −1, ρ = 1.5: max(1·1.5, 1·1.2) = 1.5 (the unclipped side wins), grad −A·ρ = 1.5
        v, g, s = one_token("ppo_clip", lp=_lp(1.5), old=OLD, adv=-1.0)
        assert v == pytest.approx(1.5, abs=1e-12) and g == pytest.approx(1.5, abs=1e-12)
        assert s["clipped_high"].item() == 0.0 and s["clipped_low"].item() == 0.0

    def test_positive_advantage_below_band_is_not_clipped(self):
        # A = 2, ρ = 0.5: max(−2·0.5, −2·0.8) = max(−1.0, −1.6) = −1.0, grad −A·ρ = −1.0
        v, g, _ = one_token("ppo_clip", lp=_lp(0.5), old=OLD, adv=2.0)
        assert v == pytest.approx(-1.0, abs=1e-12) and g == pytest.approx(-1.0, abs=1e-12)

    def test_dual_clip_binds(self):
        # A = −1, ρ = 5, c = 3: L_clip = max(5, 1.2) = 5 > −A·c = 3 -> L = 3, constant -> grad 0
        v, g, s = one_token("ppo_clip", lp=_lp(5.0), old=OLD, adv=-1.0, dual_clip=3.0)
        assert v == pytest.approx(3.0, abs=1e-12) and g == 0.0
        assert s["dual_clipped"].item() == 1.0
        # without dual clip the same token has loss 5 and grad 5
        v, g, _ = one_token("ppo_clip", lp=_lp(5.0), old=OLD, adv=-1.0)
        assert v == pytest.approx(5.0, abs=1e-12) and g == pytest.approx(5.0, abs=1e-12)

    def test_dual_clip_not_binding_and_ignores_positive_advantages(self):
        # A = −1, ρ = 2, c = 3: L_clip = 2 < 3 -> L = 2, grad 2
        v, g, s = one_token("ppo_clip", lp=_lp(2.0), old=OLD, adv=-1.0, dual_clip=3.0)
        assert v == pytest.approx(2.0, abs=1e-12) and g == pytest.approx(2.0, abs=1e-12)
        assert s["dual_clipped"].item() == 0.0
        # A = +1, ρ = 5, c = 3: dual clip does not apply to A > 0; clipped high: L = −1.2, grad 0
        v, g, s = one_token("ppo_clip", lp=_lp(5.0), old=OLD, adv=1.0, dual_clip=3.0)
        assert v == pytest.approx(-1.2, abs=1e-12) and g == 0.0 and s["dual_clipped"].item() == 0.0

    def test_asymmetric_eps(self):
        # ε_low = 0.1, ε_high = 0.3: band [0.9, 1.3]
        kw = dict(clip_eps_low=0.1, clip_eps_high=0.3)
        # A = 1, ρ = 1.25 < 1.3: inside (would be clipped with ε = 0.2): L = −1.25, grad −1.25
        v, g, _ = one_token("ppo_clip", lp=_lp(1.25), old=OLD, adv=1.0, **kw)
        assert v == pytest.approx(-1.25, abs=1e-12) and g == pytest.approx(-1.25, abs=1e-12)
        # A = 1, ρ = 1.4 > 1.3: L = −1.3, grad 0
        v, g, _ = one_token("ppo_clip", lp=_lp(1.4), old=OLD, adv=1.0, **kw)
        assert v == pytest.approx(-1.3, abs=1e-12) and g == 0.0
        # A = −1, ρ = 0.85 < 0.9: L = max(0.85, 0.9) = 0.9, grad 0 (inside with ε = 0.2)
        v, g, _ = one_token("ppo_clip", lp=_lp(0.85), old=OLD, adv=-1.0, **kw)
        assert v == pytest.approx(0.9, abs=1e-12) and g == 0.0
        # A = −1, ρ = 0.95 > 0.9: L = 0.95, grad 0.95
        v, g, _ = one_token("ppo_clip", lp=_lp(0.95), old=OLD, adv=-1.0, **kw)
        assert v == pytest.approx(0.95, abs=1e-12) and g == pytest.approx(0.95, abs=1e-12)

    def test_log_ratio_clamped_before_exp(self):
        # log ρ = 30 is clamped to 20: ρ = e^20 (finite), A = −1 -> L = e^20 and no gradient through the clamp
        v, g, s = one_token("ppo_clip", lp=OLD + 30.0, old=OLD, adv=-1.0)
        assert v == pytest.approx(math.exp(20.0), rel=1e-12) and g == 0.0
        assert s["ratio"].item() == pytest.approx(math.exp(20.0), rel=1e-12)

    def test_fully_masked_row_is_exactly_zero(self):
        # row 1 is fully masked, and holds values that would otherwise give a large loss
        lp = torch.tensor([[_lp(1.1), _lp(0.5)], [_lp(5.0), _lp(9.0)]], dtype=F64)
        batch = dict(logprobs=lp, old_logprobs=torch.full((2, 2), OLD, dtype=F64),
                     advantages=torch.tensor([1.0, -7.0], dtype=F64),
                     loss_mask=torch.tensor([[True, True], [False, False]]))
        for mode in MODES:
            per_tok, _, value, grad = run_loss("ppo_clip", batch, mode, dual_clip=3.0)
            assert torch.equal(per_tok[1], torch.zeros(2, dtype=F64))
            assert torch.equal(grad[1], torch.zeros(2, dtype=F64))
        # row 0 with A = 1: tokens ρ = 1.1 (inside: −1.1, grad −1.1) and ρ = 0.5 (unclipped side: −0.5, grad −0.5)
        per_tok, _, value, grad = run_loss("ppo_clip", batch, "seq_mean_token_mean")
        torch.testing.assert_close(per_tok[0], torch.tensor([-1.1, -0.5], dtype=F64), **TOL)
        # seq_mean_token_mean over the one non-empty row: (−1.1 − 0.5)/2 / 1 = −0.8; grads (−1.1, −0.5)/2
        assert value.item() == pytest.approx(-0.8, abs=1e-12)
        torch.testing.assert_close(grad[0], torch.tensor([-0.55, -0.25], dtype=F64), **TOL)


class TestCISPOByHand:
    def test_docstring_example_clipped_high_keeps_gradient(self):
        # A = 1, ρ = 2, ε_high = 0.3: weight sg(min(2, 1.3)) = 1.3; lp = −2 + log 2
        # L = −1.3·1·lp = 1.3·(2 − log 2); grad = −1.3 (nonzero although ρ is outside the band)
        lp = _lp(2.0)
        v, g, s = one_token("cispo", lp=lp, old=OLD, adv=1.0)
        assert v == pytest.approx(-1.3 * lp, abs=1e-12) and g == pytest.approx(-1.3, abs=1e-12)
        assert s["clipped"].item() == 1.0 and s["ratio"].item() == pytest.approx(2.0, abs=1e-12)

    def test_negative_advantage_clipped_high(self):
        # A = −1, ρ = 2: weight 1.3, grad = −1.3·(−1) = +1.3 (PPO would also keep it: unclipped side)
        v, g, _ = one_token("cispo", lp=_lp(2.0), old=OLD, adv=-1.0)
        assert g == pytest.approx(1.3, abs=1e-12)

    def test_no_lower_bound_by_default(self):
        # A = −1, ρ = 0.2, ε_low = None: weight 0.2 (not clipped), grad = −0.2·(−1) = 0.2 (PPO: grad 0)
        v, g, s = one_token("cispo", lp=_lp(0.2), old=OLD, adv=-1.0)
        assert g == pytest.approx(0.2, abs=1e-12) and s["clipped"].item() == 0.0
        _, g_ppo, _ = one_token("ppo_clip", lp=_lp(0.2), old=OLD, adv=-1.0)
        assert g_ppo == 0.0

    def test_lower_bound(self):
        # A = −1, ρ = 0.2, ε_low = 0.5: weight max(0.2, 0.5) = 0.5, grad 0.5; L = −0.5·(−1)·lp = 0.5·lp
        lp = _lp(0.2)
        v, g, s = one_token("cispo", lp=lp, old=OLD, adv=-1.0, clip_eps_low=0.5)
        assert v == pytest.approx(0.5 * lp, abs=1e-12) and g == pytest.approx(0.5, abs=1e-12)
        assert s["clipped"].item() == 1.0

    def test_inside_band(self):
        # A = 2, ρ = 1.1, ε_high = 0.3: weight 1.1; grad −1.1·2 = −2.2
        v, g, s = one_token("cispo", lp=_lp(1.1), old=OLD, adv=2.0)
        assert g == pytest.approx(-2.2, abs=1e-12) and s["clipped"].item() == 0.0


class TestDecoupledPPOByHand:
    def test_docstring_example(self):
        # A = 1, u = 1 (lp = π_prox), π_prox/π_b = 2: L = 2·max(−1, −1) = −2, grad = w·(−A·u) = −2
        v, g, s = one_token("decoupled_ppo", lp=OLD, old=OLD, behav=OLD - math.log(2.0), adv=1.0)
        assert v == pytest.approx(-2.0, abs=1e-12) and g == pytest.approx(-2.0, abs=1e-12)
        assert s["behavior_weight"].item() == pytest.approx(2.0, abs=1e-12)

    def test_trust_region_is_around_prox_not_behaviour(self):
        # A = 1, u = π_θ/π_prox = 1.5 > 1.2 -> clipped (grad 0), L = w·(−1.2) = 0.5·(−1.2) = −0.6 with w = 0.5,
        # although π_θ/π_b = 0.75 is inside the band
        v, g, _ = one_token("decoupled_ppo", lp=_lp(1.5), old=OLD, behav=OLD + math.log(2.0), adv=1.0)
        assert v == pytest.approx(-0.6, abs=1e-12) and g == 0.0
        # A = −1, u = 1.1, w = 0.5: L = 0.5·1.1 = 0.55, grad 0.5·1.1 = 0.55
        v, g, _ = one_token("decoupled_ppo", lp=_lp(1.1), old=OLD, behav=OLD + math.log(2.0), adv=-1.0)
        assert v == pytest.approx(0.55, abs=1e-12) and g == pytest.approx(0.55, abs=1e-12)

    def test_dual_clip(self):
        # A = −1, u = 5, c = 3, w = 2: L = 2·min(5, 3) = 6, grad 0
        v, g, _ = one_token("decoupled_ppo", lp=_lp(5.0), old=OLD, behav=OLD - math.log(2.0), adv=-1.0,
                            dual_clip=3.0)
        assert v == pytest.approx(6.0, abs=1e-12) and g == 0.0

    def test_behavior_weight_cap_drops_tokens(self):
        # w = 2 > cap 1.5 -> token dropped: L = 0, grad 0; w = 1.25 <= 1.5 -> kept: L = −1.25·1.1, grad −1.25·1.1
        lp = torch.tensor([[_lp(1.1), _lp(1.1)]], dtype=F64)
        batch = dict(logprobs=lp, old_logprobs=torch.full((1, 2), OLD, dtype=F64),
                     behavior_logprobs=torch.tensor([[OLD - math.log(2.0), OLD - math.log(1.25)]], dtype=F64),
                     advantages=torch.tensor([1.0], dtype=F64), loss_mask=torch.ones(1, 2, dtype=torch.bool))
        per_tok, stats, value, grad = run_loss("decoupled_ppo", batch, "token_mean", behavior_weight_cap=1.5)
        torch.testing.assert_close(per_tok, torch.tensor([[0.0, -1.375]], dtype=F64), **TOL)
        assert per_tok[0, 0].item() == 0.0 and grad[0, 0].item() == 0.0
        # token_mean over 2 valid tokens (the dropped one still counts in the denominator): −1.375/2
        assert value.item() == pytest.approx(-0.6875, abs=1e-12)
        assert grad[0, 1].item() == pytest.approx(-1.375 / 2, abs=1e-12)
        torch.testing.assert_close(stats["behavior_weight_capped"], torch.tensor([[1.0, 0.0]], dtype=F64))
        torch.testing.assert_close(stats["behavior_weight"], torch.tensor([[2.0, 1.25]], dtype=F64), **TOL)


class TestCurrentPolicyFamilyByHand:
    # A = (1, −1), ℓ̄ = (0.5, 2.0): one-token rows with lp = (−0.5, −2.0)
    batch = dict(logprobs=torch.tensor([[-0.5], [-2.0]], dtype=F64), advantages=torch.tensor([1.0, -1.0], dtype=F64),
                 loss_mask=torch.ones(2, 1, dtype=torch.bool))

    def test_current_policy(self):
        # (1·0.5 − 1·2.0)/2 = −0.75; ∂/∂lp_b = −A_b/2 = (−0.5, 0.5)
        _, _, v, g = run_loss("current_policy", self.batch, "seq_mean_token_mean")
        assert v.item() == pytest.approx(-0.75, abs=1e-12)
        torch.testing.assert_close(g, torch.tensor([[-0.5], [0.5]], dtype=F64), **TOL)

    def test_spo(self):
        # λ = 0.5: (0.5 − 0.5·2.0)/2 = −0.25; ∂/∂lp_b = −C_b·A_b/2 = (−0.5, 0.25)
        _, _, v, g = run_loss("spo", self.batch, "seq_mean_token_mean")
        assert v.item() == pytest.approx(-0.25, abs=1e-12)
        torch.testing.assert_close(g, torch.tensor([[-0.5], [0.25]], dtype=F64), **TOL)
        # λ = 0: negatives are ignored: 0.5/2 = 0.25
        _, _, v, g = run_loss("spo", self.batch, "seq_mean_token_mean", neg_scale=0.0)
        assert v.item() == pytest.approx(0.25, abs=1e-12) and g[1, 0].item() == 0.0

    def test_asympo(self):
        # value (1 − 1)/2 = 0; ∂L/∂ℓ̄ = (1/0.5, −1/2.0)/2 = (1, −0.25); ℓ̄_b = −lp_b -> ∂L/∂lp = (−1, 0.25)
        _, stats, v, g = run_loss("asympo", self.batch, "seq_mean_token_mean")
        assert v.item() == pytest.approx(0.0, abs=1e-15)
        torch.testing.assert_close(g, torch.tensor([[-1.0], [0.25]], dtype=F64), **TOL)
        torch.testing.assert_close(stats["nll"], torch.tensor([0.5, 2.0], dtype=F64), **TOL)
        torch.testing.assert_close(stats["coef"], torch.tensor([2.0, 0.5], dtype=F64), **TOL)

    def test_reinforce_docstring_example(self):
        # A = 0.5, log π = −2 -> L = 1.0, ∂L/∂log π = −0.5
        v, g, s = one_token("reinforce", lp=-2.0, adv=0.5)
        assert v == pytest.approx(1.0, abs=1e-15) and g == pytest.approx(-0.5, abs=1e-15)
        assert s["nll"].item() == pytest.approx(2.0, abs=1e-15)


# ----------------------------------------------------------------------------------------------
# 3. Equivalences
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{}, {"clip_eps_low": 0.1, "clip_eps_high": 0.28, "dual_clip": 3.0}])
@pytest.mark.parametrize("adv_per_token", [False, True])
def test_decoupled_ppo_equals_ppo_clip_when_behaviour_is_prox(kw, adv_per_token):
    batch = make_batch(11, adv_per_token=adv_per_token)
    batch["behavior_logprobs"] = batch["old_logprobs"].clone()
    for mode in MODES:
        a = run_loss("ppo_clip", batch, mode, **kw)
        b = run_loss("decoupled_ppo", batch, mode, **kw)
        assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])
    # the cap never drops a token when w = 1
    c = run_loss("decoupled_ppo", batch, "token_mean", behavior_weight_cap=1.0, **kw)
    assert torch.equal(c[0], run_loss("ppo_clip", batch, "token_mean", **kw)[0])


@pytest.mark.parametrize("adv_per_token", [False, True])
def test_current_policy_equals_reinforce_and_spo_lambda_one(adv_per_token):
    batch = make_batch(12, adv_per_token=adv_per_token)
    for mode in MODES:
        r = run_loss("reinforce", batch, mode)
        c = run_loss("current_policy", batch, mode)
        s = run_loss("spo", batch, mode, neg_scale=1.0)
        for i in (0, 2, 3):
            assert torch.equal(r[i], c[i]) and torch.equal(c[i], s[i])
        torch.testing.assert_close(r[1]["nll"], c[1]["nll"], **TOL)


def test_ppo_clip_on_policy_gradient_equals_reinforce():
    """With π_θ = π_old (ρ = 1, never clipped) PPO's gradient is REINFORCE's (∂(−Aρ)/∂lp = −A at ρ = 1)."""
    batch = make_batch(13)
    batch["old_logprobs"] = batch["logprobs"].clone()
    for mode in MODES:
        torch.testing.assert_close(run_loss("ppo_clip", batch, mode, dual_clip=3.0)[3],
                                   run_loss("reinforce", batch, mode)[3], **TOL)


def test_aapo_gradient_on_tiny_categorical_lm():
    """ALGORITHMS §1.6.3: reinforce + token_mean has gradient −Σ_i A_i ∇log π(o_i) / Σ_i |o_i|.

    Tiny bigram LM: θ[c] are the logits of the next token after token c (V = 4, BOS = 0). The manual
    gradient uses ∇_θ[c] log softmax(θ[c])[o] = onehot(o) − softmax(θ[c]), summed by loops.
    """
    g = torch.Generator().manual_seed(5)
    V, B, T = 4, 5, 6
    theta = torch.randn(V, V, generator=g, dtype=F64, requires_grad=True)
    tokens = torch.randint(V, (B, T), generator=g)
    lengths = [6, 1, 3, 5, 2]
    mask = torch.tensor([[t < n for t in range(T)] for n in lengths])
    adv = torch.randn(B, generator=g, dtype=F64)
    ctx = torch.cat([torch.zeros(B, 1, dtype=torch.long), tokens[:, :-1]], dim=1)
    lp = torch.log_softmax(theta[ctx], -1).gather(-1, tokens[..., None])[..., 0]
    per_tok, _ = losses.reinforce(PolicyLossInputs(logprobs=lp, advantages=adv, loss_mask=mask))
    value = aggregate(per_tok, mask, "token_mean")
    (grad,) = torch.autograd.grad(value, theta)

    probs = torch.softmax(theta.detach(), -1).tolist()
    manual = [[0.0] * V for _ in range(V)]
    n_tok = sum(lengths)
    expected_value = 0.0
    for b in range(B):
        for t in range(lengths[b]):
            c, o = int(ctx[b, t]), int(tokens[b, t])
            expected_value -= adv[b].item() * math.log(probs[c][o]) / n_tok
            for v in range(V):
                manual[c][v] -= adv[b].item() * ((v == o) - probs[c][v]) / n_tok
    assert value.item() == pytest.approx(expected_value, abs=1e-12)
    torch.testing.assert_close(grad, torch.tensor(manual, dtype=F64), **TOL)


# ----------------------------------------------------------------------------------------------
# 4. ASymPO
# ----------------------------------------------------------------------------------------------

def _zero_sum_groups(g: torch.Generator, P: int, G: int) -> torch.Tensor:
    r = torch.randn(P, G, generator=g, dtype=F64)
    return (r - r.mean(-1, keepdim=True)).reshape(-1)


def test_asympo_value_is_zero_for_zero_sum_advantages():
    g = torch.Generator().manual_seed(21)
    P, G, T = 3, 4, 8
    adv = _zero_sum_groups(g, P, G)
    lengths = torch.randint(1, T + 1, (P * G,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    # very different NLL scales per response (the stale-negative situation of §3.2)
    lp = -(0.01 + torch.rand(P * G, T, generator=g, dtype=F64)) * torch.logspace(-1, 1, P * G, dtype=F64)[:, None]
    batch = dict(logprobs=lp, advantages=adv, loss_mask=mask)
    _, _, value, grad = run_loss("asympo", batch, "seq_mean_token_mean")
    assert abs(value.item()) < 1e-12
    assert grad.abs().max() > 1e-3  # ... yet a nonzero learning signal
    # the naive loss is not zero on the same batch
    _, _, naive, _ = run_loss("current_policy", batch, "seq_mean_token_mean")
    assert abs(naive.item()) > 1e-3


@pytest.mark.parametrize("adv_per_token", [False, True])
def test_asympo_gradient_is_gradient_of_mean_advantage_times_log_nll(adv_per_token):
    """∇ (1/B) Σ_b A_b ℓ̄_b / sg(ℓ̄_b) = ∇ (1/B) Σ_b A_b log ℓ̄_b, B = number of non-empty rows (§3.2)."""
    batch = make_batch(22, B=8, T=6, adv_per_token=False, empty_row=5)
    lp = batch["logprobs"].detach().clone().requires_grad_(True)
    mask, adv = batch["loss_mask"], batch["advantages"]
    n = mask.sum(-1)
    nonempty = n > 0
    nll = -(torch.where(mask, lp, 0.0)).sum(-1)[nonempty] / n[nonempty]
    target = (adv[nonempty] * torch.log(nll)).sum() / int(nonempty.sum())
    (expected,) = torch.autograd.grad(target, lp)
    if adv_per_token:  # a [B, T] advantage constant along each row is the same thing
        batch["advantages"] = adv[:, None].expand(-1, mask.shape[1]).clone()
    _, _, _, grad = run_loss("asympo", batch, "seq_mean_token_mean")
    torch.testing.assert_close(grad, expected, atol=1e-10, rtol=0)


def test_asympo_eps_clamp():
    # ℓ̄_0 = 1e-9 < ε = 1e-6 -> coef 1/ε = 1e6: L_t = −A·1e6·lp_t, grad −A·1e6 per token
    # ℓ̄_1 = 0 (probability-one tokens) -> coef 1e6 too, and everything stays finite
    lp = torch.tensor([[-1e-9, -1e-9], [0.0, 0.0]], dtype=F64)
    batch = dict(logprobs=lp, advantages=torch.tensor([2.0, -1.0], dtype=F64), loss_mask=torch.ones(2, 2, dtype=torch.bool))
    per_tok, stats, value, grad = run_loss("asympo", batch, "token_mean")
    torch.testing.assert_close(stats["coef"], torch.tensor([1e6, 1e6], dtype=F64), rtol=1e-12, atol=0)
    torch.testing.assert_close(per_tok, torch.tensor([[2e-3, 2e-3], [0.0, 0.0]], dtype=F64), rtol=1e-12, atol=1e-18)
    # token_mean over 4 tokens: grad = −A·1e6/4
    torch.testing.assert_close(grad, torch.tensor([[-5e5, -5e5], [2.5e5, 2.5e5]], dtype=F64), rtol=1e-12, atol=0)
    assert torch.isfinite(value)
    # a larger ε clamps more: ε = 0.5, ℓ̄ = 0.25 -> coef 2
    b2 = dict(logprobs=torch.tensor([[-0.25]], dtype=F64), advantages=torch.tensor([1.0], dtype=F64),
              loss_mask=torch.ones(1, 1, dtype=torch.bool))
    _, stats, _, grad = run_loss("asympo", b2, "token_mean", eps=0.5)
    assert stats["coef"].item() == pytest.approx(2.0) and grad.item() == pytest.approx(-2.0)


def test_asympo_stats():
    batch = make_batch(23, B=5, T=6, empty_row=1)
    _, stats, _, _ = run_loss("asympo", batch, "seq_mean_token_mean")
    lists = batch["logprobs"].tolist(), batch["loss_mask"].tolist()
    nll = [O.mean_token_nll(r, m) for r, m in zip(*lists)]
    torch.testing.assert_close(stats["nll"], torch.tensor(nll, dtype=F64), **TOL)
    coef = [1 / max(v, 1e-6) if any(m) else 0.0 for v, m in zip(nll, lists[1])]  # empty rows report coef 0
    torch.testing.assert_close(stats["coef"], torch.tensor(coef, dtype=F64), **TOL)
    assert stats["nll"][1].item() == 0.0 and stats["coef"][1].item() == 0.0  # empty row
    for name in ("reinforce", "current_policy", "spo"):
        torch.testing.assert_close(run_loss(name, batch)[1]["nll"], stats["nll"], **TOL)


# ----------------------------------------------------------------------------------------------
# 5. Masked positions change nothing
# ----------------------------------------------------------------------------------------------

GARBAGE = [float("nan"), float("inf"), float("-inf"), 1e300, -1e300, 1e4]
LOSS_KW = {"ppo_clip": {"dual_clip": 3.0}, "decoupled_ppo": {"dual_clip": 3.0, "behavior_weight_cap": 1.5},
           "cispo": {"clip_eps_low": 0.2}, "spo": {"neg_scale": 0.3}}


def _assert_masked_invariance(clean: dict, dirty: dict) -> None:
    mask = clean["loss_mask"]
    for name in ALL_LOSSES:
        kw = LOSS_KW.get(name, {})
        c_tok, c_stats, _, _ = run_loss(name, clean, **kw)
        d_tok, d_stats, _, _ = run_loss(name, dirty, **kw)
        assert torch.equal(c_tok, d_tok), name
        assert c_stats.keys() == d_stats.keys()
        for k in c_stats:
            assert torch.equal(c_stats[k], d_stats[k]), (name, k)
        for mode in MODES:
            _, _, c_val, c_grad = run_loss(name, clean, mode, **kw)
            _, _, d_val, d_grad = run_loss(name, dirty, mode, **kw)
            assert torch.equal(c_val, d_val), (name, mode)
            assert torch.equal(c_grad, d_grad), (name, mode)
            assert torch.all(d_grad[~mask] == 0), (name, mode)
            assert torch.isfinite(d_grad).all() and torch.isfinite(d_val)


def _dirty(batch: dict, pick) -> dict:
    mask = batch["loss_mask"]
    out = dict(batch)
    for key in ("logprobs", "old_logprobs", "behavior_logprobs", "ref_logprobs", "advantages"):
        x = batch[key].clone()
        m = ~mask if x.dim() == 2 else ~mask.any(-1)
        for idx in m.nonzero().tolist():
            x[tuple(idx)] = pick()
        out[key] = x
    return out


@pytest.mark.parametrize("adv_per_token", [False, True])
def test_masked_garbage_changes_nothing(adv_per_token):
    batch = make_batch(31, adv_per_token=adv_per_token)
    it = iter(GARBAGE * 100)
    _assert_masked_invariance(batch, _dirty(batch, lambda: next(it)))


@given(data=st.data(), B=st.integers(1, 4), T=st.integers(1, 5), adv_per_token=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_masked_garbage_changes_nothing_property(data, B, T, adv_per_token, seed):
    flat = data.draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T).filter(any))
    batch = make_batch(seed, B=B, T=T, adv_per_token=adv_per_token, empty_row=None)
    batch["loss_mask"] = torch.tensor(flat).reshape(B, T)
    _assert_masked_invariance(batch, _dirty(batch, lambda: data.draw(st.sampled_from(GARBAGE))))


def test_no_gradient_to_advantages_or_old_logprobs():
    batch = make_batch(32, adv_per_token=True)
    leaves = {k: batch[k].detach().clone().requires_grad_(True)
              for k in ("advantages", "old_logprobs", "behavior_logprobs")}
    lp = batch["logprobs"].detach().clone().requires_grad_(True)
    x = PolicyLossInputs(**{**batch, **leaves, "logprobs": lp})
    for name in ALL_LOSSES:
        per_tok, _ = losses.get(name)(x)
        grads = torch.autograd.grad(aggregate(per_tok, x.loss_mask, "token_mean"), [lp, *leaves.values()],
                                    allow_unused=True)
        assert grads[0] is not None and all(g is None for g in grads[1:]), name


# ----------------------------------------------------------------------------------------------
# 7. Bad input -> ValueError with a clear message
# ----------------------------------------------------------------------------------------------

def _inputs(**over) -> dict:
    B, T = 3, 4
    base = dict(logprobs=-torch.rand(B, T, dtype=F64), advantages=torch.randn(B, dtype=F64),
                loss_mask=torch.ones(B, T, dtype=torch.bool), old_logprobs=-torch.rand(B, T, dtype=F64))
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


class TestErrors:
    @pytest.mark.parametrize("mask", [torch.ones(3, 4), torch.ones(3, 4, dtype=torch.long),
                                      torch.ones(3, 4, dtype=torch.uint8)], ids=["float", "long", "uint8"])
    def test_mask_not_bool(self, mask):
        with pytest.raises(ValueError, match="loss_mask must be a bool tensor"):
            PolicyLossInputs(**_inputs(loss_mask=mask))

    def test_mask_shape(self):
        with pytest.raises(ValueError, match=r"loss_mask has shape \(3, 5\), logprobs has \(3, 4\)"):
            PolicyLossInputs(**_inputs(loss_mask=torch.ones(3, 5, dtype=torch.bool)))

    def test_logprobs_not_float_2d(self):
        with pytest.raises(ValueError, match="logprobs must be a float tensor"):
            PolicyLossInputs(**_inputs(logprobs=-torch.rand(3, 4, dtype=F64)[0]))
        with pytest.raises(ValueError, match="logprobs must be a float tensor"):
            PolicyLossInputs(**_inputs(logprobs=torch.zeros(3, 4, dtype=torch.long)))

    @pytest.mark.parametrize("shape", [(4,), (2,), (3, 5), (4, 4)], ids=["[B+1]=[T]", "[B-1]", "[B,T+1]", "[B+1,T]"])
    def test_advantages_shape(self, shape):
        with pytest.raises(ValueError, match=r"advantages must be a float tensor of shape \[B\]=\(3,\)"):
            PolicyLossInputs(**_inputs(advantages=torch.zeros(shape, dtype=F64)))

    def test_advantages_not_float(self):
        with pytest.raises(ValueError, match="advantages must be a float tensor"):
            PolicyLossInputs(**_inputs(advantages=torch.zeros(3, dtype=torch.long)))

    @pytest.mark.parametrize("field", ["old_logprobs", "behavior_logprobs", "ref_logprobs"])
    def test_side_logprobs_shape(self, field):
        with pytest.raises(ValueError, match=rf"{field} must be a float tensor of shape \(3, 4\)"):
            PolicyLossInputs(**_inputs(**{field: torch.zeros(3, 5, dtype=F64)}))

    @pytest.mark.parametrize("name,field", [("ppo_clip", "old_logprobs"), ("cispo", "old_logprobs"),
                                            ("decoupled_ppo", "old_logprobs"), ("decoupled_ppo", "behavior_logprobs")])
    def test_missing_required_logprobs(self, name, field):
        extra = {"behavior_logprobs": -torch.rand(3, 4, dtype=F64)} if field == "old_logprobs" else {}
        x = PolicyLossInputs(**_inputs(**{field: None, **extra}))
        with pytest.raises(ValueError, match=rf"loss '{name}' needs PolicyLossInputs.{field}, which is None"):
            losses.get(name)(x)

    @pytest.mark.parametrize("field", ["logprobs", "old_logprobs", "advantages"])
    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
    def test_non_finite_at_valid_position(self, field, bad):
        kw = _inputs()
        x = kw[field].clone()
        x[(1, 2) if x.dim() == 2 else (1,)] = bad
        with pytest.raises(ValueError, match=rf"PolicyLossInputs.{field} is not finite at \[1"):
            PolicyLossInputs(**{**kw, field: x})

    def test_empty_mask(self):
        with pytest.raises(ValueError, match="loss_mask selects no token"):
            PolicyLossInputs(**_inputs(loss_mask=torch.zeros(3, 4, dtype=torch.bool)))

    @pytest.mark.parametrize("name", ["ppo_clip", "decoupled_ppo"])
    @pytest.mark.parametrize("kw,msg", [({"clip_eps_low": 1.0}, "clip_eps_low must be in"),
                                        ({"clip_eps_low": -0.1}, "clip_eps_low must be in"),
                                        ({"clip_eps_high": -0.1}, "clip_eps_high must be >= 0"),
                                        ({"dual_clip": 1.0}, "dual_clip must be > 1"),
                                        ({"dual_clip": 0.5}, "dual_clip must be > 1")])
    def test_invalid_clip(self, name, kw, msg):
        x = PolicyLossInputs(**_inputs(behavior_logprobs=-torch.rand(3, 4, dtype=F64)))
        with pytest.raises(ValueError, match=msg):
            losses.get(name)(x, **kw)

    @pytest.mark.parametrize("kw", [{"clip_eps_high": -0.1}, {"clip_eps_low": 1.5}, {"clip_eps_low": -0.1}])
    def test_invalid_cispo_clip(self, kw):
        with pytest.raises(ValueError, match="cispo: need clip_eps_high >= 0 and clip_eps_low in"):
            losses.cispo(PolicyLossInputs(**_inputs()), **kw)

    @pytest.mark.parametrize("cap", [0.0, -1.0])
    def test_invalid_behavior_weight_cap(self, cap):
        x = PolicyLossInputs(**_inputs(behavior_logprobs=-torch.rand(3, 4, dtype=F64)))
        with pytest.raises(ValueError, match="behavior_weight_cap must be > 0"):
            losses.decoupled_ppo(x, behavior_weight_cap=cap)

    @pytest.mark.parametrize("neg_scale", [-0.1, 1.5])
    def test_spo_neg_scale(self, neg_scale):
        with pytest.raises(ValueError, match=r"spo: neg_scale must be in \[0, 1\]"):
            losses.spo(PolicyLossInputs(**_inputs()), neg_scale=neg_scale)

    @pytest.mark.parametrize("eps", [0.0, -1e-6])
    def test_asympo_eps(self, eps):
        with pytest.raises(ValueError, match="asympo: eps must be > 0"):
            losses.asympo(PolicyLossInputs(**_inputs()), eps=eps)

    def test_unknown_loss_name_lists_valid_names(self):
        with pytest.raises(ValueError, match="unknown policy loss 'grpo_typo'; valid names: asympo, cispo, "
                                             "current_policy, decoupled_ppo, ppo_clip, reinforce, spo"):
            losses.get("grpo_typo")
        with pytest.raises(ValueError, match="unknown policy loss"):
            losses.spec("grpo_typo")

    def test_bad_import_path(self):
        with pytest.raises(ValueError, match="cannot import 'rlvr.losses:no_such_loss'"):
            losses.get("rlvr.losses:no_such_loss")
        with pytest.raises(ValueError, match="cannot import 'no_such_module_xyz:f'"):
            losses.get("no_such_module_xyz:f")
        with pytest.raises(ValueError, match="is not callable"):
            losses.get("rlvr.losses:LOG_RATIO_CLAMP")


# ----------------------------------------------------------------------------------------------
# 8. Registry facts
# ----------------------------------------------------------------------------------------------

class TestRegistry:
    def test_names(self):
        assert set(ALL_LOSSES) <= set(losses.names())
        assert losses.names() == sorted(losses.names())

    @pytest.mark.parametrize("name,old,behav,agg", [
        ("ppo_clip", True, False, "seq_mean_token_mean"),
        ("reinforce", False, False, "token_mean"),
        ("cispo", True, False, "token_mean"),
        ("decoupled_ppo", True, True, "token_mean"),
        ("current_policy", False, False, "seq_mean_token_mean"),
        ("spo", False, False, "seq_mean_token_mean"),
        ("asympo", False, False, "seq_mean_token_mean"),
    ])
    def test_facts(self, name, old, behav, agg):
        s = losses.spec(name)
        assert s.name == name and s.fn is getattr(losses, name) and losses.get(name) is s.fn
        assert s.needs_old_logprobs is old
        assert s.needs_behavior_logprobs is behav
        assert s.default_aggregation == agg and agg in losses.AGGREGATIONS

    def test_import_path_gives_the_registered_entry(self):
        assert losses.get("rlvr.losses:reinforce") is losses.reinforce
        for name in losses.names():
            assert losses.spec(f"rlvr.losses:{name}") is losses.spec(name), name
        s = losses.spec("rlvr.losses:ppo_clip")     # was: default facts, so ppo_clip trained with ratio ≡ 1
        assert s.name == "ppo_clip" and s.needs_old_logprobs and s.default_aggregation == "seq_mean_token_mean"
        assert losses.spec("rlvr.losses:decoupled_ppo").needs_behavior_logprobs

    def test_an_unregistered_function_is_refused_with_how_to_register_it(self):
        with pytest.raises(ValueError, match=r"'loss_oracles:ppo_token' is not a registered policy loss.*"
                                             r"@rlvr.losses.register\(\"my_name\", needs_old_logprobs=..., "
                                             r"needs_behavior_logprobs=..., default_aggregation=...\)"):
            losses.spec("loss_oracles:ppo_token")

    def test_a_user_module_registers_its_loss_and_its_path_carries_the_facts(self, tmp_path, monkeypatch):
        monkeypatch.setattr(losses._REGISTRY, "_entries", dict(losses._REGISTRY._entries))
        monkeypatch.setattr(losses._REGISTRY, "_by_fn", dict(losses._REGISTRY._by_fn))
        (tmp_path / "user_loss_mod_x1.py").write_text(
            "from rlvr import losses\n"
            "@losses.register('user_ratio_x1', needs_old_logprobs=True, default_aggregation='seq_mean_token_sum')\n"
            "def user_ratio(x):\n"
            "    return -x.token_advantages() * x.logprobs, {}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        s = losses.spec("user_loss_mod_x1:user_ratio")    # importing the module registers it
        assert s is losses.spec("user_ratio_x1") and s.needs_old_logprobs
        assert s.default_aggregation == "seq_mean_token_sum"
        with pytest.raises(ValueError, match="user_ratio is already registered as 'user_ratio_x1': one name"):
            losses.register("another_name_x1")(s.fn)

    def test_register_duplicate_rejected(self):
        with pytest.raises(ValueError, match="policy loss 'reinforce' is already registered"):
            losses.register("reinforce")(losses.reinforce)


def test_nll_by_advantage_sign_example_token_advantages_and_masked_garbage():
    from rlvr.losses import PolicyLossInputs, nll_by_advantage_sign

    lp = torch.tensor([[-0.5, -0.5, float("nan")], [-2.0, -2.0, -2.0], [-1.0, float("inf"), 7.0]],
                      dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    nll, sign = nll_by_advantage_sign(PolicyLossInputs(logprobs=lp, advantages=torch.tensor(
        [1.0, -1.0, 0.0], dtype=torch.float64), loss_mask=mask))
    assert nll.tolist() == [0.5, 2.0, 1.0] and sign.tolist() == [1.0, -1.0, 0.0]
    # [B, T] advantages: the sign of each response's mean over its valid tokens (garbage past the mask ignored)
    adv = torch.tensor([[1.0, -3.0, 99.0], [0.5, 0.5, -0.5], [0.0, -9.0, 9.0]], dtype=torch.float64)
    _, sign = nll_by_advantage_sign(PolicyLossInputs(logprobs=lp, advantages=adv, loss_mask=mask))
    assert sign.tolist() == [-1.0, 1.0, 0.0]


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean"])
def test_decoupled_ppo_with_one_update_is_unclipped_behaviour_weighted_reinforce(mode):
    """π_prox = π_θ (one optimiser step per batch: the update passes the current log-probs, detached, as
    old_logprobs): u ≡ 1, the clip never acts, and the gradient equals ppo_clip's on the behaviour ratio with the
    clip removed — not with the clip at 0.2, which bounds the drift from the sampler (docs/results.md)."""
    g = torch.Generator().manual_seed(3)
    lp = -1 - torch.rand(16, 12, generator=g, dtype=F64)
    behav = lp + 0.5 * torch.randn(16, 12, generator=g, dtype=F64)
    adv = torch.randn(16, generator=g, dtype=F64)
    mask = torch.rand(16, 12, generator=g) < 0.8
    mask[:, 0] = True

    def grad(loss, old, **kw):
        x = lp.clone().requires_grad_()
        inputs = PolicyLossInputs(logprobs=x, advantages=adv, loss_mask=mask, old_logprobs=old,
                                  behavior_logprobs=behav if loss == "decoupled_ppo" else None)
        per_token, stats = losses.get(loss)(inputs, **kw)
        (g,) = torch.autograd.grad(aggregate(per_token, mask, mode), x)
        return g, stats

    decoupled, stats = grad("decoupled_ppo", lp)
    assert float(stats["clipped_low"].sum() + stats["clipped_high"].sum()) == 0.0
    unclipped, _ = grad("ppo_clip", behav, clip_eps_low=1 - 1e-12, clip_eps_high=1e12)
    torch.testing.assert_close(decoupled, unclipped, rtol=1e-12, atol=1e-15)
    clipped, clip_stats = grad("ppo_clip", behav)
    assert float((clip_stats["clipped_low"] + clip_stats["clipped_high"])[mask].mean()) > 0.1
    assert float((decoupled - clipped).abs().max()) > 1e-3
