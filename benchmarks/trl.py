"""rlvr's GRPO step against TRL's ``GRPOTrainer`` step: same model, prompts and settings, measured in one run.

Both sides train the same config (``--model tiny-arith``: configs/tiny_arith/grpo.yaml; ``smollm2-135m-instruct``:
configs/smollm2/grpo.yaml with ``model.lora=false optim.lr=1e-5``) from freshly loaded weights, alternately (rlvr,
TRL, rlvr, TRL, ... over ``--repeats``), ``--steps`` RL steps each; the first step of every run is warm-up and is
dropped. Reported: the median seconds per RL step (generation + scoring + update) and samples/s of both, their ratio
(the issue's target: rlvr's step at most half of TRL's), and where the time goes.

What is the same on both sides:
* weights (``rlvr.models.load_model`` of the config's model, every parameter trained, fp32) and
  ``torch.set_num_threads(--threads)``;
* prompts: the P problems per step that rlvr's ``PromptStream`` hands out, in that order; TRL gets them as a
  ``datasets.Dataset`` (``shuffle_dataset=False``) of the prompt text our encoder produces, decoded back from our token
  ids with special tokens kept (``<bos>47+38=`` for tiny-arith; the rendered ChatML for SmolLM2), so TRL's
  non-conversational path tokenizes it to exactly our ids (checked for every prompt before timing);
* G (``num_generations``), P·G completions per step, ``max_new_tokens`` (``max_completion_length``), temperature,
  top_p (top_k off), EOS handling; the reward: our verifier (``Problem.verifier``) as a TRL reward function, run
  in-process on both sides (``reward.num_workers=0``);
* the update: GRPO advantage (``scale_rewards="group"``), PPO-clip with ε_low/ε_high of the config, β = 0 (no
  reference model), one update per batch (``num_iterations=1``, no old-log-prob pass on either side),
  ``seq_mean_token_mean`` = TRL ``loss_type="grpo"`` (``token_mean`` = ``"dapo"``, ``seq_mean_token_sum_norm`` =
  ``"dr_grpo"``), the config's micro-batch (TRL: ``per_device_train_batch_size`` = micro-batch and
  ``gradient_accumulation_steps = steps_per_generation`` = P·G / micro-batch), ``torch.optim.AdamW`` with the
  config's lr, betas and weight decay at a constant learning rate (passed to TRL as ``optimizers=``; the benchmark
  refuses other schedules), grad-norm clip ``optim.max_grad_norm``; TRL with ``bf16=False``,
  ``gradient_checkpointing=False`` (both default True in TRL), ``use_cpu=True``, ``report_to="none"``, no logging,
  eval or checkpoints.
What differs and cannot be matched: the samplers (rlvr's ``HFSampler`` vs ``model.generate``), hence the sampled
tokens and completion lengths (both are printed); TRL's log-probs in the loss are of logits / temperature, ours of the
raw logits; the advantage ε (TRL 1e-4, ours 1e-6); rlvr's run ends with the evaluation and checkpoint its trainer
always makes (outside the timed steps; the evaluation is cut to one new token, ``eval.max_new_tokens=1``), so its
wall-clock includes them.

Where the time goes (means per kept step):
* rlvr: nothing is patched; every part is a per-step metric the trainer logs (metrics.jsonl): step = ``perf/step_s``;
  generation = ``perf/gen_s`` (policy and reference samples); scoring = ``perf/score_s`` (verifier + shaping);
  old/ref log-probs = ``perf/frozen_s`` (the π_old / reference passes without grad); loss forward =
  ``perf/forward_s``; backward = ``perf/backward_s``; optimizer = ``perf/optim_s`` (grad-norm clip, AdamW step,
  zero_grad). ``rlvr_steps`` checks that the update's parts fit in ``perf/train_s`` and generation and scoring in
  the rest of the step.
* TRL (its private methods, trl 1.16.0 pinned): generation = ``GRPOTrainer._generate`` (prompt tokenization,
  ``model.generate``, decoding); scoring = ``GRPOTrainer._calculate_rewards``; old/ref log-probs / loss forward =
  ``GRPOTrainer._get_per_token_logps_and_entropies`` without / with grad; backward = ``torch.Tensor.backward``;
  optimizer = ``torch.nn.utils.clip_grad_norm_`` + the optimizer's ``step`` and ``zero_grad``; step = a
  ``TrainerCallback`` from ``on_step_begin`` to ``on_step_end`` (covers ``_prepare_inputs``, ``compute_loss``,
  backward, clip, ``optimizer.step``, scheduler, ``zero_grad``).
* both: rest = step minus the parts (advantages, batching, loss arithmetic, bookkeeping).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks import config_path
from benchmarks.cli import positive_int

__all__ = ["MODEL_PRESETS", "PARTS", "RLVR_METRICS", "StepTimer", "bench_config", "check_settings", "format_table",
           "prompt_texts", "reward_function", "rlvr_steps", "run_rlvr", "run_trl", "step_problems", "summarize",
           "add_arguments", "command"]

MODEL_PRESETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tiny-arith": ("configs/tiny_arith/grpo.yaml", ()),
    # The config trains LoRA at lr 5e-4; here both sides do a full fine-tune, at a full-fine-tune learning rate.
    "smollm2-135m-instruct": ("configs/smollm2/grpo.yaml", ("model.lora=false", "optim.lr=1e-5")),
}

# Benchmark-only settings of the rlvr run: no evaluation (the end-of-run one cut to one token), logging extras or
# reward worker processes.
BENCH_OVERRIDES = ("eval.at_start=false", "eval.every=0", "eval.max_new_tokens=1", "log.progress=false",
                   "log.tensorboard=false", "log.completions_every=0", "log.checkpoint_every=0",
                   "reward.num_workers=0")

LOSS_TYPES = {"seq_mean_token_mean": "grpo", "token_mean": "dapo", "seq_mean_token_sum_norm": "dr_grpo"}
"""rlvr aggregation -> TRL loss_type with the same normaliser."""

PARTS: tuple[tuple[str, str], ...] = (
    ("generation", "generation"),
    ("scoring", "scoring (our verifier)"),
    ("old_ref_logprobs", "old/ref log-probs (no grad)"),
    ("forward", "loss forward (log-probs with grad)"),
    ("backward", "backward"),
    ("optimizer", "grad clip + AdamW step + zero_grad"),
    ("other", "rest of the step"),
)

RLVR_METRICS = {"step": "perf/step_s", "generation": "perf/gen_s", "scoring": "perf/score_s",
                "old_ref_logprobs": "perf/frozen_s", "forward": "perf/forward_s", "backward": "perf/backward_s",
                "optimizer": "perf/optim_s", "train": "perf/train_s"}
"""Each part of an rlvr step -> the per-step metric the trainer logs it as."""


# ----------------------------------------------------------------------------------------------
# Settings shared by both sides
# ----------------------------------------------------------------------------------------------

def bench_config(model: str, *, steps: int, threads: int, config: str | None = None, prompts: int | None = None,
                 group_size: int | None = None, max_new_tokens: int | None = None,
                 overrides: Sequence[str] = ()) -> Any:
    """The TrainConfig both sides run: the model's preset config, the benchmark's overrides, then the user's."""
    from rlvr.config import load_config

    preset, preset_overrides = MODEL_PRESETS.get(model, (MODEL_PRESETS["tiny-arith"][0], ()))
    extra = [f"steps={steps}", f"model.name={model}", f"model.threads={threads}", *BENCH_OVERRIDES]
    extra += [f"rollout.prompts_per_step={prompts}"] if prompts else []
    extra += [f"rollout.group_size={group_size}"] if group_size else []
    extra += [f"rollout.max_new_tokens={max_new_tokens}"] if max_new_tokens else []
    cfg = load_config(config_path(config or preset), [*preset_overrides, *extra, *overrides])
    check_settings(cfg)
    return cfg


