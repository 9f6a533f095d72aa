"""Policy losses: ``PolicyLossInputs -> (per-token loss [B, T], stats)``, their registry, and aggregation.

B sequences (responses, B = P·G in prompt-major order), T padded response length. One mask
convention everywhere: ``loss_mask`` is a bool [B, T] tensor, True where a token counts (response
tokens up to and including EOS), built by the caller from the sampler's lengths.

A loss returns the per-token loss L[b, t] (exactly 0 where ``loss_mask`` is False) and a dict of
detached statistics, each [B, T] (per token: reduce with the mask) or [B] (per response). The
loop turns L into a scalar with ``aggregate``; the normaliser of ``aggregate`` is computed once per
optimiser step over every micro-batch (``loss_normalizer``) and passed in, so splitting a batch
into micro-batches or accumulation steps never changes the gradient.

Values at masked positions (padding, prompt tokens, even NaN or ±inf) change neither a loss value
nor a gradient: every input is passed through ``torch.where(loss_mask, x, 0)`` before any
arithmetic, and ``torch.where`` sends no gradient to the branch it did not select.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from rlvr.registry import Registry

Tensor = torch.Tensor
Stats = dict[str, Tensor]
LossFn = Callable[..., tuple[Tensor, Stats]]

__all__ = [
    "PolicyLossInputs", "LossSpec", "register", "get", "spec", "names", "nll_by_advantage_sign",
    "ppo_clip", "reinforce", "cispo", "decoupled_ppo", "current_policy", "spo", "asympo",
    "AGGREGATIONS", "aggregate", "loss_normalizer", "group_token_counts", "value_loss",
]

LOG_RATIO_CLAMP = 20.0  # |log π/π_old| is clamped here before exp (as verl's PPO losses do): no overflow to inf


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class PolicyLossInputs:
    """Everything a policy loss may read, validated once.

    logprobs:          [B, T] float, log π_θ of the sampled tokens under the current policy (with grad).
    advantages:        [B] (one per response) or [B, T] (per token) float.
    loss_mask:         [B, T] bool, True = the token counts.
    old_logprobs:      [B, T] | None, the trainer's policy when the batch was made (π_old; AReaL's
                       proximal policy π_prox). Needed by ratio-based losses.
    behavior_logprobs: [B, T] | None, the rollout engine's log-probs (π_b), for stale samples.
    ref_logprobs:      [B, T] | None, the frozen reference model's log-probs (for KL terms).
    """

    logprobs: Tensor
    advantages: Tensor
    loss_mask: Tensor
    old_logprobs: Tensor | None = None
    behavior_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None

    def __post_init__(self) -> None:
        lp, mask = self.logprobs, self.loss_mask
        if not isinstance(lp, Tensor) or lp.dim() != 2 or not lp.is_floating_point():
            raise ValueError(f"PolicyLossInputs.logprobs must be a float tensor [B, T], got {_describe(lp)}")
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise ValueError("PolicyLossInputs.loss_mask must be a bool tensor [B, T] (True = the token counts), "
                             f"got {_describe(mask)}")
        if mask.shape != lp.shape:
            raise ValueError(f"PolicyLossInputs.loss_mask has shape {tuple(mask.shape)}, "
                             f"logprobs has {tuple(lp.shape)}: they must match")
        if not mask.any():
            raise ValueError("PolicyLossInputs.loss_mask selects no token: there is nothing to train on")
        for name in ("old_logprobs", "behavior_logprobs", "ref_logprobs"):
            x = getattr(self, name)
            if x is None:
                continue
            if not isinstance(x, Tensor) or not x.is_floating_point() or x.shape != lp.shape:
                raise ValueError(f"PolicyLossInputs.{name} must be a float tensor of shape {tuple(lp.shape)}, "
                                 f"got {_describe(x)}")
        adv = self.advantages
        if not isinstance(adv, Tensor) or not adv.is_floating_point() or adv.shape not in (lp.shape[:1], lp.shape):
            raise ValueError(f"PolicyLossInputs.advantages must be a float tensor of shape [B]={tuple(lp.shape[:1])} "
                             f"or [B, T]={tuple(lp.shape)}, got {_describe(adv)}")
        for name in ("logprobs", "advantages", "old_logprobs", "behavior_logprobs", "ref_logprobs"):
            x = getattr(self, name)
            if x is not None:
                _check_finite_where_valid(name, x, mask)

    def token_advantages(self) -> Tensor:
        """[B, T] advantages (a [B] input is broadcast over tokens), 0 at masked positions, no grad."""
        adv = self.advantages.detach()
        if adv.dim() == 1:
            adv = adv[:, None].expand_as(self.logprobs)
        return _valid(adv, self.loss_mask)


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _check_finite_where_valid(name: str, x: Tensor, mask: Tensor) -> None:
    m = mask if x.shape == mask.shape else mask.any(-1)
    bad = m & ~torch.isfinite(x.detach())
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"PolicyLossInputs.{name} is not finite at {list(idx)} (a position the loss_mask "
                         f"selects): {x.detach()[idx].item()}")


def _valid(x: Tensor, mask: Tensor) -> Tensor:
    """x where the token counts, exactly 0 elsewhere (no value and no gradient leaks from masked positions)."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _require(x: PolicyLossInputs, field: str, loss: str) -> Tensor:
    value = getattr(x, field)
    if value is None:
        raise ValueError(f"loss {loss!r} needs PolicyLossInputs.{field}, which is None")
    return _valid(value.detach(), x.loss_mask)


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LossSpec:
    """A registered loss and what a training loop must know about it.

    needs_old_logprobs: the loss reads ``old_logprobs`` (π_old / π_prox); the loop computes them
        once per batch before its first update.
    needs_behavior_logprobs: the loss reads the sampler's ``behavior_logprobs``.
    default_aggregation: the aggregation the loss's paper uses (the config may override it).
    """

    name: str
    fn: LossFn
    needs_old_logprobs: bool = False
    needs_behavior_logprobs: bool = False
    default_aggregation: str = "token_mean"


