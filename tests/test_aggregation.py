"""Loss aggregation (rlvr.losses.aggregate / loss_normalizer), ALGORITHMS.md §0.2.

Formulas (M mask, L per-token loss, N the step normaliser):
  token_mean               Σ M·L / N,                  N = Σ M
  seq_mean_token_mean      Σ_b [Σ_t M·L / Σ_t M] / N,  N = #rows with a valid token
  seq_mean_token_sum       Σ M·L / N,                  N = #rows with a valid token
  seq_mean_token_sum_norm  Σ M·L / N,                  N = #rows · max_tokens (default: widest T)
Reference values come from hand arithmetic or the loops of tests/loss_oracles.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

import loss_oracles as O
from rlvr.losses import AGGREGATIONS, aggregate, loss_normalizer

F64 = torch.float64
NAN = float("nan")


def test_modes():
    assert AGGREGATIONS == ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")


# ----------------------------------------------------------------------------------------------
# Hand examples
# ----------------------------------------------------------------------------------------------

HAND_L = [[1.0, 3.0], [5.0, NAN]]  # the masked entry is NaN: it must not matter
HAND_M = torch.tensor([[True, True], [True, False]])


@pytest.mark.parametrize("mode,value,weights,norm", [
    # 9 valid-token loss / 3 valid tokens
    ("token_mean", 3.0, [[1 / 3, 1 / 3], [1 / 3, 0]], 3.0),
    # row means (1+3)/2 = 2 and 5/1 = 5; (2 + 5)/2 rows = 3.5; ∂/∂L = 1/(row count · 2)
    ("seq_mean_token_mean", 3.5, [[1 / 4, 1 / 4], [1 / 2, 0]], 2.0),
    # row sums 4 and 5; (4 + 5)/2 = 4.5
    ("seq_mean_token_sum", 4.5, [[1 / 2, 1 / 2], [1 / 2, 0]], 2.0),
    # 9 / (2 rows · T = 2) = 2.25
    ("seq_mean_token_sum_norm", 2.25, [[1 / 4, 1 / 4], [1 / 4, 0]], 4.0),
])
def test_docstring_example(mode, value, weights, norm):
    L = torch.tensor(HAND_L, dtype=F64, requires_grad=True)
    out = aggregate(L, HAND_M, mode)
    assert out.item() == pytest.approx(value, abs=1e-15)
    (grad,) = torch.autograd.grad(out, L)
    torch.testing.assert_close(grad, torch.tensor(weights, dtype=F64), atol=1e-15, rtol=0)
    assert loss_normalizer(HAND_M, mode) == norm
    # an explicit normaliser replaces the count: value·norm/7
    assert aggregate(L, HAND_M, mode, normalizer=7.0).item() == pytest.approx(value * norm / 7, abs=1e-15)


def test_sum_norm_max_tokens():
    # N = 2 rows · 10 = 20 -> 9/20
    assert loss_normalizer(HAND_M, "seq_mean_token_sum_norm", max_tokens=10) == 20.0
    L = torch.tensor(HAND_L, dtype=F64)
    assert aggregate(L, HAND_M, "seq_mean_token_sum_norm", normalizer=20.0).item() == pytest.approx(0.45)
    # default width over several masks is the widest one: (2 + 3 rows) · 5
    masks = [torch.ones(2, 3, dtype=torch.bool), torch.ones(3, 5, dtype=torch.bool)]
    assert loss_normalizer(masks, "seq_mean_token_sum_norm") == 25.0


def test_rows_without_valid_tokens_are_not_counted():
    # rows: [1, 3] valid, [x, x] empty, [6, x] valid
    L = torch.tensor([[1.0, 3.0], [100.0, NAN], [6.0, -NAN]], dtype=F64)
    M = torch.tensor([[True, True], [False, False], [True, False]])
    # row means 2 and 6 over 2 non-empty rows (not 3): 4
    assert aggregate(L, M, "seq_mean_token_mean").item() == pytest.approx(4.0)
    # row sums 4 and 6 over 2 rows: 5
    assert aggregate(L, M, "seq_mean_token_sum").item() == pytest.approx(5.0)
    # 10 / 3 tokens
    assert aggregate(L, M, "token_mean").item() == pytest.approx(10 / 3)
    # Dr. GRPO's constant counts every response: 10 / (3 · 2)
    assert aggregate(L, M, "seq_mean_token_sum_norm").item() == pytest.approx(10 / 6)
    assert loss_normalizer(M, "seq_mean_token_mean") == 2.0 == loss_normalizer(M, "seq_mean_token_sum")
    assert loss_normalizer([M, M[1:2]], "seq_mean_token_mean") == 2.0  # an all-empty micro-batch adds 0


# ----------------------------------------------------------------------------------------------
# Random inputs vs loops
# ----------------------------------------------------------------------------------------------

def _random_case(seed: int, B: int, T: int):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) < 0.6
    mask[0, 0] = True                                    # at least one valid token
    if B > 2:
        mask[B // 2] = False                             # and one empty row
    L = torch.randn(B, T, generator=g, dtype=F64)
    return L, mask


@pytest.mark.parametrize("mode", AGGREGATIONS)
@pytest.mark.parametrize("seed,B,T", [(0, 1, 1), (1, 3, 8), (2, 7, 5), (3, 12, 3)])
def test_random_vs_loop(mode, seed, B, T):
    L, mask = _random_case(seed, B, T)
    Lg = L.clone().requires_grad_(True)
    out = aggregate(Lg, mask, mode)
    (grad,) = torch.autograd.grad(out, Lg)
    ll, ml = L.tolist(), mask.tolist()
    assert loss_normalizer(mask, mode) == O.normalizer([ml], mode)
    assert out.item() == pytest.approx(O.aggregate(ll, ml, mode), rel=1e-12, abs=1e-14)
    torch.testing.assert_close(grad, torch.tensor(O.aggregation_weights(ml, mode), dtype=F64), atol=1e-15, rtol=1e-13)
    # with an explicit step normaliser
    out = aggregate(L, mask, mode, normalizer=13.5)
    assert out.item() == pytest.approx(O.aggregate(ll, ml, mode, 13.5), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_masked_values_give_no_value_and_no_gradient(mode):
    L, mask = _random_case(4, 5, 6)
    theta = torch.randn(5, 6, dtype=F64, requires_grad=True)
    garbage = torch.tensor([NAN, float("inf"), float("-inf"), 1e308, -1e308], dtype=F64)
    noise = garbage[torch.arange(30).reshape(5, 6) % 5]
    clean = aggregate(theta * L, mask, mode)
    dirty = aggregate(theta * L + torch.where(mask, 0.0, noise), mask, mode)
    assert torch.equal(clean, dirty)
    (g_clean,) = torch.autograd.grad(clean, theta)
    (g_dirty,) = torch.autograd.grad(aggregate(theta * L + torch.where(mask, 0.0, noise), mask, mode), theta)
    assert torch.equal(g_clean, g_dirty) and torch.all(g_dirty[~mask] == 0)


# ----------------------------------------------------------------------------------------------
# Micro-batch invariance
# ----------------------------------------------------------------------------------------------

def _split_and_sum(theta: torch.Tensor, coef: torch.Tensor, mask: torch.Tensor, groups: list[int], mode: str,
                   crop: bool, max_tokens: int | None) -> torch.Tensor:
    """Σ over micro-batches (rows with the same group id, optionally cropped to their last valid column)."""
    parts = []
    for j in sorted(set(groups)):
        rows = torch.tensor([b for b, gj in enumerate(groups) if gj == j])
        m = mask[rows]
        width = m.shape[1]
        if crop:
            valid_cols = m.any(0).nonzero()
            width = int(valid_cols.max()) + 1 if len(valid_cols) else 1
        parts.append((rows, width))
    micro_masks = [mask[rows][:, :w] for rows, w in parts]
    norm = loss_normalizer(micro_masks, mode, max_tokens=max_tokens)
    total = theta.new_zeros(())
    for (rows, w), m in zip(parts, micro_masks):
        per_tok = (theta * coef)[rows][:, :w]             # the loss of this micro-batch, computed on it alone
        total = total + aggregate(per_tok, m, mode, normalizer=norm)
    return total


@given(data=st.data(), B=st.integers(1, 6), T=st.integers(1, 6), mode=st.sampled_from(AGGREGATIONS),
       crop=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_micro_batch_split_invariance(data, B, T, mode, crop, seed):
    flat = data.draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T).filter(any))
    mask = torch.tensor(flat).reshape(B, T)
    groups = data.draw(st.lists(st.integers(0, B - 1), min_size=B, max_size=B))  # any row partition
    g = torch.Generator().manual_seed(seed)
    coef = torch.randn(B, T, generator=g, dtype=F64)
    theta = torch.randn(B, T, generator=g, dtype=F64, requires_grad=True)
    # Dr. GRPO's constant must be a true constant when micro-batches are cropped: pass the budget
    max_tokens = T if (mode == "seq_mean_token_sum_norm" and crop) else None

    full_norm = loss_normalizer(mask, mode, max_tokens=max_tokens)
    full = aggregate(theta * coef, mask, mode, normalizer=full_norm)
    if max_tokens is None:
        assert torch.equal(full, aggregate(theta * coef, mask, mode))  # default normaliser = this mask's
    split = _split_and_sum(theta, coef, mask, groups, mode, crop, max_tokens)
    assert split.item() == pytest.approx(full.item(), rel=1e-12, abs=1e-13)
    (g_full,) = torch.autograd.grad(full, theta)
    (g_split,) = torch.autograd.grad(split, theta)
    torch.testing.assert_close(g_split, g_full, atol=1e-15, rtol=1e-12)


def test_micro_batch_split_each_row_alone_with_empty_rows():
    """One row per micro-batch (so some micro-batches hold only an empty row), every mode."""
    L, mask = _random_case(7, 6, 5)
    for mode in AGGREGATIONS:
        micro = [mask[b:b + 1] for b in range(6)]
        norm = loss_normalizer(micro, mode)
        assert norm == loss_normalizer(mask, mode)
        total = sum(aggregate(L[b:b + 1], micro[b], mode, normalizer=norm) for b in range(6))
        assert total.item() == pytest.approx(aggregate(L, mask, mode).item(), rel=1e-12)


def test_naive_per_micro_batch_mean_differs():
    """Sanity check that the test above is not vacuous: averaging per-micro-batch token means is wrong (§0.2 caveat)."""
    L = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]], dtype=F64)
    M = torch.tensor([[True, True, True], [True, False, False]])
    naive = (aggregate(L[:1], M[:1], "token_mean") + aggregate(L[1:], M[1:], "token_mean")) / 2   # (1 + 4)/2
    assert naive.item() == pytest.approx(2.5)
    assert aggregate(L, M, "token_mean").item() == pytest.approx(7 / 4)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

class TestErrors:
    L = torch.zeros(2, 3, dtype=F64)
    M = torch.ones(2, 3, dtype=torch.bool)

    def test_unknown_mode(self):
        with pytest.raises(ValueError, match="unknown aggregation mode 'token-mean'; valid modes: token_mean, "
                                             "seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm"):
            aggregate(self.L, self.M, "token-mean")
        with pytest.raises(ValueError, match="unknown aggregation mode 'sum'"):
            loss_normalizer(self.M, "sum")

    @pytest.mark.parametrize("norm", [0.0, -1.0, NAN])
    def test_normalizer_not_positive(self, norm):
        with pytest.raises(ValueError, match="aggregate: normalizer must be > 0"):
            aggregate(self.L, self.M, "token_mean", normalizer=norm)

    @pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
    def test_empty_mask_with_default_normalizer(self, mode):
        with pytest.raises(ValueError, match="aggregate: loss_mask selects no token"):
            aggregate(self.L, torch.zeros(2, 3, dtype=torch.bool), mode)
        # with the step's normaliser an empty micro-batch is fine and contributes exactly 0
        out = aggregate(self.L + 5, torch.zeros(2, 3, dtype=torch.bool), mode, normalizer=4.0)
        assert out.item() == 0.0

    @pytest.mark.parametrize("mask", [torch.ones(2, 3), torch.ones(2, 3, dtype=torch.long), torch.ones(6, dtype=torch.bool)],
                             ids=["float", "long", "1d"])
    def test_mask_not_bool_2d(self, mask):
        with pytest.raises(ValueError, match="aggregate: loss_mask must be a bool tensor"):
            aggregate(self.L.reshape(mask.shape), mask, "token_mean")
        with pytest.raises(ValueError, match="loss_normalizer: loss_mask must be a bool tensor"):
            loss_normalizer(mask, "token_mean")
        with pytest.raises(ValueError, match="loss_normalizer: loss_mask must be a bool tensor"):
            loss_normalizer([self.M, mask], "token_mean")

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match=r"per_token_loss must have the loss_mask's shape \(2, 3\)"):
            aggregate(torch.zeros(2, 4, dtype=F64), self.M, "token_mean")

    def test_no_masks(self):
        with pytest.raises(ValueError, match="loss_normalizer: no mask given"):
            loss_normalizer([], "token_mean")

    @pytest.mark.parametrize("max_tokens", [0, -3])
    def test_max_tokens(self, max_tokens):
        with pytest.raises(ValueError, match="loss_normalizer: max_tokens must be > 0"):
            loss_normalizer(self.M, "seq_mean_token_sum_norm", max_tokens=max_tokens)


def test_float32_value():
    # the docstring example in float32 gives the same numbers (all exactly representable)
    L = torch.tensor(HAND_L, dtype=torch.float32)
    got = [aggregate(L, HAND_M, m).item() for m in AGGREGATIONS]
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(got, [3.0, 3.5, 4.5, 2.25]))
