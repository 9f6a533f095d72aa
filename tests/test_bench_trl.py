"""rlvr bench trl: the harness pieces (prompt equivalence, reward wrapper, summary and table) and a tiny run of both
sides. Everything that needs TRL is skipped when it is not installed (it comes with the `bench` extra)."""
from __future__ import annotations

import math

import pytest

from rlvr.bench import trl as bench


@pytest.fixture(scope="module")
def tiny_cfg():
    return bench.bench_config("tiny-random", steps=2, threads=1, prompts=2, group_size=4, max_new_tokens=8)


def test_the_config_follows_the_preset_and_the_overrides(tiny_cfg):
    assert tiny_cfg.model.name == "tiny-random" and not tiny_cfg.model.lora
    r = tiny_cfg.rollout
    assert (r.prompts_per_step, r.group_size, r.max_new_tokens) == (2, 4, 8)
    assert tiny_cfg.reward.num_workers == 0 and not tiny_cfg.eval.at_start and tiny_cfg.model.threads == 1
    assert bench.micro_batching(tiny_cfg) == (8, 1)
    smol = bench.bench_config("smollm2-135m-instruct", steps=3, threads=2)
    assert not smol.model.lora and smol.optim.lr == 1e-5 and bench.micro_batching(smol) == (16, 4)


@pytest.mark.parametrize("override", ["algo.kl_coef=0.04", "algo.num_iterations=2", "model.lora=true",
                                      "algo.loss=reinforce", "algo.micro_batch_size=3"])
def test_settings_trl_cannot_match_are_refused(override):
    with pytest.raises(ValueError, match="cannot match TRL"):
        bench.bench_config("tiny-arith", steps=2, threads=1, prompts=2, group_size=4, overrides=[override])


def test_trl_prompt_texts_tokenize_to_our_ids_on_tiny_arith():
    from rlvr.models import load_model

    cfg = bench.bench_config("tiny-arith", steps=2, threads=1, prompts=4, group_size=2)
    problems = bench.step_problems(cfg)
    assert len(problems) == 8 and len({p.id for p in problems}) == 8
    _, tokenizer = load_model("tiny-arith")
    texts, ids = bench.prompt_texts(tokenizer, problems)
    for text, row, p in zip(texts, ids, problems):
        assert text == "<bos>" + p.prompt                                   # our encoder: bos + raw text, no template
        assert row[0] == tokenizer.bos_token_id
        assert tokenizer(text=[text])["input_ids"][0] == row                 # what TRL's non-chat path calls


def test_the_problems_are_those_the_trainer_takes_in_order(tiny_cfg):
    from rlvr.trainer import build
    from rlvr.trainer.batch import PromptStream

    stream = PromptStream(build.build_problems(tiny_cfg)[0], tiny_cfg.seed)
    assert bench.step_problems(tiny_cfg) == stream.take(2) + stream.take(2)


def test_prompt_texts_refuse_a_tokenizer_that_does_not_round_trip():
    from rlvr.models import load_model

    _, tokenizer = load_model("tiny-random")

    class DropsBos:  # decodes without the special tokens: TRL would then see no <bos>
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def __call__(self, *a, **k):
            return tokenizer(*a, **k)

        def decode(self, ids, **k):
            return tokenizer.decode(ids, skip_special_tokens=True)

    problems = bench.step_problems(bench.bench_config("tiny-random", steps=1, threads=1, prompts=2, group_size=2))
    with pytest.raises(ValueError, match="do not re-tokenize"):
        bench.prompt_texts(DropsBos(), problems)


def test_the_reward_function_gives_our_verifiers_scores():
    from rlvr.rewards import get_verifier

    completions = ["47+38=85\n#### 85", "#### 84", "85", "no number", "#### 85\n#### 86"]
    golds = ["85"] * 5
    for name in ("int", "int_last"):
        got = bench.reward_function()(prompts=["p"] * 5, completions=completions, answer=golds,
                                      verifier=[name] * 5, trainer_state=None)
        assert got == [float(get_verifier(name)(c, g).score) for c, g in zip(completions, golds)]
    assert bench.reward_function()(prompts=["p"], completions=["#### 85"], answer=["85"], verifier=["int"]) == [1.0]


