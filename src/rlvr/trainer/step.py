"""The update: one batch becomes ``num_iterations × mini_batches`` optimiser steps of accumulated micro-batches.

1. π_old (when the loss reads it and there is more than one optimiser step per batch) and reference log-probs
   (a KL term, or ``log.ref_kl``) are computed once per batch, without grad.
2. Each optimiser step's loss normaliser is computed once over all its micro-batches
   (``losses.loss_normalizer``), so the micro-batch size never changes the gradient.
3. A non-finite loss or gradient norm skips the step: gradients are dropped, weights untouched.

``optimize`` is the one micro-batch/optimiser-step schedule, shared by the policy (``update_policy``) and the
critic (``rlvr.trainer.critic.update_critic``): each passes a generator of its micro-batch losses.
The loss returns its own statistics (logged as ``loss_stats/<name>``); the update adds the loss-independent
policy diagnostics (entropy, KL to the reference and to the sampler, mean token NLL of positive- and
negative-advantage responses) and aggregates all of them token-weighted over the batch.
"""
from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterator

import torch

from rlvr import kl as kl_estimators
from rlvr import losses
from rlvr.seeding import derive_seed
from rlvr.trainer.algorithm import Algorithm
from rlvr.trainer.batch import Batch
from rlvr.trainer.dist import LogProbs, World, all_sum, all_true, merge_sums
from rlvr.trainer.microbatch import Budget, micro_batches
from rlvr.types import Rollout

Tensor = torch.Tensor


@dataclass(frozen=True)
class Schedule:
    """How one batch becomes optimiser steps: ``num_iterations`` passes, each split into ``mini_batches``
    optimiser steps (rows shuffled from ``seed`` when > 1), each accumulated over micro-batches of
    ``micro_batch_size`` rows, or of at most ``max_tokens_per_micro_batch`` tokens (``microbatch.Budget``);
    gradients clipped to ``max_grad_norm`` (0 = off); ``packed``: sequences run without padding
    (``model.pack_sequences``), so a token budget counts no padding."""

    num_iterations: int = 1
    mini_batches: int = 1
    micro_batch_size: int = 16
    max_grad_norm: float = 1.0
    seed: int = 0
    max_tokens_per_micro_batch: int | None = None
    packed: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> "Schedule":
        a = cfg.algo
        return cls(a.num_iterations, a.mini_batches, a.micro_batch_size, cfg.optim.max_grad_norm, cfg.seed,
                   a.max_tokens_per_micro_batch, cfg.model.pack_sequences)

    @property
    def budget(self) -> Budget:
        return Budget(self.micro_batch_size, self.max_tokens_per_micro_batch, self.packed)

    @property
    def updates(self) -> int:
        """Optimiser steps per batch."""
        return self.num_iterations * self.mini_batches


@dataclass
class Reference:
    """The frozen initial model: ``module`` computes its log-probs (``dist.LogProbs``) under ``context`` — the
    policy's own module with the LoRA adapters switched off, or a frozen copy's with a null context."""

    model: torch.nn.Module
    context: Callable[[], AbstractContextManager]
    module: torch.nn.Module | None = None


@dataclass
class Policy:
    """The trained model and what its log-prob passes and update need besides the batch.

    module: the ``dist.LogProbs`` of ``model`` that forward passes go through (FSDP2 / DDP-wrapped across ranks;
    ``LogProbs(model)`` when None); reference: the frozen initial model or None; share_prompts / pack: the
    log-prob paths of ``completion_logprobs`` (``model.share_prompts``, ``model.pack_sequences``); log_ref_kl: log policy/kl even
    without a KL term (``log.ref_kl``); world: the learner ranks."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    reference: Reference | None = None
    autocast: Callable[[], AbstractContextManager] = nullcontext
    chunk_size: int = 1024
    share_prompts: bool = True
    pack: bool = False
    log_ref_kl: bool = False
    module: torch.nn.Module | None = None
    world: World = field(default_factory=World)

    def __post_init__(self) -> None:
        if self.module is None:
            self.module = LogProbs(self.model)
        if self.reference is not None and self.reference.module is None:
            self.reference.module = self.module if self.reference.model is self.model else \
                LogProbs(self.reference.model)


class TokenMeans:
    """Token-weighted means over an update: a [B, T] statistic counts each valid token, a [B] one each response
    with a valid token (and a [B] one can be narrowed further by its own mask); ``means`` adds every rank's."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, value: Tensor, mask: Tensor) -> None:
        m = mask if value.shape == mask.shape else mask.any(-1)
        self.sums[key] = self.sums.get(key, 0.0) + float(torch.where(m, value.detach().double(), 0.0).sum())
        self.counts[key] = self.counts.get(key, 0) + int(m.sum())

    def means(self, world: World | None = None) -> dict[str, float]:
        """Each statistic's mean over every rank; one that never had a valid token is not reported."""
        sums, counts = merge_sums(self.sums, self.counts, world or World())
        return {k: sums[k] / counts[k] for k in sums if counts[k]}


