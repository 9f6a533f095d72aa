"""The synchronous trainer: sample → score → advantages → policy update, one batch per step.

What was simplified, and why:
1. One process, one device: generation and training share the policy's weights, so there is no
   weight sync and no staleness (policy_version is still carried and logged).
2. Held-out accuracy is measured at the start and the end (and every ``eval.every`` steps) with
   the same verifier as the reward, greedy by default.
3. Everything an algorithm needs is read from its registry entry (``needs_reference_samples``,
   ``takes_k``, ``needs_old_logprobs``, ``needs_values``); this file never mentions an algorithm by
   name. A critic exists only when the estimator needs values (build.build_critic); then it is
   trained after the policy on the same batch (rlvr.trainer.critic).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from rlvr.config import TrainConfig, dump_config
from rlvr.eval import EvalResult, evaluate
from rlvr.metrics import RunLog
from rlvr.trainer import build
from rlvr.trainer.batch import PromptStream, batch_metrics
from rlvr.trainer import critic as critic_lib
from rlvr.trainer.checkpoint import TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
from rlvr.trainer.step import UpdateSettings, update_policy


@dataclass
class RunSummary:
    run_dir: Path
    steps: int
    eval_start: float | None
    eval_end: float | None
    seconds: float


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = Path(cfg.model.name).name.replace("/", "_")
    return Path("runs") / f"{stamp}-{name}-{cfg.algo.advantage.replace(':', '_')}"


def _update_settings(cfg: TrainConfig) -> UpdateSettings:
    a = cfg.algo
    return UpdateSettings(loss=a.loss, loss_kwargs=dict(a.loss_kwargs), aggregation=a.aggregation,
                          kl_coef=a.kl_coef, kl_estimator=a.kl_estimator, num_iterations=a.num_iterations,
                          mini_batches=a.mini_batches, micro_batch_size=a.micro_batch_size,
                          max_grad_norm=cfg.optim.max_grad_norm, max_new_tokens=cfg.rollout.max_new_tokens,
                          chunk_size=cfg.model.logprob_chunk_size, seed=cfg.seed)


def _completion_rows(batch, limit: int = 8) -> list[dict[str, Any]]:
    G = batch.rollout.lengths.shape[0] // len(batch.problems)
    adv = batch.advantages
    if adv.dim() == 2:  # per-token advantages: the row's mean over its valid tokens
        mask = batch.rollout.loss_mask[:, :adv.shape[1]]
        adv = torch.where(mask, adv, 0).sum(-1) / mask.sum(-1).clamp_min(1)
    rows = []
    for b in range(min(limit, batch.rollout.lengths.shape[0])):
        p = batch.problems[b // G]
        rows.append({"id": p.id, "prompt": p.prompt, "answer": p.answer, "completion": batch.rollout.texts[b],
                     "reward": float(batch.scores.total[b]), "advantage": float(adv[b]),
                     "extracted": batch.scores.extracted[b], "finish": batch.rollout.finish_reasons[b]})
    return rows


def _step_metrics(batch, upd: dict[str, float], version: int, times: tuple[float, float, float],
                  passes: int) -> dict[str, float]:
    """Everything logged for one step: batch statistics, update statistics, throughput."""
    t0, t1, t2 = times
    tokens = sum(len(p) for p in batch.rollout.prompt_ids) + int(batch.rollout.lengths.sum())
    return {**batch_metrics(batch), **batch.metrics, **upd, "policy/version": version,
            "perf/step_s": t2 - t0, "perf/train_s": t2 - t1,
            "perf/train_tokens_per_s": tokens * passes / max(t2 - t1, 1e-9)}


@dataclass
class _Session:
    """The objects one run works with, built from its config (and restored from a checkpoint on resume)."""

    run: Path
    train_problems: list
    eval_problems: list
    model: Any
    reference: Any
    optimizer: Any
    scheduler: Any
    state: TrainState
    encode: Any
    sampler: Any
    ref_sampler: Any
    stream: PromptStream
    critic: tuple[Any, Any] | None = None
    """(value model, its optimiser) when the estimator needs values."""


def _open(cfg: TrainConfig, run: Path, resume: bool, console: Any) -> _Session:
    from rlvr.rollout import HFSampler

    build.check_algorithm(cfg)
    if cfg.model.threads:
        torch.set_num_threads(cfg.model.threads)
    if not resume and (run / "metrics.jsonl").exists():
        raise FileExistsError(f"run directory {run} already holds a run; use --resume to continue it")
    train_problems, eval_problems = build.build_problems(cfg)
    model, tokenizer = build.load_policy(cfg, build.resolve_device(cfg.model.device))
    reference = build.build_reference(cfg, model)
    optimizer, scheduler = build.build_optimizer(cfg, model)
    critic = build.build_critic(cfg, next(model.parameters()).device)
    state = TrainState(step=0, data_position=0, policy_version=0)
    if resume:
        state = load_checkpoint(latest_checkpoint(run / "checkpoints"), model, optimizer, scheduler, critic=critic)
        console.print(f"resuming {run} from step {state.step}")
    run.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run / "config.yaml")
    sampler = HFSampler(model, tokenizer, max_batch_size=cfg.rollout.max_batch_size)
    sampler.version = state.policy_version
    ref_sampler = HFSampler(reference.model, tokenizer, max_batch_size=cfg.rollout.max_batch_size) \
        if reference is not None else None
    return _Session(run, train_problems, eval_problems, model, reference, optimizer, scheduler, state,
                    build.make_encoder(tokenizer, cfg.model.system_prompt), sampler, ref_sampler,
                    PromptStream(train_problems, cfg.seed, position=state.data_position), critic)


def train(cfg: TrainConfig, *, run_dir: str | Path | None = None, resume: bool = False,
          console: Any = None) -> RunSummary:
    """Run (or, with ``resume``, continue) training; returns where the run lives and its eval accuracies."""
    from rich.console import Console

    from rlvr.data import problems_hash
    from rlvr.rewards import RewardPool

    console = console or Console()
    t_start = time.perf_counter()
    run = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    ses = _open(cfg, run, resume, console)
    settings = _update_settings(cfg)
    reference = ses.reference.context if ses.reference is not None else None
    autocast = build.autocast_factory(cfg, next(ses.model.parameters()).device)
    extras, eval_end = dict(ses.state.extras), None
    with RunLog(run, tensorboard=cfg.log.tensorboard, resume_step=ses.state.step if resume else None) as log, \
            RewardPool(num_workers=cfg.reward.num_workers, timeout_s=cfg.reward.timeout_s) as pool:
        collector = build.make_collector(cfg, ses.stream, ses.encode, ses.sampler, pool, ses.ref_sampler,
                                         ses.reference, critic=ses.critic[0] if ses.critic else None, policy=ses.model)

        def run_eval(step: int) -> EvalResult:
            res = evaluate(ses.sampler, ses.encode, ses.eval_problems, pool, build.eval_params(cfg), seed=cfg.seed,
                           n=cfg.eval.n)
            log.log(step, {**res.flat(), "eval/problems": res.n_problems})
            log.completions(step, [{"eval": True, "id": r["id"], "answer": r["answer"], **r["samples"][0]}
                                   for r in res.rows[:8]])
            return res

        if not resume:
            extras = {"eval_hash": problems_hash(ses.eval_problems), "eval_start": None}
            console.print(f"run dir {run}; {len(ses.train_problems)} train / {len(ses.eval_problems)} eval "
                          f"problems (eval set hash {extras['eval_hash']})")
            log.log(0, {"data/train_problems": len(ses.train_problems),
                        "data/eval_problems": len(ses.eval_problems)})
            if cfg.eval.at_start:
                res = run_eval(0)
                extras["eval_start"] = res.accuracy
                console.print(f"held-out accuracy at start: {res.accuracy:.3f} ({res.n_problems} problems, "
                              f"{res.seconds:.0f} s)")
        with _progress(console, cfg) as progress:
            task = progress.add_task("train", total=cfg.steps, completed=ses.state.step, reward=float("nan"),
                                     acc=float("nan"))
            for step in range(ses.state.step, cfg.steps):
                t0 = time.perf_counter()
                batch = collector.collect(step)
                t1 = time.perf_counter()
                upd = update_policy(ses.model, ses.optimizer, ses.scheduler, batch, settings, step=step,
                                    reference=reference, log_ref_kl=cfg.log.ref_kl and reference is not None,
                                    autocast=autocast)
                if ses.critic is not None:
                    upd.update(critic_lib.value_metrics(batch))
                    upd.update(critic_lib.update_critic(*ses.critic, batch, settings, step=step,
                                                        value_clip=cfg.critic.value_clip, autocast=autocast))
                ses.sampler.version += 1
                metrics = _step_metrics(batch, upd, ses.sampler.version, (t0, t1, time.perf_counter()),
                                        cfg.algo.num_iterations)
                log.log(step + 1, metrics)
                if cfg.log.completions_every and (step + 1) % cfg.log.completions_every == 0:
                    log.completions(step + 1, _completion_rows(batch))
                last = step + 1 == cfg.steps
                if last or (cfg.eval.every and (step + 1) % cfg.eval.every == 0):
                    res = run_eval(step + 1)
                    if last:
                        eval_end = extras["eval_end"] = res.accuracy
                if last or (cfg.log.checkpoint_every and (step + 1) % cfg.log.checkpoint_every == 0):
                    save_checkpoint(run / "checkpoints", ses.model, ses.optimizer, ses.scheduler,
                                    TrainState(step + 1, ses.stream.position, ses.sampler.version, extras),
                                    keep=cfg.log.keep_checkpoints, critic=ses.critic)
                progress.update(task, advance=1, reward=metrics["reward/mean"], acc=metrics["reward/accuracy"])
    start = extras.get("eval_start")
    if eval_end is not None:
        gain = "" if start is None else f" (start {start:.3f}, change {eval_end - start:+.3f})"
        console.print(f"held-out accuracy at end: {eval_end:.3f}{gain}; run dir {run}")
    return RunSummary(run_dir=run, steps=cfg.steps, eval_start=start, eval_end=eval_end,
                      seconds=time.perf_counter() - t_start)


def _progress(console: Any, cfg: TrainConfig):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                    TextColumn("reward {task.fields[reward]:.3f}  acc {task.fields[acc]:.3f}"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, disable=not cfg.log.progress)
