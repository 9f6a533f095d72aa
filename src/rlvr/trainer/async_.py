"""The asynchronous trainer: rollout workers generate the next batches while the learner trains on this one.

A producer thread makes batches in order with the sync loop's ``collect`` (sampling on the rollout workers,
scoring, advantages); the learner takes them, drops any sampled with weights more than
``rollout.max_staleness`` updates old, trains on the rest with the sync loop's ``update``, and publishes its
new weights with their version. That is the only difference from the synchronous loop: where samples come
from. Admission control (``trainer.staleness``) holds the
producer back so that batches are not made further ahead than the bound; at ``max_staleness=0`` this is the
synchronous schedule, step for step (tested against ``sync.train``).

Which objective handles the stale samples is the loss's business, read from its registry entry:
behaviour-corrected losses get the samplers' log-probs (``decoupled_ppo``; ``ppo_clip`` / ``cispo`` with
``algo.old_logprobs=behavior``), current-policy losses (``asympo``, ``spo``, ``current_policy``) need none
and the samplers then return none.

Rollout workers are threads of this process (``rollout.backend=thread``) or Ray actors (``ray``), sampling
with HFSampler or, with ``rollout.engine=vllm``, vLLM (then the learner publishes LoRA-merged full weights);
a worker that dies or hangs is replaced and its prompts re-issued (``rollout.pool``). Estimators that need a critic
are not supported here (the critic would need its own weight versions); ``Algorithm.from_config`` says so.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from rlvr.config import TrainConfig
from rlvr.rollout.backends import backend as backend_spec
from rlvr.rollout.backends import make_backend
from rlvr.rollout.pool import WorkerPool
from rlvr.trainer import build
from rlvr.trainer.checkpoint import TrainState
from rlvr.trainer.run import Run, RunSummary, step_metrics
from rlvr.trainer.staleness import Producer, StalenessGate, StalenessStats, take_fresh
from rlvr.trainer.sync import collect, update

__all__ = ["train", "worker_pool"]


def worker_pool(cfg: TrainConfig) -> WorkerPool:
    """The rollout workers the config asks for, each with a sampler built from the config alone."""
    r = cfg.rollout
    backend = make_backend(r.backend, build.SamplerFactory(cfg), r)
    return WorkerPool(backend, r.num_workers, timeout_s=r.worker_timeout_s, max_restarts=r.max_worker_restarts)


@contextmanager
def _stage_threads(cfg: TrainConfig) -> Iterator[None]:
    """With thread workers and no ``model.threads``, the generation thread and the learner each run their ops
    on half the cores (both stages would otherwise contend for every core: docs/benchmarks.md, async on
    tiny-arith); torch's setting is restored afterwards."""
    before = torch.get_num_threads()
    if cfg.model.threads is None and backend_spec(cfg.rollout.backend).in_process:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(cfg: TrainConfig, *, run_dir: str | Path | None = None, resume: bool = False,
          console: Any = None) -> RunSummary:
    """Run (or, with ``resume``, continue) asynchronous training; returns where the run lives and its eval
    accuracies."""
    with _stage_threads(cfg), Run(cfg, run_dir, resume, console) as run, worker_pool(cfg) as workers:
        extras = run.state.extras
        workers.publish(run.version, build.worker_weights(cfg, run.policy.model))
        stats = StalenessStats.from_state(cfg.rollout.max_staleness, extras.get("async_stats"))
        gate = StalenessGate(cfg.rollout.max_staleness, run.version, dropped=stats.dropped_chunks)
        producer = Producer(lambda step: collect(run, workers, step), lambda: run.stream.position, gate,
                            start=extras.get("async_next_chunk", run.state.step))
        try:
            for step in range(run.state.step, cfg.steps):
                t0 = time.perf_counter()
                chunk, dropped = take_fresh(producer, gate, run.version, stats)        # samples come from here
                t1 = time.perf_counter()
                staleness = run.version - chunk.batch.rollout.policy_version
                metrics = update(run, chunk.batch, step)
                run.publish(run.version + 1)
                workers.publish(run.version, build.worker_weights(cfg, run.policy.model))
                gate.publish(run.version)
                metrics = {**step_metrics(chunk.batch, metrics, run.version, (t0, t1, time.perf_counter()),
                                          cfg.algo.num_iterations),
                           **stats.metrics(staleness, chunk.batch.rollout.lengths.shape[0], dropped, t1 - t0),
                           "async/ready_chunks": float(producer.ready()),
                           "rollout/worker_restarts": float(workers.stats.restarts),
                           "rollout/reissued_prompts": float(workers.stats.reissued_prompts)}
                run.end_step(step, chunk.batch, metrics,
                             TrainState(step + 1, chunk.position, run.version,
                                        {"async_next_chunk": chunk.index + 1, "async_stats": stats.state()}))
        finally:
            producer.close(timeout=cfg.rollout.worker_timeout_s)
    return run.summary()
