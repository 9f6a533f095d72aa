"""Scoring a rollout: the verifier's score plus shaping terms, each kept as its own component.

Training rewards and held-out evaluation both go through ``score``, so the training signal and the
reported accuracy cannot diverge. Not imported by ``rlvr.rewards`` itself (its workers stay torch-free).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from rlvr.rewards.extract import format_score
from rlvr.rewards.shaping import overlong_penalty
from rlvr.types import Problem, Rollout


@dataclass
class Scores:
    """Per-completion reward components, float64 [B]; ``total`` is what the advantage sees."""

    total: torch.Tensor
    accuracy: torch.Tensor
    format: torch.Tensor
    overlong: torch.Tensor
    reasons: list[str]
    extracted: list[str | None]


@dataclass
class RewardSettings:
    format_weight: float = 0.0
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0
    think: bool = False
    """The prompt template asks for reasoning in ``<think>`` tags: the format reward then also requires one think
    block before the answer (``rlvr.rewards.extract.format_score``)."""


def score(pool: Any, problems: Sequence[Problem], rollout: Rollout, n: int, settings: RewardSettings,
          max_new_tokens: int) -> Scores:
    """Verify each completion against its problem's gold answer and add the shaping terms."""
    rows = [p for p in problems for _ in range(n)]
    results = pool.score([p.verifier for p in rows], rollout.texts, [p.answer for p in rows])
    acc = torch.tensor([r.score for r in results], dtype=torch.float64)
    fmt = torch.tensor([format_score(t, settings.think) for t in rollout.texts], dtype=torch.float64)
    over = overlong_penalty(rollout.lengths.cpu(), max_tokens=max_new_tokens, buffer=settings.overlong_buffer,
                            factor=settings.overlong_penalty)
    total = acc + settings.format_weight * fmt + over
    return Scores(total=total, accuracy=acc, format=fmt, overlong=over, reasons=[r.reason for r in results],
                  extracted=[r.extracted for r in results])
