"""rlvr bench trl: the harness pieces (prompt equivalence, reward wrapper, summary and table), rlvr's side of the
measurement (its phase breakdown, run here without TRL) and a tiny run of both sides. Only what needs TRL is skipped
when it is not installed (it comes with the `bench` extra)."""
from __future__ import annotations

import math
import time
from unittest import mock

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


def _timed(step_s, gen_s, **parts):
    row = {"perf/step_s": step_s, "perf/gen_s": gen_s, "rollout/samples": 8, "response/length_mean": 2.5}
    return row, {"threads": 1, **parts}


def test_rlvr_steps_take_step_and_generation_from_the_metrics_and_the_rest_from_the_timers():
    (r1, t1), (r2, t2) = _timed(1.0, 0.5, scoring=0.1, forward=0.2), _timed(2.0, 0.25, backward=1.5)
    rows = [{"step": 0, "data/train_problems": 100}, {"step": 1, **r1}, {"step": 2, **r2}]
    got = bench.rlvr_steps(rows, [t1, t2])
    assert got == [{"threads": 1, "scoring": 0.1, "forward": 0.2, "step": 1.0, "generation": 0.5, "samples": 8,
                    "completion_tokens": 20.0},
                   {"threads": 1, "backward": 1.5, "step": 2.0, "generation": 0.25, "samples": 8,
                    "completion_tokens": 20.0}]
    with pytest.raises(RuntimeError, match="logged 2 steps but 1 were timed"):
        bench.rlvr_steps(rows, [t1])
    with pytest.raises(RuntimeError, match="add up to 1.100000 s, more than the step's 1.000000 s"):
        bench.rlvr_steps([_timed(1.0, 0.5, forward=0.6)[0]], [_timed(1.0, 0.5, forward=0.6)[1]])


def _check_rlvr_run(run, run_dir, P, G):
    from rlvr.metrics import read_metrics

    rows = [r for r in read_metrics(run_dir) if "perf/step_s" in r]
    assert len(run["steps"]) == len(rows) == 2 and run["wall_s"] > 0
    for s, row in zip(run["steps"], rows):                # step and generation are the logged metrics
        assert s["step"] == row["perf/step_s"] and s["generation"] == row["perf/gen_s"]
        assert s["samples"] == P * G == row["rollout/samples"] and s["threads"] == 1
        assert s["completion_tokens"] == pytest.approx(row["response/length_mean"] * P * G)
        parts = [s.get(name, 0.0) for name, _ in bench.PARTS if name != "other"]
        assert all(v >= 0 for v in parts) and sum(parts) <= s["step"] + 1e-9  # disjoint intervals inside the step
    assert not (run_dir / "checkpoints").exists()         # the end-of-run checkpoint and evaluation are stubbed
    assert not any(k.startswith("eval/") for r in read_metrics(run_dir) for k in r)


def test_rlvr_side_runs_without_trl_on_tiny_random(tiny_cfg, tmp_path):
    run = bench.run_rlvr(tiny_cfg, tmp_path / "rlvr")
    _check_rlvr_run(run, tmp_path / "rlvr", 2, 4)
    for s in run["steps"]:
        assert 0 < s["generation"] < s["step"] and s["scoring"] > 0 and s["forward"] > 0 and s["backward"] > 0
        assert s["clip"] > 0 and s["optimizer"] > 0
        assert s.get("old_ref_logprobs", 0.0) == 0.0      # β = 0, one update per batch: no frozen pass


DELAY = 0.05


def _slowed(fn):
    def slow(*args, **kwargs):
        time.sleep(DELAY)
        return fn(*args, **kwargs)
    return slow


def test_rlvr_breakdown_puts_each_known_delay_in_its_part(tmp_path):
    """Each phase is slowed by DELAY below the name the benchmark times it by (in the sampler, the reward pool, every
    decoder pass of a log-prob computation, backward, clip, AdamW's step hooks); with two updates per batch there is
    one frozen (old log-prob) pass and two loss forwards per step. Each part must hold its delays, and the parts must
    still fit in the step: a part timed twice (e.g. the frozen pass counted as loss forward too) would exceed it."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from rlvr.rewards import RewardPool
    from rlvr.rollout import HFSampler

    with mock.patch.object(bench, "check_settings"):  # two updates per batch: TRL could not match it
        cfg = bench.bench_config("tiny-random", steps=2, threads=1, prompts=2, group_size=4, max_new_tokens=8,
                                 overrides=["algo.num_iterations=2"])
    assert cfg.algo.num_iterations == 2 and bench.micro_batching(cfg) == (8, 1)
    generating = [False]

    def generate(self, *args, **kwargs):
        generating[0] = True
        try:
            time.sleep(DELAY)
            return orig_generate(self, *args, **kwargs)
        finally:
            generating[0] = False

    def decoder_pass(module, args):  # the decoder's embedding: once per decoder pass outside generation
        if isinstance(module, torch.nn.Embedding) and not generating[0]:
            time.sleep(DELAY)

    orig_generate = HFSampler.generate
    hooks = [torch.nn.modules.module.register_module_forward_pre_hook(decoder_pass),
             register_optimizer_step_pre_hook(lambda *_: time.sleep(DELAY))]
    try:
        with mock.patch.object(HFSampler, "generate", generate), \
                mock.patch.object(RewardPool, "score", _slowed(RewardPool.score)), \
                mock.patch.object(torch.Tensor, "backward", _slowed(torch.Tensor.backward)), \
                mock.patch.object(torch.nn.utils, "clip_grad_norm_", _slowed(torch.nn.utils.clip_grad_norm_)):
            run = bench.run_rlvr(cfg, tmp_path / "rlvr")
    finally:
        for h in hooks:
            h.remove()
    _check_rlvr_run(run, tmp_path / "rlvr", 2, 4)
    for s in run["steps"]:
        assert s["generation"] >= DELAY and s["scoring"] >= DELAY
        assert s["old_ref_logprobs"] >= DELAY and s["forward"] >= 2 * DELAY     # 1 frozen pass, 2 with grad
        assert s["backward"] >= 2 * DELAY and s["clip"] >= 2 * DELAY and s["optimizer"] >= 2 * DELAY


def test_both_sides_run_the_same_steps_on_tiny_random(tiny_cfg, tmp_path):
    pytest.importorskip("trl")
    problems = bench.step_problems(tiny_cfg)
    ours = bench.run_rlvr(tiny_cfg, tmp_path / "rlvr")
    theirs = bench.run_trl(tiny_cfg, problems, tmp_path / "trl")  # also checks TRL's prompt ids against ours
    _check_rlvr_run(ours, tmp_path / "rlvr", 2, 4)
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
