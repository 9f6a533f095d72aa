"""SimSampler, the staleness simulator: a model-free sampler for testing and benchmarking asynchronous RL without a
GPU (``python -m benchmarks async`` and tests/test_async.py, tests/test_simulator.py).

It implements the ``Sampler`` protocol (``generate``, ``version``) plus ``load_weights``, but has no model: the
"policy" is one token distribution that drifts with the weight version, and a generation takes a configurable time.
So throughput, staleness and the dropping of stale samples can be tested exactly and benchmarked cheaply.

Exact semantics (V = ``vocab_size``, M = ``params.max_new_tokens``, B = P·n rows):

* **Policy.** ``base`` and ``direction`` are Float64[V] vectors of standard normals drawn, in that order, from a
  ``torch.Generator`` seeded with ``seed``. At version v the logits are ``logits(v) = base + drift·v·direction``
  and every completion token is drawn i.i.d. (independently of position, prompt and earlier tokens) from
  ``softmax(logits(v))`` at ``params.temperature`` and ``params.top_p``: for T > 0 the distribution of
  ``rlvr.rollout.token_probs`` (softmax(logits / T), then the nucleus filter); for T = 0 the argmax at every
  step (then every row is the same).
* **Draws.** Row b = i·n + j (prompt i, sample j) at step t draws with ``uniforms(row_keys(seed, i, j), t)`` and
  ``inverse_cdf_sample``, as ``HFSampler`` does: a rollout is a pure function of (version, number of prompts,
  params, n, seed), and row (i, j) does not depend on n or on the other rows. Prompt contents are validated but
  otherwise ignored; so are ``params.stop`` (there is no tokenizer) and the weights passed to ``load_weights``.
* **Finish.** A row ends "stop" at its first ``eos_id`` token (counted in ``lengths``) or "length" after M tokens.
  ``completion_ids`` is Long[B, T] with T = max(lengths), padded with ``eos_id`` at positions >= lengths[b].
  ``texts[b]`` is ``"".join(str(tok % 10) for tok in row)`` over the row's tokens without the ending EOS, so an
  integer verifier can score it.
* **Behaviour log-probs.** With ``params.logprobs`` set, ``behavior_logprobs`` is Float32[B, T]:
  ``log_softmax(logits(v))[token]`` (temperature 1, no top-p: the raw policy, whatever the sampling settings), 0 at
  positions >= lengths[b]; else None.
* **Versions.** ``load_weights(v)`` at ``clock()`` = c makes v visible from ``clock() >= c + weight_delay_s`` on
  (at once when the delay is 0); ``version`` is the newest visible version (0 before any load). This models
  weight-transfer lag: a generation may start with weights older than the newest published. Versions never go
  down: loading one below the newest loaded is a ValueError; loading the newest again changes nothing. Assigning
  ``version = v`` (as the synchronous trainer does) makes v visible at once, under the same rule.
* **A call.** ``generate`` reads the visible version v once, at its start, and reports it as ``policy_version``.
  Before returning it sleeps ``seconds_per_call + seconds_per_token·max(lengths)`` seconds (a batched decoder takes
  one step per position of the longest row) through the injected ``sleep`` (not called when that is 0), adds
  them to ``busy_s`` and counts the call in ``calls``.
* **In flight.** ``generate(..., refresh=f)`` decodes step by step instead: it sleeps ``seconds_per_call``, then
  for each step t calls ``f()`` (t > 0; it may call ``load_weights``), reads the visible version v_t, draws step
  t's tokens from ``softmax(logits(v_t))`` (same uniforms) and sleeps ``seconds_per_token``, until every row has
  ended; ``token_versions`` holds v_t, behaviour log-probs are under ``logits(v_t)``, ``policy_version`` is the
  oldest token's. Same total time as a call without ``refresh``.
* **Threads.** ``load_weights`` may run in another thread during ``generate``; a lock guards the version state
  and the counters and is never held while sleeping or sampling.

Cost: O(B·M·V) arithmetic per call (rows are dropped as they finish), negligible for the default V = 12.
"""
from __future__ import annotations

