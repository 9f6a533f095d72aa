"""Reward shaping terms added to the verifier's score, each logged as its own component.   torch only."""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def overlong_penalty(lengths: Tensor, *, max_tokens: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment, per response.   Long[B] -> Float[B] (float64)

    Equation (DAPO, arXiv 2503.14476, Eq. 13), with L_max = ``max_tokens`` and L_cache = ``buffer``:
      R_len(y) = 0                                   if |y| ≤ L_max − L_cache
               = ((L_max − L_cache) − |y|) / L_cache  if L_max − L_cache < |y| ≤ L_max
               = −1                                   if |y| > L_max
    multiplied by ``factor``. The penalty ramps linearly from 0 to −1 over the last L_cache tokens.
    Deviations: none; ``buffer = 0`` turns it off (all zeros).
    Example: max_tokens=10, buffer=4: lengths [6, 8, 10, 11] -> [0, −0.5, −1, −1].
    """
    if lengths.dim() != 1:
        raise ValueError(f"overlong_penalty: lengths must be [B], got shape {tuple(lengths.shape)}")
    if max_tokens <= 0 or buffer < 0 or buffer > max_tokens:
        raise ValueError(f"overlong_penalty: need 0 <= buffer <= max_tokens and max_tokens > 0, "
                         f"got buffer={buffer}, max_tokens={max_tokens}")
    n = lengths.to(torch.float64)
    if buffer == 0:
        return torch.zeros_like(n)
    soft_start = max_tokens - buffer
    ramp = (soft_start - n) / buffer
    out = torch.where(n <= soft_start, torch.zeros_like(n), torch.where(n <= max_tokens, ramp, -torch.ones_like(n)))
    return factor * out
