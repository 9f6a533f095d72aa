"""(e2e) ``rlvr train`` with ``dist.world_size=2`` through the real launcher (torch.distributed.run, gloo): it
reproduces the one-process run step for step within float32 rounding (tiny-arith, GRPO; PPO with a critic; LoRA;
the asynchronous trainer), logs ``dist/world_size``, and a run resumed at the other world size continues as the
uninterrupted one. Each launch costs ~10–20 s of start-up, so these are in the e2e tier (``make test-e2e``); the
update's exactness itself is checked in the default tier (tests/test_dist.py)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlvr.metrics import read_metrics
from rlvr.trainer.checkpoint import checkpoint_weights

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
GRPO = "configs/tiny_arith/grpo.yaml"
ARITH = ["steps=3", "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=16", "data.size=400",
         "data.eval_size=16", "algo.micro_batch_size=4", "eval.every=0", "log.progress=false", "log.tensorboard=false",
         "model.threads=1"]
COMPARED = ("reward/mean", "response/length_mean")
CLOSE = ("loss/policy", "train/grad_norm", "policy/entropy", "adv/mean")


def _train(run: Path, *overrides: str, resume: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = ["--resume", str(run)] if resume else ["--run-dir", str(run)]
    res = subprocess.run([sys.executable, "-m", "rlvr", "train", *overrides, *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def _steps(run: Path) -> list[dict]:
    return [r for r in read_metrics(run) if "loss/policy" in r]


def _assert_same_steps(a: list[dict], b: list[dict], rel: float = 1e-4) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b] and a
    for ra, rb in zip(a, b):
        for k in COMPARED:
            assert rb[k] == pytest.approx(ra[k], rel=1e-9, abs=1e-9), (ra["step"], k)
        for k in CLOSE:
            assert rb[k] == pytest.approx(ra[k], rel=rel, abs=1e-6), (ra["step"], k)


@pytest.mark.parametrize("config,extra", [(GRPO, []), (GRPO, ["dist.strategy=ddp"]), ("configs/tiny_arith/ppo.yaml", []),
                                          (GRPO, ["model.name=tiny-random", "model.lora=true"])],
                         ids=["grpo-fsdp2", "grpo-ddp", "ppo-critic-fsdp2", "lora-fsdp2"])
def test_two_ranks_reproduce_one_process_step_for_step(tmp_path, config, extra):
    _train(tmp_path / "one", config, *ARITH, *extra)
    _train(tmp_path / "two", config, *ARITH, *extra, "dist.world_size=2")
    _assert_same_steps(_steps(tmp_path / "one"), _steps(tmp_path / "two"))
    assert [r["dist/world_size"] for r in read_metrics(tmp_path / "two") if "dist/world_size" in r] == [2]
    if "ppo" in config:
        assert all("critic/value_loss" in r for r in _steps(tmp_path / "two"))
    ckpt = tmp_path / "two" / "checkpoints" / "step_000003"
    assert json.loads((ckpt / "state.json").read_text())["weights"] == "dcp" and (ckpt / "dcp" / ".metadata").is_file()
    one, two = (checkpoint_weights(tmp_path / run / "checkpoints" / "step_000003") for run in ("one", "two"))
    assert one.keys() == two.keys() and one                            # the sharded checkpoint read whole, by name
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)


def _cut_at(src: Path, dst: Path, step: int) -> None:
    """A copy of run ``src`` as it was after step ``step``'s checkpoint (later checkpoints and metrics removed)."""
    shutil.copytree(src, dst)
    for ck in (dst / "checkpoints").glob("step_*"):
        if int(ck.name.split("_")[1]) > step:
            shutil.rmtree(ck)
    (dst / "checkpoints" / "latest").write_text(f"step_{step:06d}\n")
    rows = [line for line in (dst / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= step]
    (dst / "metrics.jsonl").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)], ids=["2->1", "1->2"])
def test_a_resume_at_the_other_world_size_continues_the_run(tmp_path, before, after):
    over = [GRPO, *ARITH, "steps=4", "log.checkpoint_every=2", "log.keep_checkpoints=3"]
    _train(tmp_path / "straight", *over, f"dist.world_size={before}")
    _cut_at(tmp_path / "straight", tmp_path / "resumed", 2)
    _train(tmp_path / "resumed", f"dist.world_size={after}", resume=True)
    _assert_same_steps(_steps(tmp_path / "straight"), _steps(tmp_path / "resumed"))


def test_the_async_trainer_on_two_ranks_at_staleness_zero_is_the_sync_trainer(tmp_path):
    _train(tmp_path / "sync", GRPO, *ARITH)
    _train(tmp_path / "async", GRPO, *ARITH, "trainer=async", "rollout.max_staleness=0", "dist.world_size=2")
    _assert_same_steps(_steps(tmp_path / "sync"), _steps(tmp_path / "async"))
    assert all(r["async/staleness"] == 0 for r in _steps(tmp_path / "async"))


def test_export_and_eval_read_a_sharded_checkpoint(tmp_path):
    _train(tmp_path / "two", GRPO, *ARITH, "steps=1", "dist.world_size=2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "rlvr", "export", str(tmp_path / "two"), str(tmp_path / "hf")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    from transformers import AutoModelForCausalLM

    exported = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "hf").named_parameters())
    trained = checkpoint_weights(tmp_path / "two" / "checkpoints" / "step_000001")
    for k, v in trained.items():                                        # a full fine-tune: every weight, same names
        assert torch.equal(exported[k].detach(), v), k


FULL_WEIGHTS_ENGINE = '''
from rlvr.rollout import engines


@engines.register("merged_hf", full_weights=True, async_only=True)
def merged_hf(cfg, policy):
    """Takes the learner's LoRA-merged whole model, as vLLM does: an HFSampler on the plain base model."""
    from rlvr.models import load_model
    from rlvr.rollout import HFSampler

    model, tokenizer = load_model(cfg.model.name)
    for p in model.parameters():
        p.requires_grad_(True)
    return HFSampler(model, tokenizer, max_batch_size=cfg.rollout.max_batch_size)
'''


def test_an_engine_that_takes_merged_weights_gets_them_from_sharded_ranks(tmp_path):
    """vLLM's case (its engine holds the whole LoRA-merged model): two FSDP2 ranks publish the same merged weights
    as one process, so the async runs match step for step."""
    (tmp_path / "merged_engine_mod.py").write_text(FULL_WEIGHTS_ENGINE)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    try:
        over = [GRPO, *ARITH, "model.lora=true", "trainer=async", "rollout.max_staleness=0",
                "rollout.engine=merged_engine_mod:merged_hf", "eval.at_start=false"]
        _train(tmp_path / "one", *over)
        _train(tmp_path / "two", *over, "dist.world_size=2")
    finally:
        os.environ["PYTHONPATH"] = os.environ["PYTHONPATH"].split(os.pathsep, 1)[1]
    one, two = _steps(tmp_path / "one"), _steps(tmp_path / "two")
    _assert_same_steps(one, two)
    assert len({r["reward/mean"] for r in one}) > 1 and any(r["train/grad_norm"] > 0 for r in one)  # it learns