def micro_batching(cfg: Any) -> tuple[int, int]:
    """(rows per forward/backward, micro-batches per optimiser step), as rlvr's update does them."""
    B = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    mb = min(cfg.algo.micro_batch_size, B)
    return mb, B // mb


def check_settings(cfg: Any) -> None:
    """Raise ValueError for a config TRL cannot run the same way (the message names the setting)."""
    from rlvr import advantages

    a, r = cfg.algo, cfg.rollout
    problems = []
    if cfg.trainer != "sync":
        problems.append(f"trainer={cfg.trainer} (the comparison is of synchronous steps)")
    if a.advantage not in ("grpo", "dr_grpo"):
        problems.append(f"algo.advantage={a.advantage} (TRL has grpo and dr_grpo advantages)")
    if a.loss != "ppo_clip" or a.loss_kwargs.get("dual_clip") is not None:
        problems.append(f"algo.loss={a.loss} {dict(a.loss_kwargs)} (TRL's GRPO loss is PPO-clip without dual clip)")
    if (a.aggregation or "seq_mean_token_mean") not in LOSS_TYPES:
        problems.append(f"algo.aggregation={a.aggregation} (TRL has {', '.join(LOSS_TYPES)})")
    if a.kl_coef != 0 or a.reward_kl_coef != 0:
        problems.append("algo.kl_coef / reward_kl_coef must be 0 (β = 0)")
    if a.num_iterations != 1 or a.mini_batches != 1:
        problems.append("algo.num_iterations and algo.mini_batches must be 1 (one update per batch)")
    if advantages.spec(a.advantage).needs_values or advantages.spec(a.advantage).needs_reference_samples:
        problems.append(f"algo.advantage={a.advantage} needs a critic or reference samples")
    if r.dynamic_sampling or r.stop:
        problems.append("rollout.dynamic_sampling and rollout.stop are not matched on the TRL side")
    if cfg.reward.format_weight != 0 or cfg.reward.overlong_buffer != 0:
        problems.append("reward.format_weight and reward.overlong_buffer must be 0 (the reward is the verifier's)")
    if cfg.model.lora or cfg.model.autocast_bf16 or cfg.model.dtype != "float32" or cfg.model.gradient_checkpointing:
        problems.append("the benchmark runs full fine-tunes in fp32 without autocast or gradient checkpointing "
                        "(model.lora, model.autocast_bf16, model.dtype, model.gradient_checkpointing)")
    if cfg.optim.schedule != "constant" or cfg.optim.warmup_steps:
        problems.append("optim.schedule must be constant without warm-up (the TRL side runs AdamW at a constant lr)")
    if r.group_size < 2:
        problems.append("rollout.group_size must be >= 2 (TRL's minimum)")
    B = r.prompts_per_step * r.group_size
    if B % min(a.micro_batch_size, B):
        problems.append(f"algo.micro_batch_size={a.micro_batch_size} must divide P·G = {B}")
    if problems:
        raise ValueError("the trl benchmark cannot match TRL on: " + "; ".join(problems))


