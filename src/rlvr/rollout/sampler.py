"""The sampler protocol: what the trainer needs from any generation backend (HF on CPU, vLLM on GPU)."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from rlvr.types import Rollout, SamplingParams


@runtime_checkable
class Sampler(Protocol):
    """Turns token-id prompts into sampled completions.

    ``version`` names the weights the sampler is using; the trainer bumps it after each optimiser step and
    every rollout carries it as ``policy_version``, so staleness can be measured.
    """

    version: int

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, *, n: int, seed: int) -> Rollout:
        """Sample ``n`` completions of every prompt.

        Returns a Rollout with B = len(prompt_ids)·n rows, prompt-major (rows ``i*n .. i*n+n-1`` answer
        prompt ``i``), ``policy_version = self.version``; the same ``seed`` gives the same rollout.
        """
        ...
