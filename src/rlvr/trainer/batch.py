"""A step's training data: the prompt stream, the sampled groups, and the batch they are assembled into.

``Group`` is what one prompt contributes (its G sampled rows, their scores, and the reference samples' scores
when the algorithm draws them); ``assemble`` stacks the kept groups into a ``Batch``, prompt-major: rows
``i*G .. i*G+G-1`` answer prompt ``i``. Advantages are filled in by the algorithm (``Algorithm.advantages``),
always token-level ``Float32[B, T]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from rlvr.rewards.scoring import Scores
from rlvr.seeding import derive_seed
from rlvr.types import Problem, Rollout

__all__ = ["Batch", "Group", "PromptStream", "assemble", "batch_metrics"]


class PromptStream:
    """Problems in a seeded order, reshuffled each epoch; ``position`` counts problems handed out."""

    def __init__(self, problems: Sequence[Problem], seed: int, position: int = 0) -> None:
        if not problems:
            raise ValueError("PromptStream: no training problems")
        self.problems = list(problems)
        self.seed = seed
        self.position = position
        self._epoch, self._perm = -1, []

    def _order(self, epoch: int) -> list[int]:
        if epoch != self._epoch:  # one permutation per epoch, drawn when the epoch starts
            g = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._epoch, self._perm = epoch, torch.randperm(len(self.problems), generator=g).tolist()
        return self._perm

    def take(self, n: int) -> list[Problem]:
        out = []
        for _ in range(n):
            epoch, i = divmod(self.position, len(self.problems))
            out.append(self.problems[self._order(epoch)[i]])
            self.position += 1
        return out


@dataclass
class Group:
    """One prompt's G samples: rows ``offset .. offset+G-1`` of ``rollout`` and ``scores`` (and of
    ``ref_scores``, the reference model's samples, when drawn); ``informative``: its rewards are not all equal
    (so group-relative advantages are not all zero)."""

    problem: Problem
    offset: int
    rollout: Rollout
    scores: Scores
    ref_scores: Scores | None = None
    informative: bool = True


@dataclass
class Batch:
    """One step's training data: P prompts × G completions, prompt-major."""

    problems: list[Problem]
    rollout: Rollout
    scores: Scores
    advantages: torch.Tensor
    """Float32[B, T]: each token's advantage, 0 at masked positions."""
    ref_scores: Scores | None = None
    values: torch.Tensor | None = None   # Float32[B, T]: the critic's V_old (token-level estimators)
    returns: torch.Tensor | None = None  # Float32[B, T]: the critic's regression targets
    metrics: dict[str, float] = field(default_factory=dict)


def assemble(groups: list[Group], G: int) -> tuple[list[Problem], Rollout, Scores, Scores | None]:
    """(problems, rollout, scores, reference scores or None) of the kept groups, stacked prompt-major."""
    problems = [g.problem for g in groups]
    rows = [(g, j) for g in groups for j in range(g.offset, g.offset + G)]
    rollout = _select_rows([(g.rollout, j) for g, j in rows])
    scores = _select_scores([(g.scores, j) for g, j in rows])
    ref = _select_scores([(g.ref_scores, j) for g, j in rows]) if groups and groups[0].ref_scores else None
    return problems, rollout, scores, ref


def _select_rows(rows: list[tuple[Rollout, int]]) -> Rollout:
    """A Rollout made of the given (rollout, row) pairs, padded to the longest kept completion."""
    T = max(int(ro.lengths[i]) for ro, i in rows)
    T = max(T, 1)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    with_behavior = all(ro.behavior_logprobs is not None for ro, _ in rows)
    behavior = torch.zeros(len(rows), T) if with_behavior else None
    versions = torch.zeros(len(rows), T, dtype=torch.long) if any(ro.token_versions is not None for ro, _ in rows) \
        else None
    for b, (ro, i) in enumerate(rows):
        w = min(T, ro.completion_ids.shape[1])
        ids[b, :w] = ro.completion_ids[i, :w].cpu()
        if with_behavior:
            behavior[b, :w] = ro.behavior_logprobs[i, :w].cpu()
        if versions is not None:
            versions[b, :w] = ro.versions()[i, :w].cpu()
    lengths = torch.stack([ro.lengths[i].cpu() for ro, i in rows])
    return Rollout(
        prompt_ids=[ro.prompt_ids[i] for ro, i in rows], completion_ids=ids, lengths=lengths,
        finish_reasons=[ro.finish_reasons[i] for ro, i in rows], texts=[ro.texts[i] for ro, i in rows],
        policy_version=Rollout.oldest_version(versions, lengths, 0) if versions is not None
        else min(ro.policy_version for ro, _ in rows),
        behavior_logprobs=behavior, token_versions=versions,
    )


def _select_scores(rows: list[tuple[Scores, int]]) -> Scores:
    idx = lambda name: torch.stack([getattr(s, name)[i] for s, i in rows])  # noqa: E731
    return Scores(total=idx("total"), accuracy=idx("accuracy"), format=idx("format"), overlong=idx("overlong"),
                  reasons=[s.reasons[i] for s, i in rows], extracted=[s.extracted[i] for s, i in rows])


def row_advantages(batch: Batch) -> torch.Tensor:
    """Float64[B]: each response's mean advantage over its valid tokens (its advantage, for sequence-level
    estimators; exact, since B·T float32 copies sum exactly in float64)."""
    mask = batch.rollout.loss_mask[:, :batch.advantages.shape[1]]
    return torch.where(mask, batch.advantages.double(), 0.0).sum(-1) / mask.sum(-1).clamp_min(1)


def batch_metrics(batch: Batch) -> dict[str, float]:
    """reward/, adv/ (over responses, of each one's mean token advantage) and response/ metrics of a batch."""
    s, G = batch.scores, batch.rollout.completion_ids.shape[0] // max(len(batch.problems), 1)
    r = s.total.view(-1, G)
    lengths = batch.rollout.lengths.double()
    adv = row_advantages(batch)
    zero_std = (r == r[:, :1]).all(-1)
    out = {
        "reward/mean": float(s.total.mean()), "reward/std": float(s.total.std()) if s.total.numel() > 1 else 0.0,
        "reward/accuracy": float(s.accuracy.mean()), "reward/format": float(s.format.mean()),
        "reward/overlong": float(s.overlong.mean()),
        "reward/frac_zero_std_groups": float(zero_std.double().mean()),
        # groups whose rewards are all equal but whose samples still get an advantage: AAPO's margin against the
        # reference samples (or a critic's values) is then the only learning signal
        "adv/frac_zero_std_groups_with_signal": float((zero_std & (adv.view(-1, G) != 0).any(-1)).double().mean()),
        "adv/mean": float(adv.mean()), "adv/abs_mean": float(adv.abs().mean()),
        "adv/frac_zero": float((adv == 0).double().mean()),
        "response/length_mean": float(lengths.mean()), "response/length_max": float(lengths.max()),
        "response/clip_frac": sum(f == "length" for f in batch.rollout.finish_reasons) / len(lengths),
    }
    if batch.ref_scores is not None:
        out["reward/ref_mean"] = float(batch.ref_scores.total.mean())
        out["reward/ref_accuracy"] = float(batch.ref_scores.accuracy.mean())
    return out
