"""Turn a TrainConfig into the objects a run needs: device, model, reference, samplers, data, optimiser."""
from __future__ import annotations

import copy
import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch

from rlvr import advantages, losses
from rlvr.config import TrainConfig
from rlvr.types import Problem, SamplingParams


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device=cuda but no CUDA device is available (use cpu or auto)")
    return torch.device(name)


def check_algorithm(cfg: TrainConfig) -> None:
    """Fail before loading anything when the algorithm section names something unknown or incomplete."""
    spec = advantages.spec(cfg.algo.advantage)
    losses.spec(cfg.algo.loss)
    if cfg.algo.aggregation is not None and cfg.algo.aggregation not in losses.AGGREGATIONS:
        raise ValueError(f"algo.aggregation {cfg.algo.aggregation!r} is not one of {', '.join(losses.AGGREGATIONS)}")
    from rlvr import kl
    kl.get(cfg.algo.kl_estimator)
    if spec.takes_k and cfg.algo.k is None:
        raise ValueError(f"algo.advantage={cfg.algo.advantage} takes k: set algo.k (e.g. algo.k=4)")
    if spec.takes_k and cfg.algo.k is not None and cfg.algo.k > cfg.rollout.group_size:
        raise ValueError(f"algo.k={cfg.algo.k} exceeds rollout.group_size={cfg.rollout.group_size}")
    if not spec.takes_k and cfg.algo.k is not None:
        raise ValueError(f"algo.k is set but advantage {cfg.algo.advantage!r} does not take k")
    check_estimator_on_one_group(cfg, spec)
    loss = losses.spec(cfg.algo.loss)
    if cfg.algo.old_logprobs == "behavior" and (not loss.needs_old_logprobs or loss.needs_behavior_logprobs):
        raise ValueError(f"algo.old_logprobs=behavior applies to ratio losses that read π_old (ppo_clip, cispo); "
                         f"{cfg.algo.loss!r} " + ("reads the behaviour log-probs itself" if
                                                  loss.needs_behavior_logprobs else "has no ratio"))
    if cfg.trainer == "async" and spec.needs_values:
        raise ValueError(f"algo.advantage={cfg.algo.advantage} needs a critic, which the async trainer does not "
                         "train; use trainer=sync")
    if cfg.algo.reward_kl_coef > 0 and not spec.needs_values:
        raise ValueError(f"algo.reward_kl_coef applies to token-level estimators (those that need values, e.g. "
                         f"gae), not to {cfg.algo.advantage!r}")


def check_estimator_on_one_group(cfg: TrainConfig, spec: advantages.AdvantageSpec) -> None:
    """Call the estimator once on one group of G rewards 0, 1, 0, 1, ... with the config's k and kwargs, so that
    its own checks (k against the group size, unknown or bad kwargs) fail before the model loads."""
    G = cfg.rollout.group_size
    rewards = (torch.arange(G) % 2).to(torch.float64)[None]                 # [1, G]
    kwargs = dict(cfg.algo.advantage_kwargs)
    if spec.takes_k:
        kwargs["k"] = cfg.algo.k
    if spec.needs_reference_samples:
        kwargs["ref_rewards"] = rewards
    if spec.needs_values:
        kwargs.update(values=torch.zeros(G, 1), loss_mask=torch.ones(G, 1, dtype=torch.bool))
    try:
        spec.fn(rewards, **kwargs)
    except (ValueError, TypeError) as err:
        k = f", algo.k={cfg.algo.k}" if spec.takes_k else ""
        raise ValueError(f"algo.advantage={cfg.algo.advantage} with rollout.group_size={G}{k} and "
                         f"algo.advantage_kwargs={dict(cfg.algo.advantage_kwargs)}: {err}") from err


def load_policy(cfg: TrainConfig, device: torch.device):
    """The policy model (LoRA-wrapped when configured) and its tokenizer."""
    from rlvr.models import apply_lora, load_model

    m = cfg.model
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[m.dtype]
    model, tokenizer = load_model(m.name, dtype=dtype, device=str(device), cache_dir=m.cache_dir)
    torch.manual_seed(cfg.seed)  # LoRA's initialisation draws from the global generator
    if m.lora:
        model = apply_lora(model, rank=m.lora_rank, alpha=m.lora_alpha, dropout=m.lora_dropout,
                           target_modules=m.lora_target_modules)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    if m.gradient_checkpointing:  # non-reentrant: works with frozen embeddings (LoRA) and with rlvr.attention
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