def _run(step_times, samples=8, wall=1.0, **parts):
    return {"wall_s": wall, "steps": [{"step": t, "samples": samples, "completion_tokens": 10 * samples,
                                       "threads": 2, **{k: v[i] for k, v in parts.items()}}
                                      for i, t in enumerate(step_times)]}


def test_summary_drops_each_runs_warm_up_step_and_takes_the_median():
    runs = [_run([9.0, 1.0, 3.0], generation=[5, 0.5, 1.5]), _run([9.0, 2.0, 4.0], generation=[5, 1.0, 2.0])]
    s = bench.summarize(runs)
    assert s["kept_steps"] == 4 and s["step_median"] == 2.5 and s["step_mean"] == 2.5
    assert s["samples_per_s"] == pytest.approx(8 / 2.5)
    assert s["parts"]["generation"] == pytest.approx(1.25) and s["parts"]["backward"] == 0.0
    assert s["parts"]["other"] == pytest.approx(2.5 - 1.25)
    with pytest.raises(ValueError, match="warm-up"):
        bench.summarize([_run([1.0])])


def test_table_ratios_and_verdict():
    ours = bench.summarize([_run([5.0, 1.0, 1.0], generation=[0, 0.4, 0.4], wall=3.0)])
    theirs = bench.summarize([_run([5.0, 2.5, 2.5], generation=[0, 2.0, 2.0], wall=7.0)])
    assert bench.step_ratio(ours, theirs) == pytest.approx(0.4)
    text = "\n".join(bench.format_table(ours, theirs))
    assert "| seconds, median | 1.000 | 2.500 | 2.50× |" in text
    assert "| samples/s (at the median step) | 8.0 | 3.2 | 2.50× |" in text
    assert "| generation, s (share) | 0.400 (40%) | 2.000 (80%) | 5.00× |" in text
    assert "| old/ref log-probs (no grad), s (share) | 0.000 (0%) | 0.000 (0%) | — |" in text
    assert "rlvr step / TRL step = 0.40 (target ≤ 0.50: met)" in text
    slow = bench.summarize([_run([5.0, 2.0, 2.0], wall=3.0)])
    assert "(target ≤ 0.50: not met)" in "\n".join(bench.format_table(slow, theirs))


def test_the_cli_registers_the_benchmark():
    from rlvr.cli import build_parser

    args = build_parser().parse_args(["bench", "trl", "--steps", "2", "--model", "tiny-arith"])
    assert args.func is bench.command and args.steps == 2 and args.repeats == 3 and args.threads == 2


def test_both_sides_run_the_same_steps_on_tiny_random(tiny_cfg, tmp_path):
    pytest.importorskip("trl")
    problems = bench.step_problems(tiny_cfg)
    ours = bench.run_rlvr(tiny_cfg, tmp_path / "rlvr")
    theirs = bench.run_trl(tiny_cfg, problems, tmp_path / "trl")  # also checks TRL's prompt ids against ours
    for run in (ours, theirs):
        assert len(run["steps"]) == 2
        for s in run["steps"]:
            assert s["samples"] == 8 and s["threads"] == 1
            assert math.isfinite(s["step"]) and s["step"] > 0
            assert 0 < s["generation"] < s["step"] and s["forward"] > 0 and s["backward"] > 0
            assert s["optimizer"] > 0 and s.get("old_ref_logprobs", 0.0) == 0.0   # β = 0, one update per batch
            assert 8 <= s["completion_tokens"] <= 8 * 8
    lines = bench.format_table(bench.summarize([ours]), bench.summarize([theirs]))
    assert lines[-1].startswith("rlvr step / TRL step = ")