def step_problems(cfg: Any) -> list[Any]:
    """The problems rlvr's trainer trains on, in order: ``cfg.steps`` × P from its seeded PromptStream."""
    from rlvr.trainer import PromptStream, build_problems

    train_problems, _ = build_problems(cfg)
    stream = PromptStream(train_problems, cfg.seed)
    return [p for _ in range(cfg.steps) for p in stream.take(cfg.rollout.prompts_per_step)]


def prompt_texts(tokenizer: Any, problems: Sequence[Any], system_prompt: str | None = None) -> tuple[list[str],
                                                                                                   list[list[int]]]:
    """(TRL prompt texts, our token ids): each text is our encoding decoded with special tokens kept, so that
    TRL's non-conversational ``processing_class(text=...)`` gives back exactly our ids; raises if it would not."""
    from rlvr.trainer import make_encoder

    encode = make_encoder(tokenizer, system_prompt)
    ids = [encode(p) for p in problems]
    texts = [tokenizer.decode(i, skip_special_tokens=False, clean_up_tokenization_spaces=False) for i in ids]
    back = tokenizer(text=texts)["input_ids"]
    bad = [k for k, (a, b) in enumerate(zip(ids, back)) if list(a) != list(b)]
    if bad:
        k = bad[0]
        raise ValueError(f"{len(bad)} prompt(s) do not re-tokenize to our ids, e.g. {texts[k]!r}: ours {ids[k]}, "
                         f"TRL's {back[k]}")
    return texts, ids


def reward_function() -> Callable[..., list[float]]:
    """Our verifier as a TRL reward function: the dataset's ``answer`` and ``verifier`` columns arrive as kwargs."""
    from rlvr.rewards import get_verifier

    def rlvr_verifier(prompts: list, completions: list, answer: list[str], verifier: list[str],
                      **_: Any) -> list[float]:
        return [float(get_verifier(v)(c, a).score) for c, a, v in zip(completions, answer, verifier)]
    return rlvr_verifier


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------

