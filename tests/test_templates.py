"""Prompt templates (rlvr.data.templates): names, format strings, the sources' defaults, the quoted prompts, their
system message through a chat template, and what the trainer takes from them (system prompt, the think-tag format
reward)."""
from __future__ import annotations

import pytest
import torch

from rlvr.config import load_config
from rlvr.data import DataError, build_problems, templates
from rlvr.models import char_tokenizer, encode_prompt
from rlvr.rewards import RewardPool
from rlvr.rewards.scoring import RewardSettings, score
from rlvr.trainer import build
from rlvr.types import Problem, Rollout

CHAT = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")


def test_names_format_strings_and_defaults():
    assert templates.names() == ["boxed", "plain", "qwen_math", "r1"]
    assert templates.template(None) is templates.template("plain")
    assert templates.template(None, "boxed") is templates.template("boxed")
    assert templates.template("qwen_math", "boxed").name == "qwen_math"            # a given name beats the default
    custom = templates.template("Q: {question}")
    assert (custom.user, custom.system, custom.think) == ("Q: {question}", None, False)
    with pytest.raises(DataError, match="unknown prompt template 'Solve this'; named templates: boxed, plain, "
                                        "qwen_math, r1"):
        templates.template("Solve this")
    with pytest.raises(ValueError, match="without braces"):
        templates.register_template(templates.Template("my{x}"))


def test_the_quoted_prompts():
    step = "Please reason step by step, and put your final answer within \\boxed{}."
    assert templates.STEP_BY_STEP == step                                   # Qwen2.5-Math README's system prompt
    assert templates.template("boxed").user.format(prompt="What is 1+1?") == "What is 1+1?\n" + step
    q = templates.template("qwen_math")
    assert (q.user, q.system, q.think) == ("{prompt}", step, False)
    r1 = templates.template("r1")
    assert r1.think and r1.user == "{prompt}" and r1.system.startswith("A conversation between User and Assistant.")
    assert "<think> reasoning process here </think> <answer> answer here </answer>." in r1.system


def test_templates_apply_to_every_kind_of_source(tmp_path):
    arith = build_problems("arith", size=2, seed=0, template="boxed")
    plain = build_problems("arith", size=2, seed=0)
    assert [p.prompt for p in arith] == [p.prompt + "\nPlease reason step by step, and put your final answer "
                                         "within \\boxed{}." for p in plain]
    assert [p.prompt for p in build_problems("arith", size=2, seed=0, template="qwen_math")] == \
        [p.prompt for p in plain]                                           # its instruction is the system message
    f = tmp_path / "x.jsonl"
    f.write_text('{"q": "2+2?", "a": 4, "unit": "apples"}\n')
    assert build_problems(f, prompt_field="q", answer_field="a", template="{prompt} ({unit})")[0].prompt == \
        "2+2? (apples)"


def test_the_system_message_goes_through_the_chat_template():
    tok = char_tokenizer()
    tok.chat_template = CHAT
    cfg = load_config(None, ["data.template=qwen_math"])
    system = build.system_prompt(cfg)
    assert system == templates.STEP_BY_STEP
    text = tok.decode(encode_prompt(tok, "What is 1+1?", system))
    assert text == f"<system>{templates.STEP_BY_STEP}\n<user>What is 1+1?\n<assistant>"
    assert build.system_prompt(load_config(None, ["data.template=qwen_math", "model.system_prompt=Be brief."])) == \
        "Be brief."                                                          # model.system_prompt wins
    assert build.system_prompt(load_config(None, [])) is None               # the main job: plain, no system
    with pytest.raises(ValueError, match="has no chat template, so system_prompt cannot be applied"):
        encode_prompt(char_tokenizer(), "What is 1+1?", system)             # the tiny models have no chat template


def test_the_template_decides_the_format_reward():
    assert build.prompt_template(load_config(None, ["data.template=r1"])).think
    assert not build.prompt_template(load_config(None, [])).think
    texts = ["<think>1+1=2</think> <answer>2</answer>", "\\boxed{2}", "<think>1+1=2</think> \\boxed{3}"]
    rollout = Rollout(prompt_ids=[[1]] * 3, completion_ids=torch.ones(3, 4, dtype=torch.long),
                      lengths=torch.tensor([4, 4, 4]), finish_reasons=["stop"] * 3, texts=texts)
    problems = [Problem("1+1?", "2", "int", "p")]
    with RewardPool(num_workers=0) as pool:
        r1 = score(pool, problems, rollout, 3, RewardSettings(format_weight=0.5, think=True), 4)
        plain = score(pool, problems, rollout, 3, RewardSettings(format_weight=0.5), 4)
    assert r1.accuracy.tolist() == [1.0, 1.0, 0.0] and r1.format.tolist() == [1.0, 0.0, 1.0]
    assert r1.total.tolist() == [1.5, 1.0, 0.5]
    assert plain.format.tolist() == [1.0, 1.0, 1.0] and plain.total.tolist() == [1.5, 1.5, 0.5]
