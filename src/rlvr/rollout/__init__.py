"""Rollout generation: the Sampler protocol and its pure-HF implementation for CPU (and tests)."""
from rlvr.rollout.hf import (HFSampler, inverse_cdf_sample, nucleus_candidates, nucleus_filter, plan_batches, row_keys,
                             token_probs, uniforms)
from rlvr.rollout.sampler import Sampler

__all__ = ["Sampler", "HFSampler", "nucleus_filter", "nucleus_candidates", "token_probs", "inverse_cdf_sample",
           "row_keys", "uniforms", "plan_batches"]
