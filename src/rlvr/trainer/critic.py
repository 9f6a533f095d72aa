"""PPO's critic in the training loop: values for GAE at collection time, and the value-function update.

An algorithm that ``needs_critic`` (the estimator's registry entry ``needs_values``: gae) makes the run build
a ``rlvr.value.ValueModel`` (``build.build_critic``); collection then calls ``values`` on every batch (V_old,
no grad) and, with ``algo.reward_kl_coef > 0``, ``token_kl`` for the KL-in-reward term. After the policy update,
``update_critic`` fits V to the returns with the clipped value loss (``rlvr.losses.value_loss``) over the same
schedule as the policy (``step.optimize``), with its own optimiser.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator

import torch

from rlvr import kl as kl_estimators
from rlvr import losses
from rlvr.trainer.step import Policy, Schedule, TokenMeans, frozen_logprobs, gather_rows, optimize
from rlvr.types import Rollout
from rlvr.value import ValueModel, completion_values


@dataclass
class Critic:
    """The value model, its optimiser, ε_v of the clipped value loss (None = no clipping) and the autocast."""

    model: ValueModel
    optimizer: torch.optim.Optimizer
    value_clip: float | None = 0.5
    autocast: Callable[[], AbstractContextManager] = nullcontext


def _values(critic: Critic, ro: Rollout, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = ro.lengths[rows]
    T = max(int(lengths.max()), 1)
    with critic.autocast():
        v = completion_values(critic.model, [ro.prompt_ids[i] for i in rows.tolist()], ro.completion_ids[rows, :T],
                              lengths)
    return v, ro.loss_mask[rows, :T].to(v.device)


@torch.no_grad()
def values(critic: Critic, ro: Rollout, *, micro_batch_size: int) -> torch.Tensor:
    """V_old: Float32[B, T] on the CPU (T = the rollout's width), 0 at masked positions."""
    B, T = ro.completion_ids.shape
    out = torch.zeros(B, T, dtype=torch.float32)
    was_training = critic.model.training
    critic.model.eval()
    try:
        for mb in torch.arange(B).split(micro_batch_size):
            v, _ = _values(critic, ro, mb)
            out[mb, :v.shape[1]] = v.float().cpu()
    finally:
        critic.model.train(was_training)
    return out


@torch.no_grad()
def token_kl(policy: Policy, ro: Rollout, *, micro_batch_size: int, estimator: str = "k1") -> torch.Tensor:
    """Float32[B, T] on the CPU: the per-token KL estimate of π_old (the current weights) to π_ref, 0 masked."""
    B, T = ro.completion_ids.shape
    old = frozen_logprobs(policy, ro, micro_batch_size)
    ref = frozen_logprobs(policy, ro, micro_batch_size, policy.reference.context)
    rows = torch.arange(B)
    lp_old, lp_ref = gather_rows(old, rows, T).cpu(), gather_rows(ref, rows, T).cpu()
    return kl_estimators.get(estimator)(lp_old, lp_ref, loss_mask=ro.loss_mask.cpu()).float()


def update_critic(critic: Critic, batch: Any, schedule: Schedule, *, step: int) -> dict[str, float]:
    """Fit V to ``batch.returns`` with the clipped value loss; returns critic/ metrics (means over steps).

    batch.values (V_old) and batch.returns are Float[B, T_batch] from the collection pass.
    """
    meter = TokenMeans()
    critic.model.train()
    params = [p for p in critic.model.parameters() if p.requires_grad]
    out = optimize(params, critic.optimizer, None, batch.rollout.lengths.shape[0], schedule, step,
                   partial(_micro_losses, critic, batch, meter))
    return {**meter.means(), "critic/loss": out["loss"], "critic/grad_norm": out["grad_norm"],
            "critic/skipped_steps": out["skipped_steps"]}


def _micro_losses(critic: Critic, batch: Any, meter: TokenMeans, micro: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """The token-mean value loss of each micro-batch of one optimiser step, over the step's tokens."""
    ro = batch.rollout
    norm = losses.loss_normalizer([ro.loss_mask[mb] for mb in micro], "token_mean")
    for mb in micro:
        v, mask = _values(critic, ro, mb)
        T = mask.shape[1]
        per_token, stats = losses.value_loss(v, batch.values[mb, :T].to(v.device), batch.returns[mb, :T].to(v.device),
                                             mask, clip_eps=critic.value_clip)
        loss = losses.aggregate(per_token, mask, "token_mean", norm)
        if torch.isfinite(loss):
            meter.add("critic/value_loss", per_token, mask)
            meter.add("critic/vf_clip_frac", stats["vf_clipped"], mask)
        yield loss


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
