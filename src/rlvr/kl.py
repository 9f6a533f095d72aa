"""Per-token estimators of KL(π_θ ‖ π_ref) from sampled tokens, and their registry.

With x = log π_θ(o_t) − log π_ref(o_t) for a token o_t sampled from π_θ:
    k1 = x                       unbiased value, can be negative, high variance
    k2 = x² / 2                  biased value, low variance
    k3 = exp(−x) + x − 1 >= 0    unbiased value, low variance (GRPO's KL term, arXiv 2402.03300 Eq. 4)
Reference: J. Schulman, "Approximating KL divergence" (2020 note), names k1/k2/k3.

Used as a loss term on tokens sampled from π_θ (no score-function term), their expected gradients
differ from their values: E[∇k1] = 0, E[∇k2] = ∇KL(π_θ ‖ π_ref), E[∇k3] = ∇KL(π_ref ‖ π_θ).
(tests/test_kl.py checks these by exact enumeration.)

Each function maps [B, T] log-probs to a [B, T] estimate. Clamps: x is clamped to [−clamp, clamp]
(default 20) in all three, and k3 to at most ``max_value`` (default 10), so a token the reference model
finds impossible cannot produce inf. verl clamps only k3 this way (``kl_penalty_forward``: log ratio to
±20, value to [−10, 10]) and leaves k1 and k2 unclamped; clamping them too is our deviation
(``clamp=None`` gives verl's k1 and k2). With ``loss_mask`` given, masked positions are exactly 0 and
pass no gradient (even if their inputs are NaN or ±inf).
"""

from __future__ import annotations

from typing import Callable

import torch

from rlvr.registry import Registry

Tensor = torch.Tensor
KLFn = Callable[..., Tensor]

__all__ = ["k1", "k2", "k3", "get", "names", "register"]

_REGISTRY: Registry[KLFn] = Registry("KL estimator")
register = _REGISTRY.register  # decorator: register(name)
get = _REGISTRY.entry          # get(name) -> the estimator (k1, k2, k3) or an import path 'module:function'


def names() -> list[str]:
    return _REGISTRY.names()


def _log_ratio(logprobs: Tensor, ref_logprobs: Tensor, loss_mask: Tensor | None, clamp: float | None) -> Tensor:
    if not isinstance(logprobs, Tensor) or not isinstance(ref_logprobs, Tensor) or logprobs.shape != ref_logprobs.shape:
        raise ValueError("KL: logprobs and ref_logprobs must be tensors of the same shape, got "
                         f"{getattr(logprobs, 'shape', type(logprobs))} and {getattr(ref_logprobs, 'shape', type(ref_logprobs))}")
    x = logprobs - ref_logprobs.detach()
    if loss_mask is not None:
        if not isinstance(loss_mask, Tensor) or loss_mask.dtype != torch.bool or loss_mask.shape != logprobs.shape:
            raise ValueError(f"KL: loss_mask must be a bool tensor of shape {tuple(logprobs.shape)}")
        x = torch.where(loss_mask, x, torch.zeros((), dtype=x.dtype))
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x  # exactly 0 at masked positions, where k1 = k2 = k3 = 0 too


@register("k1")
def k1(logprobs: Tensor, ref_logprobs: Tensor, *, loss_mask: Tensor | None = None, clamp: float | None = 20.0) -> Tensor:
    """k1 = log π_θ − log π_ref per token.   [B, T] -> [B, T]

    Example: k1(torch.tensor([[-1.]]), torch.tensor([[-2.]])) -> [[1.]].
    """
    return _log_ratio(logprobs, ref_logprobs, loss_mask, clamp)


@register("k2")
def k2(logprobs: Tensor, ref_logprobs: Tensor, *, loss_mask: Tensor | None = None, clamp: float | None = 20.0) -> Tensor:
    """k2 = (log π_θ − log π_ref)² / 2 per token.   [B, T] -> [B, T]

    Example: k2(torch.tensor([[-1.]]), torch.tensor([[-2.]])) -> [[0.5]].
    """
    return 0.5 * _log_ratio(logprobs, ref_logprobs, loss_mask, clamp) ** 2


@register("k3")
def k3(logprobs: Tensor, ref_logprobs: Tensor, *, loss_mask: Tensor | None = None, clamp: float | None = 20.0,
       max_value: float | None = 10.0) -> Tensor:
    """k3 = π_ref/π_θ − log(π_ref/π_θ) − 1 = exp(−x) + x − 1 per token (always >= 0).   [B, T] -> [B, T]

    Paper: DeepSeekMath (GRPO), arXiv 2402.03300, Eq. 4.
    Example: k3(torch.tensor([[-1.]]), torch.tensor([[-2.]])) -> [[e^{-1} + 1 − 1]] = [[0.3679]].
    """
    x = _log_ratio(logprobs, ref_logprobs, loss_mask, clamp)
    value = (torch.expm1(-x) + x).clamp_min(0.0)   # expm1: exp(−x) − 1 without cancellation near x = 0
    if max_value is not None:
        value = value.clamp(max=max_value)
    return value