class StepTimer:
    """Seconds per named part, per step: ``begin_step()`` opens a step, wrapped functions add to it."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def begin_step(self) -> None:
        self.steps.append(defaultdict(float))

    def add(self, part: str, seconds: float) -> None:
        if self.steps:
            self.steps[-1][part] += seconds

    def wrap(self, fn: Callable, part: str | Callable[[], str | None],
             on_result: Callable[[Any], None] | None = None) -> Callable:
        """``fn`` timed into ``part`` (or into what ``part()`` names at call time; None: not timed)."""
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            name = part() if callable(part) else part
            if name is None:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - t0)
            if on_result is not None:
                on_result(out)
            return out
        return timed


UPDATE_PARTS = ("old_ref_logprobs", "forward", "backward", "optimizer")
"""The parts of rlvr's update (inside ``perf/train_s``)."""


def rlvr_steps(rows: Sequence[dict[str, Any]], tol: float = 1e-6) -> list[dict[str, Any]]:
    """The per-step records of an rlvr run from its metrics.jsonl ``rows``: every part of ``PARTS`` (but the rest)
    from its logged metric (``RLVR_METRICS``; None when the trainer does not log it: a trainer from before issue 15
    logs only step, generation and train), samples (``rollout/samples``) and completion tokens
    (``response/length_mean`` × samples). RuntimeError when a step lacks ``perf/gen_s`` or ``perf/train_s``, or when
    its parts do not fit: the update's (old/ref log-probs, forward, backward, optimizer) must add up to at most
    ``perf/train_s``, and generation and scoring to at most the rest of the step (a part timed twice would break
    either); ``tol`` seconds of rounding are allowed."""
    steps = []
    for row in (r for r in rows if "perf/step_s" in r):
        missing = [RLVR_METRICS[p] for p in ("generation", "train") if RLVR_METRICS[p] not in row]
        if missing:
            raise RuntimeError(f"rlvr's step {row.get('step')} logged no {', '.join(missing)}")
        s = {part: float(row[key]) if key in row else None for part, key in RLVR_METRICS.items()}
        update = sum(s[p] or 0.0 for p in UPDATE_PARTS)
        outside = s["generation"] + (s["scoring"] or 0.0)
        if update > s["train"] + tol or outside > s["step"] - s["train"] + tol:
            raise RuntimeError(f"rlvr step {row.get('step')}: the logged parts do not fit in the step (update parts "
                               f"{update:.6f} s of perf/train_s {s['train']:.6f} s; generation + scoring "
                               f"{outside:.6f} s of the other {s['step'] - s['train']:.6f} s)")
        samples = int(row["rollout/samples"])
        steps.append({**s, "samples": samples, "completion_tokens": row["response/length_mean"] * samples})
    return steps


def run_rlvr(cfg: Any, run_dir: str | Path) -> dict[str, Any]:
    """One rlvr training run of ``cfg`` (nothing patched); returns {"steps": ``rlvr_steps`` of its metrics,
    "wall_s": seconds of ``train`` (start-up, the steps, the end-of-run evaluation and checkpoint)}."""
    from rich.console import Console

    from rlvr.metrics import read_metrics
    from rlvr.trainer import train

    t0 = time.perf_counter()
    train(cfg, run_dir=run_dir, console=Console(quiet=True))
    wall = time.perf_counter() - t0
    return {"steps": rlvr_steps(read_metrics(run_dir)), "wall_s": wall}


def adamw(cfg: Any, model: Any) -> tuple[Any, Any]:
    """AdamW with the config's lr, betas and weight decay, and a constant-lr scheduler (what rlvr's trainer builds
    for ``optim.schedule=constant`` without warm-up, the only schedule ``check_settings`` lets through)."""
    import torch

    o = cfg.optim
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.lr, betas=o.betas,
                            weight_decay=o.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def trl_config(cfg: Any, output_dir: str | Path) -> Any:
    """TRL's GRPOConfig matching ``cfg`` (see the module docstring)."""
    from trl import GRPOConfig

    a, r = cfg.algo, cfg.rollout
    mb, accum = micro_batching(cfg)
    scale = "group" if a.advantage == "grpo" and a.advantage_kwargs.get("scale_by_std", True) else "none"
    return GRPOConfig(
        output_dir=str(output_dir), use_cpu=True, report_to="none", logging_strategy="no", save_strategy="no",
        eval_strategy="no", disable_tqdm=True, seed=cfg.seed, max_steps=cfg.steps,
        per_device_train_batch_size=mb, gradient_accumulation_steps=accum, steps_per_generation=accum,
        num_generations=r.group_size, max_completion_length=r.max_new_tokens, temperature=r.temperature,
        top_p=r.top_p, top_k=0, beta=0.0, num_iterations=1, loss_type=LOSS_TYPES[a.aggregation or
                                                                                 "seq_mean_token_mean"],
        epsilon=a.loss_kwargs.get("clip_eps_low", 0.2), epsilon_high=a.loss_kwargs.get("clip_eps_high", 0.2),
        scale_rewards=scale, learning_rate=cfg.optim.lr, max_grad_norm=cfg.optim.max_grad_norm, bf16=False,
        fp16=False, gradient_checkpointing=False, shuffle_dataset=False, dataloader_num_workers=0,
        mask_truncated_completions=False, log_completions=False)


