"""Rollout generation: the Sampler protocol, its pure-HF implementation for CPU (and tests), the pool of rollout
workers (threads here, Ray actors in ``rlvr.rollout.ray_backend``) that the asynchronous trainer samples from, and
the registries of sampler engines (``rlvr.rollout.engines``) and rollout-worker backends (``rlvr.rollout.backends``).

The public names are imported on first use, so that reading a config (which looks engines and backends up in
their registries) does not import torch and transformers.
"""
from __future__ import annotations

import importlib
from typing import Any

_HF_NAMES = ("HFSampler", "inverse_cdf_sample", "nucleus_candidates", "nucleus_filter", "plan_batches", "row_keys",
             "token_probs", "uniforms")
_WHERE = {"Sampler": "rlvr.rollout.sampler", "check_generate_args": "rlvr.rollout.sampler",
          "ThreadBackend": "rlvr.rollout.pool", "WorkerPool": "rlvr.rollout.pool",
          **{name: "rlvr.rollout.hf" for name in _HF_NAMES}}

__all__ = ["Sampler", "HFSampler", "nucleus_filter", "nucleus_candidates", "token_probs", "inverse_cdf_sample",
           "row_keys", "uniforms", "plan_batches", "check_generate_args", "ThreadBackend", "WorkerPool"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'rlvr.rollout' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