_REGISTRY: Registry[LossSpec] = Registry("policy loss", LossSpec, decorator="rlvr.losses.register")
register = _REGISTRY.register  # decorator: register(name, **LossSpec facts)
spec = _REGISTRY.entry         # spec(name or its 'module:function' path) -> LossSpec


def get(name: str) -> LossFn:
    """The loss registered as ``name``; unknown names raise ValueError listing the valid ones."""
    return spec(name).fn


def names() -> list[str]:
    """Sorted names of the registered losses."""
    return _REGISTRY.names()


# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------

def _check_clip(clip_eps_low: float, clip_eps_high: float, dual_clip: float | None) -> None:
    if not 0 <= clip_eps_low < 1:
        raise ValueError(f"clip_eps_low must be in [0, 1), got {clip_eps_low}")
    if clip_eps_high < 0:
        raise ValueError(f"clip_eps_high must be >= 0, got {clip_eps_high}")
    if dual_clip is not None and dual_clip <= 1:
        raise ValueError(f"dual_clip must be > 1 (it bounds −A·ratio for A < 0), got {dual_clip}")


def _clipped_surrogate(log_ratio: Tensor, adv: Tensor, *, clip_eps_low: float, clip_eps_high: float,
                       dual_clip: float | None) -> tuple[Tensor, Stats]:
    """PPO's pessimistic clipped surrogate per token, and its clip indicators.   [B, T] -> [B, T]

    L = max(−A·ρ, −A·clip(ρ, 1−ε_low, 1+ε_high)); with dual clip c, for A < 0: L = min(L, −A·c).
    """
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_eps_low, 1 + clip_eps_high)
    loss = torch.maximum(unclipped, clipped)
    r = ratio.detach()
    stats = {
        "ratio": r,
        "clipped_low": ((adv < 0) & (r < 1 - clip_eps_low)).to(r.dtype),    # gradient cut: ratio below the band
        "clipped_high": ((adv > 0) & (r > 1 + clip_eps_high)).to(r.dtype),  # gradient cut: ratio above the band
    }
    stats["clip_frac"] = stats["clipped_low"] + stats["clipped_high"]      # either side: PPO's clip fraction
    if dual_clip is not None:
        bound = -adv * dual_clip
        stats["dual_clipped"] = ((adv < 0) & (loss.detach() > bound)).to(r.dtype)
        loss = torch.where(adv < 0, torch.minimum(loss, bound), loss)
    return loss, stats


