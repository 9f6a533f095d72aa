"""RayBackend: WorkerPool over Ray actors on a local 2-CPU Ray started in a pytest temp dir.

The default tier keeps the shards and weight publishing on Ray (one runtime start); the fault tests, the HF sampler
in an actor and the async trainer on Ray (each an actor restart or more, seconds on 2 cores) are marked e2e.

One Ray runtime for the module (started by a RayBackend with ``_temp_dir``, which also checks that the token
goes there, not to ~/.ray). The fault tests share one 2-worker pool and trigger their faults through the
prompts (see ``ray_fixtures.FakeSampler``), so each costs one actor restart, not a new pool: an actor is a new
process that imports torch and transformers (rlvr.rollout), several seconds on 2 busy cores.
"""
from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ray = pytest.importorskip("ray")

from rlvr.rollout.pool import WorkerFailure, WorkerPool, concat_rollouts, shard_bounds  # noqa: E402
from rlvr.rollout.ray_backend import RayBackend  # noqa: E402
from rlvr.seeding import derive_seed  # noqa: E402
from rlvr.types import Rollout, SamplingParams  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent
import ray_fixtures as fx  # noqa: E402  (tests/ is on sys.path, as for the other helper modules)

try:
    import psutil
except ImportError:  # pragma: no cover
    psutil = None

PARAMS = SamplingParams(max_new_tokens=8)
ACTOR_CPUS = 0.5  # the shared pool, a failing pool and the HF pool fit the 2 CPUs together


def _ray_children() -> list[str]:
    if psutil is None:
        return []
    names = []
    for c in psutil.Process().children(recursive=True):
        try:
            names.append(c.name())
        except psutil.Error:
            pass
    return [n for n in names if n in ("raylet", "gcs_server") or n.startswith("ray::")]


@pytest.fixture(scope="module")
def ray_runtime(tmp_path_factory):
    token_home = Path.home() / ".ray" / "auth_token"
    had_home_token = token_home.exists()
    tmp = tmp_path_factory.mktemp("ray")
    with pytest.MonkeyPatch.context() as mp:
        for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            mp.delenv(k, raising=False)
        # Ray's workers import the fake samplers by module name: put this directory on their path.
        mp.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        assert not ray.is_initialized()
        owner = RayBackend(fx.FakeSampler, init_kwargs=dict(num_cpus=2, include_dashboard=False,
                                                            log_to_driver=False, _temp_dir=str(tmp)))
        try:
            assert owner.owns_ray and ray.is_initialized()
            assert ray.cluster_resources()["CPU"] == 2
            # token auth is on, with a token in the temp dir, not in ~/.ray
            assert os.environ["RAY_AUTH_MODE"] == "token"
            assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(tmp / "auth_token")
            assert (tmp / "auth_token").stat().st_size > 0
            assert had_home_token or not token_home.exists()
            assert any(p.name.startswith("session_") for p in tmp.iterdir())
            yield SimpleNamespace(tmp=tmp, owner=owner)
        finally:
            owner.close()
        assert not ray.is_initialized()
        for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):  # restored as they were (unset) by close()
            assert k not in os.environ
        deadline = time.monotonic() + 15
        while _ray_children() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _ray_children() == []
        assert had_home_token or not token_home.exists()


@pytest.fixture(scope="module")
def shared(ray_runtime, tmp_path_factory):
    """A 2-worker pool of fake samplers whose faults fire once per tag (markers in a temp dir)."""
    markers = tmp_path_factory.mktemp("markers")
    backend = RayBackend(functools.partial(fx.FakeSampler, marker_dir=str(markers)), num_cpus=ACTOR_CPUS, threads=1)
    assert not backend.owns_ray
    pool = WorkerPool(backend, num_workers=2)
    env = SimpleNamespace(pool=pool, backend=backend, markers=markers, published=None)
    yield env
    pool.close()
    assert ray.is_initialized()  # a backend that did not start Ray leaves it running


def reference(prompts, n, seed, W, published=None) -> Rollout:
    """The same fake sampler in this process, on the pool's shards with the pool's shard seeds."""
    bounds = shard_bounds(len(prompts), W)
    parts = []
    for k, (a, b) in enumerate(bounds):
        s = fx.FakeSampler(faults=False)
        if published is not None:
            s.load_weights(*published)
        shard_seed = seed if len(bounds) == 1 else derive_seed(seed, "shard", k)
        parts.append(s.generate(prompts[a:b], PARAMS, n=n, seed=shard_seed))
    return concat_rollouts(parts)


def assert_same_rows(got: Rollout, want: Rollout) -> None:
    assert got.prompt_ids == want.prompt_ids
    assert torch.equal(got.lengths, want.lengths)
    assert got.completion_ids.shape == want.completion_ids.shape
    assert torch.equal(got.completion_ids, want.completion_ids)
    assert got.finish_reasons == want.finish_reasons
    assert got.policy_version == want.policy_version


def _loads(r: Rollout) -> list[int]:
    return [int(t.split()[0].split("=")[1]) for t in r.texts]


