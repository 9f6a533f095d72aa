"""The GPU recipes (configs/gpu/<model>/<algorithm>.yaml): every file loads and validates as the trainer would before
loading anything (config, algorithm, update schedule, data source, prompt template, sampler engine), says in its
header that it has not been run, and holds the settings its header promises. No model or data is loaded: the models
are hub ids this machine cannot reach."""
from __future__ import annotations

from pathlib import Path

import pytest

from rlvr.config import load_config
from rlvr.data import sources
from rlvr.rollout import engines
from rlvr.trainer import build
from rlvr.trainer.algorithm import Algorithm
from rlvr.trainer.step import Schedule

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs" / "gpu").glob("*/*.yaml"))
MODELS = {"qwen2.5-math-1.5b": "Qwen/Qwen2.5-Math-1.5B", "qwen3-0.6b": "Qwen/Qwen3-0.6B",
          "qwen3-1.7b": "Qwen/Qwen3-1.7B"}
ALGOS = {"grpo", "aapo", "maxpo", "async_asympo", "async_spo"}


def test_one_recipe_per_model_and_algorithm():
    assert {(p.parent.name, p.stem) for p in RECIPES} == {(m, a) for m in MODELS for a in ALGOS}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_each_recipe_validates_without_loading_a_model(path):
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(line.startswith("# NOT RUN: no machine with a GPU") for line in header)
    assert any(f"rlvr train configs/gpu/{path.parent.name}/{path.name}" in line for line in header)
    cfg = load_config(path)
    algo = Algorithm.from_config(cfg)                   # what the trainer resolves first, before anything loads
    Schedule.from_config(cfg)
    assert cfg.model.name == MODELS[path.parent.name] and not cfg.model.lora
    assert (cfg.model.device, cfg.model.dtype, cfg.trainer, cfg.rollout.engine) == ("cuda", "bfloat16", "async", "vllm")
    assert engines.engine(cfg.rollout.engine).async_only and cfg.dist.world_size == 4 and cfg.dist.strategy == "fsdp2"
    entry, _ = sources.source(cfg.data.source)
    assert cfg.data.source == "math_l35" and entry.local_copy and cfg.data.verifier is None and not cfg.data.task_kwargs
    template = build.prompt_template(cfg)
    assert template.name == ("qwen_math" if "math" in path.parent.name else "boxed") and not template.think
    assert cfg.rollout.max_new_tokens + 512 <= cfg.rollout.vllm.max_model_len     # a 512-token prompt still fits
    assert cfg.eval.max_new_tokens == cfg.rollout.max_new_tokens


@pytest.mark.parametrize("model", MODELS)
def test_each_recipe_holds_its_algorithm(model):
    cfg = {a: load_config(ROOT / "configs" / "gpu" / model / f"{a}.yaml") for a in ALGOS}
    aapo = cfg["aapo"]                                   # the authors' 1.5B recipe (docs/algorithms.md §7)
    assert Algorithm.from_config(aapo).needs_reference_samples
    assert (aapo.algo.advantage, aapo.algo.advantage_kwargs, aapo.algo.loss, aapo.algo.aggregation,
            aapo.algo.kl_coef) == ("aapo", {"scale_by_std": True}, "reinforce", "group_mean_token_mean", 0.0)
    assert (aapo.rollout.group_size, aapo.rollout.prompts_per_step, aapo.rollout.temperature, aapo.steps) == \
        (6, 4, 0.7, 100)
    assert (aapo.optim.lr, aapo.optim.schedule, aapo.optim.warmup_steps, aapo.seed) == (1e-6, "cosine", 10, 42)
    assert aapo.rollout.max_new_tokens == min(3584, aapo.rollout.vllm.max_model_len - 512)
    assert (cfg["maxpo"].algo.advantage, cfg["maxpo"].algo.k, cfg["maxpo"].algo.aggregation) == \
        ("maxpo", 4, "seq_mean_token_sum")
    assert (cfg["grpo"].algo.advantage, cfg["grpo"].algo.loss) == ("grpo", "ppo_clip")
    for name in ("grpo", "maxpo", "aapo"):
        assert cfg[name].rollout.max_staleness == 0     # the synchronous schedule on vLLM rollout workers
    for name, loss in (("async_asympo", "asympo"), ("async_spo", "spo")):
        assert cfg[name].algo.loss == loss and cfg[name].rollout.max_staleness == 2
