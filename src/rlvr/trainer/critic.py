"""PPO's critic in the training loop: values for GAE at collection time, and the value-function update.

An estimator whose registry entry ``needs_values`` (gae) makes ``build.build_critic`` create a
``rlvr.value.ValueModel``; the collector then calls ``values`` on every batch (V_old, no grad) and,
with ``algo.reward_kl_coef > 0``, ``token_kl`` for the KL-in-reward term. After the policy update,
``update_critic`` fits V to the returns with the clipped value loss (``rlvr.losses.value_loss``),
over the same iterations × mini-batches × micro-batches as the policy, with its own optimiser.
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable

import torch

from rlvr import kl as kl_estimators
from rlvr import losses
from rlvr.trainer.step import UpdateSettings, frozen_logprobs, gather_rows, optimizer_step, update_schedule
from rlvr.types import Rollout
from rlvr.value import ValueModel, completion_values


def _values(critic: ValueModel, ro: Rollout, rows: torch.Tensor, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = ro.lengths[rows]
    T = max(int(lengths.max()), 1)
    device = critic.head.weight.device
    with autocast():
        v = completion_values(critic, [ro.prompt_ids[i] for i in rows.tolist()], ro.completion_ids[rows, :T],
                              lengths)
    return v, torch.arange(T, device=device)[None, :] < lengths.to(device)[:, None]


@torch.no_grad()
def values(critic: ValueModel, ro: Rollout, *, micro_batch_size: int,
           autocast: Callable[[], AbstractContextManager] = nullcontext) -> torch.Tensor:
    """V_old: Float32[B, T] on the CPU (T = the rollout's width), 0 at masked positions."""
    B, T = ro.completion_ids.shape
    out = torch.zeros(B, T, dtype=torch.float32)
    was_training = critic.training
    critic.eval()
    try:
        for mb in torch.arange(B).split(micro_batch_size):
            v, _ = _values(critic, ro, mb, autocast)
            out[mb, :v.shape[1]] = v.float().cpu()
    finally:
        critic.train(was_training)
    return out


@torch.no_grad()
def token_kl(model: torch.nn.Module, reference: Callable[[], AbstractContextManager], ro: Rollout, *,
             micro_batch_size: int, chunk_size: int, estimator: str = "k1",
             autocast: Callable[[], AbstractContextManager] = nullcontext,
             share_prompts: bool = True) -> torch.Tensor:
    """Float32[B, T] on the CPU: the per-token KL estimate of π_old (the current weights) to π_ref, 0 masked."""
    B, T = ro.completion_ids.shape
    old = frozen_logprobs(model, ro, micro_batch_size, chunk_size, autocast=autocast, share_prompts=share_prompts)
    ref = frozen_logprobs(model, ro, micro_batch_size, chunk_size, reference, autocast, share_prompts)
    rows = torch.arange(B)
    lp_old, lp_ref = gather_rows(old, rows, T).cpu(), gather_rows(ref, rows, T).cpu()
    return kl_estimators.get(estimator)(lp_old, lp_ref, loss_mask=ro.loss_mask.cpu()).float()


def update_critic(critic: ValueModel, optimizer: torch.optim.Optimizer, batch: Any, s: UpdateSettings, *,
                  step: int, value_clip: float,
                  autocast: Callable[[], AbstractContextManager] = nullcontext) -> dict[str, float]:
    """Fit V to ``batch.returns`` with the clipped value loss; returns critic/ metrics (means over steps).

    batch.values (V_old) and batch.returns are Float[B, T_batch] from the collection pass.
    """
    ro = batch.rollout
    B = ro.lengths.shape[0]
    params = [p for p in critic.parameters() if p.requires_grad]
    clip = value_clip if value_clip > 0 else None
    sums = {"critic/value_loss": 0.0, "critic/vf_clip_frac": 0.0}
    tokens, step_losses, grad_norms, skipped = 0, [], [], 0
    critic.train()
    for micro in update_schedule(B, s, step):
        norm = losses.loss_normalizer([ro.loss_mask[mb] for mb in micro], "token_mean")
        finite, total = True, 0.0
        for mb in micro:
            v, mask = _values(critic, ro, mb, autocast)
            T = mask.shape[1]
            old = batch.values[mb, :T].to(v.device)
            ret = batch.returns[mb, :T].to(v.device)
            per_token, stats = losses.value_loss(v, old, ret, mask, clip_eps=clip)
            loss = losses.aggregate(per_token, mask, "token_mean", norm)
            if not torch.isfinite(loss):
                finite = False
                break
            loss.backward()
            total += float(loss.detach())
            sums["critic/value_loss"] += float(per_token.detach()[mask].double().sum())
            sums["critic/vf_clip_frac"] += float(stats["vf_clipped"][mask].double().sum())
            tokens += int(mask.sum())
        grad_norm = optimizer_step(params, optimizer, finite, s.max_grad_norm)
        skipped += not math.isfinite(grad_norm)
        step_losses.append(total if finite else float("nan"))
        grad_norms.append(grad_norm)
    out = {k: v / max(tokens, 1) for k, v in sums.items()}
    out["critic/loss"] = sum(step_losses) / len(step_losses)
    out["critic/grad_norm"] = sum(grad_norms) / len(grad_norms)
    out["critic/skipped_steps"] = float(skipped)
    return out


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