def _stats(pool):
    return pool.stats.restarts, pool.stats.reissued_prompts


PROMPTS = [[1, 2], [3], [4, 5, 6], [7, 8], [9]]


def test_generate_matches_in_process_shards(shared):
    pool = shared.pool
    r = pool.generate(PROMPTS, PARAMS, n=3, seed=11)
    assert r.prompt_ids == [p for p in PROMPTS for _ in range(3)]  # prompt-major
    assert_same_rows(r, reference(PROMPTS, 3, 11, 2, shared.published))
    assert r.policy_version == pool.version
    # the two shards ran in two different actor processes, neither of them this one
    pids = {t.split("pid=")[1] for t in r.texts}
    assert len(pids) == 2 and str(os.getpid()) not in pids
    # a different seed gives different rows
    assert not torch.equal(pool.generate(PROMPTS, PARAMS, n=3, seed=12).completion_ids, r.completion_ids)


def test_publish_reaches_workers_once_per_version(shared):
    pool = shared.pool
    v = pool.version + 1
    weights = {"w": torch.tensor([3.0, 4.0])}
    pool.publish(v, weights)
    shared.published = (v, weights)
    r1 = pool.generate(PROMPTS, PARAMS, n=2, seed=5)
    assert r1.policy_version == v
    assert (r1.completion_ids[:, 4] == 7).all()  # weights["w"].sum()
    assert_same_rows(r1, reference(PROMPTS, 2, 5, 2, shared.published))
    r2 = pool.generate(PROMPTS, PARAMS, n=2, seed=6)
    assert _loads(r2) == _loads(r1)  # the same version is not transferred again
    weights = {"w": torch.tensor([9.0])}
    pool.publish(v + 1, weights)
    shared.published = (v + 1, weights)
    r3 = pool.generate(PROMPTS, PARAMS, n=2, seed=6)
    assert [x + 1 for x in _loads(r2)] == _loads(r3)  # one transfer per version and worker
    assert r3.policy_version == v + 1 and (r3.completion_ids[:, 4] == 9).all()
    assert_same_rows(r3, reference(PROMPTS, 2, 6, 2, shared.published))


@pytest.mark.e2e
def test_worker_that_exits_mid_call_is_replaced(shared):
    pool = shared.pool
    prompts = [[1, 2], [3], [fx.DIE, 1], [5, 6]]  # shard 1 = prompts 2..3
    restarts, reissued = _stats(pool)
    r = pool.generate(prompts, PARAMS, n=2, seed=3)
    assert (shared.markers / f"{fx.DIE}-1").exists()  # it did die once
    assert_same_rows(r, reference(prompts, 2, 3, 2, shared.published))
    assert r.prompt_ids == [p for p in prompts for _ in range(2)]  # each prompt exactly n rows, in order
    assert _stats(pool) == (restarts + 1, reissued + 2)
    assert "worker 1" in pool.stats.errors[-1] and "Actor" in pool.stats.errors[-1]


@pytest.mark.e2e
def test_actor_killed_from_outside_is_replaced(shared):
    pool = shared.pool
    prompts = [[1], [2], [3], [fx.SLOW, 1], [6, 6]]  # shard 1 = prompts 3..4
    marker = shared.markers / f"{fx.SLOW}-1"
    victim = pool._workers[1].actor

    def killer():
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        ray.kill(victim)

    restarts, reissued = _stats(pool)
    t = threading.Thread(target=killer)
    t.start()
    t0 = time.monotonic()
    r = pool.generate(prompts, PARAMS, n=2, seed=4)
    t.join()
    assert time.monotonic() - t0 < fx.FakeSampler().slow_s
    assert_same_rows(r, reference(prompts, 2, 4, 2, shared.published))
    assert _stats(pool) == (restarts + 1, reissued + 2)


@pytest.mark.e2e
def test_hung_worker_is_killed_after_timeout(shared):
    pool = shared.pool
    prompts = [[1], [fx.HANG, 1], [2], [3]]  # shard 0 = prompts 0..1
    restarts, reissued = _stats(pool)
    pool.timeout_s = 3.0
    try:
        t0 = time.monotonic()
        r = pool.generate(prompts, PARAMS, n=2, seed=8)
        elapsed = time.monotonic() - t0
    finally:
        pool.timeout_s = 600.0
    assert elapsed >= 3.0
    assert_same_rows(r, reference(prompts, 2, 8, 2, shared.published))
    assert _stats(pool) == (restarts + 1, reissued + 2)
    assert "worker 0" in pool.stats.errors[-1] and "hung" in pool.stats.errors[-1]