@contextlib.contextmanager
def trl_timers(trainer: Any, optimizer: Any, timer: StepTimer):
    """Time TRL's parts (module docstring): its private methods, torch's backward and clip, the optimizer's step
    and zero_grad; a step of ``timer`` per TrainerCallback step."""
    from unittest import mock

    import torch
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            timer.begin_step()
            timer.steps[-1]["threads"] = torch.get_num_threads()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            timer.steps[-1]["step"] = time.perf_counter() - self.t

    def count(out):
        timer.add("samples", len(out[1]))
        timer.add("completion_tokens", sum(len(c) for c in out[1]))

    trainer.add_callback(Steps())
    trainer._generate = timer.wrap(trainer._generate, "generation", on_result=count)
    trainer._calculate_rewards = timer.wrap(trainer._calculate_rewards, "scoring")
    trainer._get_per_token_logps_and_entropies = timer.wrap(
        trainer._get_per_token_logps_and_entropies, lambda: "forward" if torch.is_grad_enabled() else
        "old_ref_logprobs")
    for obj in (optimizer, trainer.model):                     # transformers' loop calls model.zero_grad()
        if obj is optimizer:
            obj.step = timer.wrap(obj.step, "optimizer")
        obj.zero_grad = timer.wrap(obj.zero_grad, "optimizer")
    with mock.patch.object(torch.Tensor, "backward", timer.wrap(torch.Tensor.backward, "backward")), \
            mock.patch.object(torch.nn.utils, "clip_grad_norm_", timer.wrap(torch.nn.utils.clip_grad_norm_,
                                                                            "optimizer")), \
            mock.patch.dict(os.environ, {"TRL_EXPERIMENTAL_SILENCE": "1"}):
        yield timer


