"""The asynchronous trainer: admission and drops (trainer.staleness), the worker pool with faults (rollout.pool),
behaviour log-probs in the update, and end-to-end runs against the synchronous trainer."""
from __future__ import annotations

import math
import threading
import time

import pytest
import torch

from benchmarks.simulator import SimSampler
from rlvr.config import load_config
from rlvr.metrics import read_metrics
from rlvr.rollout.pool import ThreadBackend, WorkerFailure, WorkerPool, concat_rollouts, shard_bounds
from rlvr.seeding import derive_seed
from rlvr.trainer.staleness import Producer, StalenessGate, StalenessStats, take_fresh
from rlvr.types import Rollout, SamplingParams

from test_train_e2e import TINY, run_straight_and_resumed

PARAMS = SamplingParams(temperature=1.0, max_new_tokens=6, logprobs=True)
PROMPTS = [[1, 2], [3], [4, 5, 6], [7], [8, 9]]


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A trainer run with model.threads set changes torch's thread count for the whole process."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _strip_perf(rows):
    return [{k: v for k, v in r.items() if not k.startswith(("perf/", "async/", "rollout/worker", "rollout/reissued"))
             and k != "eval/seconds"} for r in rows]


# ----------------------------------------------------------------------------------------------
# Admission control and drops
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("eta", [0, 1, 2, 4])
def test_gate_admits_exactly_the_chunks_within_the_bound(eta):
    gate = StalenessGate(eta)
    for version in range(6):
        gate.publish(version)
        for dropped in range(3):
            gate.dropped = dropped
            for chunk in range(15):
                assert gate.admits(chunk) == (chunk <= version + dropped + eta)


def _simulate(eta: int, gen_s: float, train_s: float, steps: int, weight_delay_s: float = 0.0):
    """A learner that trains ``train_s`` per step against a producer generating with a SimSampler; returns
    (staleness per step, versions each chunk started at, chunk starts relative to the newest version, stats)."""
    sim = SimSampler(seconds_per_call=gen_s, weight_delay_s=weight_delay_s)
    gate = StalenessGate(eta)
    started: list[tuple[int, int]] = []  # (chunk, learner version when the chunk started)

    class _Batch:
        def __init__(self, rollout):
            self.rollout, self.metrics = rollout, {}

    def make(j):
        started.append((j, gate.version))
        return _Batch(sim.generate([[1]], SamplingParams(max_new_tokens=2), n=2, seed=j))

    producer = Producer(make, lambda: 0, gate)
    stats = StalenessStats(eta)
    staleness = []
    try:
        for step in range(steps):
            chunk, dropped = take_fresh(producer, gate, step, stats)
            staleness.append(step - chunk.batch.rollout.policy_version)
            stats.metrics(staleness[-1], 2, dropped, 0.0)
            time.sleep(train_s)
            sim.load_weights(step + 1)
            gate.publish(step + 1)
    finally:
        producer.close(timeout=5)
    return staleness, started, stats


@pytest.mark.parametrize("eta", [0, 1, 3])
def test_fast_generation_runs_ahead_exactly_to_the_bound_and_no_further(eta):
    staleness, started, stats = _simulate(eta, gen_s=0.0, train_s=0.1, steps=8)
    assert max(staleness) == eta and all(0 <= s <= eta for s in staleness)
    assert staleness[eta:] == [eta] * (8 - eta)  # generation is free: every chunk is as old as allowed
    for chunk, version in started:
        assert chunk <= version + eta  # never started further ahead than admission allows
    assert stats.dropped_samples == 0


def test_at_staleness_zero_every_chunk_starts_after_the_previous_update():
    staleness, started, _ = _simulate(0, gen_s=0.01, train_s=0.01, steps=5)
    assert staleness == [0] * 5
    assert [v for _, v in started[:5]] == [0, 1, 2, 3, 4]


def test_weights_that_arrive_late_are_dropped_never_trained_on():
    # The sampler sees a new version only 0.25 s after it is published, while the learner steps every 0.05 s:
    # chunks start with old weights; the learner must drop those more than eta = 1 versions old.
    staleness, _, stats = _simulate(1, gen_s=0.02, train_s=0.05, steps=6, weight_delay_s=0.25)
    assert all(s <= 1 for s in staleness)
    assert stats.dropped_chunks > 0 and stats.dropped_samples == 2 * stats.dropped_chunks
    m = stats.metrics(0, 2, 0, 0.0)
    assert m["async/dropped_frac"] == pytest.approx(stats.dropped_samples / (stats.dropped_samples + 14))