def _mean_token_nll(logprobs: Tensor, mask: Tensor) -> Tensor:
    """ℓ̄_b = −(1/|o_b|) Σ_t log π(o_b,t): the response's mean token NLL under the current policy.   [B]"""
    return -logprobs.sum(-1) / mask.sum(-1).clamp_min(1).to(logprobs.dtype)


def nll_by_advantage_sign(x: PolicyLossInputs) -> tuple[Tensor, Tensor]:
    """The scale imbalance behind ASymPO: each response's mean token NLL and the sign of its advantage.

    Returns (ℓ̄ [B], sign [B]) with ℓ̄_b = −(1/|o_b|) Σ_t log π_θ(o_b,t) over valid tokens (detached) and
    sign_b ∈ {−1, 0, +1} of A_b (of the mean over valid tokens for [B, T] advantages). Pooling ℓ̄ over
    sign = +1 and sign = −1 responses gives the two means whose ratio ASymPO (arXiv 2606.03070) says
    grows on stale data: the naive loss A·ℓ̄ falls without bound by pushing negatives' NLL up.
    Example: A = (1, −1, 0), ℓ̄ = (0.5, 2.0, 1.0) -> positive mean 0.5, negative mean 2.0, ratio 4.
    """
    mask = x.loss_mask
    nll = _mean_token_nll(_valid(x.logprobs.detach(), mask), mask)
    adv = x.token_advantages()
    mean_adv = adv.sum(-1) / mask.sum(-1).clamp_min(1).to(adv.dtype)
    return nll, torch.sign(mean_adv)


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------

@register("ppo_clip", needs_old_logprobs=True, default_aggregation="seq_mean_token_mean")
def ppo_clip(x: PolicyLossInputs, *, clip_eps_low: float = 0.2, clip_eps_high: float = 0.2,
             dual_clip: float | None = None) -> tuple[Tensor, Stats]:
    """PPO clipped surrogate with asymmetric (clip-higher) and optional dual clipping.   -> [B, T]

    Equation: ρ = exp(log π_θ − log π_old);  L = max(−A·ρ, −A·clip(ρ, 1−ε_low, 1+ε_high)),
    and with dual clip c > 1, for A < 0: L = min(L, −A·c).
    Paper: Schulman et al. 2017, arXiv 1707.06347, Eq. 7; clip-higher from DAPO (arXiv 2503.14476);
    dual clip from Ye et al. 2020 (arXiv 1912.09729). This is GRPO's loss (arXiv 2402.03300, Eq. 3)
    without its KL term; for stale samples put the behaviour log-probs in ``old_logprobs``.
    Deviations: log ρ is clamped to [−20, 20] before exp, as in verl.
    Example: A = 1, ρ = 1.5, ε = 0.2 -> L = max(−1.5, −1.2) = −1.2 and zero gradient (clipped high).
    """
    _check_clip(clip_eps_low, clip_eps_high, dual_clip)
    mask = x.loss_mask
    old = _require(x, "old_logprobs", "ppo_clip")
    adv = x.token_advantages()
    loss, stats = _clipped_surrogate(_valid(x.logprobs, mask) - old, adv, clip_eps_low=clip_eps_low,
                                     clip_eps_high=clip_eps_high, dual_clip=dual_clip)
    return _valid(loss, mask), stats


@register("reinforce", default_aggregation="token_mean")
def reinforce(x: PolicyLossInputs) -> tuple[Tensor, Stats]:
    """Advantage-weighted negative log-likelihood (REINFORCE), the loss of AAPO and GPG.   -> [B, T]

    Equation: L_t = −A · log π_θ(o_t);  with token_mean aggregation, −Σ A_i log π(o_i,t) / Σ|o_i|.
    Paper: Williams 1992; as used by AAPO (arXiv 2505.14264) and GPG (arXiv 2504.02546, Eq. 4).
    Deviations: none. No ratio, no clip: it is exactly on-policy (use one update per batch).
    Example: A = 0.5, log π = −2 -> L = 1.0, ∂L/∂log π = −0.5.
    """
    lp = _valid(x.logprobs, x.loss_mask)
    return -x.token_advantages() * lp, {"nll": _mean_token_nll(lp.detach(), x.loss_mask)}


