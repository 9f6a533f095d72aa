"""The sampler protocol: what the trainer needs from any generation backend (HF on CPU, vLLM on GPU)."""
from __future__ import annotations

import numbers
from typing import Any, Protocol, Sequence, runtime_checkable

import torch

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


def check_generate_args(who: str, prompt_ids: Any, params: Any, n: Any, seed: Any, *, vocab_size: int | None = None,
                        allow_empty: bool = True) -> list[list[int]]:
    """The checks every Sampler.generate makes; returns the prompts as lists of ints. ``who`` prefixes messages
    (e.g. "HFSampler.generate").

    Raises a ValueError naming the offending argument (and, for a prompt, its index) unless: ``params`` is a
    SamplingParams whose ``stop`` strings are non-empty str; ``n`` is a positive int and ``seed`` an int (integral,
    not bool); ``prompt_ids`` is a sequence (not str/bytes), non-empty unless ``allow_empty``, of non-empty sequences
    (a Tensor is taken through ``.tolist()``) of int token ids (integral, not bool), each in ``[0, vocab_size)`` when
    ``vocab_size`` is given, else ``>= 0``.
    """
    if not isinstance(params, SamplingParams):
        raise ValueError(f"{who}: params must be a SamplingParams, got {type(params).__name__}")
    if not _is_int(n) or n < 1:
        raise ValueError(f"{who}: n must be a positive int, got {n!r}")
    if not _is_int(seed):
        raise ValueError(f"{who}: seed must be an int, got {seed!r}")
    if any(not isinstance(s, str) or not s for s in params.stop):
        raise ValueError(f"{who}: params.stop strings must be non-empty str, got {params.stop!r}")
    kind = "a list" if allow_empty else "a non-empty list"
    if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, Sequence):
        raise ValueError(f"{who}: prompt_ids must be {kind} of token-id lists, got {type(prompt_ids).__name__}")
    if not allow_empty and len(prompt_ids) == 0:
        raise ValueError(f"{who}: prompt_ids must be {kind} of token-id lists, got an empty "
                         f"{type(prompt_ids).__name__}")
    bound = "an int >= 0" if vocab_size is None else f"an int in [0, {vocab_size})"
    prompts = []
    for i, p in enumerate(prompt_ids):
        if isinstance(p, torch.Tensor):
            p = p.tolist()
        if isinstance(p, (str, bytes)) or not isinstance(p, Sequence) or len(p) == 0:
            raise ValueError(f"{who}: prompt_ids[{i}]: prompt {i} must be a non-empty list of token ids, got {p!r}")
        bad = [t for t in p if not _is_int(t) or t < 0 or (vocab_size is not None and t >= vocab_size)]
        if bad:
            raise ValueError(f"{who}: prompt_ids[{i}]: prompt {i} has token {bad[0]!r}, not {bound}")
        prompts.append([int(t) for t in p])
    return prompts


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)
