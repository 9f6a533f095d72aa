"""The TRL benchmark (``python -m benchmarks trl``, ``make bench-trl``): the harness pieces (prompt equivalence, reward
wrapper, summary and table), rlvr's phase breakdown from its logged per-step metrics (hand-made rows here; real runs
once the trainer logs perf/score_s, perf/frozen_s, perf/forward_s, perf/backward_s and perf/optim_s, skipped until
then), and a tiny run of TRL's side. Only what needs TRL is skipped when it is not installed (the `bench` extra)."""
from __future__ import annotations

import math
import time
from unittest import mock

import pytest

from benchmarks import trl as bench

PHASE_METRICS = ("perf/score_s", "perf/frozen_s", "perf/forward_s", "perf/backward_s", "perf/optim_s")


@pytest.fixture(scope="module")
def tiny_cfg():
    return bench.bench_config("tiny-random", steps=2, threads=1, prompts=2, group_size=4, max_new_tokens=8)


def test_the_config_follows_the_preset_and_the_overrides(tiny_cfg):
    assert tiny_cfg.model.name == "tiny-random" and not tiny_cfg.model.lora
    r = tiny_cfg.rollout
    assert (r.prompts_per_step, r.group_size, r.max_new_tokens) == (2, 4, 8)
    assert tiny_cfg.reward.num_workers == 0 and not tiny_cfg.eval.at_start and tiny_cfg.model.threads == 1
    assert tiny_cfg.eval.max_new_tokens == 1 and tiny_cfg.eval.every == 0
    assert bench.micro_batching(tiny_cfg) == (8, 1)
    smol = bench.bench_config("smollm2-135m-instruct", steps=3, threads=2)
    assert not smol.model.lora and smol.optim.lr == 1e-5 and bench.micro_batching(smol) == (16, 4)


@pytest.mark.parametrize("override", ["algo.kl_coef=0.04", "algo.num_iterations=2", "model.lora=true",
                                      "algo.loss=reinforce", "algo.micro_batch_size=3", "optim.schedule=cosine",
                                      "optim.warmup_steps=2"])
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
    from rlvr.trainer import PromptStream, build_problems

    stream = PromptStream(build_problems(tiny_cfg)[0], tiny_cfg.seed)
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


