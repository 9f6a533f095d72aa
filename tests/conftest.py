"""Shared test set-up: torch limited to at most 2 threads, and a derandomised hypothesis profile in CI.

The default dtype is left at torch's float32: model, trainer and sampler tests check float32 behaviour. Math tests
that need float64 create their tensors with an explicit dtype (``F64 = torch.float64`` in test_losses.py,
test_aggregation.py, test_ppo_math.py, ...); nothing here changes the default."""

import os

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))