@register("cispo", needs_old_logprobs=True, default_aggregation="token_mean")
def cispo(x: PolicyLossInputs, *, clip_eps_high: float = 0.3, clip_eps_low: float | None = None) -> tuple[Tensor, Stats]:
    """CISPO: REINFORCE weighted by the clipped, stop-gradient importance ratio.   -> [B, T]

    Equation: L_t = −sg(clip(ρ_t, 1−ε_low, 1+ε_high)) · A · log π_θ(o_t),  ρ_t = π_θ/π_old.
    Paper: MiniMax-M1, arXiv 2506.13585 (Eqs. 4–5). Every token keeps a gradient, unlike PPO.
    Deviations: ε_low = None means no lower bound (the paper sets ε_low "very large"); the
    default ε_high = 0.3 is a typical value from secondary sources, not the paper's.
    Example: A = 1, ρ = 2, ε_high = 0.3 -> weight 1.3, ∂L/∂log π = −1.3.
    """
    if clip_eps_high < 0 or (clip_eps_low is not None and not 0 <= clip_eps_low <= 1):
        raise ValueError(f"cispo: need clip_eps_high >= 0 and clip_eps_low in [0, 1] or None, "
                         f"got {clip_eps_high}, {clip_eps_low}")
    mask = x.loss_mask
    lp = _valid(x.logprobs, mask)
    old = _require(x, "old_logprobs", "cispo")
    ratio = torch.exp((lp.detach() - old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    weight = ratio.clamp(None if clip_eps_low is None else 1 - clip_eps_low, 1 + clip_eps_high)
    loss = -weight * x.token_advantages() * lp
    return _valid(loss, mask), {"ratio": ratio, "clipped": (weight != ratio).to(ratio.dtype)}


@register("decoupled_ppo", needs_old_logprobs=True, needs_behavior_logprobs=True, default_aggregation="token_mean")
def decoupled_ppo(x: PolicyLossInputs, *, clip_eps_low: float = 0.2, clip_eps_high: float = 0.2,
                  dual_clip: float | None = None, behavior_weight_cap: float | None = None) -> tuple[Tensor, Stats]:
    """Decoupled PPO (AReaL): PPO's trust region around the proximal policy, corrected to the behaviour policy.   -> [B, T]

    Equation: u = π_θ/π_prox, w = sg(π_prox/π_b);  L = w · max(−A·u, −A·clip(u, 1−ε_low, 1+ε_high))
    (dual clip as in ppo_clip), with π_prox = ``old_logprobs`` (the policy at the start of the
    step) and π_b = ``behavior_logprobs`` (the policy that sampled the tokens).
    Paper: Fu et al. 2025, AReaL, arXiv 2505.24298 (decoupled objective, after Hilton et al. 2022,
    arXiv 2110.00641).
    Deviations: with ``behavior_weight_cap``, tokens whose w exceeds the cap are dropped (loss 0),
    as AReaL's ``behav_imp_weight_cap``; they still count in the aggregation's normaliser (the
    caller's loss_mask is unchanged). Equals ppo_clip exactly when π_b = π_prox. With one optimiser
    step per batch π_prox = π_θ, so u ≡ 1 and the clip never acts: the loss is π_θ/π_b-weighted REINFORCE,
    with no trust region around the sampler (on stale data prefer ppo_clip with the behaviour log-probs as
    π_old; docs/results.md, "Why decoupled_ppo degrades under staleness").
    Example: A = 1, u = 1, π_prox/π_b = 2 -> L = −2, ∂L/∂log π = −2.
    """
    _check_clip(clip_eps_low, clip_eps_high, dual_clip)
    if behavior_weight_cap is not None and behavior_weight_cap <= 0:
        raise ValueError(f"decoupled_ppo: behavior_weight_cap must be > 0, got {behavior_weight_cap}")
    mask = x.loss_mask
    prox = _require(x, "old_logprobs", "decoupled_ppo")
    behav = _require(x, "behavior_logprobs", "decoupled_ppo")
    adv = x.token_advantages()
    surrogate, stats = _clipped_surrogate(_valid(x.logprobs, mask) - prox, adv, clip_eps_low=clip_eps_low,
                                          clip_eps_high=clip_eps_high, dual_clip=dual_clip)
    weight = torch.exp((prox - behav).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    keep = mask
    if behavior_weight_cap is not None:
        capped = mask & (weight > behavior_weight_cap)
        stats["behavior_weight_capped"] = capped.to(weight.dtype)
        keep = mask & ~capped
    stats["behavior_weight"] = weight
    return _valid(weight * surrogate, keep), stats


def _current_policy_family(x: PolicyLossInputs, coef: Tensor) -> tuple[Tensor, Stats]:
    """L_t = C · A · (−log π_θ(o_t)); with seq_mean_token_mean aggregation, (1/B) Σ_b C_b A_b ℓ̄_b."""
    mask = x.loss_mask
    lp = _valid(x.logprobs, mask)
    loss = coef * x.token_advantages() * (-lp)
    return _valid(loss, mask), {"nll": _mean_token_nll(lp.detach(), mask)}


@register("current_policy", default_aggregation="seq_mean_token_mean")
def current_policy(x: PolicyLossInputs) -> tuple[Tensor, Stats]:
    """Naive current-policy-only loss: advantage times the response's mean token NLL.   -> [B, T]

    Equation: L = (1/B) Σ_b A_b ℓ̄_b(θ), ℓ̄_b = −(1/|o_b|) Σ_t log π_θ(o_b,t); per token,
    L_t = A·(−log π_θ(o_t)) reduced with seq_mean_token_mean.
    Paper: the "naive loss" baseline of ASymPO (arXiv 2606.03070), which collapses on stale data:
    with zero-sum A, inflating the NLL of negatives lowers the loss without bound.
    Deviations: none (it equals `reinforce` per token; only the aggregation differs).
    Example: A = (1, −1), ℓ̄ = (0.5, 2.0) -> L = (0.5 − 2.0)/2 = −0.75.
    """
    return _current_policy_family(x, torch.ones((), dtype=x.logprobs.dtype))


@register("spo", default_aggregation="seq_mean_token_mean")
def spo(x: PolicyLossInputs, *, neg_scale: float = 0.5) -> tuple[Tensor, Stats]:
    """SPO: the current-policy loss with negative-advantage terms scaled by a fixed λ.   -> [B, T]

    Equation: L = (1/B) Σ_b C_b A_b ℓ̄_b(θ),  C_b = 1 if A_b >= 0 else λ (``neg_scale``).
    Paper: Scaled Policy Optimization, the fixed negative-scaling baseline of ASymPO's paper
    (arXiv 2606.03070).
    Deviations: λ = 0.5 is our default (unverified: no primary source for the paper's λ was found). λ in [0, 1]:
    λ = 1 is the naive loss, λ = 0 drops negatives. For [B, T] advantages C follows each token's sign.
    Example: A = (1, −1), ℓ̄ = (0.5, 2.0), λ = 0.5 -> L = (0.5 − 0.5·2.0)/2 = −0.25.
    """
    if not 0 <= neg_scale <= 1:
        raise ValueError(f"spo: neg_scale must be in [0, 1], got {neg_scale}")
    adv = x.token_advantages()
    coef = torch.where(adv < 0, torch.full_like(adv, neg_scale), torch.ones_like(adv))
    return _current_policy_family(x, coef)


@register("asympo", default_aggregation="seq_mean_token_mean")
def asympo(x: PolicyLossInputs, *, eps: float = 1e-6) -> tuple[Tensor, Stats]:
    """ASymPO: the current-policy loss with each response normalised by its own mean token NLL.   -> [B, T]

    Equation: L = (1/B) Σ_b A_b ℓ̄_b(θ) / sg(ℓ̄_b),  ℓ̄_b clamped below at ε.
    Its value is (1/B) Σ_b A_b (0 for zero-sum advantages: every response weighs ±|A_b| whatever
    its NLL scale); its gradient is (1/B) Σ_b A_b ∇ℓ̄_b/ℓ̄_b = ∇ (1/B) Σ_b A_b log ℓ̄_b ≠ 0.
    Paper: Asymmetric-Scale Policy Optimization, arXiv 2606.03070 (per-response normalisation by the
    current average token NLL, stop-gradient coefficient).
    Deviations: the clamp ε (1e-6) is our choice (unverified: no primary source for the paper's ε
    was found).
    Example: A = (1, −1), ℓ̄ = (0.5, 2.0) -> value (1 − 1)/2 = 0; ∂L/∂ℓ̄ = (1/0.5, −1/2.0)/2 = (1, −0.25).
    """
    if eps <= 0:
        raise ValueError(f"asympo: eps must be > 0, got {eps}")
    nll = _mean_token_nll(_valid(x.logprobs, x.loss_mask).detach(), x.loss_mask)
    coef = torch.where(x.loss_mask.any(-1), 1.0 / nll.clamp_min(eps), torch.zeros_like(nll))  # 0 for empty rows
    loss, stats = _current_policy_family(x, coef[:, None])
    stats["coef"] = coef
    return loss, stats


# ----------------------------------------------------------------------------------------------
# Value loss (PPO's critic; not a policy loss, so not in the registry)
# ----------------------------------------------------------------------------------------------

def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, loss_mask: Tensor, *,
               clip_eps: float | None = 0.5) -> tuple[Tensor, Stats]:
    """PPO's clipped value loss per token.   [B, T] x4 -> [B, T]

    Equation: L_t = ½ · max((V_t − R_t)², (clip(V_t, V_old,t − ε, V_old,t + ε) − R_t)²), with V the
    value model's current predictions (with grad), V_old its predictions when the batch was made,
    R the returns (``rlvr.advantages.gae``) and ε = ``clip_eps``; ``clip_eps=None`` gives the plain
    ½(V − R)². Aggregate with ``aggregate(L, loss_mask, "token_mean", normalizer)``.
    Paper: PPO, Schulman et al. 2017, arXiv 1707.06347 (the squared-error value loss of Eq. 9);
    the pessimistic value clipping is that of the OpenAI baselines, verl and OpenRLHF
    (ALGORITHMS.md §4.6; verl's default ε_v = 0.5).
    Gradient: the clipped term is chosen only where it is strictly larger, i.e. where V has left
    V_old ± ε and lies past the band on R's side (closer to R than the clipped value); there the
    gradient is 0. Elsewhere the gradient is V − R. Masked positions contribute no value
    and no gradient, whatever they hold (NaN included); V_old and R are treated as constants.
    Stats (detached, [B, T], 0 at masked positions): "vf_clipped" 1.0 where the clipped term won,
    "vf_error" V − R.
    Example: V_old = 2, R = 0, V = 0.5, ε = 0.5 -> ½·max(0.25, 1.5²) = 1.125, ∂L/∂V = 0 (clipped).
    """
    who = "value_loss"
    if not isinstance(values, Tensor) or values.dim() != 2 or not values.is_floating_point():
        raise ValueError(f"{who}: values must be a float tensor [B, T], got {_describe(values)}")
    mask = loss_mask
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"{who}: loss_mask must be a bool tensor [B, T] (True = the token counts), "
                         f"got {_describe(mask)}")
    if mask.shape != values.shape:
        raise ValueError(f"{who}: loss_mask has shape {tuple(mask.shape)}, values has {tuple(values.shape)}: "
                         "they must match")
    if not mask.any():
        raise ValueError(f"{who}: loss_mask selects no token: there is nothing to train on")
    for name, x in (("old_values", old_values), ("returns", returns)):
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.shape != values.shape:
            raise ValueError(f"{who}: {name} must be a float tensor of shape {tuple(values.shape)}, got {_describe(x)}")
    for name, x in (("values", values), ("old_values", old_values), ("returns", returns)):
        bad = mask & ~torch.isfinite(x.detach())
        if bad.any():
            idx = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{who}: {name} is not finite at {list(idx)} (a position the loss_mask selects): "
                             f"{x.detach()[idx].item()}")
    if clip_eps is not None and (isinstance(clip_eps, bool) or not isinstance(clip_eps, (int, float))
                                 or not 0 < clip_eps < float("inf")):
        raise ValueError(f"{who}: clip_eps must be a finite number > 0 or None (no clipping), got {clip_eps!r}")
    v = _valid(values, mask)
    old = _valid(old_values.detach().to(values.dtype), mask)
    ret = _valid(returns.detach().to(values.dtype), mask)
    loss = 0.5 * (v - ret) ** 2
    clipped_wins = torch.zeros_like(mask)
    if clip_eps is not None:
        v_clipped = torch.clamp(v, old - clip_eps, old + clip_eps)          # exactly V inside the band
        clipped = 0.5 * (v_clipped - ret) ** 2
        clipped_wins = mask & (clipped.detach() > loss.detach())
        loss = torch.where(clipped_wins, clipped, loss)
    stats = {"vf_clipped": clipped_wins.to(values.dtype), "vf_error": (v - ret).detach()}
    return _valid(loss, mask), stats


