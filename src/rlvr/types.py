"""Plain data passed between the stages of a run: problems, sampling parameters, rollouts.

Shape glossary (used across rlvr): P prompts per step, G samples per prompt (group size),
B = P·G sequences, T padded completion length, V vocabulary size.

One mask convention: ``loss_mask`` is ``Bool[B, T]``, True where a completion token counts. It is built
from the sampler's ``lengths``, never from token values (the pad id often equals EOS).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Problem:
    """One prompt with a checkable answer."""

    prompt: str
    """The user message, before any chat template."""
    answer: str
    """The gold answer, as text."""
    verifier: str
    """Name in the rewards registry that checks a completion against ``answer`` ("math", "int")."""
    id: str
    """Stable identifier, e.g. ``"basic_arithmetic/17"`` or ``"data.jsonl:12"``."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    """Stop strings; the completion ends with the token that completes one (it is kept)."""
    logprobs: bool = False
    """Also return the behaviour log-probs of the sampled tokens (``Rollout.behavior_logprobs``)."""

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Rollout:
    """B sampled completions, prompt-major: rows ``i*n .. i*n+n-1`` answer prompt ``i``.

    completion_ids: Long[B, T], right-padded; values at or after ``lengths[b]`` are meaningless.
    lengths:        Long[B], tokens that count (an EOS that ended the row is included).
    finish_reasons: "stop" (EOS or stop string) or "length" (hit max_new_tokens), one per row.
    texts:          decoded completions (special tokens skipped).
    policy_version: version of the weights that sampled them: the oldest, when workers sampled shards or weights
                    changed during sampling (then it is the oldest token's version).
    behavior_logprobs: Float32[B, T] or None: log π_b(token) of each sampled token under the weights that
                    sampled it, at temperature 1 and without top-p (the same quantity the learner computes,
                    so π_θ/π_b measures policy drift only); 0 at or after ``lengths[b]``. Returned when
                    ``SamplingParams.logprobs`` is set.
    token_versions: Long[B, T] or None: the version of the weights that sampled each token, when weights may
                    change between decode steps (``rollout.weight_sync=token``); 0 at or after ``lengths[b]``.
                    None: every token has ``policy_version``.
    """

    prompt_ids: list[list[int]]
    completion_ids: torch.Tensor
    lengths: torch.Tensor
    finish_reasons: list[str]
    texts: list[str]
    policy_version: int = 0
    behavior_logprobs: torch.Tensor | None = None
    token_versions: torch.Tensor | None = None

    def __post_init__(self) -> None:
        B = len(self.prompt_ids)
        if self.completion_ids.dim() != 2 or self.completion_ids.shape[0] != B:
            raise ValueError(f"completion_ids must be [B={B}, T], got {tuple(self.completion_ids.shape)}")
        if self.lengths.shape != (B,):
            raise ValueError(f"lengths must be [B={B}], got {tuple(self.lengths.shape)}")
        if len(self.finish_reasons) != B or len(self.texts) != B:
            raise ValueError(f"finish_reasons and texts need {B} entries, got {len(self.finish_reasons)}, {len(self.texts)}")
        if B and (int(self.lengths.min()) < 0 or int(self.lengths.max()) > self.completion_ids.shape[1]):
            raise ValueError(f"lengths must lie in [0, T={self.completion_ids.shape[1]}]")
        blp = self.behavior_logprobs
        if blp is not None and (not isinstance(blp, torch.Tensor) or not blp.is_floating_point()
                                or blp.shape != self.completion_ids.shape):
            raise ValueError(f"behavior_logprobs must be a float tensor of shape "
                             f"{tuple(self.completion_ids.shape)} (as completion_ids), got "
                             f"{tuple(blp.shape) if isinstance(blp, torch.Tensor) else type(blp).__name__}")
        tv = self.token_versions
        if tv is not None and (not isinstance(tv, torch.Tensor) or tv.dtype != torch.long
                               or tv.shape != self.completion_ids.shape):
            raise ValueError(f"token_versions must be a Long tensor of shape {tuple(self.completion_ids.shape)} (as "
                             f"completion_ids), got "
                             f"{f'{tv.dtype}{list(tv.shape)}' if isinstance(tv, torch.Tensor) else type(tv).__name__}")

    @staticmethod
    def oldest_version(token_versions: torch.Tensor, lengths: torch.Tensor, default: int) -> int:
        """The oldest version among the valid tokens (t < lengths[b]) of ``token_versions`` [B, T]; ``default`` when
        there are none."""
        valid = torch.arange(token_versions.shape[1])[None, :] < lengths.cpu()[:, None]
        return int(token_versions[valid].min()) if bool(valid.any()) else default

    def versions(self) -> torch.Tensor:
        """Long[B, T]: each token's sampling version (``token_versions``, else ``policy_version`` everywhere);
        0 at or after ``lengths[b]``."""
        if self.token_versions is not None:
            return self.token_versions
        return torch.where(self.loss_mask, self.policy_version, 0).long()

    @property
    def loss_mask(self) -> torch.Tensor:
        """Bool[B, T]: True at the first ``lengths[b]`` positions of row b."""
        T = self.completion_ids.shape[1]
        return torch.arange(T, device=self.lengths.device)[None, :] < self.lengths[:, None]
