"""Loss aggregation (rlvr.losses.aggregate / loss_normalizer), ALGORITHMS.md §0.2.

Formulas (M mask, L per-token loss, N the step normaliser):
  token_mean               Σ M·L / N,                  N = Σ M
  seq_mean_token_mean      Σ_b [Σ_t M·L / Σ_t M] / N,  N = #rows with a valid token
  seq_mean_token_sum       Σ M·L / N,                  N = #rows with a valid token
  seq_mean_token_sum_norm  Σ M·L / N,                  N = #rows · max_tokens (default: widest T)
  group_mean_token_mean    Σ_b [Σ_t M·L / N_g(b)] / N, N = #groups with a valid token, N_g = the group's tokens
Reference values come from hand arithmetic or the loops of tests/loss_oracles.py. Unless a test says otherwise,
rows form prompt groups of two (b // 2), as the oracles count them.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, strategies as st

import loss_oracles as O
from rlvr import losses
from rlvr.losses import AGGREGATIONS, group_token_counts

F64 = torch.float64
NAN = float("nan")


def _pairs(mask: torch.Tensor) -> torch.Tensor:
    return group_token_counts(mask, torch.arange(mask.shape[0]) // 2)


def aggregate(L, mask, mode, normalizer=None, *, group_tokens=None):
    """rlvr's aggregate; the group mode's tokens default to prompt groups of two rows."""
    tokens = _pairs(mask) if group_tokens is None and mode in losses.GROUP_MODES else group_tokens
    return losses.aggregate(L, mask, mode, normalizer, group_tokens=tokens)


def loss_normalizer(masks, mode, *, max_tokens=None, group_tokens=None):
    """rlvr's loss_normalizer; the group mode's tokens default to prompt groups of two rows in each mask."""
    if group_tokens is None and mode in losses.GROUP_MODES:
        group_tokens = _pairs(masks) if isinstance(masks, torch.Tensor) else [_pairs(m) for m in masks]
    return losses.loss_normalizer(masks, mode, max_tokens=max_tokens, group_tokens=group_tokens)


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
    # both rows are one prompt's group: its token mean 9/3 over 1 group
    ("group_mean_token_mean", 3.0, [[1 / 3, 1 / 3], [1 / 3, 0]], 1.0),
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


@example(seed=0, B=1, T=1)
@example(seed=1, B=3, T=8)
@example(seed=2, B=7, T=5)
@example(seed=3, B=12, T=3)
@given(seed=st.integers(0, 10**6), B=st.integers(1, 12), T=st.integers(1, 8))
def test_random_vs_loop(seed, B, T):
    """Every aggregation mode equals the loop oracle (value, normaliser, gradient) on random ragged batches."""
    L, mask = _random_case(seed, B, T)
    ll, ml = L.tolist(), mask.tolist()
    for mode in AGGREGATIONS:
        Lg = L.clone().requires_grad_(True)
        out = aggregate(Lg, mask, mode)
        (grad,) = torch.autograd.grad(out, Lg)
        assert loss_normalizer(mask, mode) == O.normalizer([ml], mode)
        assert out.item() == pytest.approx(O.aggregate(ll, ml, mode), rel=1e-12, abs=1e-14)
        torch.testing.assert_close(grad, torch.tensor(O.aggregation_weights(ml, mode), dtype=F64), atol=1e-15,
                                   rtol=1e-13)
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
                   crop: bool, max_tokens: int | None, prompts: torch.Tensor) -> torch.Tensor:
    """Σ over micro-batches (rows with the same group id, optionally cropped to their last valid column); the
    group mode's tokens are counted over the whole step (rows of a prompt may sit in different micro-batches)."""
    step_tokens = group_token_counts(mask, prompts)
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
    micro_tokens = [step_tokens[rows] for rows, _ in parts]
    norm = loss_normalizer(micro_masks, mode, max_tokens=max_tokens, group_tokens=micro_tokens)
    total = theta.new_zeros(())
    for (rows, w), m, tokens in zip(parts, micro_masks, micro_tokens):
        per_tok = (theta * coef)[rows][:, :w]             # the loss of this micro-batch, computed on it alone
        total = total + aggregate(per_tok, m, mode, normalizer=norm, group_tokens=tokens)
    return total


@given(data=st.data(), B=st.integers(1, 6), T=st.integers(1, 6), mode=st.sampled_from(AGGREGATIONS),
       crop=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_micro_batch_split_invariance(data, B, T, mode, crop, seed):
    flat = data.draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T).filter(any))
    mask = torch.tensor(flat).reshape(B, T)
    groups = data.draw(st.lists(st.integers(0, B - 1), min_size=B, max_size=B))  # any row partition
    prompts = torch.tensor(data.draw(st.lists(st.integers(0, 2), min_size=B, max_size=B)))  # any prompt groups
    g = torch.Generator().manual_seed(seed)
    coef = torch.randn(B, T, generator=g, dtype=F64)
    theta = torch.randn(B, T, generator=g, dtype=F64, requires_grad=True)
    # Dr. GRPO's constant must be a true constant when micro-batches are cropped: pass the budget
    max_tokens = T if (mode == "seq_mean_token_sum_norm" and crop) else None

    tokens = group_token_counts(mask, prompts)
    full_norm = loss_normalizer(mask, mode, max_tokens=max_tokens, group_tokens=tokens)
    full = aggregate(theta * coef, mask, mode, normalizer=full_norm, group_tokens=tokens)
    if max_tokens is None:   # default normaliser = this mask's
        assert torch.equal(full, aggregate(theta * coef, mask, mode, group_tokens=tokens))
    split = _split_and_sum(theta, coef, mask, groups, mode, crop, max_tokens, prompts)
    assert split.item() == pytest.approx(full.item(), rel=1e-12, abs=1e-13)
    (g_full,) = torch.autograd.grad(full, theta)
    (g_split,) = torch.autograd.grad(split, theta)
    torch.testing.assert_close(g_split, g_full, atol=1e-15, rtol=1e-12)