# ----------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm",
                "group_mean_token_mean")
GROUP_MODES = ("group_mean_token_mean",)
"""Modes that weigh each group (the G responses to one prompt) equally: they need ``group_tokens``."""


def _check_mode(mode: str) -> None:
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid modes: {', '.join(AGGREGATIONS)}")


def _check_mask(loss_mask: Tensor, who: str) -> None:
    if not isinstance(loss_mask, Tensor) or loss_mask.dtype != torch.bool or loss_mask.dim() != 2:
        raise ValueError(f"{who}: loss_mask must be a bool tensor [B, T] (True = the token counts), "
                         f"got {_describe(loss_mask)}")


def _check_group_tokens(group_tokens: Tensor | None, loss_mask: Tensor, mode: str, who: str) -> Tensor | None:
    if mode not in GROUP_MODES:
        return None
    if not isinstance(group_tokens, Tensor) or group_tokens.shape != loss_mask.shape[:1]:
        raise ValueError(f"{who}: mode {mode!r} needs group_tokens [B={loss_mask.shape[0]}] (the valid tokens of "
                         f"each row's group in the optimiser step: group_token_counts), got {_describe(group_tokens)}")
    row_tokens = loss_mask.sum(-1).to(group_tokens.device)
    if bool((group_tokens < row_tokens).any()):
        b = int((group_tokens < row_tokens).nonzero()[0])
        raise ValueError(f"{who}: group_tokens[{b}] = {float(group_tokens[b])} is below row {b}'s own "
                         f"{int(row_tokens[b])} valid tokens")
    return group_tokens