def test_the_optimizer_is_adamw_at_the_configs_constant_lr(tiny_cfg):
    import torch

    model = torch.nn.Linear(3, 2)
    opt, sched = bench.adamw(tiny_cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (tiny_cfg.optim.lr, tuple(tiny_cfg.optim.betas),
                                                                   tiny_cfg.optim.weight_decay)
    for _ in range(3):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == tiny_cfg.optim.lr


# ------------------------------------------------------------------------------------------------- summary and table

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
    assert s["threads"] == [2]
    with pytest.raises(ValueError, match="warm-up"):
        bench.summarize([_run([1.0])])


def _table_numbers(lines):
    """{row label: [numbers of its cells]} of the table's body (shares in parentheses and the × dropped)."""
    out = {}
    for line in lines:
        if line.startswith("| ") and not line.startswith("| per RL step"):
            label, *cells = [c.strip() for c in line.strip("|").split("|")]
            out[label] = [float(c.split(" ")[0].rstrip("×")) if c and c[0].isdigit() else None for c in cells]
    return out


def test_table_ratios_and_verdict():
    ours = bench.summarize([_run([5.0, 1.0, 1.0], generation=[0, 0.4, 0.4], optimizer=[0, 0.1, 0.1], wall=3.0)])
    theirs = bench.summarize([_run([5.0, 2.5, 2.5], generation=[0, 2.0, 2.0], optimizer=[0, 0.3, 0.3], wall=7.0)])
    assert bench.step_ratio(ours, theirs) == pytest.approx(0.4)
    lines = bench.format_table(ours, theirs)
    rows = _table_numbers(lines)
    assert rows["seconds, median"] == [1.0, 2.5, 2.5]                   # rlvr, TRL, TRL ÷ rlvr
    assert rows["samples/s (at the median step)"] == [8.0, 3.2, 2.5]
    assert rows["generation, s (share)"] == [0.4, 2.0, 5.0]
    assert rows["grad clip + AdamW step + zero_grad, s (share)"] == [0.1, 0.3, 3.0]
    assert rows["old/ref log-probs (no grad), s (share)"] == [0.0, 0.0, None]    # no ratio of two zeros
    assert rows["rest of the step, s (share)"] == [0.5, 0.2, 0.4]
    assert "generation, s (share) | 0.400 (40%) | 2.000 (80%)" in "\n".join(lines)  # shares of the mean step
    assert lines[-1].startswith("rlvr step / TRL step = 0.40 (target ≤ 0.50: met)")
    slow = bench.summarize([_run([5.0, 2.0, 2.0], wall=3.0)])
    assert "(target ≤ 0.50: not met)" in bench.format_table(slow, theirs)[-1]


def test_the_benchmark_module_registers_its_command():
    from benchmarks.__main__ import build_parser

    args = build_parser().parse_args(["trl", "--steps", "2", "--model", "tiny-arith"])
    assert args.func is bench.command and args.steps == 2 and args.repeats == 3 and args.threads == 2


# --------------------------------------------------------------------------------------- rlvr's logged phases

def _row(step, step_s=1.0, train_s=0.5, gen_s=0.3, score_s=0.1, frozen_s=0.05, forward_s=0.15, backward_s=0.2,
         optim_s=0.05):
    return {"step": step, "perf/step_s": step_s, "perf/train_s": train_s, "perf/gen_s": gen_s,
            "perf/score_s": score_s, "perf/frozen_s": frozen_s, "perf/forward_s": forward_s,
            "perf/backward_s": backward_s, "perf/optim_s": optim_s, "rollout/samples": 8,
            "response/length_mean": 2.5}


def test_rlvr_steps_read_every_part_from_the_logged_metrics():
    rows = [{"step": 0, "data/train_problems": 100}, _row(1), {"step": 1, "eval/accuracy": 0.5},
            _row(2, step_s=2.0, gen_s=1.0, backward_s=0.25)]
    got = bench.rlvr_steps(rows)
    assert got == [{"step": 1.0, "generation": 0.3, "scoring": 0.1, "old_ref_logprobs": 0.05, "forward": 0.15,
                    "backward": 0.2, "optimizer": 0.05, "train": 0.5, "samples": 8, "completion_tokens": 20.0},
                   {"step": 2.0, "generation": 1.0, "scoring": 0.1, "old_ref_logprobs": 0.05, "forward": 0.15,
                    "backward": 0.25, "optimizer": 0.05, "train": 0.5, "samples": 8, "completion_tokens": 20.0}]
    s = bench.summarize([{"wall_s": 1.0, "steps": got}], warmup=0)
    assert s["parts"]["other"] == pytest.approx(1.5 - (0.65 + 0.1 + 0.05 + 0.15 + 0.225 + 0.05))


def test_rlvr_steps_refuse_parts_that_do_not_fit():
    with pytest.raises(RuntimeError, match="do not fit"):      # the update's parts exceed perf/train_s
        bench.rlvr_steps([_row(1, forward_s=0.3)])
    with pytest.raises(RuntimeError, match="do not fit"):      # generation + scoring exceed step − train
        bench.rlvr_steps([_row(1, gen_s=0.45)])
    assert bench.rlvr_steps([_row(1, gen_s=0.4, forward_s=0.2)])[0]["generation"] == 0.4   # exactly full: fits
    row = _row(1)
    del row["perf/train_s"]
    with pytest.raises(RuntimeError, match="logged no perf/train_s"):
        bench.rlvr_steps([row])


def test_phases_a_trainer_does_not_log_are_shown_as_such_and_counted_in_the_rest():
    """A trainer from before issue 15 logs step, generation and train only: those parts are read, the others are
    None, and the table says "not logged" and puts their time in the rest (a note line in the command says so)."""
    old = [{k: v for k, v in _row(s, step_s=1.0 + s).items() if k not in PHASE_METRICS} for s in (1, 2, 3)]
    steps = bench.rlvr_steps(old)
    assert [(s["step"], s["generation"], s["train"], s["scoring"], s["optimizer"]) for s in steps] == [
        (2.0, 0.3, 0.5, None, None), (3.0, 0.3, 0.5, None, None), (4.0, 0.3, 0.5, None, None)]
    ours = bench.summarize([{"wall_s": 1.0, "steps": steps}])
    assert ours["parts"]["scoring"] is None and ours["parts"]["generation"] == pytest.approx(0.3)
    assert ours["parts"]["other"] == pytest.approx(3.5 - 0.3)
    theirs = bench.summarize([_run([5.0, 2.5, 2.5], generation=[0, 2.0, 2.0], scoring=[0, 0.1, 0.1])])
    rows = _table_numbers(bench.format_table(ours, theirs))
    assert rows["scoring (our verifier), s (share)"] == [None, 0.1, None]
    assert "| scoring (our verifier), s (share) | not logged | 0.100 (4%) | — |" in bench.format_table(ours, theirs)


@pytest.fixture(scope="module")
def rlvr_run(tiny_cfg, tmp_path_factory):
    """One 2-step rlvr run of the benchmark's tiny config: (run dir, its metrics rows)."""
    from rich.console import Console

    from rlvr.metrics import read_metrics
    from rlvr.trainer import train

    run_dir = tmp_path_factory.mktemp("rlvr") / "run"
    train(tiny_cfg, run_dir=run_dir, console=Console(quiet=True))
    return run_dir, read_metrics(run_dir)


def test_rlvr_side_of_a_real_run_reads_what_the_trainer_logs(rlvr_run, tiny_cfg, tmp_path):
    """Runs with today's trainer too: step, generation and train are always logged; the phases are either logged
    (and fit) or None."""
    run_dir, rows = rlvr_run
    steps = bench.rlvr_steps(rows)
    logged = [r for r in rows if "perf/step_s" in r]
    assert len(steps) == len(logged) == 2
    for s, row in zip(steps, logged):
        assert (s["step"], s["generation"], s["train"]) == (row["perf/step_s"], row["perf/gen_s"], row["perf/train_s"])
        assert 0 < s["generation"] < s["step"] and 0 < s["train"] < s["step"] and s["samples"] == 8
        assert all(s[p] is None or s[p] >= 0 for p in bench.RLVR_METRICS)
    ours = bench.summarize([{"wall_s": 1.0, "steps": steps}], warmup=0)
    assert ours["step_median"] == pytest.approx(sorted(r["perf/step_s"] for r in logged)[0] / 2
                                                + sorted(r["perf/step_s"] for r in logged)[1] / 2)


def _needs_phase_metrics(rows):
    missing = [k for k in PHASE_METRICS if not any(k in r for r in rows)]
    if missing:
        pytest.skip(f"the trainer does not log {', '.join(missing)} yet (they come with the trainer rewrite of issue "
                    "15; this test runs once they are logged)")


def _check_rlvr_steps(steps, rows, P, G):
    rows = [r for r in rows if "perf/step_s" in r]
    assert len(steps) == len(rows) == 2
    for s, row in zip(steps, rows):                             # every part is the logged metric
        assert all(s[part] == row[key] for part, key in bench.RLVR_METRICS.items())
        assert s["samples"] == P * G == row["rollout/samples"]
        assert s["completion_tokens"] == pytest.approx(row["response/length_mean"] * P * G)
        update = s["old_ref_logprobs"] + s["forward"] + s["backward"] + s["optimizer"]
        assert all(s[p] >= 0 for p in bench.RLVR_METRICS) and update <= s["train"] + 1e-6
        assert s["generation"] + s["scoring"] <= s["step"] - s["train"] + 1e-6


def test_rlvr_side_of_a_real_run_comes_from_its_metrics(rlvr_run):
    _, rows = rlvr_run
    _needs_phase_metrics(rows)
    steps = bench.rlvr_steps(rows)
    _check_rlvr_steps(steps, rows, 2, 4)
    for s in steps:
        assert 0 < s["generation"] < s["step"] and s["scoring"] > 0 and s["forward"] > 0 and s["backward"] > 0
        assert s["optimizer"] > 0 and s["old_ref_logprobs"] == 0.0   # β = 0, one update per batch: no frozen pass


DELAY = 0.05


def _slowed(fn):
    def slow(*args, **kwargs):
        time.sleep(DELAY)
        return fn(*args, **kwargs)
    return slow


def test_rlvr_breakdown_puts_each_known_delay_in_its_part(rlvr_run, tmp_path):
    """Each phase is slowed by DELAY at a public name (the sampler, the reward pool, every decoder pass of a log-prob
    computation, backward, clip, AdamW's step hooks); with two updates per batch there is one frozen (old log-prob)
    pass and two loss forwards per step. Each logged part must hold its delays, and the parts must still fit: a part
    timed twice (e.g. the frozen pass counted as loss forward too) would not."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from rlvr.metrics import read_metrics
    from rlvr.rewards import RewardPool
    from rlvr.rollout import HFSampler

    _needs_phase_metrics(rlvr_run[1])
    with mock.patch.object(bench, "check_settings"):  # two updates per batch: TRL could not match it
        cfg = bench.bench_config("tiny-random", steps=2, threads=1, prompts=2, group_size=4, max_new_tokens=8,
                                 overrides=["algo.num_iterations=2"])
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
    _check_rlvr_steps(run["steps"], read_metrics(tmp_path / "rlvr"), 2, 4)
    for s in run["steps"]:
        assert s["generation"] >= DELAY and s["scoring"] >= DELAY
        assert s["old_ref_logprobs"] >= DELAY and s["forward"] >= 2 * DELAY     # 1 frozen pass, 2 with grad
        assert s["backward"] >= 2 * DELAY and s["optimizer"] >= 4 * DELAY       # 2 × (clip + AdamW step)


def test_trl_side_runs_the_same_steps_on_tiny_random(tiny_cfg, tmp_path):
    pytest.importorskip("trl")
    theirs = bench.run_trl(tiny_cfg, bench.step_problems(tiny_cfg), tmp_path / "trl")  # checks TRL's prompt ids too
    assert len(theirs["steps"]) == 2 and theirs["wall_s"] > 0
    for s in theirs["steps"]:
        assert s["samples"] == 8 and s["threads"] == 1
        assert math.isfinite(s["step"]) and s["step"] > 0
        assert 0 < s["generation"] < s["step"] and s["forward"] > 0 and s["backward"] > 0
        assert s["optimizer"] > 0 and s.get("old_ref_logprobs", 0.0) == 0.0   # β = 0, one update per batch
        assert 8 <= s["completion_tokens"] <= 8 * 8
        parts = sum(s.get(name, 0.0) for name, _ in bench.PARTS if name != "other")
        assert parts <= s["step"] + 1e-6                                  # disjoint timers inside the step


def test_both_sides_give_the_table_on_tiny_random(tiny_cfg, tmp_path):
    pytest.importorskip("trl")
    ours = bench.run_rlvr(tiny_cfg, tmp_path / "rlvr")
    theirs = bench.run_trl(tiny_cfg, bench.step_problems(tiny_cfg), tmp_path / "trl")
    lines = bench.format_table(bench.summarize([ours]), bench.summarize([theirs]))
    ratio = bench.summarize([ours])["step_median"] / bench.summarize([theirs])["step_median"]
    assert lines[-1].startswith(f"rlvr step / TRL step = {ratio:.2f} ")
