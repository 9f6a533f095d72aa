"""End to end through the real CLI and the real loop on tiny-random: finite losses, every trainable
parameter changes, and a run interrupted after a checkpoint resumes to exactly the same metrics."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from rlvr.config import load_config
from rlvr.metrics import read_metrics
from rlvr.models import apply_lora, tiny_random, trainable_state_dict

# tiny-random never gets an answer right, so the signal comes from DAPO's overlong shaping: the reward
# ramps from 0 (empty) to −1 (max_new_tokens), and digits as stop strings make the lengths vary.
TINY = ["model.name=tiny-random", "data.source=arith", "data.task_kwargs={}", "data.verifier=int", "data.size=120", "data.eval_size=8", "rollout.prompts_per_step=2",
        "rollout.group_size=4", "rollout.max_new_tokens=12", "reward.overlong_buffer=12", "reward.num_workers=0",
        "algo.micro_batch_size=4", "optim.lr=1e-2", "rollout.stop=[a, e, i, o, u, '0', '1', '2', '3', '4', '5']", "log.progress=false", "log.tensorboard=false"]


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "rlvr", "train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.e2e
@pytest.mark.parametrize("lora", [False, True])
def test_cli_trains_tiny_random_and_changes_every_trainable_parameter(tmp_path, lora):
    run = tmp_path / "run"
    res = _cli(*TINY, "steps=3", f"model.lora={str(lora).lower()}", "--run-dir", str(run), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "held-out accuracy at end" in res.stdout
    rows = [r for r in read_metrics(run) if "loss/policy" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert isinstance(r["loss/policy"], float) and r["train/skipped_steps"] == 0
        assert r["adv/frac_zero"] < 1.0
    evals = [r for r in read_metrics(run) if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 3]
    assert (run / "config.yaml").is_file() and (run / "completions.jsonl").is_file()
    assert load_config(run / "config.yaml").steps == 3

    model, _ = tiny_random(0)
    if lora:
        torch.manual_seed(0)
        model = apply_lora(model)
    initial = trainable_state_dict(model)
    trained = load_file(str(run / "checkpoints" / "step_000003" / "model.safetensors"))
    assert set(trained) == set(initial)
    unchanged = [k for k in initial if torch.equal(initial[k], trained[k])]
    assert not unchanged, f"parameters that did not change: {unchanged}"


@pytest.mark.e2e   # in-process twin in test_cli.py
def test_config_errors_exit_2_naming_the_key(tmp_path):
    res = _cli("algo.advantag=grpo", cwd=tmp_path)
    assert res.returncode == 2 and "algo.advantag" in res.stderr
    res = _cli("algo.advantage=maxpo", "--print-config", cwd=tmp_path)  # config is fine; the check comes later
    assert res.returncode == 0
    res = _cli(*TINY, "algo.advantage=maxpo", "--run-dir", str(tmp_path / "r"), cwd=tmp_path)
    assert res.returncode == 2 and "algo.k" in res.stderr


def _strip_perf(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("perf/") and k != "eval/seconds"} for r in rows]


def run_straight_and_resumed(loop, cfg, tmp_path, monkeypatch, crash_step: int = 2) -> tuple[list, list]:
    """Train ``cfg`` with ``loop`` (a trainer module) once straight through, and once crashing at 0-based
    ``crash_step`` (after its checkpoint) then resuming; returns both runs' metrics rows."""
    loop.train(cfg, run_dir=tmp_path / "straight")
    real = loop.update

    def crash(run, batch, step):
        if step == crash_step:
            raise KeyboardInterrupt
        return real(run, batch, step)

    monkeypatch.setattr(loop, "update", crash)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, run_dir=tmp_path / "resumed")
    monkeypatch.setattr(loop, "update", real)
    loop.train(cfg, run_dir=tmp_path / "resumed", resume=True)
    return read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")


@pytest.mark.parametrize("extra", [[], ["algo.advantage=gae", "algo.aggregation=token_mean", "model.lora=false"]],
                         ids=["grpo", "ppo-critic"])
def test_resume_after_an_interruption_gives_identical_metrics(tmp_path, monkeypatch, extra):
    from rlvr.trainer import sync

    cfg = load_config(None, [*TINY, "steps=4", "log.checkpoint_every=2", "algo.num_iterations=2", *extra])
    # crash at the third step (0-based 2), after the step-2 checkpoint
    a, b = map(_strip_perf, run_straight_and_resumed(sync, cfg, tmp_path, monkeypatch))
    assert a == b
    files = ["model.safetensors"]
    if extra:  # with a critic: its weights and optimiser are checkpointed and restored too
        assert any("critic/value_loss" in r for r in a)
        files += ["critic.safetensors", "critic_optimizer.safetensors"]
    for name in files:
        wa = load_file(str(tmp_path / "straight/checkpoints/step_000004" / name))
        wb = load_file(str(tmp_path / "resumed/checkpoints/step_000004" / name))
        assert set(wa) == set(wb) and wa
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name


def test_resume_needs_a_checkpoint_and_a_fresh_run_refuses_to_overwrite(tmp_path):
    cfg = load_config(None, [*TINY, "steps=1"])
    from rlvr.trainer import train

    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train(cfg, run_dir=tmp_path / "none", resume=True)
    train(cfg, run_dir=tmp_path / "r")
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, run_dir=tmp_path / "r")
    assert json.loads((tmp_path / "r/metrics.jsonl").read_text().splitlines()[-1])["step"] == 1


