"""Rollout workers behind the Sampler protocol: sharding, weight versions, and restarts of dead or hung workers.

A ``WorkerPool`` is a Sampler (``generate`` + ``version``) whose generation runs on ``num_workers`` rollout workers.
The backend decides what a worker is: a thread of this process (``ThreadBackend``, the default and the one to debug
with) or a Ray actor (``rlvr.rollout.ray_backend.RayBackend``). The pool itself is backend-agnostic:

1. ``publish(version, weights)`` hands the learner's newest trainable weights to the backend once
   (``Backend.put_weights``: the dict itself for threads, one object-store entry for Ray); every later call tells
   its worker the newest (version, handle), and the worker loads them before sampling when they are newer than its
   own (``RolloutWorker.generate``). A rollout carries the version it was sampled with; with shards on several
   workers, the oldest. In-flight (``WorkerPool(in_flight=True)``, ``rollout.weight_sync=token``): ``publish`` also
   hands the new (version, handle) to every worker at once (``WorkerHandle.publish``), and a worker busy
   generating loads it between two decode steps (``RolloutWorker.refresh``); each token then records its version
   (``Rollout.token_versions``) and the rollout's version is its oldest token's.
2. ``generate`` splits the prompts into contiguous shards, one per worker (one worker: the call is passed on
   unchanged, seed included, so a pool of one reproduces the bare sampler exactly; with W > 1 shard k samples with
   seed ``derive_seed(seed, "shard", k)``), waits for every shard, and concatenates them in prompt order.
3. Faults: a shard whose worker raises, dies (a Ray actor's process exits) or does not answer within
   ``timeout_s`` is re-issued: the worker is killed (``WorkerHandle.kill``), a fresh one started in its place, and
   the same shard (same prompts, same seed, the newest weights) sent to it. The shard's first answer is never
   used, even if it arrives later, so a prompt is neither lost nor sampled into the batch twice. After
   ``max_restarts`` failures of one call the last error is raised, naming the worker.
"""
from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from rlvr.seeding import derive_seed
from rlvr.types import Rollout, SamplingParams

__all__ = ["Backend", "RolloutWorker", "ThreadBackend", "WorkerHandle", "WorkerPool", "WorkerFailure",
           "concat_rollouts", "shard_bounds"]


class WorkerFailure(RuntimeError):
    """A rollout worker failed more often than ``max_restarts`` during one ``generate`` call."""


class RolloutWorker:
    """The worker side, the same in every backend: a sampler plus the version of the weights it holds.

    ``make_sampler()`` builds the sampler in the worker (its own model copy); the sampler needs
    ``version``, ``generate`` and ``load_weights(version, weights)``. ``resolve`` turns a weights handle
    (whatever ``Backend.put_weights`` returned) into the weights dict; it is called only when the
    handle is newer than what the worker holds, so unchanged weights are never transferred twice.
    """

    def __init__(self, make_sampler: Callable[[], Any], resolve: Callable[[Any], Any] = lambda w: w) -> None:
        self.sampler = make_sampler()
        self.resolve = resolve
        self.in_flight = False
        self._latest: tuple[int, Any] = (0, None)
        self._lock = threading.Lock()

    def publish(self, version: int, weights: Any) -> None:
        """Newer weights, possibly while ``generate`` runs in another thread: from now on this worker samples
        in flight (its sampler's ``generate`` gets ``refresh``, which loads them between decode steps)."""
        with self._lock:
            self.in_flight = True
            if version > self._latest[0]:
                self._latest = (version, weights)

    def refresh(self) -> None:
        """Load the newest weights offered (by a call or ``publish``) if they are newer than the sampler's."""
        with self._lock:
            version, weights = self._latest
        if weights is not None and version > self.sampler.version:
            self.sampler.load_weights(version, self.resolve(weights))

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, n: int, seed: int,
                 version: int, weights: Any) -> Rollout:
        with self._lock:
            if version > self._latest[0]:
                self._latest = (version, weights)
        self.refresh()
        if self.in_flight:
            return self.sampler.generate(prompt_ids, params, n=n, seed=seed, refresh=self.refresh)
        return self.sampler.generate(prompt_ids, params, n=n, seed=seed)


class WorkerHandle(Protocol):
    """The pool's handle on one running worker."""

    def submit(self, prompt_ids: list[list[int]], params: SamplingParams, n: int, seed: int, version: int,
               weights: Any) -> cf.Future:
        """Start ``RolloutWorker.generate`` on the worker; the future yields its Rollout or raises its error."""
        ...

    def kill(self) -> None:
        """Stop the worker now (a hung one included); its pending futures may never complete."""
        ...

    def publish(self, version: int, weights: Any) -> None:
        """Hand newer weights to the worker now, even mid-call (``RolloutWorker.publish``; in-flight pools only)."""
        ...


