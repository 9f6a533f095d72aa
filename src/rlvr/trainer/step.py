"""The shared policy update: num_iterations passes × mini-batches × micro-batches over one batch.

1. Old log-probs (π_old) are computed once per batch, without grad, when the loss needs them and the
   batch is used for more than one optimiser step; with one step they equal the current log-probs.
2. Reference log-probs are computed once per batch when there is a KL term (β > 0) or KL logging.
3. Each optimiser step's loss normaliser is computed once over all its micro-batches
   (``losses.loss_normalizer``), so the micro-batch size never changes the gradient.
4. A non-finite loss or gradient norm skips the step: gradients are dropped, weights untouched.
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from rlvr import kl as kl_estimators
from rlvr import losses
from rlvr.logprobs import completion_logprobs
from rlvr.trainer.batch import Batch, derive_seed
from rlvr.types import Rollout


@dataclass(frozen=True)
class UpdateSettings:
    loss: str
    loss_kwargs: dict[str, Any]
    aggregation: str | None
    kl_coef: float
    kl_estimator: str
    num_iterations: int
    mini_batches: int
    micro_batch_size: int
    max_grad_norm: float
    max_new_tokens: int
    chunk_size: int
    seed: int
    old_logprobs: str = "recompute"
    """π_old of ratio losses: "recompute" (learner forward) or "behavior" (the sampler's log-probs)."""
    share_prompts: bool = True
    """Log-prob passes run each distinct prompt once (``completion_logprobs(share_prompts=...)``)."""


def _micro(rows: torch.Tensor, size: int) -> list[torch.Tensor]:
    return list(rows.split(size))


def update_schedule(B: int, s: UpdateSettings, step: int) -> Iterator[list[torch.Tensor]]:
    """The row indices of each optimiser step, as its micro-batches: ``num_iterations`` passes over the
    B rows, each split into ``mini_batches`` steps (rows shuffled by a generator seeded from the run seed,
    step and pass), each step split into micro-batches of ``micro_batch_size`` rows."""
    for it in range(s.num_iterations):
        g = torch.Generator().manual_seed(derive_seed(s.seed, "minibatch", step, it))
        order = torch.randperm(B, generator=g) if s.mini_batches > 1 else torch.arange(B)
        for mini in torch.tensor_split(order, s.mini_batches):
            yield _micro(mini, s.micro_batch_size)


def optimizer_step(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, finite: bool,
                   max_grad_norm: float, scheduler: Any = None) -> float:
    """Clip the accumulated gradients and step, unless the loss or the norm is non-finite; zero the grads.

    Returns the gradient norm before clipping (NaN when the loss was non-finite); a non-finite return
    means the step was skipped and weights and optimiser state are untouched.
    """
    max_norm = max_grad_norm if max_grad_norm > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if finite else float("nan")
    if math.isfinite(grad_norm):
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _logprobs(model: torch.nn.Module, ro: Rollout, rows: torch.Tensor, chunk: int, *, entropy: bool = False,
              autocast: Callable[[], AbstractContextManager] = nullcontext, share_prompts: bool = True):
    lengths = ro.lengths[rows]
    T = max(int(lengths.max()), 1)
    device = next(model.parameters()).device
    with autocast():
        lp, ent = completion_logprobs(model, [ro.prompt_ids[i] for i in rows.tolist()],
                                      ro.completion_ids[rows, :T].to(device), lengths.to(device),
                                      chunk_size=chunk, with_entropy=entropy, share_prompts=share_prompts)
    mask = torch.arange(T, device=device)[None, :] < lengths.to(device)[:, None]
    return lp, ent, mask


@torch.no_grad()
def frozen_logprobs(model, ro: Rollout, micro_batch_size: int, chunk_size: int, context=nullcontext,
                    autocast=nullcontext, share_prompts: bool = True) -> list[torch.Tensor]:
    """Log-probs of every row, micro-batch by micro-batch, without grad; a list indexed by row."""
    out: list[torch.Tensor] = [None] * ro.lengths.shape[0]
    rows = torch.arange(ro.lengths.shape[0])
    with context():
        for mb in _micro(rows, micro_batch_size):
            lp, _, _ = _logprobs(model, ro, mb, chunk_size, autocast=autocast, share_prompts=share_prompts)
            for j, i in enumerate(mb.tolist()):
                out[i] = lp[j]
    return out


def gather_rows(per_row: list[torch.Tensor] | None, rows: torch.Tensor, T: int) -> torch.Tensor | None:
    """[len(rows), T] from per-row tensors (cut or zero-padded to T); None stays None."""
    if per_row is None:
        return None
    x = torch.zeros(len(rows), T, dtype=per_row[0].dtype, device=per_row[0].device)
    for j, i in enumerate(rows.tolist()):
        w = min(T, per_row[i].shape[0])
        x[j, :w] = per_row[i][:w]
    return x


def _behavior_logprobs(ro: Rollout, spec: losses.LossSpec, s: UpdateSettings) -> torch.Tensor | None:
    """The sampler's log-probs [B, T] when the loss reads them (decoupled_ppo) or takes its ratio to them
    (``old_logprobs="behavior"``); None otherwise. Missing ones are an error naming the cause."""
    wanted = spec.needs_behavior_logprobs or (spec.needs_old_logprobs and s.old_logprobs == "behavior")
    if not wanted:
        return None
    if ro.behavior_logprobs is None:
        why = f"loss {s.loss!r}" if spec.needs_behavior_logprobs else f"algo.old_logprobs=behavior (loss {s.loss!r})"
        raise ValueError(f"{why} needs the sampler's behaviour log-probs, but the rollout has none: sample "
                         "with SamplingParams(logprobs=True)")
    return ro.behavior_logprobs


def step_group_tokens(batch: Batch, micro: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per micro-batch, each row's group token count over the whole optimiser step (``group_token_counts``);
    the batch is prompt-major, G = B / P rows per prompt."""
    B, P = batch.rollout.lengths.shape[0], len(batch.problems)
    if P == 0 or B % P:
        raise ValueError(f"update_policy: {B} rows do not split into groups of the batch's {P} prompts")
    rows = torch.cat(micro)
    tokens = losses.group_token_counts(batch.rollout.loss_mask[rows], rows // (B // P))
    return list(tokens.split([len(mb) for mb in micro]))


def update_policy(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, batch: Batch,
                  s: UpdateSettings, *, step: int, reference: Callable[[], AbstractContextManager] | None = None,
                  log_ref_kl: bool = False, autocast: Callable[[], AbstractContextManager] = nullcontext
                  ) -> dict[str, float]:
    """Train on one batch; returns loss/, policy/ and train/ metrics (means over optimiser steps)."""
    spec = losses.spec(s.loss)
    mode = s.aggregation or spec.default_aggregation
    B = batch.rollout.lengths.shape[0]
    updates = s.num_iterations * s.mini_batches
    ro = batch.rollout
    behavior = _behavior_logprobs(ro, spec, s)
    use_behavior_as_old = behavior is not None and not spec.needs_behavior_logprobs
    needs_old = spec.needs_old_logprobs and updates > 1 and not use_behavior_as_old
    old = frozen_logprobs(model, ro, s.micro_batch_size, s.chunk_size, autocast=autocast,
                          share_prompts=s.share_prompts) if needs_old else None
    want_ref = reference is not None and (s.kl_coef > 0 or log_ref_kl)
    ref = frozen_logprobs(model, ro, s.micro_batch_size, s.chunk_size, reference, autocast, s.share_prompts) \
        if want_ref else None
    kl_fn = kl_estimators.get(s.kl_estimator)
    params = [p for p in model.parameters() if p.requires_grad]
    tok_sums: dict[str, float] = {}   # token-weighted statistics, over every pass
    tok_counts: dict[str, int] = {}
    step_losses, grad_norms, skipped = [], [], 0

    def add_tokens(key: str, value: torch.Tensor, mask: torch.Tensor) -> None:
        m = mask if value.shape == mask.shape else mask.any(-1)
        tok_sums[key] = tok_sums.get(key, 0.0) + float(torch.where(m, value.detach().double(), 0.0).sum())
        tok_counts[key] = tok_counts.get(key, 0) + int(m.sum())

    model.train()
    for micro in update_schedule(B, s, step):
        masks = [ro.loss_mask[mb] for mb in micro]
        group_tokens = step_group_tokens(batch, micro)
        norm = losses.loss_normalizer(masks, mode, max_tokens=s.max_new_tokens, group_tokens=group_tokens)
        finite, total = True, 0.0
        for mb, mb_group_tokens in zip(micro, group_tokens):
            lp, ent, mask = _logprobs(model, ro, mb, s.chunk_size, entropy=True, autocast=autocast,
                                      share_prompts=s.share_prompts)
            if not torch.isfinite(lp.detach()[mask]).all():
                finite = False
                break
            T = mask.shape[1]
            behav_mb = behavior[mb, :T].to(lp.device, lp.dtype) if behavior is not None else None
            old_mb = behav_mb if use_behavior_as_old else gather_rows(old, mb, T) if old is not None else lp.detach()
            ref_mb = gather_rows(ref, mb, T)
            adv = batch.advantages[mb]
            adv = adv[:, :T] if adv.dim() == 2 else adv  # per-token advantages (gae) are [B, T_batch]
            x = losses.PolicyLossInputs(logprobs=lp, advantages=adv.to(lp.device),
                                        loss_mask=mask, old_logprobs=old_mb, ref_logprobs=ref_mb,
                                        behavior_logprobs=behav_mb if spec.needs_behavior_logprobs else None)
            per_token, stats = spec.fn(x, **s.loss_kwargs)
            if ref_mb is not None:
                kl_tok = kl_fn(lp, ref_mb, loss_mask=mask)
                add_tokens("policy/kl", kl_tok, mask)
                if s.kl_coef > 0:
                    per_token = per_token + s.kl_coef * kl_tok
            loss = losses.aggregate(per_token, mask, mode, norm, group_tokens=mb_group_tokens)
            if not torch.isfinite(loss):
                finite = False
                break
            loss.backward()
            total += float(loss.detach())
            add_tokens("policy/entropy", ent, mask)
            if behav_mb is not None:  # how far the policy has moved from the one that sampled (staleness drift):
                # tokens come from π_b, so k3 with π_b as the sampling policy is unbiased for KL(π_b ‖ π_θ)
                add_tokens("policy/behavior_kl", kl_estimators.get("k3")(behav_mb, lp.detach(), loss_mask=mask), mask)
            nll, sign = losses.nll_by_advantage_sign(x)  # ASymPO's scale-imbalance diagnostic
            add_tokens("policy/nll_pos", nll, mask & (sign > 0)[:, None])
            add_tokens("policy/nll_neg", nll, mask & (sign < 0)[:, None])
            for key, v in stats.items():
                add_tokens(f"loss_stats/{key}", v, mask)
        grad_norm = optimizer_step(params, optimizer, finite, s.max_grad_norm, scheduler)
        skipped += not math.isfinite(grad_norm)
        step_losses.append(total if finite else float("nan"))
        grad_norms.append(grad_norm)
    out = {k: tok_sums[k] / tok_counts[k] for k in tok_sums if tok_counts[k]}  # no count: not logged
    out["loss/policy"] = sum(step_losses) / len(step_losses)
    out["train/grad_norm"] = sum(grad_norms) / len(grad_norms)
    out["train/skipped_steps"] = float(skipped)
    if out.get("policy/nll_pos", 0) > 0 and "policy/nll_neg" in out:
        out["policy/nll_neg_over_pos"] = out["policy/nll_neg"] / out["policy/nll_pos"]
    if "loss_stats/clipped_low" in out and "loss_stats/clipped_high" in out:
        out["policy/clip_frac"] = out["loss_stats/clipped_low"] + out["loss_stats/clipped_high"]
    out["train/lr"] = optimizer.param_groups[0]["lr"]
    return out