@pytest.mark.e2e
def test_worker_failing_every_time_raises_and_close_leaves_no_actors(ray_runtime):
    backend = RayBackend(fx.FakeSampler, num_cpus=ACTOR_CPUS, threads=1)
    pool = WorkerPool(backend, num_workers=1, max_restarts=1)
    assert pool.generate([[1]], PARAMS, n=1, seed=0).completion_ids.shape == (1, fx.T)
    with pytest.raises(WorkerFailure, match="rollout worker 0 failed") as err:
        pool.generate([[fx.DIE_ALWAYS, 0], [2]], PARAMS, n=1, seed=0)
    assert "max_restarts=1" in str(err.value)
    assert pool.stats.restarts == 1 and pool.stats.reissued_prompts == 2
    actor_ids = [h.actor._actor_id.hex() for h in backend._handles]
    assert len(actor_ids) == 2
    pool.close()
    deadline = time.monotonic() + 10
    while True:
        states = [ray._private.state.actors(a)["State"] for a in actor_ids]
        if all(s == "DEAD" for s in states) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert states == ["DEAD", "DEAD"]
    assert ray.is_initialized()


@pytest.mark.e2e
def test_hf_sampler_in_an_actor_matches_in_process(ray_runtime):
    from rlvr.models import tiny_random, trainable_state_dict

    local = fx.make_hf_sampler()
    params = SamplingParams(temperature=1.0, max_new_tokens=6)
    prompts = [[5, 6, 7], [8, 9]]
    with WorkerPool(RayBackend(fx.make_hf_sampler, num_cpus=ACTOR_CPUS, threads=1), num_workers=1) as pool:
        got = pool.generate(prompts, params, n=2, seed=21)
        want = local.generate(prompts, params, n=2, seed=21)
        assert torch.equal(got.completion_ids, want.completion_ids) and torch.equal(got.lengths, want.lengths)
        assert got.texts == want.texts and got.policy_version == 0
        weights = trainable_state_dict(tiny_random(1)[0])
        pool.publish(1, weights)
        local.load_weights(1, weights)
        got = pool.generate(prompts, params, n=2, seed=21)
        want2 = local.generate(prompts, params, n=2, seed=21)
        assert got.policy_version == 1
        assert torch.equal(got.completion_ids, want2.completion_ids) and torch.equal(got.lengths, want2.lengths)
        assert not torch.equal(want2.completion_ids, want.completion_ids)  # the new weights changed the rollout


@pytest.mark.e2e
def test_async_trainer_on_ray_trains_and_survives_a_killed_worker(ray_runtime, tmp_path, monkeypatch):
    """The trainer with rollout.backend=ray: a rollout actor killed between steps is replaced and the run ends
    with every step trained within the staleness bound."""
    import math

    from rlvr.config import load_config
    from rlvr.metrics import read_metrics
    from rlvr.trainer import async_

    from test_train_e2e import TINY

    pools = []
    real_pool, real_update = async_.worker_pool, async_.update

    def capture(cfg):
        pools.append(real_pool(cfg))
        return pools[-1]

    def update_then_kill(run, batch, step):
        out = real_update(run, batch, step)
        if step == 1:
            ray.kill(pools[0]._workers[0].actor, no_restart=True)
        return out
    monkeypatch.setattr(async_, "worker_pool", capture)
    monkeypatch.setattr(async_, "update", update_then_kill)
    cfg = load_config(None, [*TINY, "steps=4", "trainer=async", "rollout.backend=ray", "rollout.max_staleness=1",
                             "algo.loss=asympo", "eval.at_start=false", "rollout.ray.threads_per_worker=1",
                             f"rollout.ray.cpus_per_worker={ACTOR_CPUS}"])
    async_.train(cfg, run_dir=tmp_path / "r")
    rows = [r for r in read_metrics(tmp_path / "r") if "loss/policy" in r]
    assert len(rows) == 4 and all(math.isfinite(r["loss/policy"]) for r in rows)
    assert all(r["async/staleness"] <= 1 for r in rows) and rows[-1]["policy/version"] == 4
    assert rows[-1]["rollout/worker_restarts"] >= 1
    assert ray.is_initialized()  # the trainer joined the runtime it found and left it running


def test_in_flight_weights_reach_an_actor_in_the_middle_of_a_call(ray_runtime):
    """``publish`` runs in the actor's "weights" concurrency group, so a ``generate`` in progress takes the new
    version between two decode steps (``rollout.weight_sync=token``): its tokens go 0 … 0 1 … 1."""
    backend = RayBackend(functools.partial(fx.StepSampler, step_s=0.3), num_cpus=0, threads=1)
    with WorkerPool(backend, 1, in_flight=True, timeout_s=120) as pool:
        assert pool.generate([[1]], PARAMS, n=1, seed=0).policy_version == 0   # the actor is up
        box = {}
        th = threading.Thread(target=lambda: box.setdefault("r", pool.generate([[1]], PARAMS, n=2, seed=1)))
        th.start()
        time.sleep(0.75)                                                      # 2-3 of the 8 steps done
        pool.publish(1, {"w": torch.ones(1)})
        th.join(60)
        tv = box["r"].token_versions
        assert tv is not None and tv[:, 0].eq(0).all() and tv[:, -1].eq(1).all()
        assert (tv.diff(dim=1) >= 0).all()
        assert box["r"].policy_version == 0
        after = pool.generate([[1]], PARAMS, n=1, seed=2)
        assert after.policy_version == 1 and after.token_versions.eq(1).all()
