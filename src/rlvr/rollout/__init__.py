"""Rollout generation: the Sampler protocol, its pure-HF implementation for CPU (and tests), and the pool of rollout
workers (threads here, Ray actors in ``rlvr.rollout.ray_backend``) that the asynchronous trainer samples from."""
from rlvr.rollout.hf import (HFSampler, inverse_cdf_sample, nucleus_candidates, nucleus_filter, plan_batches, row_keys,
                             token_probs, uniforms)
from rlvr.rollout.pool import ThreadBackend, WorkerPool
from rlvr.rollout.sampler import Sampler, check_generate_args

__all__ = ["Sampler", "HFSampler", "nucleus_filter", "nucleus_candidates", "token_probs", "inverse_cdf_sample",
           "row_keys", "uniforms", "plan_batches", "check_generate_args", "ThreadBackend", "WorkerPool"]
