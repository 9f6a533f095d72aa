"""In-flight weight updates (``rollout.weight_sync=token``): a sampler takes newer weights between decode steps.

Oracle for HFSampler: a rollout whose weights change before decode forward k is recomputed row by row with two
plain HF models: the old model runs the prompt and the first k completion tokens into a KV cache (the logits of
tokens 0..k), the new model continues on that cache (tokens k+1..). Behaviour log-probs must match it, tokens
before the swap must equal a run without one, and every token records the version of the forward behind it. The
pool delivers published weights to a worker mid-call (threads here; Ray in test_ray_backend.py), and the async
trainer trains on such rollouts within the staleness bound, measuring staleness per token.
"""
from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache

from rlvr.config import ConfigError, load_config
from rlvr.metrics import read_metrics
from rlvr.models import tiny_random, trainable_state_dict
from rlvr.rollout import HFSampler
from rlvr.rollout.pool import RolloutWorker, ThreadBackend, WorkerPool, concat_rollouts
from rlvr.trainer.staleness import token_staleness
from rlvr.types import Rollout, SamplingParams

from test_train_e2e import TINY

PARAMS = SamplingParams(temperature=1.0, max_new_tokens=8, logprobs=True)
PROMPTS = [[1, 5, 9], [1, 7]]
SWAP = 3   # the weights change before the 3rd decode forward: tokens 0..2 sampled by version 0, 3.. by version 1


def _sampler(seed: int = 0) -> HFSampler:
    model, tok = tiny_random(seed)
    sampler = HFSampler(model, tok, max_batch_size=8)
    sampler.eos_token_ids = ()          # every row runs the full max_new_tokens: the swap lands inside each row
    return sampler


NEW = trainable_state_dict(tiny_random(1)[0])


class SwapAt:
    """A ``refresh`` that loads version 1 at its ``at``-th call."""

    def __init__(self, sampler: HFSampler, at: int = SWAP) -> None:
        self.sampler, self.at, self.calls = sampler, at, 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == self.at:
            self.sampler.load_weights(1, NEW)


@torch.no_grad()
def oracle_logprobs(prompt: list[int], tokens: list[int], swap: int) -> torch.Tensor:
    """log π(token t) for t < len(tokens): tokens 0..swap−1 from the old model over prompt + tokens[:t]; later ones
    from the new model continuing the old model's KV cache of prompt + tokens[:swap−1]."""
    old, new = tiny_random(0)[0], tiny_random(1)[0]
    cache = DynamicCache(config=old.config)
    ids = torch.tensor([prompt + tokens[:swap - 1]])
    logits_old = old(input_ids=ids, past_key_values=cache, use_cache=True).logits[0, len(prompt) - 1:]
    rest = torch.tensor([tokens[swap - 1:len(tokens) - 1]])
    pos = torch.arange(len(prompt) + swap - 1, len(prompt) + len(tokens) - 1)[None]
    logits_new = new(input_ids=rest, position_ids=pos, past_key_values=cache, use_cache=True).logits[0]
    logits = torch.cat([logits_old, logits_new]).float().log_softmax(-1)
    return logits.gather(1, torch.tensor(tokens)[:, None]).squeeze(1)


def test_hf_sampler_takes_new_weights_between_decode_steps():
    plain = _sampler().generate(PROMPTS, PARAMS, n=2, seed=3)
    sampler = _sampler()
    swapped = sampler.generate(PROMPTS, PARAMS, n=2, seed=3, refresh=SwapAt(sampler))
    T = PARAMS.max_new_tokens
    assert plain.token_versions is None and plain.policy_version == 0
    want = torch.tensor([[0] * SWAP + [1] * (T - SWAP)] * 4)
    assert torch.equal(swapped.token_versions, want)
    assert swapped.policy_version == 0 and sampler.version == 1
    # before the swap: the same tokens and log-probs as without it; after it the new weights sample
    assert torch.equal(swapped.completion_ids[:, :SWAP], plain.completion_ids[:, :SWAP])
    torch.testing.assert_close(swapped.behavior_logprobs[:, :SWAP], plain.behavior_logprobs[:, :SWAP], rtol=0, atol=0)
    assert not torch.equal(swapped.behavior_logprobs[:, SWAP:], plain.behavior_logprobs[:, SWAP:])
    for b in range(4):
        got = oracle_logprobs(swapped.prompt_ids[b], swapped.completion_ids[b].tolist(), SWAP)
        torch.testing.assert_close(swapped.behavior_logprobs[b], got, rtol=0, atol=2e-5)


def test_a_refresh_without_newer_weights_changes_nothing():
    plain = _sampler().generate(PROMPTS, PARAMS, n=2, seed=4)
    sampler = _sampler()
    same = sampler.generate(PROMPTS, PARAMS, n=2, seed=4, refresh=lambda: None)
    assert torch.equal(same.completion_ids, plain.completion_ids)
    assert torch.equal(same.behavior_logprobs, plain.behavior_logprobs)
    assert torch.equal(same.token_versions, torch.zeros_like(same.completion_ids))


