"""The asynchronous trainer: rollout workers generate the next batches while the learner trains on this one.

A producer thread makes batches in order with the sync loop's ``sample`` and ``make_batch`` (sampling on the
rollout workers, scoring, advantages); the learner takes them, drops any sampled with weights more than
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
With several learner ranks (``dist.world_size``) the workers, the producer and the gate live on rank 0, which
hands each batch to every rank; all ranks train on it together (``step.update_policy``).
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
from rlvr.trainer.staleness import Producer, StalenessGate, StalenessStats, take_fresh, token_staleness
from rlvr.trainer.dist import broadcast_object
from rlvr.trainer.sync import make_batch, sample, update

__all__ = ["train", "worker_pool"]


def worker_pool(cfg: TrainConfig) -> WorkerPool:
    """The rollout workers the config asks for, each with a sampler built from the config alone."""
    r = cfg.rollout
    backend = make_backend(r.backend, build.SamplerFactory(cfg), r)
    return WorkerPool(backend, r.num_workers, timeout_s=r.worker_timeout_s, max_restarts=r.max_worker_restarts,
                      in_flight=r.weight_sync == "token")


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


class Rollouts:
    """Rank 0's side of asynchronous sampling: the rollout workers, the staleness gate and statistics, and the
    producer thread that makes batches with the sync loop's ``sample`` and ``make_batch``."""

    def __init__(self, run: Run, workers: WorkerPool) -> None:
        cfg, extras = run.cfg, run.state.extras
        self.run, self.workers = run, workers
        workers.publish(run.version, run.worker_weights())
        self.stats = StalenessStats.from_state(cfg.rollout.max_staleness, extras.get("async_stats"))
        self.gate = StalenessGate(cfg.rollout.max_staleness, run.version, dropped=self.stats.dropped_chunks)
        self.producer = Producer(lambda step: make_batch(run, *sample(run, workers, step)),
                                 lambda: run.stream.position, self.gate,
                                 start=extras.get("async_next_chunk", run.state.step))

    def take(self) -> tuple[Any, int, float]:
        """(the next chunk fresh enough to train on, chunks dropped for staleness, seconds waited)."""
        t0 = time.perf_counter()
        chunk, dropped = take_fresh(self.producer, self.gate, self.run.version, self.stats)
        return chunk, dropped, time.perf_counter() - t0

    def publish(self) -> None:
        """The learner's new weights to the workers and the gate (after ``Run.publish``)."""
        self.workers.publish(self.run.version, self.run.worker_weights())
        self.gate.publish(self.run.version)

    def metrics(self, chunk: Any, staleness: int, dropped: int, waited: float) -> dict[str, float]:
        ro = chunk.batch.rollout
        return {**self.stats.metrics(staleness, ro.lengths.shape[0], dropped, waited),
                **token_staleness(ro, ro.policy_version + staleness),
                "async/ready_chunks": float(self.producer.ready()),
                "rollout/worker_restarts": float(self.workers.stats.restarts),
                "rollout/reissued_prompts": float(self.workers.stats.reissued_prompts)}

    def state(self, chunk: Any) -> TrainState:
        """What a resume after training on ``chunk`` needs."""
        return TrainState(0, chunk.position, self.run.version,
                          {"async_next_chunk": chunk.index + 1, "async_stats": self.stats.state()})

    def close(self) -> None:
        self.producer.close(timeout=self.run.cfg.rollout.worker_timeout_s)


@contextmanager
def _rollouts(run: Run) -> Iterator[Rollouts | None]:
    """Rank 0's ``Rollouts`` (closed on exit); None on the other learner ranks."""
    if not run.world.main:
        yield None
        return
    with worker_pool(run.cfg) as workers:
        rollouts = Rollouts(run, workers)
        try:
            yield rollouts
        finally:
            rollouts.close()


def train(cfg: TrainConfig, *, run_dir: str | Path | None = None, resume: bool = False,
          console: Any = None) -> RunSummary:
    """Run (or, with ``resume``, continue) asynchronous training; returns where the run lives and its eval
    accuracies."""
    with _stage_threads(cfg), Run(cfg, run_dir, resume, console) as run, _rollouts(run) as rollouts:
        for step in range(run.state.step, cfg.steps):
            t0 = time.perf_counter()
            chunk, dropped, waited = rollouts.take() if rollouts else (None, 0, 0.0)   # samples come from here
            batch = broadcast_object(chunk.batch if chunk else None, run.world)
            t1 = time.perf_counter()
            staleness = run.version - batch.rollout.policy_version
            metrics = update(run, batch, step)
            run.publish(run.version + 1)
            if rollouts is None:
                run.end_step(step, batch, metrics, TrainState(step + 1, 0, run.version))
                continue
            rollouts.publish()
            metrics = {**step_metrics(batch, metrics, run.version, (t0, t1, time.perf_counter()),
                                      cfg.algo.num_iterations), **rollouts.metrics(chunk, staleness, dropped, waited)}
            state = rollouts.state(chunk)
            state.step = step + 1
            run.end_step(step, batch, metrics, state)
    return run.summary()