import math
import numbers
import threading
import time
from collections import deque
from typing import Any, Callable

import torch

from rlvr.rollout import check_generate_args, inverse_cdf_sample, row_keys, token_probs, uniforms
from rlvr.types import Rollout, SamplingParams

Tensor = torch.Tensor

__all__ = ["SimSampler", "sim_logprobs"]


def sim_logprobs(logits: Tensor) -> Tensor:
    """Log-probabilities of the raw policy (temperature 1, no top-p).   logits [V] -> float64 [V]."""
    return torch.log_softmax(logits.to(torch.float64), dim=-1)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"SimSampler: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_version(where: str, version: Any) -> int:
    if not _is_int(version) or version < 0:
        raise ValueError(f"SimSampler.{where}: version must be an int >= 0, got {version!r}")
    return int(version)


class SimSampler:
    """Sampler protocol (generate) plus load_weights; no model. Generation takes a configurable time (sleep) and
    the sampling policy drifts with the weight version, so throughput, staleness and drops can be tested and
    benchmarked. See the module docstring for the exact semantics.

    Args:
        vocab_size: V, tokens 0..V-1 (>= 2).
        eos_id: the token that ends a row "stop", in [0, V).
        drift: how far the logits move per version along ``direction``.
        seconds_per_call, seconds_per_token: simulated generation time, slept at the end of each ``generate``.
        weight_delay_s: seconds from ``load_weights`` until the version is used (visible).
        seed: seeds ``base`` and ``direction`` (not the draws: those use ``generate``'s seed).
        clock, sleep: time sources (inject fakes in tests).

    Attributes:
        calls: ``generate`` calls made.   busy_s: total seconds slept by them.
    """

    def __init__(self, *, vocab_size: int = 12, eos_id: int = 0, drift: float = 0.1, seconds_per_call: float = 0.0,
                 seconds_per_token: float = 0.0, weight_delay_s: float = 0.0, seed: int = 0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if not _is_int(vocab_size) or vocab_size < 2:
            raise ValueError(f"SimSampler: vocab_size must be an int >= 2, got {vocab_size!r}")
        if not _is_int(eos_id) or not 0 <= eos_id < vocab_size:
            raise ValueError(f"SimSampler: eos_id must be an int in [0, vocab_size={vocab_size}), got {eos_id!r}")
        if isinstance(drift, bool) or not isinstance(drift, numbers.Real) or not math.isfinite(drift):
            raise ValueError(f"SimSampler: drift must be a finite number, got {drift!r}")
        if not _is_int(seed):
            raise ValueError(f"SimSampler: seed must be an int, got {seed!r}")
        for name, fn in (("clock", clock), ("sleep", sleep)):
            if not callable(fn):
                raise ValueError(f"SimSampler: {name} must be callable, got {fn!r}")
        self.vocab_size = int(vocab_size)
        self.eos_id = int(eos_id)
        self.drift = float(drift)
        self.seconds_per_call = _check_seconds("seconds_per_call", seconds_per_call)
        self.seconds_per_token = _check_seconds("seconds_per_token", seconds_per_token)
        self.weight_delay_s = _check_seconds("weight_delay_s", weight_delay_s)
        self.seed = int(seed)
        self._clock, self._sleep = clock, sleep
        gen = torch.Generator().manual_seed(self.seed % (1 << 64))
        self.base = torch.randn(self.vocab_size, generator=gen, dtype=torch.float64)         # [V]
        self.direction = torch.randn(self.vocab_size, generator=gen, dtype=torch.float64)    # [V]
        self._lock = threading.Lock()
        self._visible = 0                                   # newest visible version
        self._newest = 0                                    # newest loaded version (visible or not)
        self._pending: deque[tuple[int, float]] = deque()   # (version, visible from clock() >=), versions increasing
        self.calls = 0
        self.busy_s = 0.0

    # -- versions --------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The newest version visible now (``weight_delay_s`` after its ``load_weights``); 0 before any."""
        with self._lock:
            return self._visible_now()

    @version.setter
    def version(self, version: int) -> None:
        """Load ``version`` and make it visible at once (for trainers that assign ``sampler.version``)."""
        version = _check_version("version", version)
        with self._lock:
            self._check_not_older(version)
            self._pending.clear()
            self._visible = self._newest = version

    def load_weights(self, version: int, weights: Any = None) -> None:
        """Publish ``version`` (``weights`` are ignored); it becomes visible ``weight_delay_s`` seconds from now.
        Loading the newest loaded version again changes nothing; an older one is a ValueError."""
        version = _check_version("load_weights", version)
        with self._lock:
            self._check_not_older(version)
            if version == self._newest:
                return
            self._newest = version
            self._pending.append((version, self._clock() + self.weight_delay_s))
            self._visible_now()

    def _check_not_older(self, version: int) -> None:
        if version < self._newest:
            raise ValueError(f"SimSampler: versions only go up: cannot load version {version} after version "
                             f"{self._newest}")

    def _visible_now(self) -> int:
        """Move pending versions whose delay has passed to visible (caller holds the lock)."""
        if self._pending:
            now = self._clock()
            while self._pending and self._pending[0][1] <= now:
                self._visible = self._pending.popleft()[0]
        return self._visible

    # -- the policy ------------------------------------------------------------------------------

    def logits(self, version: int) -> Tensor:
        """The policy at ``version``: float64 [V] = base + drift·version·direction."""
        version = _check_version("logits", version)
        return self.base + (self.drift * version) * self.direction

    # -- generation ------------------------------------------------------------------------------

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, *, n: int, seed: int,
                 refresh: Callable[[], Any] | None = None) -> Rollout:
        """Sample n completions per prompt with the version visible now.   P prompts -> Rollout with B = P·n rows,
        prompt-major; completion_ids Long[B, T], T = max(lengths); behavior_logprobs Float32[B, T] or None.
        With ``refresh``: step by step, the version re-read before each step (module docstring, "In flight")."""
        prompts = check_generate_args("SimSampler.generate", prompt_ids, params, n, seed, allow_empty=False)
        if refresh is not None:
            return self._generate_in_flight(prompts, params, n, seed, refresh)
        version = self.version
        logits = self.logits(version)                                                        # [V]
        tokens = self._sample(logits, len(prompts), params, n, seed)                        # [B, M]
        is_eos = tokens == self.eos_id
        stopped = is_eos.any(-1)                                                             # [B]
        lengths = torch.where(stopped, is_eos.long().argmax(-1) + 1, params.max_new_tokens)  # [B]
        T = int(lengths.max())
        mask = torch.arange(T)[None, :] < lengths[:, None]                                  # [B, T]
        completion_ids = torch.where(mask, tokens[:, :T], self.eos_id)
        texts = ["".join(str(tok % 10) for tok in row[:k - int(s)])
                 for row, k, s in zip(completion_ids.tolist(), lengths.tolist(), stopped.tolist())]
        behavior = None
        if params.logprobs:
            lp = sim_logprobs(logits)[completion_ids]                                       # [B, T]
            behavior = torch.where(mask, lp, 0.0).to(torch.float32)
        rollout = Rollout(prompt_ids=[list(p) for p in prompts for _ in range(n)], completion_ids=completion_ids,
                          lengths=lengths, finish_reasons=["stop" if s else "length" for s in stopped.tolist()],
                          texts=texts, policy_version=version, behavior_logprobs=behavior)
        seconds = self.seconds_per_call + self.seconds_per_token * T
        if seconds > 0:
            self._sleep(seconds)
        with self._lock:
            self.calls += 1
            self.busy_s += seconds
        return rollout

    def _generate_in_flight(self, prompts: list[list[int]], params: SamplingParams, n: int, seed: int,
                            refresh: Callable[[], Any]) -> Rollout:
        B, M = len(prompts) * n, params.max_new_tokens
        tokens = torch.full((B, M), self.eos_id, dtype=torch.long)
        versions = torch.zeros((B, M), dtype=torch.long)
        keys = row_keys(seed, torch.arange(len(prompts)).repeat_interleave(n), torch.arange(n).repeat(len(prompts)))
        rows, T = torch.arange(B), 0
        self._nap(self.seconds_per_call)
        while len(rows) and T < M:
            if T:
                refresh()
            version = self.version
            logits = self.logits(version)
            tok = inverse_cdf_sample(token_probs(logits[None, :], params.temperature, params.top_p)
                                     .expand(len(rows), -1), uniforms(keys[rows], T)) \
                if params.temperature > 0 else torch.full((len(rows),), int(logits.argmax()))
            tokens[rows, T], versions[rows, T] = tok, version
            rows, T = rows[tok != self.eos_id], T + 1
            self._nap(self.seconds_per_token)
        with self._lock:
            self.calls += 1
        return self._rollout(prompts, params, n, tokens[:, :T], versions[:, :T])

    def _rollout(self, prompts: list[list[int]], params: SamplingParams, n: int, tokens: Tensor,
                 versions: Tensor) -> Rollout:
        """The Rollout of step-by-step ``tokens`` [B, T] drawn at ``versions`` [B, T]."""
        is_eos = tokens == self.eos_id
        stopped = is_eos.any(-1)
        lengths = torch.where(stopped, is_eos.long().argmax(-1) + 1, tokens.shape[1])
        mask = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
        completion_ids = torch.where(mask, tokens, self.eos_id)
        behavior = None
        if params.logprobs:
            table = torch.stack([sim_logprobs(self.logits(v)) for v in range(int(versions.max()) + 1)])  # [v, V]
            behavior = torch.where(mask, table[versions, completion_ids], 0.0).to(torch.float32)
        versions = torch.where(mask, versions, 0)
        texts = ["".join(str(tok % 10) for tok in row[:k - int(s)])
                 for row, k, s in zip(completion_ids.tolist(), lengths.tolist(), stopped.tolist())]
        return Rollout(prompt_ids=[list(p) for p in prompts for _ in range(n)], completion_ids=completion_ids,
                       lengths=lengths, finish_reasons=["stop" if s else "length" for s in stopped.tolist()],
                       texts=texts, policy_version=int(versions[mask].min()) if bool(mask.any()) else 0,
                       behavior_logprobs=behavior, token_versions=versions)

    def _nap(self, seconds: float) -> None:
        """Sleep ``seconds`` (if > 0) and count it."""
        if seconds > 0:
            self._sleep(seconds)
        with self._lock:
            self.busy_s += seconds

    def _sample(self, logits: Tensor, P: int, params: SamplingParams, n: int, seed: int) -> Tensor:
        """Tokens of every row and step up to the row's first EOS (eos_id after it).   logits [V] -> Long[B, M]."""
        B, M = P * n, params.max_new_tokens
        out = torch.full((B, M), self.eos_id, dtype=torch.long)
        if params.temperature == 0:
            out[:] = int(logits.argmax())
            return out
        probs = token_probs(logits[None, :], params.temperature, params.top_p)               # [1, V]
        keys = row_keys(seed, torch.arange(P).repeat_interleave(n), torch.arange(n).repeat(P))   # [B]
        rows = torch.arange(B)
        for t in range(M):
            tok = inverse_cdf_sample(probs.expand(len(rows), -1), uniforms(keys, t))          # [alive]
            out[rows, t] = tok
            alive = tok != self.eos_id
            rows, keys = rows[alive], keys[alive]
            if len(rows) == 0:
                break
        return out