# ----------------------------------------------------------------------------------------------
# The schedule shared by the policy and the critic
# ----------------------------------------------------------------------------------------------

def update_schedule(B: int, s: Schedule, step: int) -> Iterator[list[Tensor]]:
    """The row indices of each optimiser step, as its micro-batches: ``num_iterations`` passes over the
    B rows, each split into ``mini_batches`` steps (rows shuffled by a generator seeded from the run seed,
    step and pass), each step split into micro-batches of ``micro_batch_size`` rows."""
    for it in range(s.num_iterations):
        g = torch.Generator().manual_seed(derive_seed(s.seed, "minibatch", step, it))
        order = torch.randperm(B, generator=g) if s.mini_batches > 1 else torch.arange(B)
        for mini in torch.tensor_split(order, s.mini_batches):
            yield list(mini.split(s.micro_batch_size))


def optimizer_step(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, finite: bool,
                   max_grad_norm: float, scheduler: Any = None, world: World | None = None) -> float:
    """Clip the accumulated gradients and step, unless the loss or the norm is non-finite; zero the grads.

    Returns the gradient norm before clipping (NaN when the loss was non-finite); a non-finite return
    means the step was skipped and weights and optimiser state are untouched. With sharded gradients (FSDP2)
    the norm is that of the whole gradient: every rank's shards' squares, summed over ranks.
    """
    max_norm = max_grad_norm if max_grad_norm > 0 else float("inf")
    grad_norm = float("nan")
    if finite and world is not None and world.parallel:
        norm = global_grad_norm(params, world)
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        grad_norm = float(norm)
    elif finite:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if math.isfinite(grad_norm):
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def global_grad_norm(params: list[torch.nn.Parameter], world: World) -> Tensor:
    """‖g‖₂ of the whole gradient across ranks: each element's square counted once (a DTensor's local shard, or a
    replicated gradient on rank 0 only)."""
    local = torch.zeros((), dtype=torch.float64)
    for p in params:
        if p.grad is None:
            continue
        g = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
        if hasattr(p.grad, "to_local") or world.main:
            local += g.detach().double().pow(2).sum().cpu()
    return all_sum(local.reshape(1), world)[0].sqrt()


def optimize(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, scheduler: Any, B: int,
             schedule: Schedule, step: int, losses_of: Callable[[list[Tensor]], Iterator[Tensor]],
             times: dict[str, float] | None = None, world: World | None = None) -> dict[str, float]:
    """Every optimiser step of the schedule over B rows: back-propagate each micro-batch loss that
    ``losses_of(micro)`` yields for this rank (already divided by the step's global normaliser), then clip and
    step. A non-finite loss on any rank skips the step on every rank (it is still back-propagated, so that all
    ranks run the same collectives). Returns the means over steps of the loss summed over micro-batches and ranks
    (``loss``) and of the gradient norm (``grad_norm``), and ``skipped_steps``; adds backward and optimiser
    seconds to ``times``."""
    times, world = (times if times is not None else {}), world or World()
    step_losses, norms = [], []
    for micro in update_schedule(B, schedule, step):
        total = 0.0
        for loss in losses_of(micro):
            t = time.perf_counter()
            (loss * world.size if world.parallel else loss).backward()   # DDP/FSDP2 average: × size makes a sum
            times["backward"] = times.get("backward", 0.0) + time.perf_counter() - t
            total += float(loss.detach())
        total = float(all_sum(torch.tensor([total], dtype=torch.float64), world))
        t = time.perf_counter()
        finite = all_true(math.isfinite(total), world)
        norms.append(optimizer_step(params, optimizer, finite, schedule.max_grad_norm, scheduler, world))
        times["optim"] = times.get("optim", 0.0) + time.perf_counter() - t
        step_losses.append(total if finite else float("nan"))
    return {"loss": sum(step_losses) / len(step_losses), "grad_norm": sum(norms) / len(norms),
            "skipped_steps": float(sum(not math.isfinite(n) for n in norms))}


# ----------------------------------------------------------------------------------------------
# Log-probs of a batch's rows
# ----------------------------------------------------------------------------------------------

