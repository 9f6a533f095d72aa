"""Held-out evaluation: sample each eval problem, score it with the same verifier as training.

Reward and eval share one code path (``rlvr.rewards.scoring.score``), so the training signal and the
reported accuracy cannot diverge. ``accuracy`` is the mean verifier score (the format and overlong
terms are not part of it); with n > 1 samples per problem it is mean@n.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rlvr.rewards.scoring import RewardSettings, score
from rlvr.seeding import derive_seed
from rlvr.types import Problem, SamplingParams


@dataclass
class EvalResult:
    accuracy: float
    n_problems: int
    samples_per_problem: int
    mean_length: float
    seconds: float
    rows: list[dict[str, Any]]

    def metrics(self, prefix: str = "eval/") -> dict[str, float]:
        return {f"{prefix}accuracy": self.accuracy, f"{prefix}response_length": self.mean_length,
                f"{prefix}seconds": self.seconds}


def evaluate(sampler: Any, encode: Callable[[Problem], list[int]], problems: Sequence[Problem], pool: Any,
             params: SamplingParams, *, seed: int = 0, n: int = 1) -> EvalResult:
    """Sample ``n`` completions per problem and report the mean verifier score."""
    t0 = time.perf_counter()
    problems = list(problems)
    rollout = sampler.generate([encode(p) for p in problems], params, n=n, seed=derive_seed(seed, "eval"))
    s = score(pool, problems, rollout, n, RewardSettings(), params.max_new_tokens)
    rows = [{"id": p.id, "answer": p.answer, "completion": rollout.texts[i * n + j],
             "extracted": s.extracted[i * n + j], "score": float(s.accuracy[i * n + j]),
             "reason": s.reasons[i * n + j]} for i, p in enumerate(problems) for j in range(n)]
    return EvalResult(accuracy=float(s.accuracy.mean()), n_problems=len(problems), samples_per_problem=n,
                      mean_length=float(rollout.lengths.double().mean()), seconds=time.perf_counter() - t0,
                      rows=rows)
