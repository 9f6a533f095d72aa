"""Slow, independent reference implementations of the policy losses and aggregation (test oracles).

Plain Python floats and loops, written from ALGORITHMS.md §0.2, §0.4, §3, §4.7–4.9 and the loss
docstrings; nothing is imported from ``rlvr``. Inputs are nested lists (``tensor.tolist()``).

Every loss here has a *diagonal* gradient: L[b][t] depends on the current policy only through
lp[b][t] (ASymPO's coefficient 1/sg(ℓ̄_b) is a stop-gradient constant), so the closed form is one
number per token, G[b][t] = ∂L[b][t]/∂lp[b][t]. The gradient of an aggregated loss is then
G[b][t] · W[b][t], with W the aggregation weight of token (b, t) (``aggregation_weights``).

Conventions: ``mask`` is a list of lists of bool; ``adv`` is a list of B floats (one per response)
or a list of lists (per token); masked tokens get L = G = 0.
"""

from __future__ import annotations

import math
from typing import Sequence

LOG_RATIO_CLAMP = 20.0


def _adv_at(adv, b: int, t: int) -> float:
    row = adv[b]
    return float(row[t]) if isinstance(row, (list, tuple)) else float(row)


def _ratio(lp: float, old: float) -> float:
    return math.exp(min(max(lp - old, -LOG_RATIO_CLAMP), LOG_RATIO_CLAMP))


def ppo_token(lp: float, old: float, a: float, *, eps_low: float, eps_high: float,
              dual_clip: float | None) -> tuple[float, float]:
    """(loss, ∂loss/∂lp) of one token of PPO's clipped surrogate, by case analysis.

    ρ = exp(lp − old), dρ/dlp = ρ.
      A > 0: L = −A·min(ρ, 1+ε_high)          -> grad −A·ρ if ρ < 1+ε_high, else 0 (clipped high)
      A < 0: L = |A|·max(ρ, 1−ε_low)           -> grad −A·ρ if ρ > 1−ε_low,  else 0 (clipped low)
             dual clip c: L = min(L, |A|·c)    -> grad 0 where |A|·c is the smaller one
      A = 0: L = 0, grad 0.
    """
    rho = _ratio(lp, old)
    if a > 0:
        if rho < 1 + eps_high:
            return -a * rho, -a * rho
        return -a * (1 + eps_high), 0.0
    if a < 0:
        if rho > 1 - eps_low:
            value, grad = -a * rho, -a * rho
        else:
            value, grad = -a * (1 - eps_low), 0.0
        if dual_clip is not None and value > -a * dual_clip:
            return -a * dual_clip, 0.0
        return value, grad
    return 0.0, 0.0


def mean_token_nll(lp_row: Sequence[float], mask_row: Sequence[bool]) -> float:
    """ℓ̄ = −(1/|o|) Σ_t lp_t over the valid tokens; 0 for an empty row."""
    vals = [lp for lp, m in zip(lp_row, mask_row) if m]
    return -math.fsum(vals) / len(vals) if vals else 0.0


def per_token(name: str, lp, mask, adv, old=None, behav=None, **kw) -> tuple[list[list[float]], list[list[float]]]:
    """(L, G): per-token loss and its closed-form derivative w.r.t. the token's own log-prob."""
    B, T = len(lp), len(lp[0])
    L = [[0.0] * T for _ in range(B)]
    G = [[0.0] * T for _ in range(B)]
    for b in range(B):
        nll_b = mean_token_nll(lp[b], mask[b])
        for t in range(T):
            if not mask[b][t]:
                continue
            x, a = float(lp[b][t]), _adv_at(adv, b, t)
            if name in ("reinforce", "current_policy"):
                # L = −A·lp  ->  ∂L/∂lp = −A
                v, g = -a * x, -a
            elif name == "spo":
                c = kw.get("neg_scale", 0.5) if a < 0 else 1.0
                v, g = -c * a * x, -c * a
            elif name == "asympo":
                c = 1.0 / max(nll_b, kw.get("eps", 1e-6))          # sg: a constant for the gradient
                v, g = -c * a * x, -c * a
            elif name == "cispo":
                rho = _ratio(x, float(old[b][t]))
                lo = kw.get("clip_eps_low", None)
                w = min(rho, 1 + kw.get("clip_eps_high", 0.3))
                if lo is not None:
                    w = max(w, 1 - lo)
                v, g = -w * a * x, -w * a                        # weight is stop-gradient
            elif name in ("ppo_clip", "decoupled_ppo"):
                v, g = ppo_token(x, float(old[b][t]), a, eps_low=kw.get("clip_eps_low", 0.2),
                                 eps_high=kw.get("clip_eps_high", 0.2), dual_clip=kw.get("dual_clip"))
                if name == "decoupled_ppo":
                    w = math.exp(min(max(float(old[b][t]) - float(behav[b][t]), -20.0), 20.0))
                    cap = kw.get("behavior_weight_cap")
                    if cap is not None and w > cap:
                        v, g = 0.0, 0.0                            # token dropped
                    else:
                        v, g = w * v, w * g
            else:
                raise KeyError(name)
            L[b][t], G[b][t] = v, g
    return L, G


def _group_tokens(mask, group_size: int) -> list[int]:
    """Valid tokens of each row's group, the rows b with the same b // group_size (prompt-major groups)."""
    tokens = [sum(1 for m in row if m) for row in mask]
    return [sum(tokens[(b // group_size) * group_size:(b // group_size + 1) * group_size]) for b in range(len(mask))]


def normalizer(masks: Sequence, mode: str, max_tokens: int | None = None, group_size: int = 2) -> float:
    """The step normaliser of ALGORITHMS §0.2, counted by hand over a list of masks (group modes: rows in
    consecutive groups of ``group_size`` within each mask)."""
    n = 0
    for mask in masks:
        if mode == "group_mean_token_mean":
            n += len({b // group_size for b, row in enumerate(mask) if any(row)})
            continue
        for row in mask:
            if mode == "token_mean":
                n += sum(1 for m in row if m)
            elif mode in ("seq_mean_token_mean", "seq_mean_token_sum"):
                n += 1 if any(row) else 0
            elif mode == "seq_mean_token_sum_norm":
                n += max_tokens if max_tokens is not None else max(len(mm[0]) for mm in masks)
            else:
                raise KeyError(mode)
    return float(n)


def aggregation_weights(mask, mode: str, norm: float | None = None, group_size: int = 2) -> list[list[float]]:
    """W[b][t] = ∂ aggregate / ∂ L[b][t] (0 at masked tokens); group modes: groups of ``group_size`` rows."""
    if norm is None:
        norm = normalizer([mask], mode, group_size=group_size)
    W = []
    group_tokens = _group_tokens(mask, group_size)
    for b, row in enumerate(mask):
        n_row = sum(1 for m in row if m)
        if mode == "seq_mean_token_mean":
            W.append([1.0 / (n_row * norm) if m else 0.0 for m in row])
        elif mode == "group_mean_token_mean":
            W.append([1.0 / (group_tokens[b] * norm) if m else 0.0 for m in row])
        else:
            W.append([1.0 / norm if m else 0.0 for m in row])
    return W


def aggregate(L, mask, mode: str, norm: float | None = None) -> float:
    """The scalar loss by loops: Σ_{b,t} W[b][t]·L[b][t]."""
    W = aggregation_weights(mask, mode, norm)
    return math.fsum(W[b][t] * L[b][t] for b in range(len(L)) for t in range(len(L[0])) if mask[b][t])