@pytest.mark.parametrize("overrides", [
    ["algo.advantage=aapo", "algo.loss=reinforce", "model.lora=true"],    # reference = adapters switched off
    ["algo.advantage=aapo", "algo.loss=reinforce", "model.lora=false"],   # reference = a frozen copy
    ["algo.kl_coef=0.1", "model.lora=false", "algo.num_iterations=2", "algo.mini_batches=2"],
    ["rollout.dynamic_sampling=true", "rollout.max_refill_rounds=2", "algo.aggregation=token_mean"],
    ["algo.advantage=maxpo", "algo.k=2", "log.ref_kl=true"],
], ids=["aapo-lora", "aapo-copy", "kl-ppo-epochs", "dapo-dynamic", "maxpo-refkl"])
def test_algorithm_paths_run_end_to_end(tmp_path, overrides):
    from rlvr.trainer import train

    cfg = load_config(None, [*TINY, "steps=2", *overrides])
    summary = train(cfg, run_dir=tmp_path / "r")
    rows = [r for r in read_metrics(tmp_path / "r") if "loss/policy" in r]
    assert len(rows) == 2 and summary.eval_end is not None
    for r in rows:
        assert isinstance(r["loss/policy"], float) and r["train/skipped_steps"] == 0
    if cfg.algo.advantage == "aapo":
        assert all("reward/ref_mean" in r for r in rows)  # the reference model was sampled and scored
    if cfg.algo.kl_coef > 0 or cfg.log.ref_kl:
        assert all(isinstance(r["policy/kl"], float) and r["policy/kl"] >= 0 for r in rows)
    if cfg.rollout.dynamic_sampling:
        assert all(r["rollout/prompts_sampled"] >= 2 for r in rows)


@pytest.mark.parametrize("by_name,by_path", [
    (["algo.loss=ppo_clip"], ["algo.loss=rlvr.losses:ppo_clip"]),
    (["algo.advantage=maxpo", "algo.k=2"], ["algo.advantage=rlvr.advantages:maxpo", "algo.k=2"]),
], ids=["loss", "advantage"])
def test_an_algorithm_named_by_import_path_trains_exactly_as_by_name(tmp_path, by_name, by_path):
    """The registry facts travel with the function: before, 'rlvr.losses:ppo_clip' got default facts (no π_old), so
    it trained with ratio ≡ 1 and clip fraction 0 while 'ppo_clip' clipped."""
    from rlvr.trainer import train

    rows = []
    for i, spelling in enumerate((by_name, by_path)):
        cfg = load_config(None, [*TINY, "steps=2", "eval.at_start=false", "algo.num_iterations=4", *spelling])
        train(cfg, run_dir=tmp_path / str(i))
        rows.append([r for r in _strip_perf(read_metrics(tmp_path / str(i))) if "loss/policy" in r])
    assert rows[0] == rows[1] and len(rows[0]) == 2
    assert max(r["loss_stats/clip_frac"] for r in rows[1]) > 0      # π_old was computed: the ratio moved and clipped


@pytest.mark.parametrize("overrides,message", [
    (["algo.advantage=maxpo", "algo.k=4"], r"rollout.group_size=4, algo.k=4 .*maxpo: needs G >= 5 samples"),
    (["algo.advantage=pkpo", "algo.k=4", "algo.advantage_kwargs={baseline: loo}"],
     r"algo.k=4 and algo.advantage_kwargs=\{'baseline': 'loo'\}: pkpo\(baseline='loo'\): needs G >= 5"),
    (["algo.advantage=pkpo", "algo.k=1"], r"pkpo\(baseline='loo_minus_one'\): k must be >= 2"),
    (["algo.advantage=grpo", "algo.advantage_kwargs={scale_by_sdt: true}"], r"unexpected keyword argument"),
], ids=["maxpo-k=G", "pkpo-loo-k=G", "pkpo-loo1-k=1", "misspelt-kwarg"])
def test_an_estimator_that_cannot_run_at_this_group_size_is_refused_before_the_model_loads(
        tmp_path, monkeypatch, overrides, message):
    from rlvr.trainer import build, train

    monkeypatch.setattr(build, "load_policy", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(build, "build_problems", lambda *a, **k: pytest.fail("the data was loaded"))
    cfg = load_config(None, [*TINY, *overrides])
    with pytest.raises(ValueError, match=message):
        train(cfg, run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_the_kl_term_of_a_full_fine_tune_is_taken_to_the_frozen_reference(tmp_path):
    """Without LoRA the reference is a frozen copy of the initial weights: the KL is 0 at the first step (the policy
    is the reference) and positive once the policy has moved. (It used to be taken to the policy itself: 0 always.)"""
    from rlvr.trainer import train

    cfg = load_config(None, [*TINY, "steps=3", "eval.at_start=false", "model.lora=false", "algo.kl_coef=0.1"])
    train(cfg, run_dir=tmp_path / "r")
    kl = [r["policy/kl"] for r in read_metrics(tmp_path / "r") if "loss/policy" in r]
    assert kl[0] == 0.0 and kl[1] > 1e-6 and kl[2] > 1e-6, kl
