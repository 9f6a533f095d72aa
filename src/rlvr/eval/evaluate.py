"""Sample every problem n times, score with the training verifier, summarise with confidence intervals.

Reward and eval share one code path (``rlvr.rewards.scoring.score``), so the training signal and the
reported metric cannot disagree. Problems are generated in chunks (as many as fill one sampler batch);
chunk c is sampled with seed ``derive_seed(seed, "eval", c)``, so a result is a pure function of the
model, the problems, the sampling parameters, n, the seed and the sampler's batch size.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rlvr.eval.metrics import Estimate, summarize
from rlvr.rewards.scoring import RewardSettings, score
from rlvr.seeding import derive_seed
from rlvr.types import Problem, SamplingParams


@dataclass
class EvalResult:
    """One dataset's evaluation: metric estimates with CIs over problems, and per-problem records."""

    n_problems: int
    samples_per_problem: int
    seconds: float
    mean_length: float
    metrics: dict[str, Estimate]
    """pass@k, maj@k, mean@n (and max@k for continuous scores), greedy_pass@1 when asked for."""
    rows: list[dict[str, Any]]
    """Per problem: id, prompt, answer, correct (count), samples [{completion, extracted, score, reason,
    finish, length}] and greedy (the same record) when asked for."""

    @property
    def accuracy(self) -> float:
        """The mean verifier score over all samples (mean@n; greedy accuracy when n = 1 and T = 0)."""
        return self.metrics[f"mean@{self.samples_per_problem}"].mean

    def flat(self, prefix: str = "eval/") -> dict[str, float]:
        """Scalars for metrics.jsonl / TensorBoard: accuracy, every metric's mean, length, seconds.

        mean@n is logged as accuracy, and maj@1 (always equal to pass@1) is left out.
        """
        same = {f"mean@{self.samples_per_problem}", "maj@1"}
        out = {f"{prefix}accuracy": self.accuracy}
        out.update({f"{prefix}{name}": est.mean for name, est in self.metrics.items() if name not in same})
        out.update({f"{prefix}response_length": self.mean_length, f"{prefix}seconds": self.seconds})
        return out


def _chunks(items: list[Problem], size: int) -> list[list[Problem]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _sample_records(sampler: Any, encode: Callable[[Problem], list[int]], problems: list[Problem], pool: Any,
                    params: SamplingParams, n: int, seed: int, tag: str,
                    progress: Callable[[int], None] | None) -> list[list[dict[str, Any]]]:
    """records[i][j]: sample j of problem i, scored with the training verifier."""
    per_chunk = max(1, getattr(sampler, "max_batch_size", 64) // n)
    out: list[list[dict[str, Any]]] = []
    for c, chunk in enumerate(_chunks(problems, per_chunk)):
        rollout = sampler.generate([encode(p) for p in chunk], params, n=n, seed=derive_seed(seed, tag, c))
        s = score(pool, chunk, rollout, n, RewardSettings(), params.max_new_tokens)
        for i in range(len(chunk)):
            out.append([{"completion": rollout.texts[i * n + j], "extracted": s.extracted[i * n + j],
                         "score": float(s.accuracy[i * n + j]), "reason": s.reasons[i * n + j],
                         "finish": rollout.finish_reasons[i * n + j], "length": int(rollout.lengths[i * n + j])}
                        for j in range(n)])
        if progress is not None:
            progress(len(chunk))
    return out


def evaluate(sampler: Any, encode: Callable[[Problem], list[int]], problems: Sequence[Problem], pool: Any,
             params: SamplingParams, *, seed: int = 0, n: int = 1, ks: Sequence[int] | None = None,
             greedy: bool = False, n_boot: int = 1000, progress: Callable[[int], None] | None = None
             ) -> EvalResult:
    """Sample ``n`` completions per problem (plus one greedy one with ``greedy``) and summarise them.

    Metrics (rlvr.eval.metrics.summarize): pass@k for k in ``ks`` (default 1, 2, 4, .., n) with the
    unbiased estimator, maj@k, mean@n, max@k for continuous scores, each with a 95% bootstrap CI over
    problems; ``greedy_pass@1`` with ``greedy``. ``progress`` is called with the number of problems
    finished after each chunk (twice per problem with ``greedy``).
    """
    t0 = time.perf_counter()
    problems = list(problems)
    if not problems:
        raise ValueError("evaluate: no problems")
    if n > 1 and params.temperature == 0:
        raise ValueError(f"evaluate: n={n} samples per problem need temperature > 0 (greedy samples are identical)")
    records = _sample_records(sampler, encode, problems, pool, params, n, seed, "eval", progress)
    scores = [[r["score"] for r in rec] for rec in records]
    answers = [[r["extracted"] for r in rec] for rec in records]
    metrics = summarize(scores, answers, ks=ks, n_boot=n_boot, seed=seed)
    rows = [{"id": p.id, "prompt": p.prompt, "answer": p.answer, "correct": sum(s >= 1.0 for s in sc),
             "samples": rec} for p, sc, rec in zip(problems, scores, records)]
    if greedy:
        gparams = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=params.max_new_tokens, stop=params.stop)
        g = _sample_records(sampler, encode, problems, pool, gparams, 1, seed, "greedy", progress)
        metrics["greedy_pass@1"] = summarize([[r[0]["score"]] for r in g], [[r[0]["extracted"]] for r in g],
                                             ks=[1], n_boot=n_boot, seed=seed)["pass@1"]
        for row, rec in zip(rows, g):
            row["greedy"] = rec[0]
    lengths = [r["length"] for rec in records for r in rec]
    return EvalResult(n_problems=len(problems), samples_per_problem=n, seconds=time.perf_counter() - t0,
                      mean_length=sum(lengths) / len(lengths), metrics=metrics, rows=rows)