def run_trl(cfg: Any, problems: Sequence[Any], output_dir: str | Path, *, check_ids: bool = True) -> dict[str, Any]:
    """One TRL GRPOTrainer run matching ``cfg`` on ``problems`` (``step_problems(cfg)``); returns as run_rlvr."""
    import warnings

    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOTrainer

    from rlvr.trainer import load_policy

    timer = StepTimer()
    t0 = time.perf_counter()
    if cfg.model.threads:
        torch.set_num_threads(cfg.model.threads)
    model, tokenizer = load_policy(cfg, torch.device("cpu"))   # check_settings: a full fp32 fine-tune
    texts, ids = prompt_texts(tokenizer, problems, cfg.model.system_prompt)
    dataset = Dataset.from_dict({"prompt": texts, "answer": [p.answer for p in problems],
                                 "verifier": [p.verifier for p in problems]})
    optimizer, scheduler = adamw(cfg, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        trainer = GRPOTrainer(model=model, reward_funcs=reward_function(), args=trl_config(cfg, output_dir),
                              train_dataset=dataset, processing_class=tokenizer, optimizers=(optimizer, scheduler))
        trainer.remove_callback(PrinterCallback)
        if check_ids:
            got = trainer._tokenize_prompts(texts)[0]
            if [list(x) for x in got] != [list(x) for x in ids]:
                raise ValueError("TRL's tokenization of the prompts differs from rlvr's")
        with trl_timers(trainer, optimizer, timer):
            trainer.train()
    wall = time.perf_counter() - t0
    if len(timer.steps) != cfg.steps:
        raise RuntimeError(f"TRL ran {len(timer.steps)} steps, {cfg.steps} asked for")
    return {"steps": [dict(s) for s in timer.steps], "wall_s": wall}


# ----------------------------------------------------------------------------------------------
# Summary and table
# ----------------------------------------------------------------------------------------------

def summarize(runs: Sequence[dict[str, Any]], warmup: int = 1) -> dict[str, Any]:
    """Pool the steps of ``runs`` after each run's first ``warmup`` steps: median and mean step seconds, samples per
    step, samples/s at the median step, mean seconds of each part (None: never logged) and the rest, median
    wall-clock per run."""
    kept = [s for run in runs for s in run["steps"][warmup:]]
    if not kept:
        raise ValueError("no steps left after the warm-up; run more than one step")
    step = [s["step"] for s in kept]
    med = statistics.median(step)
    samples = statistics.median(s["samples"] for s in kept)
    parts: dict[str, float | None] = {}
    for name, _ in PARTS[:-1]:                   # None: a part no kept step logged (it is then in the rest)
        values = [s.get(name, 0.0) for s in kept]
        parts[name] = None if all(v is None for v in values) else statistics.fmean(v or 0.0 for v in values)
    parts["other"] = statistics.fmean(step) - sum(v for v in parts.values() if v is not None)
    return {"step_median": med, "step_mean": statistics.fmean(step), "samples": samples,
            "samples_per_s": samples / med if med > 0 else math.inf,
            "completion_tokens": statistics.fmean(s["completion_tokens"] for s in kept),
            "wall_s": statistics.median(run["wall_s"] for run in runs), "parts": parts, "kept_steps": len(kept),
            "threads": sorted({int(s["threads"]) for s in kept if "threads" in s})}


def step_ratio(ours: dict[str, Any], theirs: dict[str, Any]) -> float:
    """rlvr's median step over TRL's (the issue's target is <= 0.5)."""
    return ours["step_median"] / theirs["step_median"]


def format_table(ours: dict[str, Any], theirs: dict[str, Any], target: float = 0.5) -> list[str]:
    """The Markdown table and the verdict line."""
    def ratio(a: float | None, b: float | None) -> str:
        return f"{b / a:.2f}×" if a is not None and b is not None and a > 0 else "—"

    def part(s: dict[str, Any], name: str) -> str:
        v = s["parts"][name]
        if v is None:
            return "not logged"
        return f"{v:.3f} ({100 * v / s['step_mean']:.0f}%)" if s["step_mean"] > 0 else f"{v:.3f}"

    lines = ["| per RL step | rlvr | TRL | TRL ÷ rlvr |", "|:--|--:|--:|--:|",
             f"| seconds, median | {ours['step_median']:.3f} | {theirs['step_median']:.3f} | "
             f"{ratio(ours['step_median'], theirs['step_median'])} |",
             f"| seconds, mean | {ours['step_mean']:.3f} | {theirs['step_mean']:.3f} | "
             f"{ratio(ours['step_mean'], theirs['step_mean'])} |",
             f"| samples/s (at the median step) | {ours['samples_per_s']:.1f} | {theirs['samples_per_s']:.1f} | "
             f"{ratio(theirs['samples_per_s'], ours['samples_per_s'])} |",
             f"| samples per step | {ours['samples']:.0f} | {theirs['samples']:.0f} | |",
             f"| completion tokens per step, mean | {ours['completion_tokens']:.0f} | "
             f"{theirs['completion_tokens']:.0f} | |"]
    for name, label in PARTS:
        lines.append(f"| {label}, s (share) | {part(ours, name)} | {part(theirs, name)} | "
                     f"{ratio(ours['parts'][name], theirs['parts'][name])} |")
    lines.append(f"| run wall-clock incl. start-up, s, median | {ours['wall_s']:.1f} | {theirs['wall_s']:.1f} | |")
    r = step_ratio(ours, theirs)
    lines += ["", f"rlvr step / TRL step = {r:.2f} (target ≤ {target:.2f}: {'met' if r <= target else 'not met'}); "
                  f"{ours['kept_steps']} rlvr and {theirs['kept_steps']} TRL steps kept"]
    return lines


def settings_line(cfg: Any, model_params: int | None, steps: int, repeats: int) -> str:
    import torch
    import transformers
    import trl

    mb, accum = micro_batching(cfg)
    r, a = cfg.rollout, cfg.algo
    params = f" ({model_params / 1e6:.2f} M params)" if model_params else ""
    return (f"model {cfg.model.name}{params}, full fine-tune fp32; data {cfg.data.source}; P={r.prompts_per_step}, "
            f"G={r.group_size}, max_new_tokens={r.max_new_tokens}, temperature={r.temperature:g}, top_p={r.top_p:g}; "
            f"{a.advantage} advantage, ppo_clip, {a.aggregation or 'seq_mean_token_mean'} (TRL loss_type="
            f"{LOSS_TYPES[a.aggregation or 'seq_mean_token_mean']}), β=0, one update per batch, micro-batch {mb} × "
            f"{accum}; AdamW lr={cfg.optim.lr:g}, clip {cfg.optim.max_grad_norm:g}; threads={cfg.model.threads}; "
            f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}; "
            f"{os.cpu_count()} cores; {steps} steps × {repeats} alternating repeats per side, first step of each run "
            "dropped")