@pytest.mark.parametrize("in_flight", [True, False], ids=["token", "batch"])
def test_the_pool_delivers_weights_to_a_call_in_progress(in_flight):
    """The learner publishes while the worker decodes (here: from the worker's own forward hook, at the 3rd decode
    forward, so the point is deterministic). In flight the call switches there; batch-synchronised it finishes
    on the old weights and the next call starts on the new ones."""
    box = {}

    def make():
        sampler = _sampler()
        box["forwards"] = 0

        def hook(*_):
            box["forwards"] += 1
            if box["forwards"] == SWAP:    # during decode forward SWAP − 1 (after the prefill): the refresh
                box["pool"].publish(1, NEW)  # before decode forward SWAP loads them, as SwapAt does
        sampler.model.register_forward_pre_hook(hook)
        return sampler

    with WorkerPool(ThreadBackend(make), 1, in_flight=in_flight) as pool:
        box["pool"] = pool
        r = pool.generate(PROMPTS, PARAMS, n=2, seed=3)
        sampler = _sampler()
        want = sampler.generate(PROMPTS, PARAMS, n=2, seed=3, refresh=SwapAt(sampler)) if in_flight else \
            _sampler().generate(PROMPTS, PARAMS, n=2, seed=3)
        assert torch.equal(r.completion_ids, want.completion_ids)
        assert (r.token_versions is None) != in_flight
        if in_flight:
            assert torch.equal(r.token_versions, want.token_versions)
        next_call = pool.generate(PROMPTS, PARAMS, n=1, seed=5)
        assert next_call.policy_version == 1 and set(next_call.versions().unique().tolist()) <= {0, 1}


def test_token_versions_survive_concatenation_and_batch_assembly():
    from rlvr.trainer.batch import _select_rows

    a = Rollout([[1], [2]], torch.tensor([[5, 6, 7], [5, 6, 0]]), torch.tensor([3, 2]), ["length", "stop"], ["", ""],
                policy_version=3, token_versions=torch.tensor([[3, 4, 4], [4, 5, 0]]))
    b = Rollout([[3]], torch.tensor([[8, 9]]), torch.tensor([2]), ["length"], [""], policy_version=6)
    both = concat_rollouts([a, b])
    assert torch.equal(both.token_versions, torch.tensor([[3, 4, 4], [4, 5, 0], [6, 6, 0]]))
    assert both.policy_version == 3
    kept = _select_rows([(both, 1), (both, 2)])               # without the oldest token, the oldest is newer
    assert kept.policy_version == 4 and torch.equal(kept.token_versions, torch.tensor([[4, 5], [6, 6]]))
    m = token_staleness(both, 6)
    # tokens' ages 3,2,2 | 2,1 | 0,0 ; samples' oldest ages 3, 2, 0
    assert m["async/token_staleness_mean"] == pytest.approx(10 / 7)
    assert m["async/token_staleness_max"] == 3 and m["async/fresh_token_frac"] == pytest.approx(2 / 7)
    assert m["async/sample_staleness_mean"] == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="token_versions must be a Long tensor of shape \\(1, 2\\)"):
        Rollout([[3]], torch.tensor([[8, 9]]), torch.tensor([2]), ["length"], [""], token_versions=torch.zeros(1, 3))


def test_a_worker_offered_weights_loads_only_newer_ones():
    loads = []

    class Counting:
        version = 0

        def load_weights(self, version, weights):
            loads.append(version)
            self.version = version

        def generate(self, prompt_ids, params, *, n, seed, refresh=None):
            refresh and refresh()
            return refresh

    worker = RolloutWorker(Counting)
    assert worker.generate([[1]], PARAMS, 1, 0, 2, {"w": 1}) is None          # batch mode: no refresh passed
    worker.publish(1, {"w": 0})                                               # older than held: ignored
    assert callable(worker.generate([[1]], PARAMS, 1, 0, 2, {"w": 1}))        # now in flight
    worker.publish(3, {"w": 3})
    worker.generate([[1]], PARAMS, 1, 0, 2, {"w": 1})
    assert loads == [2, 3]


def test_weight_sync_token_needs_the_async_trainer_and_an_in_flight_engine():
    with pytest.raises(ConfigError, match="weight_sync=token.*needs trainer=async"):
        load_config(None, [*TINY, "rollout.weight_sync=token"])
    with pytest.raises(ConfigError, match="weight_sync must be one of"):
        load_config(None, [*TINY, "trainer=async", "rollout.weight_sync=step"])
    with pytest.raises(ConfigError, match="the vllm engine cannot take new weights between decode steps"):
        load_config(None, [*TINY, "trainer=async", "rollout.engine=vllm", "rollout.weight_sync=token"])


def test_the_async_trainer_trains_in_flight_rollouts_within_the_bound(tmp_path):
    from rlvr.trainer import train

    cfg = load_config(None, [*TINY, "steps=4", "trainer=async", "eval.at_start=false", "rollout.max_staleness=2",
                             "rollout.weight_sync=token", "algo.loss=decoupled_ppo"])
    train(cfg, run_dir=tmp_path / "r")
    rows = [r for r in read_metrics(tmp_path / "r") if "loss/policy" in r]
    assert len(rows) == 4 and all(math.isfinite(r["loss/policy"]) and r["train/skipped_steps"] == 0 for r in rows)
    for r in rows:
        assert 0 <= r["async/token_staleness_mean"] <= r["async/sample_staleness_mean"] <= r["async/staleness"] <= 2
        assert r["async/token_staleness_max"] == r["async/staleness"]
        assert 0 <= r["async/fresh_token_frac"] <= 1
    assert rows[-1]["policy/version"] == 4 and rows[-1]["async/dropped_frac"] == 0
