"""Extending rlvr from outside the package: a user module registers an advantage estimator, a policy loss, a data
source, a verifier, a sampler engine and a rollout backend, and each is reached by name and by import path through
the entry points the trainer uses, with its facts; then a real run trains on them from the command line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch

from rlvr import advantages, losses
from rlvr.config import ConfigError, load_config
from rlvr.data import DataError, build_problems, sources
from rlvr.metrics import read_metrics
from rlvr.rewards import RewardPool, get_verifier, verifiers
from rlvr.rewards.verifiers import VERIFIERS, portable_name
from rlvr.rollout import backends, engines
from rlvr.trainer import build
from test_train_e2e import TINY

MODULE = "rlvr_user_ext"
USER_MODULE = '''
"""A user's extension module: one entry of each registry, registered where it is defined."""
import os
import random

import torch

from rlvr import advantages, losses
from rlvr.data import sources
from rlvr.rewards import verifiers
from rlvr.rewards.verifiers import VerifyResult
from rlvr.rollout import backends, engines
from rlvr.types import Problem


@advantages.register("user_scaled_centring", centred=True, grad_scale="scale/G")
def scaled_centring(rewards, *, scale=1.0):
    return scale * (rewards - rewards.mean(-1, keepdim=True))


@losses.register("user_pg", default_aggregation="seq_mean_token_sum")
def user_pg(x, *, const=1.0):
    return -x.token_advantages() * x.logprobs, {"user_const": torch.full_like(x.logprobs, const)}


@sources.register("user_sums", argument="op", generated=True, default_size=40, takes_task_kwargs=True,
                  default_verifier="user_parity")
def sums(op, *, size, seed, task_kwargs):
    rng, hi = random.Random(seed), task_kwargs.get("max_operand", 9)
    pairs = [(rng.randint(0, hi), rng.randint(0, hi)) for _ in range(size)]
    return [Problem(prompt=f"{a}{op}{b}=", answer=str(a + b if op == "+" else a - b), verifier="int",
                    id=f"user_sums/{i}") for i, (a, b) in enumerate(pairs)]


def unregistered_source(*, size):
    return []


@verifiers.register("user_parity")
def parity(completion, gold):
    ok = len(completion) % 2 == int(gold) % 2
    return VerifyResult(float(ok), f"len{len(completion)}", "parity" if ok else "no parity")


@verifiers.register("user_alarm", main_thread=True)
def alarm(completion, gold):
    return VerifyResult(float(completion.strip() == gold), completion.strip(), "alarm")


@engines.register("user_engine", full_weights=True, async_only=True)
def user_engine(cfg, policy):
    from rlvr.rollout import HFSampler

    if os.environ.get("RLVR_USER_ENGINE_LOG"):
        with open(os.environ["RLVR_USER_ENGINE_LOG"], "a") as f:
            f.write("built\\n")
    model, tokenizer = policy()
    return HFSampler(model, tokenizer, max_batch_size=cfg.rollout.max_batch_size)


@backends.register("user_threads", in_process=True)
def user_threads(make_sampler, rollout):
    from rlvr.rollout.pool import ThreadBackend

    if os.environ.get("RLVR_USER_ENGINE_LOG"):
        with open(os.environ["RLVR_USER_ENGINE_LOG"], "a") as f:
            f.write("backend\\n")
    return ThreadBackend(make_sampler)
