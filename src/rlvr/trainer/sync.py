"""The synchronous trainer: sample → score → advantages → policy update, one batch per step.

What was simplified, and why:
1. One process, one device: generation and training share the policy's weights, so there is no
   weight sync and no staleness (policy_version is still carried and logged).
2. Held-out accuracy is measured at the start and the end (and every ``eval.every`` steps) with
   the same verifier as the reward, greedy by default (``trainer.run.Run``, shared with the async loop).
3. Everything an algorithm needs is read from its registry entry (``needs_reference_samples``,
   ``takes_k``, ``needs_old_logprobs``, ``needs_values``); this file never mentions an algorithm by
   name. A critic exists only when the estimator needs values (build.build_critic); then it is
   trained after the policy on the same batch (rlvr.trainer.critic).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rlvr.config import TrainConfig
from rlvr.trainer import build
from rlvr.trainer import critic as critic_lib
from rlvr.trainer.checkpoint import TrainState
from rlvr.trainer.run import Run, RunSummary, step_metrics, update_settings
from rlvr.trainer.step import update_policy

__all__ = ["RunSummary", "train"]


def train(cfg: TrainConfig, *, run_dir: str | Path | None = None, resume: bool = False,
          console: Any = None) -> RunSummary:
    """Run (or, with ``resume``, continue) training; returns where the run lives and its eval accuracies."""
    from rlvr.rollout import HFSampler

    settings = update_settings(cfg)
    with Run(cfg, run_dir, resume, console) as r:
        ses = r.ses
        reference = ses.reference.context if ses.reference is not None else None
        autocast = build.autocast_factory(cfg, next(ses.model.parameters()).device)
        ref_sampler = HFSampler(ses.reference.model, ses.tokenizer, max_batch_size=cfg.rollout.max_batch_size) \
            if ses.reference is not None else None
        collector = build.make_collector(cfg, ses.stream, ses.encode, ses.sampler, r.pool, ref_sampler,
                                         ses.reference, critic=ses.critic[0] if ses.critic else None, policy=ses.model)
        for step in range(ses.state.step, cfg.steps):
            t0 = time.perf_counter()
            batch = collector.collect(step)
            t1 = time.perf_counter()
            upd = update_policy(ses.model, ses.optimizer, ses.scheduler, batch, settings, step=step,
                                reference=reference, log_ref_kl=cfg.log.ref_kl and reference is not None,
                                autocast=autocast)
            if ses.critic is not None:
                upd.update(critic_lib.value_metrics(batch))
                upd.update(critic_lib.update_critic(*ses.critic, batch, settings, step=step,
                                                    value_clip=cfg.critic.value_clip, autocast=autocast))
            ses.sampler.version += 1
            metrics = step_metrics(batch, upd, ses.sampler.version, (t0, t1, time.perf_counter()),
                                   cfg.algo.num_iterations)
            r.end_step(step, batch, metrics, TrainState(step + 1, ses.stream.position, ses.sampler.version))
    return r.summary()
