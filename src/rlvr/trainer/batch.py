"""From prompts to a training batch: sample G completions per prompt, score them, compute advantages.

Everything an algorithm needs beyond rewards comes from its registry entry: an estimator that
``needs_reference_samples`` (AAPO) gets the rewards of G samples of the frozen reference model for
the same prompts; one that ``takes_k`` gets ``algo.k``; one that ``needs_values`` (gae) gets the
critic's V_old [B, T] (and, with a reward KL coefficient, the per-token KL to the reference) and
returns per-token advantages and returns. The loop never looks at an algorithm's name.
"""
from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from rlvr import advantages
from rlvr.rewards.scoring import RewardSettings, Scores, score
from rlvr.seeding import derive_seed
from rlvr.types import Problem, Rollout, SamplingParams

__all__ = ["Batch", "Collector", "PromptStream", "RewardSettings", "Scores", "batch_metrics", "derive_seed",
           "score"]


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
class Batch:
    """One step's training data: P prompts × G completions, prompt-major."""

    problems: list[Problem]
    rollout: Rollout
    scores: Scores
    advantages: torch.Tensor  # float32 [B], or [B, T] for token-level estimators
    ref_scores: Scores | None = None
    values: torch.Tensor | None = None   # float32 [B, T]: the critic's V_old (token-level estimators)
    returns: torch.Tensor | None = None  # float32 [B, T]: the critic's regression targets
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Collector:
    """Draws prompts, samples, scores and (with dynamic sampling) refills until P informative groups."""

    stream: PromptStream
    encode: Callable[[Problem], list[int]]
    sampler: Any
    pool: Any
    params: SamplingParams
    group_size: int
    prompts_per_step: int
    rewards: RewardSettings
    advantage: str
    advantage_kwargs: dict[str, Any]
    k: int | None
    seed: int
    dynamic_sampling: bool = False
    max_refill_rounds: int = 0
    ref_sampler: Any = None
    ref_context: Callable[[], AbstractContextManager] = nullcontext
    values_fn: Callable[[Rollout], torch.Tensor] | None = None
    """V_old [B, T] of a rollout, for estimators that ``needs_values``."""
    kl_fn: Callable[[Rollout], torch.Tensor] | None = None
    """Per-token KL [B, T] to the reference, for the KL-in-reward term (with ``reward_kl_coef`` > 0)."""
    reward_kl_coef: float = 0.0

    def _sample(self, problems: list[Problem], step: int, rnd: int) -> tuple[Rollout, Scores, Rollout | None,
                                                                            Scores | None, float]:
        prompt_ids = [self.encode(p) for p in problems]
        t0 = time.perf_counter()
        rollout = self.sampler.generate(prompt_ids, self.params, n=self.group_size,
                                        seed=derive_seed(self.seed, "rollout", step, rnd))
        gen_s = time.perf_counter() - t0
        scores = score(self.pool, problems, rollout, self.group_size, self.rewards, self.params.max_new_tokens)
        ref_rollout = ref_scores = None
        if self._needs_reference():
            if self.ref_sampler is None:
                raise ValueError(f"advantage {self.advantage!r} needs reference samples but no reference sampler "
                                 "was built")
            with self.ref_context():
                ref_rollout = self.ref_sampler.generate(prompt_ids, self.params, n=self.group_size,
                                                        seed=derive_seed(self.seed, "reference", step, rnd))
            ref_scores = score(self.pool, problems, ref_rollout, self.group_size, self.rewards,
                               self.params.max_new_tokens)
        return rollout, scores, ref_rollout, ref_scores, gen_s

    def _needs_reference(self) -> bool:
        return advantages.spec(self.advantage).needs_reference_samples

    def collect(self, step: int) -> Batch:
        P, G = self.prompts_per_step, self.group_size
        kept: list[tuple[Problem, int, Rollout, Scores, Scores | None]] = []  # (problem, row offset, ...)
        gen_s = gen_tokens = dropped = sampled = 0
        rounds = 1 + (self.max_refill_rounds if self.dynamic_sampling else 0)
        for rnd in range(rounds):
            need = P - len(kept)
            if need <= 0:
                break
            problems = self.stream.take(need)
            rollout, scores, ref_rollout, ref_scores, secs = self._sample(problems, step, rnd)
            gen_s += secs
            gen_tokens += int(rollout.lengths.sum()) + (int(ref_rollout.lengths.sum()) if ref_rollout else 0)
            sampled += len(problems)
            r = scores.total.view(len(problems), G)
            informative = (r != r[:, :1]).any(-1)
            for i, p in enumerate(problems):
                if self.dynamic_sampling and not informative[i] and rnd < rounds - 1:
                    dropped += 1
                    continue
                kept.append((p, i, rollout, scores, ref_scores))
        batch = self._assemble(kept[:P])
        batch.metrics.update({"rollout/prompts_sampled": sampled, "rollout/groups_dropped": dropped,
                              "rollout/samples": sampled * G * (2 if self._needs_reference() else 1),
                              "perf/gen_s": gen_s, "perf/gen_tokens_per_s": gen_tokens / max(gen_s, 1e-9)})
        return batch

    def _assemble(self, kept: list) -> Batch:
        G = self.group_size
        problems = [p for p, *_ in kept]
        rows = [(ro, i * G + j) for _, i, ro, _, _ in kept for j in range(G)]
        rollout = _select_rows(rows)
        scores = _select_scores([(sc, i * G + j) for _, i, _, sc, _ in kept for j in range(G)])
        ref_scores = None
        if kept and kept[0][4] is not None:
            ref_scores = _select_scores([(rs, i * G + j) for _, i, _, _, rs in kept for j in range(G)])
        kwargs = dict(self.advantage_kwargs)
        spec = advantages.spec(self.advantage)
        if spec.takes_k:
            if self.k is None:
                raise ValueError(f"advantage {self.advantage!r} takes k: set algo.k")
            kwargs["k"] = self.k
        if spec.needs_reference_samples:
            kwargs["ref_rewards"] = ref_scores.total.view(-1, G)
        if not spec.needs_values:
            adv = spec.fn(scores.total.view(-1, G), **kwargs).reshape(-1).to(torch.float32)
            return Batch(problems=problems, rollout=rollout, scores=scores, advantages=adv, ref_scores=ref_scores)
        if self.values_fn is None:
            raise ValueError(f"advantage {self.advantage!r} needs values but no value model was built")
        values = self.values_fn(rollout).to(torch.float32)
        kwargs.update(values=values, loss_mask=rollout.loss_mask)
        if self.reward_kl_coef > 0:
            if self.kl_fn is None:
                raise ValueError("a reward KL coefficient needs a reference model (kl_fn)")
            kwargs.update(kl=self.kl_fn(rollout), kl_coef=self.reward_kl_coef)
        adv, returns = spec.fn(scores.total.view(-1, G), **kwargs)
        return Batch(problems=problems, rollout=rollout, scores=scores, advantages=adv.to(torch.float32),
                     ref_scores=ref_scores, values=values, returns=returns.to(torch.float32))


