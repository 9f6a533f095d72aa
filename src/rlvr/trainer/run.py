"""A training run: what the synchronous and the asynchronous loop share.

``Run`` is entered once per training run. It resolves the algorithm (``Algorithm.from_config``: before anything
loads), builds or, on resume, restores the run's objects (data, policy, reference, critic, samplers), opens
metrics.jsonl / TensorBoard and the reward pool, and evaluates at the start. It owns the policy version: the
number of updates the learner's weights have had, which every rollout is stamped with. After each update,
``end_step`` logs the step's metrics and completions, evaluates and checkpoints on schedule, and moves the
progress bar. The loops (``sync.py``, ``async_.py``) only decide where a batch comes from.
"""
from __future__ import annotations

import gc
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from rlvr.config import TrainConfig, dump_config, to_dict
from rlvr.eval import EvalResult, evaluate
from rlvr.metrics import RunLog, WandbSettings, require_wandb
from rlvr.rewards.scoring import RewardSettings
from rlvr.trainer import build, dist
from rlvr.trainer.algorithm import Algorithm
from rlvr.trainer.batch import Batch, PromptStream, batch_metrics, row_advantages
from rlvr.trainer.checkpoint import TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
from rlvr.trainer.step import Policy, Schedule


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


class Run:
    """One training run's objects, policy version, logs, reward pool, evaluation and checkpoints (a context
    manager). Attributes after entry: cfg, algo, schedule, world (the learner ranks), dir, tokenizer, policy
    (``step.Policy``), critic (``critic.Critic`` or None), version; and on rank 0, which drives the run:
    train_problems, eval_problems, encode, stream, sampler (an HFSampler on the learner's weights: the sync loop's
    sampler and both loops' evaluator; its own copy of them with several ranks), ref_sampler and ref_context (the
    reference model's samples, when the algorithm draws them), sampling, rewards, pool, log, state (where
    training starts)."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path | None = None, resume: bool = False,
                 console: Any = None) -> None:
        self.cfg, self.resume, self.console = cfg, resume, console
        self.dir = Path(run_dir) if run_dir is not None else None
        self.eval_end: float | None = None
        self.sampler = self.stream = self.pool = self.log = None      # rank 0's: set by _open_driver and _start

    def __enter__(self) -> "Run":
        from rich.console import Console

        self._t_start = time.perf_counter()
        self.algo = Algorithm.from_config(self.cfg)                  # fails here, before anything loads
        self.schedule = Schedule.from_config(self.cfg)
        self.device = build.resolve_device(self.cfg.model.device)
        self.world = dist.init(self.cfg.dist.strategy, self.device)
        self.console = self.console or Console(quiet=not self.world.main)
        self.dir = dist.broadcast_object(self.dir or default_run_dir(self.cfg), self.world)
        self._stack = ExitStack().__enter__()
        try:
            self._open()
            self._start()
        except BaseException:
            self._stack.close()
            dist.shutdown(self.world)
            raise
        return self

    def _open(self) -> None:
        """Build (or restore from the latest checkpoint) everything the loops use."""
        cfg, algo = self.cfg, self.algo
        if cfg.model.threads:
            torch.set_num_threads(cfg.model.threads)
        if not self.resume and (self.dir / "metrics.jsonl").exists():
            raise FileExistsError(f"run directory {self.dir} already holds a run; use --resume to continue it")
        if self.world.main:
            self.train_problems, self.eval_problems = build.build_problems(cfg)
            if cfg.log.wandb:
                require_wandb()
        self._open_learner()
        self.state = TrainState(step=0, data_position=0, policy_version=0)
        if self.resume:
            p, critic = self.policy, (self.critic.model, self.critic.optimizer) if self.critic else None
            self.state = load_checkpoint(latest_checkpoint(self.dir / "checkpoints"), p.model, p.optimizer,
                                         p.scheduler, critic=critic, world=self.world)
            self.console.print(f"resuming {self.dir} from step {self.state.step}")
        if self.world.main:
            self.dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.dir / "config.yaml")
            self._open_driver()
        self.publish(self.state.policy_version)

    def _open_learner(self) -> None:
        """The policy (distributed over the ranks), its reference, optimiser and critic, on every rank."""
        cfg, algo, world = self.cfg, self.algo, self.world
        model, self.tokenizer = build.load_policy(cfg, self.device)
        reference = build.build_reference(cfg, model, algo)               # before sharding: a copy is whole
        module = dist.wrap(dist.LogProbs(model), model, world)
        optimizer, scheduler = build.build_optimizer(cfg, model)           # after: FSDP2 swaps in sharded params
        self.policy = Policy(model, optimizer, scheduler, reference, build.autocast_factory(cfg, self.device),
                             cfg.model.logprob_chunk_size, cfg.model.share_prompts, pack=cfg.model.pack_sequences,
                             log_ref_kl=cfg.log.ref_kl and reference is not None, module=module, world=world)
        self.critic = build.build_critic(cfg, self.device, algo, world)

    def _open_driver(self) -> None:
        """Rank 0's part: the prompt stream, the samplers, sampling and reward settings. With several ranks rank 0
        samples (and evaluates) with its own whole copy of the policy, which ``publish`` keeps current."""
        from rlvr.rollout import HFSampler

        cfg, algo = self.cfg, self.algo
        model = self.policy.model if not self.world.parallel else build.load_policy(cfg, self.device)[0]
        self.sampler = HFSampler(model, self.tokenizer, max_batch_size=cfg.rollout.max_batch_size)
        self.encode = build.make_encoder(self.tokenizer, build.system_prompt(cfg))
        self.stream = PromptStream(self.train_problems, cfg.seed, position=self.state.data_position)
        own_copy = cfg.trainer == "async" or self.world.parallel        # sampling must not share the learner's weights
        self.ref_sampler, self.ref_context = build.reference_sampler(
            cfg, self.policy.reference, self.tokenizer, own_copy=own_copy) \
            if algo.needs_reference_samples else (None, nullcontext)
        self.sampling = build.sampling_params(cfg, algo)
        r = cfg.reward
        self.rewards = RewardSettings(r.format_weight, r.overlong_buffer, r.overlong_penalty,
                                      think=build.prompt_template(cfg).think)

    def publish(self, version: int) -> None:
        """The learner's weights are now ``version`` updates old: rank 0's sampler stamps its rollouts with it. With
        several ranks every rank takes part in gathering the full weights (adapters only under LoRA) and rank 0's
        sampler loads them (``self.weights`` keeps them for rollout workers)."""
        self.version = version
        if self.world.parallel:
            self.weights = dist.full_trainable_state(self.policy.model, self.world)
            if self.world.main:
                self.sampler.load_weights(version, self.weights)
        elif self.world.main:
            self.sampler.version = version

    @property
    def data_position(self) -> int:
        """Problems handed out by the prompt stream (rank 0's; 0 on the other ranks, which hold no stream)."""
        return self.stream.position if self.stream is not None else 0

    def worker_weights(self) -> dict[str, torch.Tensor]:
        """What rank 0 publishes to rollout workers (``build.worker_weights``). With several ranks the learner's
        weights are sharded: the trainable weights the last ``publish`` gathered, or, for an engine that holds full
        weights (vLLM), the LoRA-merged model of rank 0's own copy, which holds those gathered weights."""
        if not self.world.parallel:
            return build.worker_weights(self.cfg, self.policy.model)
        return build.worker_weights(self.cfg, self.sampler.model, trainable=self.weights)

    def _start(self) -> None:
        """On rank 0: open the logs and the reward pool; log the data sizes and evaluate at the start (new runs);
        open the progress bar."""
        self.extras = dict(self.state.extras)
        if not self.world.main:
            return
        from rlvr.rewards import RewardPool

        cfg = self.cfg
        wandb = WandbSettings(cfg.log.wandb_project, cfg.log.wandb_name, to_dict(cfg)) if cfg.log.wandb else None
        self.log = self._stack.enter_context(RunLog(self.dir, tensorboard=cfg.log.tensorboard, wandb=wandb,
                                                    resume_step=self.state.step if self.resume else None))
        self.pool = self._stack.enter_context(RewardPool(num_workers=cfg.reward.num_workers,
                                                         timeout_s=cfg.reward.timeout_s))
        if not self.resume:
            self._log_start()
        self._progress = self._stack.enter_context(_progress(self.console, cfg))
        self._task = self._progress.add_task("train", total=cfg.steps, completed=self.state.step,
                                             reward=float("nan"), acc=float("nan"))

    def _log_start(self) -> None:
        from rlvr.data import problems_hash

        self.extras = {"eval_hash": problems_hash(self.eval_problems), "eval_start": None}
        self.console.print(f"run dir {self.dir}; {len(self.train_problems)} train / {len(self.eval_problems)} "
                           f"eval problems (eval set hash {self.extras['eval_hash']})")
        self.log.log(0, {"data/train_problems": len(self.train_problems),
                         "data/eval_problems": len(self.eval_problems), "dist/world_size": self.world.size})
        if self.cfg.eval.at_start:
            res = self.evaluate(0)
            self.extras["eval_start"] = res.accuracy
            self.console.print(f"held-out accuracy at start: {res.accuracy:.3f} ({res.n_problems} problems, "
                               f"{res.seconds:.0f} s)")

    def __exit__(self, *exc: object) -> None:
        try:
            self._stack.__exit__(*exc)
        finally:
            if self.world.parallel:   # DDP's destructor must run while the process group is still alive
                self.policy = self.critic = None
                gc.collect()
            dist.shutdown(self.world)

    def evaluate(self, step: int) -> EvalResult:
        """Held-out evaluation with the learner's weights (``sampler``, rank 0), logged at ``step``."""
        res = evaluate(self.sampler, self.encode, self.eval_problems, self.pool, build.eval_params(self.cfg),
                       seed=self.cfg.seed, n=self.cfg.eval.n)
        self.log.log(step, {**res.flat(), "eval/problems": res.n_problems})
        self.log.completions(step, [{"eval": True, "id": r["id"], "answer": r["answer"], **r["samples"][0]}
                                    for r in res.rows[:8]])
        return res

    def end_step(self, step: int, batch: Batch, metrics: dict[str, float], state: TrainState) -> None:
        """Log step ``step``'s metrics (as step + 1), then evaluate and checkpoint when due (rank 0; every rank
        writes its part of a checkpoint); ``state`` is what a resume from here needs (``extras`` are added)."""
        cfg, last = self.cfg, step + 1 == self.cfg.steps
        if self.world.main:
            self.log.log(step + 1, metrics)
            if cfg.log.completions_every and (step + 1) % cfg.log.completions_every == 0:
                self.log.completions(step + 1, completion_rows(batch))
            if last or (cfg.eval.every and (step + 1) % cfg.eval.every == 0):
                res = self.evaluate(step + 1)
                if last:
                    self.eval_end = self.extras["eval_end"] = res.accuracy
        if last or (cfg.log.checkpoint_every and (step + 1) % cfg.log.checkpoint_every == 0):
            state.extras = {**self.extras, **state.extras}
            critic = (self.critic.model, self.critic.optimizer) if self.critic else None
            p = self.policy
            save_checkpoint(self.dir / "checkpoints", p.model, p.optimizer, p.scheduler, state,
                            keep=cfg.log.keep_checkpoints, critic=critic, world=self.world)
        if self.world.main:
            self._progress.update(self._task, advance=1, reward=metrics["reward/mean"],
                                  acc=metrics["reward/accuracy"])

    def summary(self) -> RunSummary:
        start = self.extras.get("eval_start")
        if self.eval_end is not None:
            gain = "" if start is None else f" (start {start:.3f}, change {self.eval_end - start:+.3f})"
            self.console.print(f"held-out accuracy at end: {self.eval_end:.3f}{gain}; run dir {self.dir}")
        return RunSummary(run_dir=self.dir, steps=self.cfg.steps, eval_start=start, eval_end=self.eval_end,
                          seconds=time.perf_counter() - self._t_start)


def step_metrics(batch: Batch, update: dict[str, float], version: int, times: tuple[float, float, float],
                 passes: int) -> dict[str, float]:
    """Everything logged for one step: batch statistics, update statistics, throughput.
    times = (step start, update start, update end)."""
    t0, t1, t2 = times
    tokens = sum(len(p) for p in batch.rollout.prompt_ids) + int(batch.rollout.lengths.sum())
    return {**batch_metrics(batch), **batch.metrics, **update, "policy/version": version,
            "perf/step_s": t2 - t0, "perf/train_s": t2 - t1,
            "perf/train_tokens_per_s": tokens * passes / max(t2 - t1, 1e-9)}


def completion_rows(batch: Batch, limit: int = 8) -> list[dict[str, Any]]:
    """The first ``limit`` sampled completions of a batch, with their scores, for completions.jsonl."""
    G = batch.rollout.lengths.shape[0] // len(batch.problems)
    adv = row_advantages(batch)
    rows = []
    for b in range(min(limit, batch.rollout.lengths.shape[0])):
        p = batch.problems[b // G]
        rows.append({"id": p.id, "prompt": p.prompt, "answer": p.answer, "completion": batch.rollout.texts[b],
                     "reward": float(batch.scores.total[b]), "advantage": float(adv[b]),
                     "extracted": batch.scores.extracted[b], "finish": batch.rollout.finish_reasons[b],
                     "policy_version": batch.rollout.policy_version})
    return rows


def _progress(console: Any, cfg: TrainConfig):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                    TextColumn("reward {task.fields[reward]:.3f}  acc {task.fields[acc]:.3f}"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, disable=not cfg.log.progress)