def test_staleness_stats_survive_a_checkpoint_as_json():
    import json

    stats = StalenessStats(2)
    stats.metrics(1, 8, 0, 0.0)
    stats.metrics(2, 8, 0, 0.0)
    stats.dropped_samples, stats.dropped_chunks = 16, 2
    back = StalenessStats.from_state(2, json.loads(json.dumps(stats.state())))
    assert back == stats
    assert StalenessStats.from_state(2, None) == StalenessStats(2)


def test_staleness_metrics_count_the_run_so_far():
    stats = StalenessStats(2)
    stats.metrics(0, 8, 0, 0.1)
    stats.dropped_samples = 4
    m = stats.metrics(2, 8, 4, 0.2)
    assert m["async/staleness"] == 2 and m["async/dropped_samples"] == 4 and m["async/wait_s"] == 0.2
    assert m["async/staleness_frac/0"] == 0.5 and m["async/staleness_frac/1"] == 0 and m["async/staleness_frac/2"] == 0.5
    assert m["async/dropped_frac"] == 4 / 20


def test_a_producer_error_reaches_the_learner():
    def make(j):
        raise ValueError("bad prompt 7")
    producer = Producer(make, lambda: 0, StalenessGate(1))
    with pytest.raises(RuntimeError, match="bad prompt 7"):
        producer.take()
    producer.close(timeout=5)


# ----------------------------------------------------------------------------------------------
# The worker pool: sharding, versions, faults (thread backend; Ray in test_ray_backend.py)
# ----------------------------------------------------------------------------------------------

def test_shard_bounds_cover_the_prompts_in_order():
    for P in range(1, 12):
        for W in range(1, 6):
            b = shard_bounds(P, W)
            assert len(b) == min(P, W) and b[0][0] == 0 and b[-1][1] == P
            assert all(x[1] == y[0] for x, y in zip(b, b[1:]))
            sizes = [e - s for s, e in b]
            assert max(sizes) - min(sizes) <= 1


def _rows(ro: Rollout):
    return [(tuple(p), tuple(ro.completion_ids[b, :int(ro.lengths[b])].tolist())) for b, p in enumerate(ro.prompt_ids)]


def test_a_pool_of_one_reproduces_the_bare_sampler_and_shards_use_derived_seeds():
    bare = SimSampler().generate(PROMPTS, PARAMS, n=3, seed=11)
    with WorkerPool(ThreadBackend(SimSampler), 1) as pool:
        one = pool.generate(PROMPTS, PARAMS, n=3, seed=11)
    assert _rows(one) == _rows(bare) and torch.equal(one.behavior_logprobs, bare.behavior_logprobs)
    with WorkerPool(ThreadBackend(SimSampler), 2) as pool:
        two = pool.generate(PROMPTS, PARAMS, n=3, seed=11)
    parts = [SimSampler().generate(PROMPTS[a:b], PARAMS, n=3, seed=derive_seed(11, "shard", k))
             for k, (a, b) in enumerate(shard_bounds(len(PROMPTS), 2))]
    assert _rows(two) == _rows(concat_rollouts(parts))
    assert [p for p, _ in _rows(two)] == [tuple(p) for p in PROMPTS for _ in range(3)]


def test_published_weights_reach_every_worker_with_their_version():
    with WorkerPool(ThreadBackend(SimSampler), 2) as pool:
        assert pool.generate(PROMPTS, PARAMS, n=2, seed=0).policy_version == 0
        pool.publish(3, {})
        ro = pool.generate(PROMPTS, PARAMS, n=2, seed=0)
        assert ro.policy_version == 3
        ref = SimSampler()
        ref.load_weights(3)
        parts = [ref.generate(PROMPTS[a:b], PARAMS, n=2, seed=derive_seed(0, "shard", k))
                 for k, (a, b) in enumerate(shard_bounds(len(PROMPTS), 2))]
        assert _rows(ro) == _rows(concat_rollouts(parts))
        with pytest.raises(ValueError, match="older"):
            pool.publish(2, {})


class _Faulty:
    """SimSampler factory whose first built sampler dies (raises) or hangs on its first call."""

    def __init__(self, mode: str):
        self.mode, self.built = mode, 0
        self.release = threading.Event()

    def __call__(self):
        self.built += 1
        sim = SimSampler()
        if self.built > 1:
            return sim
        real = sim.generate

        def broken(*a, **kw):
            if self.mode == "die":
                raise RuntimeError("worker process died")
            self.release.wait(60)  # hangs until the test ends
            return real(*a, **kw)
        sim.generate = broken
        return sim