class Backend(Protocol):
    """Where rollout workers run."""

    def put_weights(self, version: int, weights: dict[str, torch.Tensor]) -> Any:
        """A handle on published weights that workers can resolve (the dict, an object-store ref)."""
        ...

    def start_worker(self, index: int) -> WorkerHandle:
        """Start a fresh worker for slot ``index`` (also used to replace a killed one)."""
        ...

    def close(self) -> None:
        ...


# ----------------------------------------------------------------------------------------------
# The in-process backend: one thread per worker
# ----------------------------------------------------------------------------------------------

class _ThreadWorker:
    """A worker thread that runs one call at a time from its inbox; ``kill`` abandons it.

    Python cannot stop a thread, so a killed (hung) thread is left to finish on its own: it is a daemon,
    its inbox is closed, and whatever it returns goes to a future nobody reads.
    """

    def __init__(self, make_sampler: Callable[[], Any], name: str) -> None:
        self._inbox: list[tuple[cf.Future, tuple]] = []
        self._cv = threading.Condition()
        self._killed = False
        self._worker: RolloutWorker | None = None
        self._offer: tuple[int, Any] | None = None
        self._init_error: BaseException | None = None
        self._make_sampler = make_sampler
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            worker = RolloutWorker(self._make_sampler)
            with self._cv:
                self._worker, offer = worker, self._offer
            if offer is not None:                  # published while the sampler was being built
                worker.publish(*offer)
        except BaseException as e:  # noqa: BLE001 - reported through the calls' futures, queued ones included
            with self._cv:
                self._init_error = e
                pending, self._inbox = self._inbox, []
            for fut, _ in pending:
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(e)
            return
        while True:
            with self._cv:
                while not self._inbox and not self._killed:
                    self._cv.wait()
                if self._killed:
                    return
                fut, args = self._inbox.pop(0)
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(self._worker.generate(*args))
            except BaseException as e:  # noqa: BLE001 - the pool decides what a failure means
                fut.set_exception(e)

    def publish(self, version: int, weights: Any) -> None:
        with self._cv:
            self._offer = (version, weights)
            worker = self._worker
        if worker is not None:
            worker.publish(version, weights)

    def submit(self, prompt_ids, params, n, seed, version, weights) -> cf.Future:
        fut: cf.Future = cf.Future()
        with self._cv:
            if self._init_error is not None:  # the sampler could not be built: fail at once
                fut.set_exception(self._init_error)
                return fut
            self._inbox.append((fut, (prompt_ids, params, n, seed, version, weights)))
            self._cv.notify()
        return fut

    def kill(self) -> None:
        with self._cv:
            self._killed = True
            for fut, _ in self._inbox:
                fut.cancel()
            self._inbox.clear()
            self._cv.notify()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the thread to end (an idle killed worker ends at once)."""
        self._thread.join(timeout)


@dataclass
class ThreadBackend:
    """Workers are threads of this process, each with the sampler ``make_sampler()`` builds (its own model copy).

    On CPU, torch's intra-op pool is shared by every thread of the process: the learner and a generation
    thread each run their ops on it, so ``model.threads`` is split between them, not doubled.
    """

    make_sampler: Callable[[], Any]

    def put_weights(self, version: int, weights: dict[str, torch.Tensor]) -> Any:
        return weights

    def start_worker(self, index: int) -> WorkerHandle:
        return _ThreadWorker(self.make_sampler, name=f"rlvr-rollout-{index}")

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# The pool
# ----------------------------------------------------------------------------------------------

def shard_bounds(P: int, W: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) prompt ranges for min(W, P) shards whose sizes differ by at most one."""
    k = max(1, min(W, P))
    q, r = divmod(P, k)
    bounds, start = [], 0
    for i in range(k):
        end = start + q + (i < r)
        bounds.append((start, end))
        start = end
    return bounds


def concat_rollouts(parts: list[Rollout]) -> Rollout:
    """One Rollout of the parts' rows in order, right-padded to the longest; policy_version is the oldest;
    behaviour log-probs are kept only when every part has them; token versions when any part has them."""
    if not parts:
        raise ValueError("concat_rollouts: no parts")
    if len(parts) == 1:
        return parts[0]
    T = max(p.completion_ids.shape[1] for p in parts)
    pad = lambda x, v: torch.nn.functional.pad(x, (0, T - x.shape[1]), value=v)  # noqa: E731
    blp = None
    if all(p.behavior_logprobs is not None for p in parts):
        blp = torch.cat([pad(p.behavior_logprobs, 0.0) for p in parts])
    fill = lambda p: int(p.completion_ids[0, -1]) if p.completion_ids.numel() else 0  # noqa: E731
    tv = torch.cat([pad(p.versions(), 0) for p in parts]) if any(p.token_versions is not None for p in parts) \
        else None
    return Rollout(prompt_ids=[x for p in parts for x in p.prompt_ids],
                   completion_ids=torch.cat([pad(p.completion_ids, fill(p)) for p in parts]),
                   lengths=torch.cat([p.lengths for p in parts]),
                   finish_reasons=[x for p in parts for x in p.finish_reasons],
                   texts=[x for p in parts for x in p.texts],
                   policy_version=min(p.policy_version for p in parts), behavior_logprobs=blp, token_versions=tv)


