"""Turn a TrainConfig into the objects a run needs: device, model, reference, samplers, data, optimiser."""
from __future__ import annotations

import copy
import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch

from rlvr.config import TrainConfig
from rlvr.trainer.algorithm import Algorithm
from rlvr.trainer.step import Reference
from rlvr.types import Problem, SamplingParams


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device=cuda but no CUDA device is available (use cpu or auto)")
    return torch.device(name)


def check_algorithm(cfg: TrainConfig) -> Algorithm:
    """The run's algorithm, resolved and checked against the config before anything loads (ValueError names
    the key); ``Algorithm.from_config``."""
    return Algorithm.from_config(cfg)


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


def build_reference(cfg: TrainConfig, model: torch.nn.Module, algo: Algorithm) -> Reference | None:
    """The frozen initial model: free under LoRA (adapters off); a frozen copy of the weights when the algorithm
    needs it (a KL term, KL in the reward, reference samples); else None."""
    if cfg.model.lora:
        return Reference(model, model.disable_adapter)  # free: same weights, adapters switched off
    if algo.needs_reference_model:
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return Reference(ref, nullcontext)
    return None


def reference_sampler(cfg: TrainConfig, reference: Reference, tokenizer: Any, *, own_copy: bool
                      ) -> tuple[Any, Callable[[], AbstractContextManager]]:
    """(sampler, context) for the frozen initial model's samples (AAPO): the run's reference itself when sampling
    alternates with training (sync), else a separate copy of the initial policy (async: the producer samples
    while the learner trains, so it must not share the learner's weights or its adapter switch)."""
    from rlvr.rollout import HFSampler

    if own_copy:
        return SamplerFactory(cfg)(), nullcontext  # LoRA's initial B = 0: the initial policy is the base model
    return HFSampler(reference.model, tokenizer, max_batch_size=cfg.rollout.max_batch_size), reference.context