@pytest.mark.parametrize("mode", ["die", "hang"])
def test_a_dead_or_hung_worker_is_replaced_and_its_prompts_reissued_once(mode):
    expected = SimSampler().generate(PROMPTS, PARAMS, n=3, seed=5)
    factory = _Faulty(mode)
    with WorkerPool(ThreadBackend(factory), 1, timeout_s=0.5) as pool:
        ro = pool.generate(PROMPTS, PARAMS, n=3, seed=5)
        factory.release.set()
        assert _rows(ro) == _rows(expected)  # nothing lost, nothing twice, same samples
        assert pool.stats.restarts == 1 and pool.stats.reissued_prompts == len(PROMPTS)
        assert factory.built == 2
        assert ("hung" if mode == "hang" else "died") in pool.stats.errors[0]


def test_a_worker_that_always_fails_ends_the_call_with_its_name():
    def broken():
        raise OSError("no model here")
    with WorkerPool(ThreadBackend(broken), 2, max_restarts=2) as pool:
        with pytest.raises(WorkerFailure, match=r"rollout worker \d failed \(OSError: no model here\)"):
            pool.generate(PROMPTS, PARAMS, n=1, seed=0)


def test_concat_keeps_behavior_logprobs_only_when_every_part_has_them():
    a = SimSampler().generate(PROMPTS[:2], PARAMS, n=2, seed=1)
    b = SimSampler().generate(PROMPTS[2:], SamplingParams(max_new_tokens=6), n=2, seed=2)
    assert concat_rollouts([a, a]).behavior_logprobs is not None
    assert concat_rollouts([a, b]).behavior_logprobs is None


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------

ASYNC = ["trainer=async", "eval.at_start=false"]


@pytest.mark.parametrize("extra", [[], ["algo.loss=decoupled_ppo", "algo.num_iterations=2"],
                                   ["algo.loss=asympo", "rollout.dynamic_sampling=true"],
                                   ["algo.loss=decoupled_ppo", "rollout.weight_sync=token"]],
                         ids=["grpo", "decoupled_ppo", "asympo-dynamic", "in-flight"])
def test_staleness_zero_reproduces_the_synchronous_trainer_step_for_step(tmp_path, extra):
    from rlvr.trainer import async_, sync

    # The same torch threads in both: a matmul's rounding depends on how its reduction is split.
    one = ["model.threads=1", *extra]
    sync_extra = [x for x in one if not x.startswith("rollout.weight_sync")]   # η = 0: nothing publishes mid-call
    sync.train(load_config(None, [*TINY, "steps=3", "eval.at_start=false", *sync_extra]), run_dir=tmp_path / "sync")
    async_.train(load_config(None, [*TINY, "steps=3", *ASYNC, "rollout.max_staleness=0", *one]),
                 run_dir=tmp_path / "async")
    a, b = read_metrics(tmp_path / "sync"), read_metrics(tmp_path / "async")
    assert _strip_perf(a) == _strip_perf(b)
    assert [r["async/staleness"] for r in b if "async/staleness" in r] == [0, 0, 0]


@pytest.mark.parametrize("loss", ["decoupled_ppo", "ppo_clip", "asympo", "spo", "current_policy"])
def test_each_stale_data_objective_trains_within_the_bound(tmp_path, loss):
    from rlvr.trainer import train

    extra = ["algo.old_logprobs=behavior"] if loss == "ppo_clip" else []
    cfg = load_config(None, [*TINY, "steps=4", *ASYNC, "rollout.max_staleness=2", f"algo.loss={loss}", *extra])
    train(cfg, run_dir=tmp_path / "r")
    rows = [r for r in read_metrics(tmp_path / "r") if "loss/policy" in r]
    assert len(rows) == 4 and all(math.isfinite(r["loss/policy"]) and r["train/skipped_steps"] == 0 for r in rows)
    assert all(0 <= r["async/staleness"] <= 2 for r in rows) and rows[0]["async/staleness"] == 0
    assert ("policy/behavior_kl" in rows[-1]) == (loss in ("decoupled_ppo", "ppo_clip"))
    assert rows[-1]["policy/version"] == 4 and rows[-1]["async/dropped_frac"] == 0
    assert sum(rows[-1][f"async/staleness_frac/{k}"] for k in range(3)) == pytest.approx(1.0)


