"""PPO's critic in the training loop: values for GAE at collection time, and the value-function update.

An algorithm that ``needs_critic`` (the estimator's registry entry ``needs_values``: gae) makes the run build
a ``rlvr.value.ValueModel`` (``build.build_critic``); collection then calls ``values`` on every batch (V_old,
no grad) and, with ``algo.reward_kl_coef > 0``, ``token_kl`` for the KL-in-reward term. After the policy update,
``update_critic`` fits V to the returns with the clipped value loss (``rlvr.losses.value_loss``) over the same
schedule as the policy (``step.optimize``), with its own optimiser.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterator

import torch

from rlvr import kl as kl_estimators
from rlvr import losses
from rlvr.trainer.dist import World, all_sum
from rlvr.trainer.microbatch import Budget, micro_batches
from rlvr.trainer.step import Policy, Schedule, TokenMeans, frozen_logprobs, optimize, row_lengths
from rlvr.types import Rollout
from rlvr.value import ValueModel


@dataclass
class Critic:
    """The value model, its optimiser, ε_v of the clipped value loss (None = no clipping) and the autocast;
    ``module``: the model as its forward passes run it (FSDP2 / DDP-wrapped across ranks; the model itself
    when None); ``world``: the learner ranks."""

    model: ValueModel
    optimizer: torch.optim.Optimizer
    value_clip: float | None = 0.5
    autocast: Callable[[], AbstractContextManager] = nullcontext
    module: torch.nn.Module | None = None
    world: World = field(default_factory=World)

    def __post_init__(self) -> None:
        self.module = self.model if self.module is None else self.module


def _values(critic: Critic, ro: Rollout, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = ro.lengths[rows]
    T = max(int(lengths.max()), 1)
    with critic.autocast():
        v = critic.module([ro.prompt_ids[i] for i in rows.tolist()], ro.completion_ids[rows, :T], lengths)
    return v, ro.loss_mask[rows, :T].to(v.device)


@torch.no_grad()
def values(critic: Critic, ro: Rollout, *, micro_batch_size: Budget | int) -> torch.Tensor:
    """V_old: Float32[B, T] on the CPU (T = the rollout's width), 0 at masked positions; across ranks each
    computes its share of the rows."""
    B, T = ro.completion_ids.shape
    out = torch.zeros(B, T, dtype=torch.float32)
    was_training = critic.model.training
    critic.model.eval()
    try:
        for mb in micro_batches(torch.arange(B), micro_batch_size, critic.world, lengths=row_lengths(ro)):
            v, _ = _values(critic, ro, mb if mb is not None else torch.arange(1))
            if mb is not None:
                out[mb, :v.shape[1]] = v.float().cpu()
    finally:
        critic.model.train(was_training)
    return all_sum(out, critic.world)


@torch.no_grad()
def token_kl(policy: Policy, ro: Rollout, *, micro_batch_size: Budget | int, estimator: str = "k1"
             ) -> torch.Tensor:
    """Float32[B, T] on the CPU: the per-token KL estimate of π_old (the current weights) to π_ref, 0 masked."""
    old = frozen_logprobs(policy, ro, micro_batch_size).cpu()
    ref = frozen_logprobs(policy, ro, micro_batch_size, policy.reference).cpu()
    return kl_estimators.get(estimator)(old, ref, loss_mask=ro.loss_mask.cpu()).float()


def update_critic(critic: Critic, batch: Any, schedule: Schedule, *, step: int) -> dict[str, float]:
    """Fit V to ``batch.returns`` with the clipped value loss; returns critic/ metrics (means over steps).

    batch.values (V_old) and batch.returns are Float[B, T_batch] from the collection pass.
    """
    meter = TokenMeans()
    critic.model.train()
    params = [p for group in critic.optimizer.param_groups for p in group["params"]]
    out = optimize(params, critic.optimizer, None, batch.rollout.lengths.shape[0], schedule, step,
                   partial(_micro_losses, critic, batch, meter, schedule.budget), world=critic.world)
    return {**meter.means(critic.world), "critic/loss": out["loss"], "critic/grad_norm": out["grad_norm"],
            "critic/skipped_steps": out["skipped_steps"]}


def _micro_losses(critic: Critic, batch: Any, meter: TokenMeans, budget: Budget, micro: list[torch.Tensor]
                  ) -> Iterator[torch.Tensor]:
    """This rank's token-mean value losses of one optimiser step (over the step's tokens on every rank); an
    empty micro-batch (padding) yields a row's loss × 0."""
    ro, rows = batch.rollout, torch.cat(micro)
    norm = losses.loss_normalizer(ro.loss_mask[rows], "token_mean")
    for mb in micro_batches(rows, budget, critic.world, lengths=row_lengths(ro)):
        padding, mb = mb is None, rows[:1] if mb is None else mb
        v, mask = _values(critic, ro, mb)
        T = mask.shape[1]
        per_token, stats = losses.value_loss(v, batch.values[mb, :T].to(v.device), batch.returns[mb, :T].to(v.device),
                                             mask, clip_eps=critic.value_clip)
        loss = losses.aggregate(per_token, mask, "token_mean", norm)
        if torch.isfinite(loss) and not padding:
            meter.add("critic/value_loss", per_token, mask)
            meter.add("critic/vf_clip_frac", stats["vf_clipped"], mask)
        yield loss * 0.0 if padding else loss


def value_metrics(batch: Any) -> dict[str, float]:
    """critic/ diagnostics of the collection pass: mean V_old, mean return, explained variance of returns."""
    mask = batch.rollout.loss_mask
    T = batch.values.shape[1]
    mask = mask[:, :T]
    v, r = batch.values[mask].double(), batch.returns[mask].double()
    var_r = float(r.var()) if r.numel() > 1 else 0.0
    ev = 1.0 - float((r - v).var()) / var_r if var_r > 0 else float("nan")
    return {"critic/values_mean": float(v.mean()), "critic/returns_mean": float(r.mean()),
            "critic/explained_variance": ev}