def group_token_counts(loss_mask: Tensor, groups: Tensor) -> Tensor:
    """Float64[B]: the number of valid tokens of row b's group, the rows that share its id in ``groups``.

    loss_mask: Bool[B, T], the whole optimiser step's rows; groups: Long[B], a group id per row (rows of
    one prompt share it). Split the result like the rows when the step is split into micro-batches.
    Example: mask rows with 2, 1, 3 tokens, groups [0, 0, 1] -> [3., 3., 3.].
    """
    _check_mask(loss_mask, "group_token_counts")
    if not isinstance(groups, Tensor) or groups.shape != loss_mask.shape[:1] or groups.is_floating_point():
        raise ValueError(f"group_token_counts: groups must be an integer tensor [B={loss_mask.shape[0]}], "
                         f"got {_describe(groups)}")
    _, index = torch.unique(groups, return_inverse=True)
    per_group = torch.zeros(int(index.max()) + 1 if index.numel() else 0, dtype=torch.float64, device=index.device)
    per_group.index_add_(0, index, loss_mask.sum(-1).to(index.device, torch.float64))
    return per_group[index]


def loss_normalizer(loss_mask: Tensor | Sequence[Tensor], mode: str, *, max_tokens: int | None = None,
                    group_tokens: Tensor | Sequence[Tensor] | None = None) -> float:
    """The denominator of ``aggregate`` for a whole optimiser step.

    Pass the step's mask, or the list of its micro-batch masks, and hand the result to every
    micro-batch's ``aggregate`` call: the summed micro-batch losses then equal the loss of the
    whole step, whatever the split.
      token_mean:              number of valid tokens
      seq_mean_token_mean:     number of responses with at least one valid token
      seq_mean_token_sum:      number of responses with at least one valid token
      seq_mean_token_sum_norm: number of responses × max_tokens (Dr. GRPO's constant; default: the
                               widest mask's T — pass the generation budget to make it a true constant)
      group_mean_token_mean:   number of groups with at least one valid token, Σ_b |o_b| / N_g(b)
                               (``group_tokens``: N_g(b) per row, per mask, from ``group_token_counts``)
    """
    _check_mode(mode)
    masks = [loss_mask] if isinstance(loss_mask, Tensor) else list(loss_mask)
    if not masks:
        raise ValueError("loss_normalizer: no mask given")
    for m in masks:
        _check_mask(m, "loss_normalizer")
    if mode == "token_mean":
        return float(sum(int(m.sum()) for m in masks))
    if mode == "seq_mean_token_sum_norm":
        if max_tokens is not None and max_tokens <= 0:
            raise ValueError(f"loss_normalizer: max_tokens must be > 0, got {max_tokens}")
        width = max_tokens if max_tokens is not None else max(m.shape[1] for m in masks)
        return float(sum(m.shape[0] for m in masks) * width)
    if mode in GROUP_MODES:
        tokens = [group_tokens] if isinstance(group_tokens, Tensor) or group_tokens is None else list(group_tokens)
        if len(tokens) != len(masks):
            raise ValueError(f"loss_normalizer: {len(masks)} masks but {len(tokens)} group_tokens")
        shares = sum(float((m.sum(-1).double() / _check_group_tokens(g, m, mode, "loss_normalizer").double()
                            .clamp_min(1)).sum()) for m, g in zip(masks, tokens))
        return float(round(shares))  # each group's rows add up to exactly 1: an integer up to rounding
    return float(sum(int(m.any(-1).sum()) for m in masks))


