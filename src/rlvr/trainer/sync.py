"""The synchronous trainer: sample → score → advantages → update, one batch per step.

One training step, top to bottom:

1. **Collect** (``collect``; with several learner ranks rank 0 samples and scores, every rank assembles the
   batch): take P prompts from the seeded stream, sample G completions of each with the
   current weights, score every completion with the task's verifier (plus any shaping), and, when the
   algorithm asks for them, sample and score G completions of the frozen reference model too (AAPO). With
   dynamic sampling (DAPO) groups whose rewards are all equal are replaced by fresh prompts. The algorithm
   turns the rewards into token-level advantages (with the critic's values for token-level estimators).
2. **Update** (``update``): the policy on the batch (``step.update_policy``: π_old / reference log-probs once,
   then ``num_iterations × mini_batches`` optimiser steps of accumulated micro-batches under one normaliser
   each), then the critic when the algorithm has one.
3. **Log, evaluate, checkpoint** (``Run.end_step``): metrics.jsonl / TensorBoard, held-out accuracy on
   schedule, an atomic checkpoint on schedule.

What was simplified, and why:
1. Generation and training alternate: there is no staleness (the policy version is still carried and logged).
   In one process they share the policy's weights; with several learner ranks (``dist.world_size``) rank 0
   samples with its own copy, which takes the gathered weights after every update (``Run.publish``). The
   asynchronous loop (``async_.py``) reuses ``sample``, ``make_batch`` and ``update`` and differs only in where
   samples come from.
2. Everything an algorithm needs is asked of the run's ``Algorithm`` (resolved once from the config); this
   file never mentions an algorithm by name.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rlvr.config import TrainConfig
from rlvr.rewards.scoring import score
from rlvr.seeding import derive_seed
from rlvr.trainer import critic as critic_lib
from rlvr.trainer.batch import Batch, Group, assemble
from rlvr.trainer.checkpoint import TrainState
from rlvr.trainer.dist import broadcast_object
from rlvr.trainer.run import Run, RunSummary, step_metrics
from rlvr.trainer.step import update_policy
from rlvr.types import Problem

__all__ = ["RunSummary", "collect", "make_batch", "sample", "train", "update"]


def train(cfg: TrainConfig, *, run_dir: str | Path | None = None, resume: bool = False,
          console: Any = None) -> RunSummary:
    """Run (or, with ``resume``, continue) training; returns where the run lives and its eval accuracies."""
    with Run(cfg, run_dir, resume, console) as run:
        for step in range(run.state.step, cfg.steps):
            t0 = time.perf_counter()
            # ---- 1. collect: sample, score, advantages -------------------------------------------
            batch = collect(run, run.sampler, step)
            t1 = time.perf_counter()
            # ---- 2. update: the policy, then the critic ------------------------------------------
            metrics = update(run, batch, step)
            run.publish(run.version + 1)
            # ---- 3. log, evaluate, checkpoint -----------------------------------------------------
            metrics = step_metrics(batch, metrics, run.version, (t0, t1, time.perf_counter()),
                                   cfg.algo.num_iterations)
            run.end_step(step, batch, metrics, TrainState(step + 1, run.data_position, run.version))
    return run.summary()


# ----------------------------------------------------------------------------------------------
# 1. Collect
# ----------------------------------------------------------------------------------------------

def collect(run: Run, sampler: Any, step: int) -> Batch:
    """Step ``step``'s batch: P prompts × G scored samples from ``sampler`` with advantages. With several learner
    ranks rank 0 samples and scores, and every rank assembles the batch (a critic's values take them all)."""
    sampled = sample(run, sampler, step) if run.world.main else None
    return make_batch(run, *broadcast_object(sampled, run.world))


def sample(run: Run, sampler: Any, step: int) -> tuple[list[Group], dict[str, float]]:
    """(groups, counts and times) of P prompts × G scored samples from ``sampler`` (the learner's own, or the async
    loop's rollout workers). With ``rollout.dynamic_sampling``, groups whose rewards are all equal are dropped and
    their places refilled from the stream, for up to ``max_refill_rounds`` more rounds (the last round keeps
    whatever it gets)."""
    r = run.cfg.rollout
    rounds = 1 + (r.max_refill_rounds if r.dynamic_sampling else 0)
    kept: list[Group] = []
    tally = {"rollout/prompts_sampled": 0, "rollout/groups_dropped": 0, "perf/gen_s": 0.0, "gen_tokens": 0,
             "perf/score_s": 0.0}
    for rnd in range(rounds):
        if len(kept) >= r.prompts_per_step:
            break
        groups = sample_groups(run, sampler, run.stream.take(r.prompts_per_step - len(kept)), step, rnd, tally)
        keep_all = not r.dynamic_sampling or rnd == rounds - 1
        kept += [g for g in groups if keep_all or g.informative]
        tally["rollout/groups_dropped"] += sum(not (keep_all or g.informative) for g in groups)
    return kept[:r.prompts_per_step], tally


def sample_groups(run: Run, sampler: Any, problems: list[Problem], step: int, rnd: int,
                  tally: dict[str, float]) -> list[Group]:
    """Sample and score G completions of each problem (and of the reference model, when the algorithm draws
    reference samples); adds the counts and times to ``tally``."""
    cfg, G = run.cfg, run.cfg.rollout.group_size
    prompt_ids = [run.encode(p) for p in problems]
    t0 = time.perf_counter()
    rollout = sampler.generate(prompt_ids, run.sampling, n=G, seed=derive_seed(cfg.seed, "rollout", step, rnd))
    ref_rollout = None
    if run.algo.needs_reference_samples:
        with run.ref_context():
            ref_rollout = run.ref_sampler.generate(prompt_ids, run.sampling, n=G,
                                                   seed=derive_seed(cfg.seed, "reference", step, rnd))
    t1 = time.perf_counter()
    scores = score(run.pool, problems, rollout, G, run.rewards, cfg.rollout.max_new_tokens)
    ref_scores = score(run.pool, problems, ref_rollout, G, run.rewards, cfg.rollout.max_new_tokens) \
        if ref_rollout is not None else None
    tally["perf/gen_s"] += t1 - t0
    tally["perf/score_s"] += time.perf_counter() - t1
    tally["gen_tokens"] += int(rollout.lengths.sum()) + (int(ref_rollout.lengths.sum()) if ref_rollout else 0)
    tally["rollout/prompts_sampled"] += len(problems)
    rewards = scores.total.view(len(problems), G)
    informative = (rewards != rewards[:, :1]).any(-1).tolist()
    return [Group(p, i * G, rollout, scores, ref_scores, informative[i]) for i, p in enumerate(problems)]


def make_batch(run: Run, groups: list[Group], tally: dict[str, float]) -> Batch:
    """Stack the kept groups and compute their advantages (with the critic's V_old and the KL-in-reward term for
    token-level estimators)."""
    algo, G = run.algo, run.cfg.rollout.group_size
    problems, rollout, scores, ref_scores = assemble(groups, G)
    mbs = run.schedule.budget
    values = critic_lib.values(run.critic, rollout, micro_batch_size=mbs) if algo.needs_critic else None
    kl = critic_lib.token_kl(run.policy, rollout, micro_batch_size=mbs) if algo.reward_kl_coef > 0 else None
    adv, returns = algo.advantages(scores.total.view(-1, G), rollout.loss_mask,
                                   ref_rewards=ref_scores.total.view(-1, G) if ref_scores is not None else None,
                                   values=values, kl=kl)
    gen_tokens = tally.pop("gen_tokens")
    tally["rollout/samples"] = tally["rollout/prompts_sampled"] * G * (2 if algo.needs_reference_samples else 1)
    tally["perf/gen_tokens_per_s"] = gen_tokens / max(tally["perf/gen_s"], 1e-9)
    return Batch(problems, rollout, scores, adv, ref_scores, values, returns, metrics=tally)


# ----------------------------------------------------------------------------------------------
# 2. Update
# ----------------------------------------------------------------------------------------------

def update(run: Run, batch: Batch, step: int) -> dict[str, float]:
    """Train the policy on the batch, then the critic when the algorithm has one; their metrics."""
    metrics = update_policy(run.policy, batch, run.algo, run.schedule, step=step)
    if run.critic is not None:
        t = time.perf_counter()
        metrics |= critic_lib.value_metrics(batch)
        metrics |= critic_lib.update_critic(run.critic, batch, run.schedule, step=step)
        metrics["perf/critic_s"] = time.perf_counter() - t
    return metrics
