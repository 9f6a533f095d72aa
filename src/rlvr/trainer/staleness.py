"""Bounded staleness: the admission rule, the producer thread, and the learner's drop of over-age batches.

Versions count learner updates: the learner trains step s with weights of version s and publishes s + 1.
The producer makes batches ("chunks") j = 0, 1, 2, ... in order, each sampled with one weight version v_j
(``batch.rollout.policy_version``). The learner consumes them in order; the chunk it trains at step s has
staleness s − v_j.

Two rules keep the staleness at or below η = ``max_staleness``:

1. **Admission (producers wait).** Chunk j may start only when the newest published version is at least
   j − d − η, where d is the number of chunks dropped so far. Chunk j is trained at step j − d' with
   d' >= d (drops only ever move later chunks earlier), so a chunk sampled with the newest weights at
   its start is at most η steps old when trained. At η = 0 chunk j waits for version j: the synchronous
   schedule exactly.
2. **Drop (never train on an over-age sample).** A sampler can still use older weights than admission
   assumed (weights in transit to a remote worker, a worker that missed an update). The learner
   checks every chunk it takes: staleness > η drops the whole chunk (counted in ``dropped_samples``),
   which also raises d, so the producer may start one more chunk.

The producer records the stream position after each chunk, so a checkpoint can say exactly which
prompts the trained batches used (chunks made but not yet trained are made again after a resume).

In-flight weight updates (``rollout.weight_sync=token``) change which version samples each token, not the rules:
a chunk's version v_j is its oldest token's (``Rollout.policy_version``), which is the version at its start or
newer, so admission bounds it as before and the drop rule reads it as before; its other tokens are fresher.
``token_staleness`` measures the spread per token and per sample.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from rlvr.types import Rollout

__all__ = ["Chunk", "Producer", "StalenessGate", "StalenessStats", "take_fresh"]


class StalenessGate:
    """Admission control shared by the learner (``publish``, ``drop``) and the producer (``wait_admit``)."""

    def __init__(self, max_staleness: int, version: int = 0, dropped: int = 0) -> None:
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.max_staleness = max_staleness
        self.version = version
        self.dropped = dropped
        self._closed = False
        self._cv = threading.Condition()

    def admits(self, chunk: int) -> bool:
        return self.version >= chunk - self.dropped - self.max_staleness

    def wait_admit(self, chunk: int) -> bool:
        """Block until ``chunk`` may start; False when the gate was closed meanwhile."""
        with self._cv:
            self._cv.wait_for(lambda: self._closed or self.admits(chunk))
            return not self._closed

    def publish(self, version: int) -> None:
        with self._cv:
            self.version = version
            self._cv.notify_all()

    def drop(self) -> None:
        with self._cv:
            self.dropped += 1
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


@dataclass
class Chunk:
    """One batch made by the producer: its index, the batch, and where the prompt stream stood after it."""

    index: int
    batch: Any
    position: int


class Producer:
    """A thread that makes chunk j = start, start + 1, ... with ``make(j)`` as the gate admits them.

    ``take()`` returns the next chunk in order (blocking) and re-raises, in the learner's thread, any
    error the producer hit; ``close()`` stops it (a chunk being made is finished and discarded).
    """

    def __init__(self, make: Callable[[int], Any], position: Callable[[], int], gate: StalenessGate,
                 start: int = 0) -> None:
        self.make = make
        self.position = position
        self.gate = gate
        self.next_chunk = start
        self._out: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="rlvr-producer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while self.gate.wait_admit(self.next_chunk):
                batch = self.make(self.next_chunk)
                self._out.put(Chunk(self.next_chunk, batch, self.position()))
                self.next_chunk += 1
        except BaseException as e:  # noqa: BLE001 - handed to the learner by take()
            self._out.put(e)

    def take(self) -> Chunk:
        item = self._out.get()
        if isinstance(item, BaseException):
            raise RuntimeError(f"the rollout producer failed: {type(item).__name__}: {item}") from item
        return item

    def ready(self) -> int:
        """Chunks made and not yet taken."""
        return self._out.qsize()

    def close(self, timeout: float | None = None) -> None:
        self.gate.close()
        self._thread.join(timeout)


@dataclass
class StalenessStats:
    """Counts over the run: trained samples by staleness, dropped samples and chunks."""

    max_staleness: int
    trained: dict[int, int] = field(default_factory=dict)
    dropped_samples: int = 0
    dropped_chunks: int = 0

    def state(self) -> dict[str, Any]:
        """JSON-able counts for a checkpoint (``from_state`` restores them on resume)."""
        return {"trained": {str(k): v for k, v in self.trained.items()}, "dropped_samples": self.dropped_samples,
                "dropped_chunks": self.dropped_chunks}

    @classmethod
    def from_state(cls, max_staleness: int, state: dict[str, Any] | None) -> "StalenessStats":
        if not state:
            return cls(max_staleness)
        return cls(max_staleness, {int(k): v for k, v in state["trained"].items()}, state["dropped_samples"],
                   state["dropped_chunks"])

    def metrics(self, staleness: int, samples: int, dropped_now: int, wait_s: float) -> dict[str, float]:
        """The async/ metrics of a step that trained ``samples`` samples at ``staleness`` after dropping
        ``dropped_now`` samples: this step's values and the run's distribution so far."""
        self.trained[staleness] = self.trained.get(staleness, 0) + samples
        total = sum(self.trained.values())
        out = {"async/staleness": float(staleness), "async/dropped_samples": float(dropped_now),
               "async/dropped_frac": self.dropped_samples / max(1, total + self.dropped_samples),
               "async/wait_s": wait_s}
        for k in range(self.max_staleness + 1):
            out[f"async/staleness_frac/{k}"] = self.trained.get(k, 0) / max(1, total)
        return out


def take_fresh(producer: Producer, gate: StalenessGate, version: int, stats: StalenessStats) -> tuple[Chunk, int]:
    """The learner's side of rule 2: the next chunk sampled at most ``max_staleness`` versions before
    ``version``; older ones are dropped, counted in ``stats`` (policy samples) and reported to the gate.
    Returns the chunk and the samples dropped before it."""
    dropped = 0
    while True:
        chunk = producer.take()
        ro = chunk.batch.rollout
        if version - ro.policy_version <= gate.max_staleness:
            return chunk, dropped
        samples = ro.lengths.shape[0]
        dropped += samples
        stats.dropped_samples += samples
        stats.dropped_chunks += 1
        gate.drop()


def token_staleness(ro: Rollout, version: int) -> dict[str, float]:
    """Staleness per token and per sample of a batch trained at learner ``version``: ``version`` minus the version
    that sampled each token (``Rollout.versions``). async/token_staleness_mean and _max over the valid tokens,
    async/fresh_token_frac (tokens of the newest weights), async/sample_staleness_mean over samples of their oldest
    token's (the one the bound ``rollout.max_staleness`` applies to). Empty for a batch without tokens."""
    mask = ro.loss_mask
    if not bool(mask.any()):
        return {}
    versions = ro.versions()
    age = (version - versions[mask]).double()
    rows = mask.any(1)
    oldest = torch.where(mask, versions, torch.iinfo(torch.long).max).min(1).values[rows]
    return {"async/token_staleness_mean": float(age.mean()), "async/token_staleness_max": float(age.max()),
            "async/fresh_token_frac": float((age == 0).double().mean()),
            "async/sample_staleness_mean": float((version - oldest).double().mean())}
