"""Value tests for the PPO pieces: token rewards, GAE, masked whitening, the "gae" registry entry
(rlvr.advantages) and the clipped value loss (rlvr.losses), against loop oracles and hand-worked
numbers (ALGORITHMS.md §4.6; GAE: Schulman et al. 2015, arXiv 1506.02438, Eq. 16).
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from rlvr import advantages as adv
from rlvr import losses
from rlvr.advantages import gae, gae_advantages, masked_whiten, spec, token_rewards
from rlvr.losses import aggregate, value_loss

F64 = torch.float64
TOL = dict(rtol=1e-12, atol=1e-12)
NAN = math.nan
GAMMA_LAM = [(1.0, 1.0), (0.99, 0.95), (1.0, 0.0), (0.0, 0.7), (0.0, 0.0), (0.5, 1.0), (0.9, 0.3)]


# ----------------------------------------------------------------------------------------------
# Oracles: plain Python over each row's valid prefix (explicit δ_t, the (γλ) sum as a double loop)
# ----------------------------------------------------------------------------------------------

def oracle_token_rewards(R: float, length: int, kl: list[float], beta: float) -> list[float]:
    """r_t = 1[t = length − 1]·R − β·kl_t for t < length."""
    return [(R if t == length - 1 else 0.0) - beta * kl[t] for t in range(length)]


def oracle_gae(r: list[float], v: list[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    """Â_t = Σ_{l=0}^{L−1−t} (γλ)^l δ_{t+l},  δ_t = r_t + γ V_{t+1} − V_t,  V_L = 0; returns Â + V."""
    L = len(r)
    delta = [r[t] + gamma * (v[t + 1] if t + 1 < L else 0.0) - v[t] for t in range(L)]
    a = []
    for t in range(L):
        total = 0.0
        for l in range(L - t):
            total += (gamma * lam) ** l * delta[t + l]
        a.append(total)
    return a, [a[t] + v[t] for t in range(L)]


def prefix_mask(lengths: list[int], T: int) -> torch.Tensor:
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


def padded(rows: list[list[float]], T: int, fill: float = 0.0) -> torch.Tensor:
    return torch.tensor([row + [fill] * (T - len(row)) for row in rows], dtype=F64)


def random_batch(seed: int, B: int = 8, T: int = 9):
    """Lengths (always including 0 and T), outcome rewards [B], values, token rewards and kl [B, T]."""
    rng = random.Random(seed)
    lengths = [0, T] + [rng.randint(0, T) for _ in range(B - 2)]
    rng.shuffle(lengths)
    R = [rng.choice((0.0, 1.0, rng.uniform(-2, 2))) for _ in range(B)]
    v = [[rng.uniform(-1.5, 1.5) for _ in range(T)] for _ in range(B)]
    r = [[rng.uniform(-1, 1) for _ in range(T)] for _ in range(B)]
    kl = [[rng.uniform(-0.3, 0.6) for _ in range(T)] for _ in range(B)]
    return lengths, R, v, r, kl


def close(actual: torch.Tensor, expected, **tol) -> None:
    exp = expected if isinstance(expected, torch.Tensor) else torch.tensor(expected, dtype=F64)
    torch.testing.assert_close(actual, exp.to(actual.dtype), **(tol or TOL))


# ----------------------------------------------------------------------------------------------
# GAE against the oracle
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gamma,lam", GAMMA_LAM)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_advantages_match_double_loop_oracle(gamma, lam, seed):
    T = 9
    lengths, _, v, r, _ = random_batch(seed, T=T)
    mask = prefix_mask(lengths, T)
    a, ret = gae_advantages(torch.tensor(r, dtype=F64), torch.tensor(v, dtype=F64), mask, gamma=gamma, lam=lam)
    exp = [oracle_gae(r[b][:n], v[b][:n], gamma, lam) for b, n in enumerate(lengths)]
    close(a, padded([e[0] for e in exp], T))
    close(ret, padded([e[1] for e in exp], T))


@pytest.mark.parametrize("gamma,lam", GAMMA_LAM)
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_registered_gae_unwhitened_matches_oracle(gamma, lam, beta):
    P, G, T = 3, 4, 7
    lengths, R, v, _, kl = random_batch(10, B=P * G, T=T)
    mask = prefix_mask(lengths, T)
    kw = dict(kl=torch.tensor(kl, dtype=F64), kl_coef=beta) if beta else {}
    a, ret = gae(torch.tensor(R, dtype=F64).view(P, G), values=torch.tensor(v, dtype=F64), loss_mask=mask,
                 gamma=gamma, lam=lam, whiten=False, **kw)
    exp = [oracle_gae(oracle_token_rewards(R[b], n, kl[b], beta), v[b][:n], gamma, lam) for b, n in enumerate(lengths)]
    close(a, padded([e[0] for e in exp], T))
    close(ret, padded([e[1] for e in exp], T))


# ----------------------------------------------------------------------------------------------
# Closed forms
# ----------------------------------------------------------------------------------------------

def test_gamma_lam_one_outcome_only_is_reward_minus_value_and_returns_are_the_reward():
    T = 6
    lengths, R, v, _, _ = random_batch(3, B=6, T=T)
    mask = prefix_mask(lengths, T)
    V = torch.tensor(v, dtype=F64)
    Rt = torch.tensor(R, dtype=F64)
    a, ret = gae(Rt.view(2, 3), values=V, loss_mask=mask, whiten=False)     # γ = λ = 1 by default
    close(a, torch.where(mask, Rt[:, None] - V, 0.0))                         # Â_t = R − V_t
    close(ret, torch.where(mask, Rt[:, None].expand(-1, T), 0.0))             # returns = R at every valid t


def test_gamma_lam_one_with_kl_returns_are_reward_minus_kl_to_go():
    T = 5
    lengths, R, v, _, kl = random_batch(4, B=4, T=T)
    mask = prefix_mask(lengths, T)
    K = torch.where(mask, torch.tensor(kl, dtype=F64), 0.0)
    _, ret = gae(torch.tensor(R, dtype=F64).view(2, 2), values=torch.tensor(v, dtype=F64), loss_mask=mask,
                 kl=torch.tensor(kl, dtype=F64), kl_coef=0.1, whiten=False)
    kl_to_go = K.flip(-1).cumsum(-1).flip(-1)                                 # Σ_{s>=t} kl_s
    close(ret, torch.where(mask, torch.tensor(R, dtype=F64)[:, None] - 0.1 * kl_to_go, 0.0))


@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.0])
def test_lambda_zero_is_one_step_td_error(gamma):
    T = 8
    lengths, _, v, r, _ = random_batch(5, T=T)
    mask = prefix_mask(lengths, T)
    V = torch.where(mask, torch.tensor(v, dtype=F64), 0.0)
    r_t = torch.where(mask, torch.tensor(r, dtype=F64), 0.0)
    v_next = torch.cat([V[:, 1:], torch.zeros(V.shape[0], 1, dtype=F64)], -1)   # 0 past the end (prefix mask)
    a, ret = gae_advantages(r_t, V, mask, gamma=gamma, lam=0.0)
    close(a, torch.where(mask, r_t + gamma * v_next - V, 0.0))
    close(ret, torch.where(mask, r_t + gamma * v_next, 0.0))                 # TD(0) target


def test_hand_example():
    # r = [0, 1], V = [0.5, 0.25], γ = λ = 1: δ = [0 + 0.25 − 0.5, 1 − 0.25] = [−0.25, 0.75], Â = [0.5, 0.75]
    a, ret = gae_advantages(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.25]]), torch.tensor([[True, True]]))
    close(a, [[0.5, 0.75]])
    close(ret, [[1.0, 1.0]])
    # γ = 0.5, λ = 0.5: δ = [0 + 0.125 − 0.5, 0.75] = [−0.375, 0.75], Â_0 = −0.375 + 0.25·0.75 = −0.1875
    a, _ = gae_advantages(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.25]]), torch.tensor([[True, True]]),
                          gamma=0.5, lam=0.5)
    close(a, [[-0.1875, 0.75]])


# ----------------------------------------------------------------------------------------------
# Masked positions are never read, and are exactly 0 in the outputs
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("garbage", [NAN, 1e300, -math.inf])
@pytest.mark.parametrize("whiten", [False, True])
def test_garbage_at_masked_positions_changes_nothing(garbage, whiten):
    P, G, T = 2, 3, 6
    lengths, R, v, _, kl = random_batch(6, B=P * G, T=T)
    mask = prefix_mask(lengths, T)
    V, K = torch.tensor(v, dtype=F64), torch.tensor(kl, dtype=F64)
    Rt = torch.tensor(R, dtype=F64)
    Vg, Kg = V.masked_fill(~mask, garbage), K.masked_fill(~mask, garbage)
    Rg = torch.where(mask.any(-1), Rt, garbage)                              # the reward of an empty row is unused
    kw = dict(gamma=0.97, lam=0.9, kl_coef=0.2, whiten=whiten)
    a, ret = gae(Rt.view(P, G), values=V.masked_fill(~mask, 0.0), loss_mask=mask, kl=K.masked_fill(~mask, 0.0), **kw)
    if garbage == garbage and abs(garbage) < math.inf:                       # finite: rewards [P, G] must be finite
        ag, retg = gae(Rg.view(P, G), values=Vg, loss_mask=mask, kl=Kg, **kw)
    else:
        ag, retg = gae(Rt.view(P, G), values=Vg, loss_mask=mask, kl=Kg, **kw)
    assert torch.equal(ag, a) and torch.equal(retg, ret)
    assert bool(torch.isfinite(ag).all()) and bool((ag[~mask] == 0).all()) and bool((retg[~mask] == 0).all())

    # the building blocks: token rewards and values with garbage
    r_tok = token_rewards(Rg, mask, kl=Kg, kl_coef=0.2)
    assert bool((r_tok[~mask] == 0).all()) and bool(torch.isfinite(r_tok).all())
    a1, ret1 = gae_advantages(r_tok.masked_fill(~mask, garbage), Vg, mask, gamma=0.97, lam=0.9)
    a0, ret0 = gae_advantages(r_tok, V, mask, gamma=0.97, lam=0.9)
    assert torch.equal(a1, a0) and torch.equal(ret1, ret0)
    assert bool((a1[~mask] == 0).all()) and bool((ret1[~mask] == 0).all())


def test_a_hole_in_the_mask_is_skipped():
    # Documented: a masked position inside a row is transparent, as if the token were not there.
    r = torch.tensor([[0.1, 9.0, -0.2, 1.0]], dtype=F64)
    v = torch.tensor([[0.3, NAN, 0.7, 0.4]], dtype=F64)
    mask = torch.tensor([[True, False, True, True]])
    a, ret = gae_advantages(r, v, mask, gamma=0.9, lam=0.8)
    ea, er = oracle_gae([0.1, -0.2, 1.0], [0.3, 0.7, 0.4], 0.9, 0.8)
    close(a, [[ea[0], 0.0, ea[1], ea[2]]])
    close(ret, [[er[0], 0.0, er[1], er[2]]])
    close(token_rewards(torch.tensor([2.0]), torch.tensor([[True, True, False, True, False]])),
          [[0.0, 0.0, 0.0, 2.0, 0.0]])                                      # the last True gets the reward


# ----------------------------------------------------------------------------------------------
# token_rewards
# ----------------------------------------------------------------------------------------------

def test_token_rewards_outcome_on_last_valid_token_and_kl_everywhere_valid():
    mask = prefix_mask([3, 1, 0, 4], 4)
    R = torch.tensor([1.0, -0.5, 7.0, 2.0], dtype=F64)
    close(token_rewards(R, mask), [[0, 0, 1.0, 0], [-0.5, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 2.0]])
    kl = torch.arange(16, dtype=F64).view(4, 4) / 10
    out = token_rewards(R, mask, kl=kl, kl_coef=0.5)
    close(out, [[0.0, -0.05, 1.0 - 0.1, 0.0],
                [-0.5 - 0.2, 0.0, 0.0, 0.0],
                [0.0, 0.0, 0.0, 0.0],                                        # length-0 row: all zeros
                [-0.6, -0.65, -0.7, 2.0 - 0.75]])
    close(token_rewards(R, mask, kl=kl, kl_coef=0.0), token_rewards(R, mask))   # kl given, coef 0: ignored
    assert token_rewards(R.float(), mask).dtype == torch.float32


def test_token_rewards_errors():
    mask = prefix_mask([2, 1], 3)
    R = torch.tensor([1.0, 0.0], dtype=F64)
    with pytest.raises(ValueError, match=r"kl_coef = 0.1 > 0 needs kl"):
        token_rewards(R, mask, kl_coef=0.1)
    with pytest.raises(ValueError, match=r"kl_coef must be a finite number >= 0, got -0.1"):
        token_rewards(R, mask, kl=torch.zeros(2, 3), kl_coef=-0.1)
    with pytest.raises(ValueError, match=r"kl must be a float tensor of the loss_mask's shape \[B, T\] = \(2, 3\), "
                                         r"got torch.float32 tensor of shape \(2, 2\)"):
        token_rewards(R, mask, kl=torch.zeros(2, 2), kl_coef=0.1)
    with pytest.raises(ValueError, match=r"kl must be finite where loss_mask is True; kl\[1, 0\] = nan"):
        token_rewards(R, mask, kl=torch.tensor([[0.0, 0.0, NAN], [NAN, 0.0, 0.0]]), kl_coef=0.1)
    with pytest.raises(ValueError, match=r"rewards must be a float tensor of shape \[B\] = \(2,\)"):
        token_rewards(R.view(2, 1), mask)
    with pytest.raises(ValueError, match=r"rewards must be a float tensor"):
        token_rewards(torch.tensor([1, 0]), mask)
    with pytest.raises(ValueError, match=r"rewards must be finite for rows with a valid token; rewards\[1\] = inf"):
        token_rewards(torch.tensor([0.0, math.inf]), mask)
    token_rewards(torch.tensor([0.0, math.inf]), prefix_mask([2, 0], 3))          # empty row: its reward is unused
    with pytest.raises(ValueError, match=r"loss_mask must be a bool tensor \[B, T\]"):
        token_rewards(R, mask.float())


# ----------------------------------------------------------------------------------------------
# masked_whiten
# ----------------------------------------------------------------------------------------------

def test_masked_whiten_moments_and_masked_zeros():
    lengths, _, v, _, _ = random_batch(7, B=6, T=8)
    mask = prefix_mask(lengths, 8)
    x = torch.tensor(v, dtype=F64).masked_fill(~mask, NAN)
    out = masked_whiten(x, mask, eps=0.0)
    valid = out[mask]
    assert abs(float(valid.mean())) < 1e-13
    close(valid.var(correction=1), torch.tensor(1.0, dtype=F64))
    assert bool((out[~mask] == 0).all())
    # against the formula with the unbiased variance over valid tokens only
    xv = x[mask]
    close(valid, (xv - xv.mean()) / torch.sqrt(xv.var(correction=1) + 0.0))
    close(masked_whiten(x, mask)[mask], (xv - xv.mean()) / torch.sqrt(xv.var(correction=1) + 1e-8))


def test_masked_whiten_ignores_extra_padding_columns():
    lengths, _, v, _, _ = random_batch(8, B=5, T=6)
    mask = prefix_mask(lengths, 6)
    x = torch.tensor(v, dtype=F64)
    wide_x = torch.cat([x, torch.full((5, 3), 1e6, dtype=F64)], -1)
    wide_mask = torch.cat([mask, torch.zeros(5, 3, dtype=torch.bool)], -1)
    wide = masked_whiten(wide_x, wide_mask)
    close(wide[:, :6], masked_whiten(x, mask), rtol=1e-13, atol=1e-13)
    assert bool((wide[:, 6:] == 0).all())


def test_masked_whiten_fewer_than_two_tokens():
    x = torch.tensor([[3.0, 5.0], [NAN, 7.0]], dtype=F64)
    one = torch.tensor([[False, True], [False, False]])
    assert torch.equal(masked_whiten(x, one), torch.zeros(2, 2, dtype=F64))      # x − mean = 0 at the one token
    assert torch.equal(masked_whiten(x, torch.zeros(2, 2, dtype=torch.bool)), torch.zeros(2, 2, dtype=F64))
    close(masked_whiten(torch.tensor([[1.0, 3.0, 9.0]]), torch.tensor([[True, True, False]])),
          [[-math.sqrt(0.5), math.sqrt(0.5), 0.0]], rtol=1e-6, atol=1e-6)          # μ = 2, σ² = 2 (float32)
    with pytest.raises(ValueError, match=r"eps must be a finite number >= 0"):
        masked_whiten(x, one, eps=-1.0)
    with pytest.raises(ValueError, match=r"x must be finite where loss_mask is True; x\[1, 0\] = nan"):
        masked_whiten(x, torch.ones(2, 2, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------
# The registry entry
# ----------------------------------------------------------------------------------------------

def test_gae_spec_and_exports():
    s = spec("gae")
    assert s.needs_values is True and s.fn is gae and not s.centred and not s.takes_k
    assert not s.needs_reference_samples and s.grad_scale.startswith("per token")
    assert not any(spec(n).needs_values for n in adv.names() if n != "gae")
    for name in ("gae", "token_rewards", "gae_advantages", "masked_whiten"):
        assert name in adv.__all__
    assert "value_loss" in losses.__all__ and "value_loss" not in losses.names()
    assert gae.__doc__.splitlines()[0].startswith("PPO's generalised advantage estimation over response tokens.")


def test_gae_shapes_whitening_dtype_and_prompt_major_rows():
    P, G, T = 2, 3, 5
    lengths, R, v, _, _ = random_batch(9, B=P * G, T=T)
    mask = prefix_mask(lengths, T)
    V = torch.tensor(v, dtype=torch.float32)
    Rt = torch.tensor(R, dtype=torch.float32).view(P, G)
    a_raw, ret_raw = gae(Rt, values=V, loss_mask=mask, gamma=0.9, lam=0.95, whiten=False)
    a_w, ret_w = gae(Rt, values=V, loss_mask=mask, gamma=0.9, lam=0.95)
    for t in (a_raw, ret_raw, a_w, ret_w):
        assert t.shape == (P * G, T) and t.dtype == torch.float32 and not t.requires_grad
    assert torch.equal(ret_w, ret_raw)                                       # returns are never whitened
    close(a_w, masked_whiten(a_raw.double(), mask).float(), rtol=1e-6, atol=1e-6)
    close(ret_raw, torch.where(mask, a_raw + V, 0.0), rtol=1e-6, atol=1e-6)
    assert abs(float(a_w[mask].double().mean())) < 1e-6
    # prompt-major: row p·G + g holds prompt p's sample g
    full = torch.ones(4, 2, dtype=torch.bool)
    _, ret = gae(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64), values=torch.zeros(4, 2, dtype=F64),
                 loss_mask=full, whiten=False)
    close(ret, [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])


def test_gae_errors_name_the_shapes():
    mask = torch.ones(6, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"gae: rewards of shape \[P, G\] = \(2, 3\) give B = P·G = 6 responses, "
                                         r"but values has shape \(5, 4\): expected \[B, T\] = \[6, T\]"):
        gae(torch.zeros(2, 3), values=torch.zeros(5, 4), loss_mask=mask[:5])
    with pytest.raises(ValueError, match=r"gae: loss_mask has shape \(6, 3\), values has \(6, 4\): they must match"):
        gae(torch.zeros(2, 3), values=torch.zeros(6, 4), loss_mask=mask[:, :3])
    with pytest.raises(ValueError, match=r"gae: values must be a float tensor \[B, T\], "
                                         r"got torch.float32 tensor of shape \(6,\)"):
        gae(torch.zeros(2, 3), values=torch.zeros(6), loss_mask=mask)
    with pytest.raises(ValueError, match=r"gae: rewards must have shape \[P, G\]"):
        gae(torch.zeros(6), values=torch.zeros(6, 4), loss_mask=mask)
    with pytest.raises(ValueError, match=r"gae: kl_coef = 0.5 > 0 needs kl"):
        gae(torch.zeros(2, 3), values=torch.zeros(6, 4), loss_mask=mask, kl_coef=0.5)
    with pytest.raises(ValueError, match=r"gae: values must be finite where loss_mask is True; values\[0, 2\] = nan"):
        values = torch.zeros(6, 4)
        values[0, 2] = NAN
        gae(torch.zeros(2, 3), values=values, loss_mask=mask)
    with pytest.raises(ValueError, match=r"gae: gamma must be a number in \[0, 1\], got 1.5"):
        gae(torch.zeros(2, 3), values=torch.zeros(6, 4), loss_mask=mask, gamma=1.5)
    with pytest.raises(ValueError, match=r"gae: lam must be a number in \[0, 1\], got -0.1"):
        gae(torch.zeros(2, 3), values=torch.zeros(6, 4), loss_mask=mask, lam=-0.1)


def test_gae_advantages_errors():
    mask = torch.ones(2, 3, dtype=torch.bool)
    z = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"gae_advantages: values must be a float tensor of the loss_mask's shape "
                                         r"\[B, T\] = \(2, 3\), got torch.float64 tensor of shape \(3, 2\)"):
        gae_advantages(z, z.t(), mask)
    with pytest.raises(ValueError, match=r"gae_advantages: token_rewards must be a float tensor"):
        gae_advantages(z.long(), z, mask)
    with pytest.raises(ValueError, match=r"gamma must be a number in \[0, 1\], got True"):
        gae_advantages(z, z, mask, gamma=True)
    with pytest.raises(ValueError, match=r"lam must be a number in \[0, 1\], got nan"):
        gae_advantages(z, z, mask, lam=NAN)


# ----------------------------------------------------------------------------------------------
# value_loss: hand-worked clipping cases, values and gradients
# ----------------------------------------------------------------------------------------------

# (V, V_old, R, expected loss, expected ∂L/∂V, clipped term wins), ε = 0.5
VALUE_CASES = [
    # inside the band: V_c = V, both terms ½(0.3 − 1)² = 0.245; gradient V − R = −0.7
    (0.3, 0.0, 1.0, 0.245, -0.7, False),
    # past V_old + ε, overshooting R: unclipped ½·1² = 0.5 > clipped ½(0.5 − 1)² = 0.125 -> 0.5, grad 1
    (2.0, 0.0, 1.0, 0.5, 1.0, False),
    # below V_old − ε, away from R: unclipped ½·2² = 2 > clipped ½(−0.5 − 1)² = 1.125 -> 2, grad −2
    (-1.0, 0.0, 1.0, 2.0, -2.0, False),
    # past V_old + ε towards R: unclipped ½·0.2² = 0.02 < clipped ½(0.5 − 1)² = 0.125 -> 0.125, grad 0
    (0.8, 0.0, 1.0, 0.125, 0.0, True),
    # V_old = 2, R = 0, V = 0.5: unclipped ½·0.25 = 0.125 < clipped ½·1.5² = 1.125 -> 1.125, grad 0
    (0.5, 2.0, 0.0, 1.125, 0.0, True),
    # V_old = 0, R = −1, V = 0.9: unclipped ½·1.9² = 1.805 > clipped ½·1.5² = 1.125 -> 1.805, grad 1.9
    (0.9, 0.0, -1.0, 1.805, 1.9, False),
]


@pytest.mark.parametrize("V,V_old,R,loss,grad,clipped", VALUE_CASES)
def test_value_loss_clipping_by_hand(V, V_old, R, loss, grad, clipped):
    v = torch.tensor([[V, 5.0]], dtype=F64, requires_grad=True)
    old = torch.tensor([[V_old, NAN]], dtype=F64)
    ret = torch.tensor([[R, math.inf]], dtype=F64)
    mask = torch.tensor([[True, False]])
    out, stats = value_loss(v, old, ret, mask, clip_eps=0.5)
    out.sum().backward()
    close(out.detach(), [[loss, 0.0]])
    close(v.grad, [[grad, 0.0]])                                              # masked position: no gradient
    close(stats["vf_clipped"], [[float(clipped), 0.0]], rtol=0, atol=0)
    close(stats["vf_error"], [[V - R, 0.0]])
    assert not stats["vf_error"].requires_grad


def test_value_loss_without_clipping_is_the_plain_loss():
    for V, V_old, R, *_ in VALUE_CASES:
        v = torch.tensor([[V]], dtype=F64, requires_grad=True)
        out, stats = value_loss(v, torch.tensor([[V_old]], dtype=F64), torch.tensor([[R]], dtype=F64),
                                torch.tensor([[True]]), clip_eps=None)
        out.sum().backward()
        close(out.detach(), [[0.5 * (V - R) ** 2]])
        close(v.grad, [[V - R]])
        assert float(stats["vf_clipped"].sum()) == 0


def test_value_loss_masked_nan_is_harmless_and_aggregates_with_token_mean():
    v = torch.tensor([[0.3, 2.0, NAN], [0.8, NAN, NAN]], dtype=F64, requires_grad=True)
    old = torch.tensor([[0.0, 0.0, NAN], [0.0, 1.0, 2.0]], dtype=F64)
    ret = torch.tensor([[1.0, 1.0, 3.0], [1.0, NAN, 0.0]], dtype=F64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out, stats = value_loss(v, old, ret, mask)                               # default ε = 0.5
    total = aggregate(out, mask, "token_mean")
    total.backward()
    close(total.detach(), torch.tensor((0.245 + 0.5 + 0.125) / 3, dtype=F64))
    close(v.grad, [[-0.7 / 3, 1.0 / 3, 0.0], [0.0, 0.0, 0.0]])
    assert bool(torch.isfinite(out).all()) and bool((out[~mask] == 0).all())
    assert bool(torch.isfinite(stats["vf_error"]).all())
    close(stats["vf_clipped"], [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], rtol=0, atol=0)


def test_value_loss_errors():
    z = torch.zeros(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"value_loss: values must be a float tensor \[B, T\]"):
        value_loss(torch.zeros(6), z, z, mask)
    with pytest.raises(ValueError, match=r"value_loss: loss_mask must be a bool tensor"):
        value_loss(z, z, z, mask.float())
    with pytest.raises(ValueError, match=r"value_loss: loss_mask has shape \(2, 2\), values has \(2, 3\)"):
        value_loss(z, z, z, mask[:, :2])
    with pytest.raises(ValueError, match=r"value_loss: returns must be a float tensor of shape \(2, 3\), "
                                         r"got torch.float32 tensor of shape \(3, 2\)"):
        value_loss(z, z, z.t(), mask)
    with pytest.raises(ValueError, match=r"value_loss: old_values is not finite at \[1, 2\]"):
        value_loss(z, torch.tensor([[0.0, 0, 0], [0, 0, NAN]]), z, mask)
    with pytest.raises(ValueError, match=r"value_loss: loss_mask selects no token"):
        value_loss(z, z, z, torch.zeros(2, 3, dtype=torch.bool))
    for bad in (0.0, -0.2, math.inf, True):
        with pytest.raises(ValueError, match=r"value_loss: clip_eps must be a finite number > 0 or None"):
            value_loss(z, z, z, mask, clip_eps=bad)