def build_problems(cfg: TrainConfig) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out) problems of ``cfg.data``; a generated source without ``data.size`` makes its
    registered ``default_size``. Every verifier the problems name must be registered and must accept their golds
    (``check_verifiers``), checked here, before the model loads."""
    from rlvr.data import build_problems as load, sources, split_problems

    d = cfg.data
    entry, _ = sources.source(d.source)
    size = entry.default_size if d.size is None and entry.generated else d.size
    problems = load(d.source, size=size, seed=d.seed, prompt_field=d.prompt_field, answer_field=d.answer_field,
                    template=d.template, verifier=d.verifier, answer_extract=d.answer_extract, path=d.path,
                    **({"task_kwargs": d.task_kwargs} if d.task_kwargs else {}))
    check_verifiers(problems, f"data.source={d.source} with data.verifier={d.verifier}")
    check_scoring_thread(cfg, problems)
    return split_problems(problems, eval_size=d.eval_size, seed=d.seed)


def check_verifiers(problems: list[Problem], where: str) -> None:
    """Every verifier the problems name is registered and accepts their golds: each distinct (verifier, gold) is
    checked once with an empty completion, and a verifier raises ValueError only for a gold it cannot check
    (rlvr.rewards.verifiers), so ``int`` meeting a LaTeX gold fails here rather than in the reward workers."""
    from rlvr.rewards import get_verifier

    for name in dict.fromkeys(p.verifier for p in problems):
        try:
            get_verifier(name)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    seen: set[tuple[str, str]] = set()
    for p in problems:
        if (p.verifier, p.answer) in seen:
            continue
        seen.add((p.verifier, p.answer))
        try:
            get_verifier(p.verifier)("", p.answer)
        except ValueError as err:
            raise ValueError(f"{where}: verifier {p.verifier!r} cannot check the gold {p.answer!r} of problem {p.id}: "
                             f"{err} (data.verifier=null uses the source's own verifier)") from None


def check_scoring_thread(cfg: TrainConfig, problems: list[Problem]) -> None:
    """The async trainer scores its batches in the producer thread, so with ``reward.num_workers=0`` (verifiers
    in the trainer's process) a verifier that works only in a main thread (``math``: SIGALRM) would fail at the
    first batch, after the model loaded and sampled. Refuse that here, naming the way out."""
    from rlvr.rewards import verifier_spec

    if cfg.trainer != "async" or cfg.reward.num_workers > 0:
        return
    for name in dict.fromkeys(p.verifier for p in problems):
        if verifier_spec(name).main_thread:
            raise ValueError(f"data.verifier: verifier {name!r} works only in a process's main thread, and "
                             "trainer=async with reward.num_workers=0 scores in its rollout thread: set "
                             "reward.num_workers >= 1 (verifier worker processes)")


def prompt_template(cfg: TrainConfig) -> Any:
    """The run's prompt template (``rlvr.data.templates.Template``): ``data.template`` or the source's default."""
    from rlvr.data import sources, templates

    return templates.template(cfg.data.template, sources.source(cfg.data.source)[0].default_template)


def system_prompt(cfg: TrainConfig) -> str | None:
    """The system message of the run's prompts: ``model.system_prompt`` when set, else its template's."""
    return cfg.model.system_prompt if cfg.model.system_prompt is not None else prompt_template(cfg).system


def make_encoder(tokenizer: Any, system_prompt: str | None) -> Callable[[Problem], list[int]]:
    from rlvr.models import encode_prompt

    cache: dict[str, list[int]] = {}

    def encode(p: Problem) -> list[int]:
        if p.id not in cache:
            cache[p.id] = encode_prompt(tokenizer, p.prompt, system_prompt)
        return cache[p.id]
    return encode


def sampling_params(cfg: TrainConfig, algo: Algorithm) -> SamplingParams:
    """The rollout's sampling settings; the sampler returns behaviour log-probs when the algorithm uses them."""
    r = cfg.rollout
    return SamplingParams(temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens, stop=r.stop,
                          logprobs=algo.sampler_logprobs)


def worker_weights(cfg: TrainConfig, model: torch.nn.Module,
                   trainable: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """What the learner publishes to its rollout workers: the trainable parameters (HF samplers are built like
    the learner, so the names match; ``trainable`` when already gathered), or the whole LoRA-merged model for an
    engine that holds ``full_weights`` (vLLM)."""
    from rlvr.models import merged_state_dict, trainable_state_dict
    from rlvr.rollout.engines import engine

    if engine(cfg.rollout.engine).full_weights:
        return merged_state_dict(model)
    return trainable if trainable is not None else trainable_state_dict(model)


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


def build_critic(cfg: TrainConfig, device: torch.device, algo: Algorithm, world: Any = None) -> Any:
    """A ``Critic`` (value model, its optimiser, the value clip) when the algorithm ``needs_critic``; else None.

    The critic is a fresh copy of the policy's initial model with a zero-initialised scalar head
    (rlvr.value); LoRA follows ``critic.lora`` (None: as the policy), its passes ``model.share_prompts`` and
    ``model.pack_sequences`` as the policy's do. With several learner ranks it is distributed like the policy
    (``dist.wrap``) before its optimiser is made.
    """
    from rlvr.trainer import dist

    if not algo.needs_critic:
        return None
    from rlvr.models import load_model
    from rlvr.trainer.critic import Critic
    from rlvr.value import build_value_model

    m = cfg.model
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[m.dtype]
    lm, _ = load_model(m.name, dtype=dtype, device=str(device), cache_dir=m.cache_dir)
    use_lora = m.lora if cfg.critic.lora is None else cfg.critic.lora
    torch.manual_seed(cfg.seed + 1)  # the critic's LoRA initialisation, apart from the policy's
    lora = dict(rank=m.lora_rank, alpha=m.lora_alpha, dropout=m.lora_dropout,
                target_modules=m.lora_target_modules) if use_lora else None
    critic = build_value_model(lm, lora=lora, share_prompts=m.share_prompts, pack=m.pack_sequences)
    world = world or dist.World()
    module = dist.wrap(critic, critic.lm, world)
    params = [p for p in critic.parameters() if p.requires_grad]
    o = cfg.optim
    opt = torch.optim.AdamW(params, lr=cfg.critic.lr, betas=o.betas, weight_decay=o.weight_decay)
    return Critic(critic, opt, cfg.critic.value_clip if cfg.critic.value_clip > 0 else None,
                  autocast_factory(cfg, device), module=module, world=world)