# ----------------------------------------------------------------------------------------------
# Command
# ----------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny-arith", help=f"model preset ({', '.join(MODEL_PRESETS)}); picks the "
                   "config unless --config is given")
    p.add_argument("--config", default=None, help="base config (default: the model's, see above)")
    p.add_argument("--steps", type=positive_int, default=8, help="RL steps per run, the first dropped (default 8)")
    p.add_argument("--repeats", type=positive_int, default=3, help="runs per side, alternating (default 3)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch threads of both sides (default 2)")
    p.add_argument("--prompts", type=positive_int, default=None, help="P, prompts per step (default: the config's)")
    p.add_argument("--group-size", type=positive_int, default=None, help="G (default: the config's)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="default: the config's")
    p.add_argument("--override", nargs="*", default=[], help="extra key=value config overrides (both sides)")


def model_facts(cfg: Any, problems: Sequence[Any]) -> tuple[int, float]:
    """(parameter count of the model, mean prompt length in tokens over ``problems`` as rlvr encodes them)."""
    from rlvr.models import count_parameters, load_model
    from rlvr.trainer import make_encoder

    model, tokenizer = load_model(cfg.model.name)
    encode = make_encoder(tokenizer, cfg.model.system_prompt)
    return count_parameters(model)[1], statistics.fmean(len(encode(p)) for p in problems)


def command(args: argparse.Namespace) -> int:
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import trl  # noqa: F401
    except ImportError:
        print("python -m benchmarks trl: TRL is not installed; `make bench-trl` or "
              "`pip install -c constraints.txt -e '.[bench]'`", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    from rlvr.config import ConfigError

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.steps < 2:
        print("python -m benchmarks trl: --steps must be at least 2 (the first step of each run is dropped)",
              file=sys.stderr)
        return 2
    try:
        cfg = bench_config(args.model, steps=args.steps, threads=args.threads, config=args.config,
                           prompts=args.prompts, group_size=args.group_size, max_new_tokens=args.max_new_tokens,
                           overrides=args.override)
    except (ConfigError, ValueError) as e:
        print(f"python -m benchmarks trl: {e}", file=sys.stderr)
        return 2
    problems = step_problems(cfg)
    results: dict[str, list[dict[str, Any]]] = {"rlvr": [], "trl": []}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            results["rlvr"].append(run_rlvr(cfg, Path(tmp) / f"rlvr-{rep}"))
            results["trl"].append(run_trl(cfg, problems, Path(tmp) / f"trl-{rep}"))
            print(f"repeat {rep + 1}/{args.repeats}: rlvr {results['rlvr'][-1]['wall_s']:.1f} s, "
                  f"TRL {results['trl'][-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    ours, theirs = summarize(results["rlvr"]), summarize(results["trl"])
    total, prompt_tokens = model_facts(cfg, problems)
    lines = [settings_line(cfg, total, args.steps, args.repeats), "", *format_table(ours, theirs),
             f"prompt tokens per row, mean {prompt_tokens:.1f} (both sides run the same prompts)"]
    unlogged = [RLVR_METRICS[name] for name, v in ours["parts"].items() if v is None]
    if unlogged:
        lines.append(f"note: rlvr's trainer logged no {', '.join(unlogged)}; those phases are in its rest of the step")
    if theirs["threads"] != [args.threads]:   # rlvr's trainer sets its threads from model.threads itself
        lines.append(f"warning: torch threads during TRL's steps were {theirs['threads']}, not {args.threads}")
    lines.append(f"benchmark wall-clock {time.perf_counter() - t_start:.0f} s")
    print("\n".join(lines))
    return 0