@dataclass
class _Stats:
    restarts: int = 0
    reissued_prompts: int = 0
    errors: list[str] = field(default_factory=list)


class WorkerPool:
    """A Sampler whose calls run on rollout workers (see the module docstring).

    ``version`` is the newest published version (the one a call asks its workers to sample with);
    each Rollout reports the version actually used. ``in_flight``: ``publish`` reaches workers mid-call too
    (module docstring, point 1). ``publish`` may be called from another thread
    than ``generate``. Use as a context manager or call ``close()``.
    """

    def __init__(self, backend: Backend, num_workers: int = 1, *, timeout_s: float = 600.0,
                 max_restarts: int = 3, in_flight: bool = False) -> None:
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"WorkerPool: num_workers must be a positive int, got {num_workers!r}")
        if not timeout_s > 0 or max_restarts < 0:
            raise ValueError(f"WorkerPool: need timeout_s > 0 and max_restarts >= 0, got {timeout_s}, {max_restarts}")
        self.backend = backend
        self.timeout_s = float(timeout_s)
        self.max_restarts = max_restarts
        self.stats = _Stats()
        self.in_flight = in_flight
        self._lock = threading.Lock()
        self._weights: tuple[int, Any] = (0, None)
        self._workers = [self._start(i) for i in range(num_workers)]

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    @property
    def version(self) -> int:
        return self._weights[0]

    def publish(self, version: int, weights: dict[str, torch.Tensor]) -> None:
        """Make ``weights`` (trainable parameters, CPU) the newest, as ``version``; versions only go up."""
        with self._lock:
            if version < self._weights[0]:
                raise ValueError(f"WorkerPool.publish: version {version} is older than the published "
                                 f"{self._weights[0]}")
            self._weights = latest = (version, self.backend.put_weights(version, weights))
            workers = list(self._workers) if self.in_flight else []
        for w in workers:                              # in flight: busy workers take them between decode steps
            w.publish(*latest)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, *, n: int, seed: int) -> Rollout:
        bounds = shard_bounds(len(prompt_ids), self.num_workers)
        seeds = [seed] if len(bounds) == 1 else [derive_seed(seed, "shard", k) for k in range(len(bounds))]
        futures = {k: self._submit(k, prompt_ids[a:b], params, n, seeds[k]) for k, (a, b) in enumerate(bounds)}
        results: dict[int, Rollout] = {}
        failures = 0
        while futures:
            deadline = {k: t0 + self.timeout_s for k, (_, t0) in futures.items()}
            wait_s = max(0.0, min(deadline.values()) - time.monotonic())
            cf.wait([f for f, _ in futures.values()], timeout=wait_s, return_when=cf.FIRST_COMPLETED)
            now = time.monotonic()
            for k in list(futures):
                fut, _ = futures[k]
                error = None
                if fut.done():
                    try:
                        results[k] = fut.result()
                        del futures[k]
                        continue
                    except BaseException as e:  # noqa: BLE001 - a dead worker; re-issued below
                        error = f"{type(e).__name__}: {e}"
                elif now >= deadline[k]:
                    error = f"no answer within {self.timeout_s:g} s (hung)"
                else:
                    continue
                failures += 1
                self.stats.errors.append(f"worker {k}: {error}")
                if failures > self.max_restarts:
                    raise WorkerFailure(f"rollout worker {k} failed ({error}); {failures - 1} restarts already "
                                        f"spent on this call (max_restarts={self.max_restarts})")
                self._restart(k)
                a, b = bounds[k]
                self.stats.reissued_prompts += b - a
                futures[k] = self._submit(k, prompt_ids[a:b], params, n, seeds[k])
        return concat_rollouts([results[k] for k in range(len(bounds))])

    def _submit(self, k: int, prompts: list[list[int]], params: SamplingParams, n: int,
                seed: int) -> tuple[cf.Future, float]:
        version, weights = self._weights
        return self._workers[k].submit(prompts, params, n, seed, version, weights), time.monotonic()

    def _restart(self, k: int) -> None:
        self._workers[k].kill()
        self._workers[k] = self._start(k)
        self.stats.restarts += 1

    def _start(self, k: int) -> WorkerHandle:
        """A fresh worker for slot ``k``; an in-flight pool tells it so at once (with the newest weights)."""
        worker = self.backend.start_worker(k)
        if self.in_flight:
            worker.publish(*self._weights)
        return worker

    def close(self) -> None:
        for w in self._workers:
            w.kill()
        for w in self._workers:  # threads that are not stuck end now, before the interpreter does
            if hasattr(w, "join"):
                w.join(5.0)
        self._workers = []
        self.backend.close()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