def test_decoupled_ppo_equals_ppo_clip_on_fresh_samples(tmp_path):
    from rlvr.trainer import train

    runs = {}
    for loss in ("decoupled_ppo", "ppo_clip"):
        cfg = load_config(None, [*TINY, "steps=2", *ASYNC, "rollout.max_staleness=0", f"algo.loss={loss}",
                                 "algo.aggregation=token_mean"])
        train(cfg, run_dir=tmp_path / loss)
        runs[loss] = [r for r in read_metrics(tmp_path / loss) if "loss/policy" in r]
    for a, b in zip(runs["decoupled_ppo"], runs["ppo_clip"]):
        # π_b comes from the sampler's KV-cached forward, π_prox from the learner's: equal up to rounding.
        assert a["loss/policy"] == pytest.approx(b["loss/policy"], abs=1e-5)
        assert a["reward/mean"] == b["reward/mean"]
        assert a["policy/behavior_kl"] < 1e-9


def test_a_worker_killed_during_training_is_replaced(tmp_path, monkeypatch):
    from rlvr.trainer import async_, build

    real = build.SamplerFactory.__call__
    built = []

    def factory(self):
        sampler = real(self)
        built.append(sampler)
        if len(built) == 1:  # the first worker dies on its second call
            calls, gen = [0], sampler.generate

            def dying(*a, **kw):
                calls[0] += 1
                if calls[0] == 2:
                    raise RuntimeError("killed")
                return gen(*a, **kw)
            sampler.generate = dying
        return sampler
    monkeypatch.setattr(build.SamplerFactory, "__call__", factory)
    cfg = load_config(None, [*TINY, "steps=3", *ASYNC, "rollout.max_staleness=0"])
    async_.train(cfg, run_dir=tmp_path / "faulty")
    monkeypatch.setattr(build.SamplerFactory, "__call__", real)
    async_.train(cfg, run_dir=tmp_path / "clean")
    a, b = read_metrics(tmp_path / "faulty"), read_metrics(tmp_path / "clean")
    assert _strip_perf(a) == _strip_perf(b)  # the re-issued prompts gave the same batch
    restarts = [r["rollout/worker_restarts"] for r in a if "loss/policy" in r]
    assert restarts[-1] == 1 and restarts == sorted(restarts)  # when step 1 logs, chunk 1 may have started


def test_async_resume_continues_the_run(tmp_path, monkeypatch):
    from rlvr.trainer import async_

    cfg = load_config(None, [*TINY, "steps=4", *ASYNC, "rollout.max_staleness=0", "log.checkpoint_every=2"])
    a, b = run_straight_and_resumed(async_, cfg, tmp_path, monkeypatch)
    assert _strip_perf(a) == _strip_perf(b)
    # the staleness statistics continue from the checkpoint too (timings and queue sizes aside)
    keep = lambda rows: [{k: v for k, v in r.items() if k.startswith("async/staleness") or  # noqa: E731
                          k.startswith("async/dropped")} for r in rows]
    assert keep(a) == keep(b) and b[-2]["async/staleness_frac/0"] == 1.0


def test_configs_the_async_trainer_cannot_run_are_refused_up_front(tmp_path):
    from rlvr.trainer import build

    with pytest.raises(ValueError, match="needs a critic"):
        build.check_algorithm(load_config(None, [*TINY, *ASYNC, "algo.advantage=gae"]))
    with pytest.raises(ValueError, match="old_logprobs=behavior applies to ratio losses"):
        build.check_algorithm(load_config(None, [*TINY, "algo.loss=asympo", "algo.old_logprobs=behavior"]))
    with pytest.raises(ValueError, match="reads the behaviour log-probs itself"):
        build.check_algorithm(load_config(None, [*TINY, "algo.loss=decoupled_ppo", "algo.old_logprobs=behavior"]))


def test_the_sampler_returns_log_probs_only_when_the_loss_reads_them():
    from rlvr.trainer import build

    for loss, extra, want in [("ppo_clip", [], False), ("ppo_clip", ["algo.old_logprobs=behavior"], True),
                              ("decoupled_ppo", [], True), ("asympo", [], False), ("spo", [], False)]:
        cfg = load_config(None, [*TINY, f"algo.loss={loss}", *extra])
        assert build.sampling_params(cfg, build.check_algorithm(cfg)).logprobs is want, loss


def test_a_call_queued_while_the_sampler_fails_to_build_fails_at_once():
    gate = threading.Event()

    def slow_broken():
        gate.wait(5)
        raise OSError("no weights")
    with WorkerPool(ThreadBackend(slow_broken), 1, timeout_s=60, max_restarts=0) as pool:
        threading.Timer(0.2, gate.set).start()  # the call is queued before the build fails
        t0 = time.monotonic()
        with pytest.raises(WorkerFailure, match="OSError: no weights"):
            pool.generate(PROMPTS, PARAMS, n=1, seed=0)
        assert time.monotonic() - t0 < 10  # not the 60 s hang timeout