def aggregate(per_token_loss: Tensor, loss_mask: Tensor, mode: str, normalizer: float | None = None, *,
              group_tokens: Tensor | None = None) -> Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    Equations (M = loss_mask, L = per-token loss, N = normalizer, N_g(b) = valid tokens of row b's group):
      token_mean:              Σ_{b,t} M·L / N,               N = Σ M            (DAPO, GPG, AAPO's formula)
      seq_mean_token_mean:     Σ_b [Σ_t M·L / Σ_t M] / N,     N = #responses     (GRPO, arXiv 2402.03300 Eq. 3)
      seq_mean_token_sum:      Σ_b Σ_t M·L / N,               N = #responses
      seq_mean_token_sum_norm: Σ_{b,t} M·L / N,               N = #responses · L_max (Dr. GRPO, arXiv 2503.20783)
      group_mean_token_mean:   Σ_b [Σ_t M·L / N_g(b)] / N,    N = #groups        (AAPO as its code runs: one
                               group per micro-batch, token mean in it, groups averaged; arXiv 2505.14264)
    ``normalizer=None`` computes N from this mask (right when the mask is the whole step);
    otherwise pass ``loss_normalizer(all masks of the step, mode)``. ``group_tokens`` [B] (float or int) is
    needed by group_mean_token_mean only: N_g(b) over the whole step (``group_token_counts``). Responses with
    no valid token contribute 0 and are not counted, except by seq_mean_token_sum_norm, whose constant counts
    every response. Masked positions contribute no value and no gradient.
    Example: L = [[1, 3], [5, ·]], M = [[T, T], [T, F]]: token_mean = 9/3 = 3,
    seq_mean_token_mean = (2 + 5)/2 = 3.5, seq_mean_token_sum = (4 + 5)/2 = 4.5,
    seq_mean_token_sum_norm = 9/(2·2) = 2.25; group_mean_token_mean with both rows in one group = 9/3 = 3,
    each row its own group = 3.5.
    """
    _check_mode(mode)
    _check_mask(loss_mask, "aggregate")
    if not isinstance(per_token_loss, Tensor) or per_token_loss.shape != loss_mask.shape:
        raise ValueError(f"aggregate: per_token_loss must have the loss_mask's shape {tuple(loss_mask.shape)}, "
                         f"got {_describe(per_token_loss)}")
    group_tokens = _check_group_tokens(group_tokens, loss_mask, mode, "aggregate")
    if normalizer is None:
        normalizer = loss_normalizer(loss_mask, mode, group_tokens=group_tokens)
        if not loss_mask.any():
            raise ValueError("aggregate: loss_mask selects no token, so the mean is undefined "
                             "(pass the step's normalizer when aggregating a micro-batch)")
    elif not normalizer > 0:
        raise ValueError(f"aggregate: normalizer must be > 0, got {normalizer}")
    masked = _valid(per_token_loss, loss_mask)
    if mode == "seq_mean_token_mean":
        counts = loss_mask.sum(-1).clamp_min(1).to(masked.dtype)
        return (masked.sum(-1) / counts).sum() / normalizer
    if mode in GROUP_MODES:
        counts = group_tokens.to(masked.device, masked.dtype).clamp_min(1)
        return (masked.sum(-1) / counts).sum() / normalizer
    return masked.sum() / normalizer
