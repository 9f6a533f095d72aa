"""What the synchronous and the asynchronous loop share: opening a run, logging a step, evaluating, checkpointing.

``Run`` is entered once per training run. It builds (or, on resume, restores) the session's objects from the
config, opens metrics.jsonl / TensorBoard and the reward pool, evaluates at the start, and then, after each
update, ``end_step`` logs the step's metrics and completions, evaluates and checkpoints on schedule, and moves
the progress bar. The loops (``sync.py``, ``async_.py``) only decide where a batch comes from.
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from rlvr.config import TrainConfig, dump_config
from rlvr.eval import EvalResult, evaluate
from rlvr.metrics import RunLog
from rlvr.trainer import build
from rlvr.trainer.batch import PromptStream, batch_metrics
from rlvr.trainer.checkpoint import TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
from rlvr.trainer.step import UpdateSettings


@dataclass
class RunSummary:
    run_dir: Path
    steps: int
    eval_start: float | None
    eval_end: float | None
    seconds: float


def default_run_dir(cfg: TrainConfig) -> Path:
    if cfg.log.run_dir:
        return Path(cfg.log.run_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = Path(cfg.model.name).name.replace("/", "_")
    return Path("runs") / f"{stamp}-{name}-{cfg.algo.advantage.replace(':', '_')}"


def update_settings(cfg: TrainConfig) -> UpdateSettings:
    a = cfg.algo
    return UpdateSettings(loss=a.loss, loss_kwargs=dict(a.loss_kwargs), aggregation=a.aggregation,
                          kl_coef=a.kl_coef, kl_estimator=a.kl_estimator, num_iterations=a.num_iterations,
                          mini_batches=a.mini_batches, micro_batch_size=a.micro_batch_size,
                          max_grad_norm=cfg.optim.max_grad_norm, max_new_tokens=cfg.rollout.max_new_tokens,
                          chunk_size=cfg.model.logprob_chunk_size, seed=cfg.seed, old_logprobs=a.old_logprobs,
                          share_prompts=cfg.model.share_prompts)


def completion_rows(batch, limit: int = 8) -> list[dict[str, Any]]:
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
                     "extracted": batch.scores.extracted[b], "finish": batch.rollout.finish_reasons[b],
                     "policy_version": batch.rollout.policy_version})
    return rows


def step_metrics(batch, upd: dict[str, float], version: int, times: tuple[float, float, float],
                 passes: int) -> dict[str, float]:
    """Everything logged for one step: batch statistics, update statistics, throughput.
    times = (step start, update start, update end)."""
    t0, t1, t2 = times
    tokens = sum(len(p) for p in batch.rollout.prompt_ids) + int(batch.rollout.lengths.sum())
    return {**batch_metrics(batch), **batch.metrics, **upd, "policy/version": version,
            "perf/step_s": t2 - t0, "perf/train_s": t2 - t1,
            "perf/train_tokens_per_s": tokens * passes / max(t2 - t1, 1e-9)}


@dataclass
class Session:
    """The objects one run works with, built from its config (and restored from a checkpoint on resume)."""

    run: Path
    train_problems: list
    eval_problems: list
    model: Any
    tokenizer: Any
    reference: Any
    optimizer: Any
    scheduler: Any
    state: TrainState
    encode: Any
    sampler: Any
    """An HFSampler on the learner's own model: the sync loop's sampler, and both loops' evaluator."""
    stream: PromptStream
    critic: tuple[Any, Any] | None = None
    """(value model, its optimiser) when the estimator needs values."""


def open_session(cfg: TrainConfig, run: Path, resume: bool, console: Any) -> Session:
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
    return Session(run, train_problems, eval_problems, model, tokenizer, reference, optimizer, scheduler, state,
                   build.make_encoder(tokenizer, cfg.model.system_prompt), sampler,
                   PromptStream(train_problems, cfg.seed, position=state.data_position), critic)