'''

REGISTRIES = [advantages._REGISTRY, losses._REGISTRY, sources._REGISTRY, VERIFIERS, engines._REGISTRY,
              backends._REGISTRY]


@pytest.fixture
def user(tmp_path, monkeypatch):
    """The user module, imported from tmp_path; every registry is restored afterwards."""
    for registry in REGISTRIES:
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_by_fn", dict(registry._by_fn))
    (tmp_path / f"{MODULE}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    import importlib

    yield importlib.import_module(MODULE)
    sys.modules.pop(MODULE, None)


def test_estimator_and_loss_are_reached_by_name_and_path_with_their_facts(user):
    s = advantages.spec(f"{MODULE}:scaled_centring")
    assert s is advantages.spec("user_scaled_centring") and s.fn is user.scaled_centring
    assert s.centred and s.grad_scale == "scale/G" and not s.needs_values
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    assert advantages.get("user_scaled_centring")(rewards, scale=2.0).tolist() == [[1.0, -1.0, -1.0, 1.0]]
    loss = losses.spec(f"{MODULE}:user_pg")
    assert loss is losses.spec("user_pg") and loss.default_aggregation == "seq_mean_token_sum"
    assert not loss.needs_old_logprobs and not loss.needs_behavior_logprobs


def test_data_source_is_reached_by_name_argument_and_path_with_its_facts(user):
    entry, op = sources.source("user_sums:+")
    assert (entry.fn, op) == (user.sums, "+")
    assert sources.source(f"{MODULE}:sums:-") == (entry, "-")
    assert (entry.argument, entry.generated, entry.default_size, entry.takes_task_kwargs, entry.row_fields) == \
        ("op", True, 40, True, False)
    assert "user_sums:<op>" in sources.spellings()
    problems = build_problems("user_sums:-", size=6, seed=3, task_kwargs={"max_operand": 20}, template="Q {prompt}")
    assert [p.id for p in problems] == [f"user_sums/{i}" for i in range(6)]
    for p in problems:
        a, b = map(int, p.prompt.removeprefix("Q ").removesuffix("=").split("-"))
        assert p.answer == str(a - b) and max(a, b) <= 20 and p.verifier == "user_parity"  # the source's default
    assert build_problems("user_sums:-", size=6, seed=3, task_kwargs={"max_operand": 20}) != \
        build_problems("user_sums:-", size=6, seed=4, task_kwargs={"max_operand": 20})   # the seed reaches it
    assert {p.verifier for p in build_problems("user_sums:+", size=3, verifier="int")} == {"int"}
    with pytest.raises(DataError, match="'user_sums:\\+' needs size="):
        build_problems("user_sums:+")
    with pytest.raises(DataError, match="prompt_field/answer_field apply to sources with row fields"):
        build_problems("user_sums:+", size=3, prompt_field="q")
    with pytest.raises(DataError, match=r"name it user_sums:<op> \(the op is missing\)"):
        build_problems("user_sums", size=3)
    with pytest.raises(DataError, match=r"unknown data source 'user_sum'; valid sources: .*user_sums:<op>"):
        build_problems("user_sum", size=3)
    with pytest.raises(DataError, match=r"is not a registered data source.*@rlvr.data.sources.register\("):
        build_problems(f"{MODULE}:unregistered_source")


def test_the_trainer_reads_the_source_facts_and_checks_verifiers_before_loading(user):
    cfg = load_config(None, [*TINY, "data.source=user_sums:+", "data.size=null", "data.verifier=null",
                             "data.task_kwargs={max_operand: 10000}"])
    train, held_out = build.build_problems(cfg)     # data.size=None: the source's default_size (40), not 2000
    assert len(held_out) == 8
    assert sorted(p.id for p in train + held_out) == sorted(f"user_sums/{i}" for i in range(40))
    assert {p.verifier for p in train} == {"user_parity"}
    bad = load_config(None, [*TINY, "data.verifier=user_parit"])
    with pytest.raises(ValueError, match="data.verifier=user_parit: unknown verifier 'user_parit'; valid names: "
                                         "int, int_last, math, user_alarm, user_parity"):
        build.build_problems(bad)      # before any model loads


def test_a_main_thread_verifier_is_refused_where_the_async_trainer_would_score_it_in_a_thread(user):
    # The fact travels with the function: both spellings give the entry it was registered with.
    assert verifiers.verifier_spec("user_alarm") is verifiers.verifier_spec(f"{MODULE}:alarm")
    assert verifiers.verifier_spec("user_alarm").main_thread and not verifiers.verifier_spec("user_parity").main_thread
    base = [*TINY, "data.verifier=user_alarm", "trainer=async"]
    with pytest.raises(ValueError, match="verifier 'user_alarm' works only in a process's main thread, and "
                                         r"trainer=async with reward.num_workers=0 .* set reward.num_workers >= 1"):
        build.build_problems(load_config(None, [*base, "reward.num_workers=0"]))      # before any model loads
    for ok in ([*base, "reward.num_workers=1"], [*TINY, "data.verifier=user_alarm", "reward.num_workers=0"],
               [*TINY, "data.verifier=user_parity", "trainer=async", "reward.num_workers=0"]):
        assert len(build.build_problems(load_config(None, ok))[0]) == 112     # workers, sync, a thread-safe verifier


def test_verifier_is_reached_by_name_and_path_also_in_reward_worker_processes(user):
    assert get_verifier("user_parity") is get_verifier(f"{MODULE}:parity") is user.parity
    assert portable_name("user_parity") == f"{MODULE}:parity"   # what a fresh worker process can import
    assert portable_name("int") == "int" and portable_name(f"{MODULE}:parity") == f"{MODULE}:parity"
    assert "user_parity" in VERIFIERS.names()
    with pytest.raises(ValueError, match="verifier 'user_parity' is already registered"):
        verifiers.register("user_parity")(lambda c, g: None)
    # A worker process never imported the user module: before portable_name it answered "unknown verifier".
    with RewardPool(num_workers=1, timeout_s=30) as pool:
        got = pool.score(["user_parity", "user_parity", "int"], ["ab", "abc", "#### 4"], ["2", "2", "4"])
    assert [(r.score, r.extracted, r.reason) for r in got] == [
        (1.0, "len2", "parity"), (0.0, "len3", "no parity"), (1.0, "4", "correct")]


def test_engine_facts_reach_config_validation_and_the_builders(user, tmp_path, monkeypatch):
    e = engines.engine(f"{MODULE}:user_engine")
    assert e is engines.engine("user_engine") and e.full_weights and e.async_only
    assert not engines.engine("hf").full_weights and engines.engine("vllm").full_weights
    with pytest.raises(ConfigError, match="rollout.engine=user_engine samples on rollout workers: it needs "
                                          "trainer=async"):
        load_config(None, [*TINY, "rollout.engine=user_engine"])
    with pytest.raises(ConfigError, match=r"rollout.engine: unknown sampler engine 'usr_engine'; valid names: .*"
                                          r"user_engine, vllm"):
        load_config(None, [*TINY, "rollout.engine=usr_engine"])
    cfg = load_config(None, [*TINY, "trainer=async", "rollout.engine=user_engine", "model.lora=true"])
    model, _ = build.load_policy(cfg, torch.device("cpu"))
    published = build.worker_weights(cfg, model)   # full_weights: the merged model under its base names
    assert published and not any("lora" in n or n.startswith("base_model") for n in published)
    hf = build.worker_weights(replace(cfg, rollout=replace(cfg.rollout, engine="hf")), model)
    assert hf and all("lora_" in n for n in hf)    # the hf engine: trainable parameters only
    log = tmp_path / "engine.log"
    monkeypatch.setenv("RLVR_USER_ENGINE_LOG", str(log))
    sampler = build.SamplerFactory(cfg)()
    assert log.read_text() == "built\n" and sampler.version == 0 and hasattr(sampler, "load_weights")


def test_backend_is_made_by_name_and_path_with_its_facts(user):
    from rlvr.rollout.pool import ThreadBackend, WorkerPool
    from benchmarks.simulator import SimSampler
    from rlvr.types import SamplingParams

    assert backends.backend(f"{MODULE}:user_threads") is backends.backend("user_threads")
    assert backends.backend("user_threads").in_process and backends.backend("thread").in_process
    assert not backends.backend("ray").in_process
    cfg = load_config(None, ["trainer=async", f"rollout.backend={MODULE}:user_threads"])
    backend = backends.make_backend(cfg.rollout.backend, SimSampler, cfg.rollout)
    assert isinstance(backend, ThreadBackend)
    with WorkerPool(backend, 2) as pool:
        rollout = pool.generate([[1, 2], [3]], SamplingParams(max_new_tokens=4), n=2, seed=0)
    assert rollout.lengths.shape == (4,)
    with pytest.raises(ConfigError, match=r"rollout.backend: unknown rollout backend 'tread'; valid names: ray, "
                                          r"thread, user_threads"):
        load_config(None, ["rollout.backend=tread"])


def test_a_run_from_the_command_line_trains_on_the_user_extensions(tmp_path):
    """A fresh process: nothing is imported before the config names the module (registration by import)."""
    (tmp_path / f"{MODULE}.py").write_text(USER_MODULE)
    run, log = tmp_path / "run", tmp_path / "engine.log"
    overrides = [o for o in TINY if not o.startswith(("data.verifier", "data.size", "reward."))] + [
        f"data.source={MODULE}:sums:+", "data.verifier=null", "data.size=40", "data.task_kwargs={max_operand: 9}",
        f"algo.advantage={MODULE}:scaled_centring", "algo.advantage_kwargs={scale: 3.0}", "algo.loss=user_pg",
        "algo.loss_kwargs={const: 7.0}", "reward.num_workers=1", "trainer=async", "rollout.max_staleness=0",
        f"rollout.engine={MODULE}:user_engine", f"rollout.backend={MODULE}:user_threads", "model.lora=false",
        "steps=2", "log.completions_every=1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RLVR_USER_ENGINE_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "rlvr", "train", *overrides, "--run-dir", str(run)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert log.read_text() == "backend\nbuilt\n"     # the user's backend, then one rollout worker with the user's engine
    rows = [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if not r.get("eval")]
    assert [r["step"] for r in train_rows] == [1] * 8 + [2] * 8           # P = 2 prompts × G = 4, each step
    for r in train_rows:
        a, b = map(int, r["prompt"].removesuffix("=").split("+"))        # the user's source
        assert r["answer"] == str(a + b) and r["id"].startswith("user_sums/")
        assert r["extracted"] == f"len{len(r['completion'])}"            # the user's verifier, in a worker process
        assert r["reward"] == float(len(r["completion"]) % 2 == (a + b) % 2)
    for i in range(0, 16, 4):                                             # the user's estimator with its kwargs
        group = train_rows[i:i + 4]
        mean = sum(r["reward"] for r in group) / 4
        assert [r["advantage"] for r in group] == pytest.approx([3.0 * (r["reward"] - mean) for r in group])
    metrics = [r for r in read_metrics(run) if "loss/policy" in r]
    assert [r["loss_stats/user_const"] for r in metrics] == [7.0, 7.0]    # the user's loss with its kwargs
    assert all(r["async/staleness"] == 0 for r in metrics)
    evals = [r for r in rows if r.get("eval")]
    assert evals and all(r["extracted"] == f"len{len(r['completion'])}" for r in evals)


def test_the_registry_modules_import_without_torch():
    """Reading a config looks engines and backends up: that must not import torch or transformers."""
    code = textwrap.dedent("""
        import sys
        from rlvr.config import load_config
        load_config(None, ["rollout.backend=ray", "rollout.engine=vllm", "trainer=async"])
        print(sorted(m for m in ("torch", "transformers", "ray", "vllm") if m in sys.modules))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"


@pytest.mark.parametrize("module", ["rlvr.data.sources", "rlvr.data.files", "rlvr.data.hub", "rlvr.data.benchmarks"])
def test_a_registering_module_imports_first_in_a_fresh_interpreter(module):
    """A source module imports the registry from its own package: no import cycle whichever comes first."""
    code = f"import importlib; importlib.import_module({module!r}); from rlvr.data import sources; " \
           "print(sources.spellings())"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == ("['aime24', 'amc23', 'arith', 'champ', 'a .jsonl or .parquet file', 'gsm8k', "
                                  "'gsm8k_train', 'hf:<repo>', 'math500', 'math_l35', 'math_train', 'minerva', "
                                  "'olympiadbench', 'rg:<task>']")