def test_micro_batch_split_each_row_alone_with_empty_rows():
    """One row per micro-batch (so some micro-batches hold only an empty row), every mode."""
    L, mask = _random_case(7, 6, 5)
    tokens = _pairs(mask)
    for mode in AGGREGATIONS:
        micro = [mask[b:b + 1] for b in range(6)]
        norm = loss_normalizer(micro, mode, group_tokens=list(tokens.split(1)))
        assert norm == loss_normalizer(mask, mode)
        total = sum(aggregate(L[b:b + 1], micro[b], mode, normalizer=norm, group_tokens=tokens[b:b + 1])
                    for b in range(6))
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
                                             "seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm, "
                                             "group_mean_token_mean"):
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
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(got, [3.0, 3.5, 4.5, 2.25, 3.0], strict=True))


# ----------------------------------------------------------------------------------------------
# group_mean_token_mean (AAPO as its authors' code runs it: token mean per group, groups averaged)
# ----------------------------------------------------------------------------------------------

def test_group_mean_weighs_every_group_equally():
    # group 0: rows with 3 and 1 tokens (loss 1 each) -> token mean 1; group 1: one row, 2 tokens of loss 4 -> 4
    L = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [4.0, 4.0, 0.0]], dtype=F64, requires_grad=True)
    M = torch.tensor([[True, True, True], [True, False, False], [True, True, False]])
    tokens = group_token_counts(M, torch.tensor([0, 0, 1]))
    assert tokens.tolist() == [4.0, 4.0, 2.0]
    out = aggregate(L, M, "group_mean_token_mean", group_tokens=tokens)
    assert out.item() == pytest.approx((1 + 4) / 2, abs=1e-15)                  # token_mean: 12/6 = 2
    (grad,) = torch.autograd.grad(out, L)
    torch.testing.assert_close(grad, torch.tensor([[1 / 8] * 3, [1 / 8, 0, 0], [1 / 4, 1 / 4, 0]], dtype=F64),
                               atol=1e-15, rtol=0)


@given(B=st.integers(1, 7), T=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_group_mean_is_token_mean_for_one_group_and_seq_mean_for_singletons(B, T, seed):
    L, mask = _random_case(seed, B, T)
    one = aggregate(L, mask, "group_mean_token_mean", group_tokens=group_token_counts(mask, torch.zeros(B).long()))
    assert one.item() == pytest.approx(losses.aggregate(L, mask, "token_mean").item(), rel=1e-12, abs=1e-14)
    single = aggregate(L, mask, "group_mean_token_mean", group_tokens=group_token_counts(mask, torch.arange(B)))
    assert single.item() == pytest.approx(losses.aggregate(L, mask, "seq_mean_token_mean").item(),
                                          rel=1e-12, abs=1e-14)


def test_group_mean_equals_token_mean_when_every_group_has_the_same_tokens():
    L = torch.randn(4, 3, dtype=F64)
    M = torch.tensor([[True, True, False], [True, False, False], [True, True, True], [False, False, False]])
    tokens = group_token_counts(M, torch.tensor([0, 0, 1, 1]))                   # 3 and 3 tokens
    assert aggregate(L, M, "group_mean_token_mean", group_tokens=tokens).item() == pytest.approx(
        losses.aggregate(L, M, "token_mean").item(), rel=1e-12)


class TestGroupErrors:
    M = torch.tensor([[True, True], [True, False]])
    L = torch.zeros(2, 2, dtype=F64)

    def test_group_tokens_are_required(self):
        with pytest.raises(ValueError, match=r"aggregate: mode 'group_mean_token_mean' needs group_tokens \[B=2\]"):
            losses.aggregate(self.L, self.M, "group_mean_token_mean")
        with pytest.raises(ValueError, match=r"loss_normalizer: mode 'group_mean_token_mean' needs group_tokens"):
            losses.loss_normalizer(self.M, "group_mean_token_mean")
        with pytest.raises(ValueError, match="loss_normalizer: 2 masks but 1 group_tokens"):
            losses.loss_normalizer([self.M, self.M], "group_mean_token_mean", group_tokens=[_pairs(self.M)])

    def test_group_tokens_below_a_rows_own_tokens(self):
        with pytest.raises(ValueError, match=r"group_tokens\[0\] = 1.0 is below row 0's own 2 valid tokens"):
            losses.aggregate(self.L, self.M, "group_mean_token_mean", group_tokens=torch.tensor([1.0, 3.0]))

    def test_groups_must_be_integer_ids(self):
        with pytest.raises(ValueError, match=r"group_token_counts: groups must be an integer tensor \[B=2\]"):
            group_token_counts(self.M, torch.tensor([0.0, 1.0]))