@dataclass
class Reference:
    """The frozen initial model: the LoRA model with adapters off, or a frozen copy of the weights."""

    model: torch.nn.Module
    context: Callable[[], AbstractContextManager]


def build_reference(cfg: TrainConfig, model: torch.nn.Module) -> Reference | None:
    needs_samples = advantages.spec(cfg.algo.advantage).needs_reference_samples
    if cfg.model.lora:
        return Reference(model, model.disable_adapter)  # free: same weights, adapters switched off
    if cfg.algo.kl_coef > 0 or cfg.algo.reward_kl_coef > 0 or needs_samples:
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return Reference(ref, nullcontext)
    return None


def build_problems(cfg: TrainConfig) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out) problems of ``cfg.data``; a generated source without ``data.size`` makes its
    registered ``default_size``. Every verifier the problems name must be registered (checked here, before
    the model loads)."""
    from rlvr.data import build_problems as load, sources, split_problems
    from rlvr.rewards import get_verifier

    d = cfg.data
    entry, _ = sources.source(d.source)
    size = entry.default_size if d.size is None and entry.generated else d.size
    problems = load(d.source, size=size, seed=d.seed, prompt_field=d.prompt_field, answer_field=d.answer_field,
                    template=d.template, verifier=d.verifier, **({"task_kwargs": d.task_kwargs} if d.task_kwargs
                                                                 else {}))
    for name in dict.fromkeys(p.verifier for p in problems):
        try:
            get_verifier(name)
        except ValueError as err:
            raise ValueError(f"data.source={d.source} with data.verifier={d.verifier}: {err}") from None
    return split_problems(problems, eval_size=d.eval_size, seed=d.seed)


def make_encoder(tokenizer: Any, system_prompt: str | None) -> Callable[[Problem], list[int]]:
    from rlvr.models import encode_prompt

    cache: dict[str, list[int]] = {}

    def encode(p: Problem) -> list[int]:
        if p.id not in cache:
            cache[p.id] = encode_prompt(tokenizer, p.prompt, system_prompt)
        return cache[p.id]
    return encode


def needs_behavior_logprobs(cfg: TrainConfig) -> bool:
    """The loss reads the sampler's log-probs (decoupled_ppo) or takes its ratio to them (old_logprobs=behavior)."""
    loss = losses.spec(cfg.algo.loss)
    return loss.needs_behavior_logprobs or (loss.needs_old_logprobs and cfg.algo.old_logprobs == "behavior")


def sampling_params(cfg: TrainConfig) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens, stop=r.stop,
                          logprobs=needs_behavior_logprobs(cfg))


def worker_weights(cfg: TrainConfig, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What the learner publishes to its rollout workers: the trainable parameters (HF samplers are built like
    the learner, so the names match), or the whole LoRA-merged model for an engine that holds ``full_weights``
    (vLLM)."""
    from rlvr.models import merged_state_dict, trainable_state_dict
    from rlvr.rollout.engines import engine

    return merged_state_dict(model) if engine(cfg.rollout.engine).full_weights else trainable_state_dict(model)


@dataclass(frozen=True)
class SamplerFactory:
    """Builds a rollout worker's sampler from the config alone (so it can be shipped to a Ray actor): the
    registered engine ``rollout.engine`` (rlvr.rollout.engines), given a loader of the policy's initial weights
    (the same preset and LoRA initialisation as ``load_policy``, on model.device). Workers then take the
    learner's weights by version (``load_weights``, fed by ``worker_weights``)."""

    cfg: TrainConfig

    def __call__(self) -> Any:
        from rlvr.rollout.engines import engine

        def policy() -> tuple[Any, Any]:  # called by engines that sample with the HF model itself
            return load_policy(self.cfg, resolve_device(self.cfg.model.device))

        return engine(self.cfg.rollout.engine).fn(self.cfg, policy)


def eval_params(cfg: TrainConfig) -> SamplingParams:
    r, e = cfg.rollout, cfg.eval
    return SamplingParams(temperature=e.temperature, top_p=1.0 if e.temperature == 0 else r.top_p,
                          max_new_tokens=e.max_new_tokens or r.max_new_tokens, stop=r.stop)


def lr_lambda(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base learning rate after ``step`` optimiser steps."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module):
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    total = cfg.steps * cfg.algo.num_iterations * cfg.algo.mini_batches
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_lambda, warmup=o.warmup_steps, total=total,
                                                           schedule=o.schedule))
    return opt, sched