def row_logprobs(policy: Policy, ro: Rollout, rows: Tensor, *, entropy: bool = False,
                 module: torch.nn.Module | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
    """(log-probs [b, T], entropy [b, T] or None, loss_mask [b, T]) of the given rows through ``module`` (default
    the policy's), T their longest length."""
    lengths = ro.lengths[rows]
    T = max(int(lengths.max()), 1)
    device = next(policy.model.parameters()).device
    with policy.autocast():
        lp, ent = (module or policy.module)([ro.prompt_ids[i] for i in rows.tolist()],
                                            ro.completion_ids[rows, :T].to(device), lengths.to(device),
                                            chunk_size=policy.chunk_size, with_entropy=entropy,
                                            share_prompts=policy.share_prompts, pack=policy.pack)
    return lp, ent, ro.loss_mask[rows, :T].to(device)


def row_lengths(ro: Rollout) -> Tensor:
    """Long[B]: each row's prompt + completion tokens (what a token budget counts)."""
    return torch.tensor([len(p) for p in ro.prompt_ids], dtype=torch.long) + ro.lengths.cpu()


@torch.no_grad()
def frozen_logprobs(policy: Policy, ro: Rollout, budget: Budget | int, reference: Reference | None = None
                    ) -> Tensor:
    """Log-probs [B, T] of every row without grad, of the policy or of ``reference`` (under its context); 0 past each
    row's length. Across ranks each computes its share of the rows and the shares are summed."""
    B, T = ro.completion_ids.shape
    module, context = (reference.module, reference.context) if reference is not None else (policy.module,
                                                                                           nullcontext)
    out: Tensor | None = None
    with context():
        for mb in micro_batches(torch.arange(B), budget, policy.world, lengths=row_lengths(ro)):
            lp, _, _ = row_logprobs(policy, ro, mb if mb is not None else torch.arange(1), module=module)
            out = torch.zeros(B, T, dtype=lp.dtype, device=lp.device) if out is None else out
            if mb is not None:
                out[mb, :lp.shape[1]] = lp
    return all_sum(out, policy.world)


def gather_rows(dense: Tensor | None, rows: Tensor, T: int) -> Tensor | None:
    """[len(rows), T] of a [B, T'] tensor's rows (cut or zero-padded to T); None stays None."""
    if dense is None:
        return None
    x = dense[rows.to(dense.device), :T]
    return torch.nn.functional.pad(x, (0, T - x.shape[1])) if x.shape[1] < T else x


def behavior_logprobs(ro: Rollout, algo: Algorithm) -> Tensor | None:
    """The sampler's log-probs [B, T] when the algorithm uses them (``sampler_logprobs``); None otherwise.
    Missing ones are an error naming the cause."""
    if not algo.sampler_logprobs:
        return None
    if ro.behavior_logprobs is None:
        why = f"loss {algo.loss.name!r}" if algo.loss.needs_behavior_logprobs else \
            f"algo.old_logprobs=behavior (loss {algo.loss.name!r})"
        raise ValueError(f"{why} needs the sampler's behaviour log-probs, but the rollout has none: sample with "
                         "SamplingParams(logprobs=True)")
    return ro.behavior_logprobs


def step_group_tokens(batch: Batch, rows: Tensor) -> Tensor:
    """Float64[len(rows)]: each of an optimiser step's rows' group token count over the whole step
    (``group_token_counts``); the batch is prompt-major, G = B / P rows per prompt."""
    return losses.group_token_counts(batch.rollout.loss_mask[rows], rows // group_size(batch))


def group_size(batch: Batch) -> int:
    B, P = batch.rollout.lengths.shape[0], len(batch.problems)
    if P == 0 or B % P:
        raise ValueError(f"update_policy: {B} rows do not split into groups of the batch's {P} prompts")
    return B // P


# ----------------------------------------------------------------------------------------------
# The policy update
# ----------------------------------------------------------------------------------------------

@dataclass
class _Frozen:
    """What the update reads besides the current policy: π_old, π_ref ([B, T] or None), π_b, the schedule; and
    what it accumulates (statistics, seconds)."""

    schedule: Schedule
    old: Tensor | None = None
    ref: Tensor | None = None
    behavior: Tensor | None = None
    meter: TokenMeans = field(default_factory=TokenMeans)
    times: dict[str, float] = field(default_factory=dict)


def update_policy(policy: Policy, batch: Batch, algo: Algorithm, schedule: Schedule, *, step: int
                  ) -> dict[str, float]:
    """Train on one batch; returns loss/, policy/, loss_stats/, train/ and perf/ metrics (means over steps)."""
    ro, t0 = batch.rollout, time.perf_counter()
    mbs = schedule.budget
    wants_ref = policy.reference is not None and (algo.kl_coef > 0 or policy.log_ref_kl)
    f = _Frozen(schedule, old=frozen_logprobs(policy, ro, mbs) if algo.needs_frozen_old(schedule.updates) else None,
                ref=frozen_logprobs(policy, ro, mbs, policy.reference) if wants_ref else None,
                behavior=behavior_logprobs(ro, algo))
    f.times["frozen"] = time.perf_counter() - t0 if f.old is not None or f.ref is not None else 0.0
    policy.model.train()
    params = [p for group in policy.optimizer.param_groups for p in group["params"]]   # FSDP2: the sharded ones
    out = optimize(params, policy.optimizer, policy.scheduler, ro.lengths.shape[0], schedule, step,
                   partial(_micro_losses, policy, batch, algo, f), f.times, policy.world)
    metrics = f.meter.means(policy.world)
    if metrics.get("policy/nll_pos", 0) > 0 and "policy/nll_neg" in metrics:
        metrics["policy/nll_neg_over_pos"] = metrics["policy/nll_neg"] / metrics["policy/nll_pos"]
    metrics.update({"loss/policy": out["loss"], "train/grad_norm": out["grad_norm"],
                    "train/skipped_steps": out["skipped_steps"], "train/lr": policy.optimizer.param_groups[0]["lr"]})
    metrics.update({f"perf/{k}_s": v for k, v in f.times.items()})
    return metrics


def _micro_losses(policy: Policy, batch: Batch, algo: Algorithm, f: _Frozen, micro: list[Tensor]
                  ) -> Iterator[Tensor]:
    """This rank's micro-batch losses of one optimiser step (``micro``: the step's micro-batches over all ranks),
    each divided by the step's global normaliser; an empty micro-batch (padding) yields a row's loss × 0, and
    one whose log-probs are not finite yields NaN (the step is then skipped on every rank)."""
    ro, rows = batch.rollout, torch.cat(micro)
    tokens = step_group_tokens(batch, rows)
    norm = losses.loss_normalizer(ro.loss_mask[rows], algo.aggregation, max_tokens=algo.max_tokens,
                                  group_tokens=tokens)
    tokens_of = dict(zip(rows.tolist(), tokens.tolist()))
    for mb in micro_batches(rows, f.schedule.budget, policy.world, group_size(batch), row_lengths(ro)):
        t = time.perf_counter()
        padding, mb = mb is None, rows[:1] if mb is None else mb
        lp, ent, mask = row_logprobs(policy, ro, mb, entropy=True)
        if not torch.isfinite(lp.detach()[mask]).all():
            yield lp.sum() * float("nan")
            continue
        T = mask.shape[1]
        behavior = f.behavior[mb, :T].to(lp.device, lp.dtype) if f.behavior is not None else None
        x = algo.loss_inputs(lp, batch.advantages[mb, :T].to(lp.device), mask, old=gather_rows(f.old, mb, T),
                             behavior=behavior, ref=gather_rows(f.ref, mb, T))
        per_token, stats = algo.loss.fn(x, **algo.loss_kwargs)
        kl_tok = algo.kl(lp, x.ref_logprobs, loss_mask=mask) if x.ref_logprobs is not None else None
        if kl_tok is not None and algo.kl_coef > 0:
            per_token = per_token + algo.kl_coef * kl_tok
        loss = losses.aggregate(per_token, mask, algo.aggregation, norm,
                                group_tokens=torch.tensor([tokens_of[r] for r in mb.tolist()], dtype=torch.float64))
        f.times["forward"] = f.times.get("forward", 0.0) + time.perf_counter() - t
        if torch.isfinite(loss) and not padding:
            _record(f.meter, x, ent, stats, kl_tok, behavior)
        yield loss * 0.0 if padding else loss


def _record(meter: TokenMeans, x: losses.PolicyLossInputs, entropy: Tensor, stats: dict[str, Tensor],
            kl_tok: Tensor | None, behavior: Tensor | None) -> None:
    """One micro-batch's statistics: the loss's own (``loss_stats/``) and the policy diagnostics."""
    mask = x.loss_mask
    for key, value in stats.items():
        meter.add(f"loss_stats/{key}", value, mask)
    meter.add("policy/entropy", entropy, mask)
    if kl_tok is not None:
        meter.add("policy/kl", kl_tok, mask)
    if behavior is not None:  # how far the policy has moved from the one that sampled (staleness drift):
        # tokens come from π_b, so k3 with π_b as the sampling policy is unbiased for KL(π_b ‖ π_θ)
        meter.add("policy/behavior_kl", kl_estimators.k3(behavior, x.logprobs.detach(), loss_mask=mask), mask)
    nll, sign = losses.nll_by_advantage_sign(x)  # the scale-imbalance measure ℓ̄_neg/ℓ̄_pos (arXiv 2606.03070)
    meter.add("policy/nll_pos", nll, mask & (sign > 0)[:, None])
    meter.add("policy/nll_neg", nll, mask & (sign < 0)[:, None])