def _select_rows(rows: list[tuple[Rollout, int]]) -> Rollout:
    """A Rollout made of the given (rollout, row) pairs, padded to the longest kept completion."""
    T = max(int(ro.lengths[i]) for ro, i in rows)
    T = max(T, 1)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    with_behavior = all(ro.behavior_logprobs is not None for ro, _ in rows)
    behavior = torch.zeros(len(rows), T) if with_behavior else None
    for b, (ro, i) in enumerate(rows):
        w = min(T, ro.completion_ids.shape[1])
        ids[b, :w] = ro.completion_ids[i, :w].cpu()
        if with_behavior:
            behavior[b, :w] = ro.behavior_logprobs[i, :w].cpu()
    return Rollout(
        prompt_ids=[ro.prompt_ids[i] for ro, i in rows], completion_ids=ids,
        lengths=torch.stack([ro.lengths[i].cpu() for ro, i in rows]),
        finish_reasons=[ro.finish_reasons[i] for ro, i in rows], texts=[ro.texts[i] for ro, i in rows],
        policy_version=min(ro.policy_version for ro, _ in rows), behavior_logprobs=behavior,
    )


def _select_scores(rows: list[tuple[Scores, int]]) -> Scores:
    idx = lambda name: torch.stack([getattr(s, name)[i] for s, i in rows])  # noqa: E731
    return Scores(total=idx("total"), accuracy=idx("accuracy"), format=idx("format"), overlong=idx("overlong"),
                  reasons=[s.reasons[i] for s, i in rows], extracted=[s.extracted[i] for s, i in rows])


def batch_metrics(batch: Batch) -> dict[str, float]:
    """reward/, adv/ and response/ metrics of a batch."""
    s, G = batch.scores, batch.rollout.completion_ids.shape[0] // max(len(batch.problems), 1)
    r = s.total.view(-1, G)
    lengths = batch.rollout.lengths.double()
    adv = batch.advantages.double()
    if adv.dim() == 2:  # per-token advantages: statistics over valid tokens
        adv = adv[batch.rollout.loss_mask[:, :adv.shape[1]]]
    out = {
        "reward/mean": float(s.total.mean()), "reward/std": float(s.total.std()) if s.total.numel() > 1 else 0.0,
        "reward/accuracy": float(s.accuracy.mean()), "reward/format": float(s.format.mean()),
        "reward/overlong": float(s.overlong.mean()),
        "reward/frac_zero_std_groups": float((r == r[:, :1]).all(-1).double().mean()),
        "adv/mean": float(adv.mean()), "adv/abs_mean": float(adv.abs().mean()),
        "adv/frac_zero": float((adv == 0).double().mean()),
        "response/length_mean": float(lengths.mean()), "response/length_max": float(lengths.max()),
        "response/clip_frac": sum(f == "length" for f in batch.rollout.finish_reasons) / len(lengths),
    }
    if batch.ref_scores is not None:
        out["reward/ref_mean"] = float(batch.ref_scores.total.mean())
        out["reward/ref_accuracy"] = float(batch.ref_scores.accuracy.mean())
    return out