def autocast_factory(cfg: TrainConfig, device: torch.device) -> Callable[[], AbstractContextManager]:
    if not cfg.model.autocast_bf16:
        return nullcontext
    return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)


def build_critic(cfg: TrainConfig, device: torch.device) -> tuple[Any, torch.optim.Optimizer] | None:
    """A value model and its optimiser when the estimator's registry entry ``needs_values``; else None.

    The critic is a fresh copy of the policy's initial model with a zero-initialised scalar head
    (rlvr.value); LoRA follows ``critic.lora`` (None: as the policy).
    """
    if not advantages.spec(cfg.algo.advantage).needs_values:
        return None
    from rlvr.models import load_model
    from rlvr.value import build_value_model

    m = cfg.model
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[m.dtype]
    lm, _ = load_model(m.name, dtype=dtype, device=str(device), cache_dir=m.cache_dir)
    use_lora = m.lora if cfg.critic.lora is None else cfg.critic.lora
    torch.manual_seed(cfg.seed + 1)  # the critic's LoRA initialisation, apart from the policy's
    lora = dict(rank=m.lora_rank, alpha=m.lora_alpha, dropout=m.lora_dropout,
                target_modules=m.lora_target_modules) if use_lora else None
    critic = build_value_model(lm, lora=lora)
    params = [p for p in critic.parameters() if p.requires_grad]
    o = cfg.optim
    opt = torch.optim.AdamW(params, lr=cfg.critic.lr, betas=o.betas, weight_decay=o.weight_decay)
    return critic, opt


def make_collector(cfg: TrainConfig, stream: Any, encode: Callable[[Problem], list[int]], sampler: Any, pool: Any,
                   ref_sampler: Any, reference: Reference | None, critic: Any = None, policy: Any = None) -> Any:
    """The step's batch maker: sampling, scoring, dynamic sampling, reference samples, advantages.

    critic: the value model when the estimator needs values; policy: the trained model, for the
    KL-in-reward term (``algo.reward_kl_coef``).
    """
    from rlvr.trainer import critic as critic_lib
    from rlvr.trainer.batch import Collector, RewardSettings

    a = cfg.algo
    autocast = autocast_factory(cfg, next(policy.parameters()).device) if policy is not None else nullcontext
    values_fn = partial(critic_lib.values, critic, micro_batch_size=a.micro_batch_size, autocast=autocast) \
        if critic is not None else None
    kl_fn = partial(critic_lib.token_kl, policy, reference.context, micro_batch_size=a.micro_batch_size,
                    chunk_size=cfg.model.logprob_chunk_size, autocast=autocast,
                    share_prompts=cfg.model.share_prompts) \
        if a.reward_kl_coef > 0 and reference is not None and policy is not None else None
    r = cfg.reward
    return Collector(
        stream=stream, encode=encode, sampler=sampler, pool=pool, params=sampling_params(cfg),
        group_size=cfg.rollout.group_size, prompts_per_step=cfg.rollout.prompts_per_step,
        rewards=RewardSettings(r.format_weight, r.overlong_buffer, r.overlong_penalty),
        advantage=cfg.algo.advantage, advantage_kwargs=dict(cfg.algo.advantage_kwargs), k=cfg.algo.k,
        seed=cfg.seed, dynamic_sampling=cfg.rollout.dynamic_sampling,
        max_refill_rounds=cfg.rollout.max_refill_rounds, ref_sampler=ref_sampler,
        ref_context=reference.context if reference is not None else nullcontext, values_fn=values_fn, kl_fn=kl_fn,
        reward_kl_coef=a.reward_kl_coef)
