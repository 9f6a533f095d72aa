"""Samplers for the Ray backend tests, in a module of their own so that Ray's worker processes can import them.

Ray's cloudpickle sends ``FakeSampler`` and ``make_hf_sampler`` by reference (module + name); the test fixture puts
this directory on the workers' ``PYTHONPATH``.

``FakeSampler`` returns deterministic rows and fails on request: a prompt whose first token is one of the fault
codes below makes the call exit the process, hang or stall, once per ``(code, tag)`` where ``tag`` is the prompt's
second token (a marker file ``<marker_dir>/<code>-<tag>`` is created first, so the restarted worker, which gets the
same prompt again, does not fail again), or on every call for ``DIE_ALWAYS``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlvr.types import Rollout, SamplingParams

DIE = 9001        # os._exit(1), once per tag
HANG = 9002       # sleep for an hour, once per tag
SLOW = 9003       # create the marker, then sleep ``slow_s`` (the test kills the worker meanwhile), once per tag
DIE_ALWAYS = 9004  # os._exit(1) on every call
T = 8             # completion width


@dataclass
class FakeSampler:
    marker_dir: str | None = None
    faults: bool = True
    slow_s: float = 60.0

    def __post_init__(self) -> None:
        self.version = 0
        self.w = 0
        self.loads = 0

    def load_weights(self, version: int, weights: dict[str, torch.Tensor]) -> None:
        self.loads += 1
        self.w = int(weights["w"].sum())
        self.version = version

    def _fault(self, prompt: list[int]) -> None:
        code = prompt[0] if prompt else None
        if code == DIE_ALWAYS:
            os._exit(1)
        if code not in (DIE, HANG, SLOW):
            return
        marker = Path(self.marker_dir) / f"{code}-{prompt[1]}"
        if marker.exists():
            return
        marker.touch()
        if code == DIE:
            os._exit(1)
        time.sleep(3600 if code == HANG else self.slow_s)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, *, n: int, seed: int) -> Rollout:
        if self.faults:
            for p in prompt_ids:
                self._fault(p)
        rows, lengths = [], []
        for i, p in enumerate(prompt_ids):
            for j in range(n):
                rows.append([seed % 9973, sum(p) % 9973, i, j, self.w, 7, 7, 7])
                lengths.append(4 + (sum(p) + j) % (T - 3))
        B = len(rows)
        return Rollout(prompt_ids=[list(p) for p in prompt_ids for _ in range(n)],
                       completion_ids=torch.tensor(rows, dtype=torch.long).reshape(B, T),
                       lengths=torch.tensor(lengths, dtype=torch.long),
                       finish_reasons=["length"] * B,
                       texts=[f"loads={self.loads} pid={os.getpid()}"] * B,
                       policy_version=self.version)


def make_hf_sampler():
    """An HFSampler on rlvr.models.tiny_random(0), built in the worker."""
    from rlvr.models import tiny_random
    from rlvr.rollout import HFSampler

    model, tokenizer = tiny_random(0)
    return HFSampler(model, tokenizer)


@dataclass
class StepSampler:
    """Decodes ``T`` steps of ``step_s`` seconds for every row; calls ``refresh`` (in-flight weight updates) before
    every step after the first, and each token is the version its step ran with (also in ``token_versions``)."""

    step_s: float = 0.1

    def __post_init__(self) -> None:
        self.version = 0

    def load_weights(self, version: int, weights: dict[str, torch.Tensor]) -> None:
        self.version = version

    def generate(self, prompt_ids, params, *, n, seed, refresh=None) -> Rollout:
        B = len(prompt_ids) * n
        tv = torch.zeros(B, T, dtype=torch.long)
        for t in range(T):
            if t and refresh is not None:
                refresh()
            tv[:, t] = self.version
            time.sleep(self.step_s)
        return Rollout(prompt_ids=[list(p) for p in prompt_ids for _ in range(n)], completion_ids=tv.clone(),
                       lengths=torch.full((B,), T, dtype=torch.long), finish_reasons=["length"] * B,
                       texts=[f"pid={os.getpid()}"] * B, policy_version=int(tv.min()),
                       token_versions=tv if refresh is not None else None)