@dataclass
class Run:
    """One training run's session, logs, reward pool, evaluation and checkpoints (a context manager)."""

    cfg: TrainConfig
    run_dir: str | Path | None = None
    resume: bool = False
    console: Any = None
    ses: Session = field(init=False)
    log: RunLog = field(init=False)
    pool: Any = field(init=False)
    extras: dict[str, Any] = field(init=False, default_factory=dict)
    eval_end: float | None = field(init=False, default=None)

    def __enter__(self) -> "Run":
        from rich.console import Console

        from rlvr.rewards import RewardPool

        self._t_start = time.perf_counter()
        self.console = self.console or Console()
        cfg = self.cfg
        run = Path(self.run_dir) if self.run_dir is not None else default_run_dir(cfg)
        self.ses = open_session(cfg, run, self.resume, self.console)
        self.extras = dict(self.ses.state.extras)
        self._stack = ExitStack().__enter__()
        try:
            self.log = self._stack.enter_context(RunLog(run, tensorboard=cfg.log.tensorboard,
                                                        resume_step=self.ses.state.step if self.resume else None))
            self.pool = self._stack.enter_context(RewardPool(num_workers=cfg.reward.num_workers,
                                                             timeout_s=cfg.reward.timeout_s))
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _start(self) -> None:
        """Log the data sizes and evaluate at the start (new runs); open the progress bar."""
        from rlvr.data import problems_hash

        cfg = self.cfg
        run = self.ses.run
        if not self.resume:
            self.extras = {"eval_hash": problems_hash(self.ses.eval_problems), "eval_start": None}
            self.console.print(f"run dir {run}; {len(self.ses.train_problems)} train / {len(self.ses.eval_problems)} "
                               f"eval problems (eval set hash {self.extras['eval_hash']})")
            self.log.log(0, {"data/train_problems": len(self.ses.train_problems),
                             "data/eval_problems": len(self.ses.eval_problems)})
            if cfg.eval.at_start:
                res = self.evaluate(0)
                self.extras["eval_start"] = res.accuracy
                self.console.print(f"held-out accuracy at start: {res.accuracy:.3f} ({res.n_problems} problems, "
                                   f"{res.seconds:.0f} s)")
        self._progress = self._stack.enter_context(_progress(self.console, cfg))
        self._task = self._progress.add_task("train", total=cfg.steps, completed=self.ses.state.step,
                                             reward=float("nan"), acc=float("nan"))

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(*exc)

    def evaluate(self, step: int) -> EvalResult:
        """Held-out evaluation with the learner's weights (``ses.sampler``), logged at ``step``."""
        ses = self.ses
        res = evaluate(ses.sampler, ses.encode, ses.eval_problems, self.pool, build.eval_params(self.cfg),
                       seed=self.cfg.seed, n=self.cfg.eval.n)
        self.log.log(step, {**res.flat(), "eval/problems": res.n_problems})
        self.log.completions(step, [{"eval": True, "id": r["id"], "answer": r["answer"], **r["samples"][0]}
                                    for r in res.rows[:8]])
        return res

    def end_step(self, step: int, batch: Any, metrics: dict[str, float], state: TrainState) -> None:
        """Log step ``step``'s metrics (as step + 1), then evaluate and checkpoint when due; ``state`` is what a
        resume from here needs (``extras`` are added to it)."""
        cfg, ses = self.cfg, self.ses
        self.log.log(step + 1, metrics)
        if cfg.log.completions_every and (step + 1) % cfg.log.completions_every == 0:
            self.log.completions(step + 1, completion_rows(batch))
        last = step + 1 == cfg.steps
        if last or (cfg.eval.every and (step + 1) % cfg.eval.every == 0):
            res = self.evaluate(step + 1)
            if last:
                self.eval_end = self.extras["eval_end"] = res.accuracy
        if last or (cfg.log.checkpoint_every and (step + 1) % cfg.log.checkpoint_every == 0):
            state.extras = {**self.extras, **state.extras}
            save_checkpoint(ses.run / "checkpoints", ses.model, ses.optimizer, ses.scheduler, state,
                            keep=cfg.log.keep_checkpoints, critic=ses.critic)
        self._progress.update(self._task, advance=1, reward=metrics["reward/mean"], acc=metrics["reward/accuracy"])

    def summary(self) -> RunSummary:
        start = self.extras.get("eval_start")
        if self.eval_end is not None:
            gain = "" if start is None else f" (start {start:.3f}, change {self.eval_end - start:+.3f})"
            self.console.print(f"held-out accuracy at end: {self.eval_end:.3f}{gain}; run dir {self.ses.run}")
        return RunSummary(run_dir=self.ses.run, steps=self.cfg.steps, eval_start=start, eval_end=self.eval_end,
                          seconds=time.perf_counter() - self._t_start)


def _progress(console: Any, cfg: TrainConfig):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                    TextColumn("reward {task.fields[reward]:.3f}  acc {task.fields[acc]:.3f}"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, disable=not cfg.log.progress)
