"""Configuration: one frozen dataclass tree, YAML files of overrides, dotted CLI overrides.

``TrainConfig()`` is the embedded default run (SmolLM2-135M-Instruct + LoRA, reasoning-gym arithmetic,
GRPO, CPU). A YAML file holds only the keys it changes, nested by section::

    algo:
      advantage: maxpo
      k: 4

and the CLI adds dotted overrides on top: ``rlvr train configs/x.yaml algo.advantage=maxpo algo.k=4``.
Values in overrides are parsed as YAML scalars (``4`` is an int, ``true`` a bool, ``[a, b]`` a list).
Unknown keys and values of the wrong type are errors that name the key. The resolved config is
written to the run directory as ``config.yaml`` and is enough to reproduce or resume the run.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "smollm2-135m-instruct"
    """Preset (smollm2-135m-instruct, tiny-arith, tiny-random), local directory or hub id."""
    device: str = "cpu"
    """cpu, cuda or auto (cuda when available)."""
    dtype: str = "float32"
    """Weight dtype: float32 or bfloat16."""
    autocast_bf16: bool = False
    """Run forward passes under bf16 autocast (GPU); log-prob heads stay in fp32."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of storing them (non-reentrant): less memory, about
    one extra forward of time."""
    lora: bool = True
    """Train LoRA adapters (PEFT) instead of all weights."""
    lora_rank: int = 16
    """r: rank of each LoRA adapter (A is r × d_in, B is d_out × r)."""
    lora_alpha: int = 32
    """α: the adapter's update B·A is scaled by α / r."""
    lora_dropout: float = 0.0
    """Dropout on the adapters' input, in [0, 1) (0 = none)."""
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Names of the linear layers that get adapters (matched against module-name suffixes)."""
    cache_dir: str | None = None
    """Where converted presets are cached (default $RLVR_CACHE or ~/.cache/rlvr)."""
    system_prompt: str | None = None
    """System message for chat templates; None keeps the template's default."""
    logprob_chunk_size: int = 1024
    """Token positions per chunk of the chunked log-softmax."""
    share_prompts: bool = True
    """Log-prob passes (training, π_old, reference) and the critic's value passes run each distinct prompt of a
    micro-batch through the decoder once and let its completions attend to its KV cache, gradients included
    (``logprobs.shared_prompt_hidden``); false runs prompt + completion per row. Same values up to float
    rounding."""
    pack_sequences: bool = False
    """Padding-free log-prob passes (training, π_old, reference) and value passes (the critic): a micro-batch's
    sequences share packed rows (of at most the longest sequence's length), position ids restarting per sequence
    and attention confined to each (``logprobs.packed_hidden`` / ``packed_shared_hidden``; flash attention's
    varlen kernel on a GPU); a token budget (``algo.max_tokens_per_micro_batch``) then counts no padding. Same
    values up to float rounding."""
    threads: int | None = None
    """torch CPU threads (None: torch's default; the async trainer with thread workers then takes half the
    cores, so that generation and training each run on their own half)."""

    def __post_init__(self) -> None:
        _one_of(self, "device", ("cpu", "cuda", "auto"))
        _one_of(self, "dtype", ("float32", "bfloat16"))
        _positive(self, "lora_rank", "lora_alpha", "logprob_chunk_size")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"model.lora_dropout must be in [0, 1), got {self.lora_dropout}")


# The main job's task: "Calculate 7 + 38." (two non-negative terms of one or two digits, addition),
# easy enough that SmolLM2-135M is sometimes right, so GRPO has a signal from the first step.
MAIN_JOB_TASK = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2, "operators": ["+"],
                 "allow_parentheses": False, "allow_negation": False}


@dataclass(frozen=True)
class DataConfig:
    source: str = "rg:basic_arithmetic"
    """A registered data source (rlvr.data.sources): rg:<reasoning-gym task>, arith (synthetic, for tiny models),
    champ, a .jsonl / .parquet path, hf:<repo>[:<config>][@<split>] (a Hugging Face dataset), a benchmark preset
    (math500, aime24, amc23, minerva, olympiadbench, gsm8k, gsm8k_train, math_train, math_l35), or the import path
    module:function of a registered loader."""
    size: int | None = None
    """Problems generated (generated sources; None = the source's default_size, 2000 for rg: and arith) or read
    (the others; None = all of them)."""
    eval_size: int = 100
    """Held-out problems, split off deterministically before training."""
    seed: int = 0
    """Seed of problem generation (generated sources) and of the train / held-out split; apart from the run seed."""
    task_kwargs: dict[str, Any] = field(default_factory=lambda: dict(MAIN_JOB_TASK))
    """Options of sources that take them: reasoning-gym's difficulty knobs, arith's ArithSpec knobs, champ's
    category (default: the main job's two-term addition of one- or two-digit numbers)."""
    prompt_field: str = "prompt"
    """Row field holding the prompt (sources with row fields: files, hf:)."""
    answer_field: str = "answer"
    """Row field holding the gold answer (sources with row fields: files, hf:)."""
    answer_extract: str | None = None
    """How the gold is found in the answer field (sources with row fields): boxed (the last \\boxed{} of a solution),
    hash (after GSM8K's ####), a registered name or module:function (rlvr.data.gold); None: the field is the gold."""
    path: str | None = None
    """Local copy of a hub dataset (hf:, presets): a folder saved by datasets.save_to_disk or a data file; None:
    $RLVR_DATA_DIR/<name> when it exists, else the datasets cache or the hub (rlvr.data.hub)."""
    template: str | None = None
    """Prompt template (rlvr.data.templates): plain, boxed, qwen_math, r1, or a str.format string over the row
    ({prompt} is the prompt field); None: the source's default (boxed for the benchmark presets), else plain."""
    verifier: str | None = "int_last"
    """Verifier for every problem (math, int, int_last, a registered name, or module:function); None: the
    source's default."""

    def __post_init__(self) -> None:
        _positive(self, "eval_size")
        if self.size is not None and self.size <= self.eval_size:
            raise ConfigError(f"data.size ({self.size}) must exceed data.eval_size ({self.eval_size})")


@dataclass(frozen=True)
class VLLMConfig:
    """Settings read only by ``rollout.engine=vllm`` (rlvr.rollout.vllm.VLLMSampler; defaults are its own)."""

    gpu_memory_utilization: float = 0.5
    """Fraction of each GPU's memory vLLM may take for weights and KV cache, in (0, 1]."""
    max_model_len: int | None = None
    """Longest prompt + completion in tokens the engine plans for (None: the model's own limit)."""
    enforce_eager: bool = False
    """Run without CUDA graphs (starts faster, samples slower)."""
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """Any other ``vllm.LLM`` argument (seed, tensor_parallel_size, ...)."""

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"rollout.vllm.gpu_memory_utilization must be in (0, 1], got "
                              f"{self.gpu_memory_utilization}")
        if self.max_model_len is not None:
            _positive(self, "max_model_len")


@dataclass(frozen=True)
class RayConfig:
    """Settings read only by ``rollout.backend=ray`` (rlvr.rollout.ray_backend.RayBackend)."""

    address: str | None = None
    """None starts a local Ray; "auto" or host:port joins a running cluster, ray://host:10001 through its client."""
    cpus_per_worker: float = 1.0
    """CPUs Ray reserves for each rollout actor (> 0)."""
    threads_per_worker: int | None = None
    """torch threads in each rollout actor (None: Ray's default, one per reserved CPU)."""

    def __post_init__(self) -> None:
        _positive(self, "cpus_per_worker")
        if self.threads_per_worker is not None:
            _positive(self, "threads_per_worker")


@dataclass(frozen=True)
class RolloutConfig:
    prompts_per_step: int = 8
    """P: prompts sampled per training step (each gets group_size completions)."""
    group_size: int = 8
    """G: samples per prompt."""
    temperature: float = 0.7
    """Sampling temperature of training rollouts (0 = greedy)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p, in (0, 1] (1 = off)."""
    max_new_tokens: int = 32
    """Most tokens a completion may have; a longer one is cut (finish reason "length")."""
    stop: tuple[str, ...] = ()
    """Stop strings: a completion ends with the token that completes one (kept in the completion)."""
    max_batch_size: int = 64
    """Rows the HF sampler generates together."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and sample more prompts to refill."""
    max_refill_rounds: int = 3
    """Extra sampling rounds dynamic sampling may spend per step."""
    max_staleness: int = 1
    """Async trainer: a batch sampled with weights more than this many learner steps old is never trained on
    (dropped and counted), and generation waits rather than run further ahead (0 = synchronous)."""
    engine: str = "hf"
    """Async trainer: what samples on the rollout workers, a registered engine (rlvr.rollout.engines) or its
    module:function: hf (HFSampler, CPU or GPU) or vllm (VLLMSampler, settings in rollout.vllm; pip install
    'rlvr[vllm]', CUDA GPUs; workers get the learner's LoRA-merged full weights each version)."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """engine=vllm: the vLLM engine's settings."""
    backend: str = "thread"
    """Async trainer: where rollout workers run, a registered backend (rlvr.rollout.backends) or its
    module:function: thread (in this process) or ray (actors; local or a cluster; settings in rollout.ray)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """backend=ray: where the Ray actors run and how large they are."""
    num_workers: int = 1
    """Async trainer: rollout workers; each step's prompts are split into this many shards."""
    worker_timeout_s: float = 600.0
    """A worker that has not answered a call within this many seconds is taken as hung, replaced, and its
    prompts re-issued."""
    max_worker_restarts: int = 3
    """Restarts one generate call may spend before the run fails."""
    weight_sync: str = "batch"
    """Async trainer: when rollout workers take newly published weights: batch (before their next generate call)
    or token (in flight: between two decode steps of the call in progress; each token records the version that
    sampled it, Rollout.token_versions, and a sample's staleness is its oldest token's). Engines with
    in_flight=True only (hf)."""

    def __post_init__(self) -> None:
        _positive(self, "prompts_per_step", "group_size", "max_new_tokens", "max_batch_size", "num_workers",
                  "worker_timeout_s")
        from rlvr.rollout import backends, engines  # light: registries only, no torch

        _registered(self, "engine", engines.engine)
        _registered(self, "backend", backends.backend)
        _one_of(self, "weight_sync", ("batch", "token"))
        if self.max_refill_rounds < 0 or self.max_staleness < 0 or self.max_worker_restarts < 0:
            raise ConfigError("rollout.max_refill_rounds, rollout.max_staleness and rollout.max_worker_restarts "
                              f"must be >= 0, got {self.max_refill_rounds}, {self.max_staleness}, "
                              f"{self.max_worker_restarts}")


@dataclass(frozen=True)
class RewardConfig:
    format_weight: float = 0.0
    """Weight of the format reward (an extractable answer), logged as reward/format."""
    overlong_buffer: int = 0
    """DAPO overlong shaping: L_cache tokens before max_new_tokens where a penalty ramps to -1 (0 = off)."""
    overlong_penalty: float = 1.0
    """Scale of the overlong penalty."""
    num_workers: int = 2
    """Verifier worker processes (0 = in the trainer's process; refused with trainer=async for a verifier that
    needs a main thread, such as math, because the async trainer scores in its rollout thread)."""
    timeout_s: float = 5.0
    """Per-completion verification timeout; a timeout scores 0."""

    def __post_init__(self) -> None:
        if self.overlong_buffer < 0 or self.num_workers < 0 or not self.timeout_s > 0:
            raise ConfigError("reward.overlong_buffer and reward.num_workers must be >= 0 and reward.timeout_s > 0")


@dataclass(frozen=True)
class AlgoConfig:
    advantage: str = "grpo"
    """Advantage estimator (rlvr list shows them) or module:function."""
    advantage_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the estimator (e.g. {scale_by_std: false} for grpo, {baseline: loo} for pkpo)."""
    k: int | None = None
    """max@k / pass@k order for estimators that take k (pkpo, maxpo, passk_training)."""
    loss: str = "ppo_clip"
    """Policy loss (rlvr list shows them) or module:function."""
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the loss (e.g. {clip_eps_high: 0.28} for ppo_clip)."""
    aggregation: str | None = None
    """Loss aggregation; None: the loss's own default."""
    kl_coef: float = 0.0
    """β of the KL penalty to the reference model (0 = no KL term, no reference forward)."""
    kl_estimator: str = "k3"
    """Per-token estimator of KL(π_θ ‖ π_ref) for kl_coef and reward_kl_coef: k1, k2 or k3 (rlvr.kl)."""
    num_iterations: int = 1
    """Passes over each batch (μ); old log-probs are then computed once per batch."""
    mini_batches: int = 1
    """Optimiser steps per pass over a batch."""
    micro_batch_size: int = 16
    """Sequences per forward/backward (gradient accumulation inside a mini-batch)."""
    max_tokens_per_micro_batch: int | None = None
    """Token budget per forward/backward instead of micro_batch_size rows: prompt + completion tokens of a
    micro-batch, padding counted; rows of similar length are packed together (rlvr.trainer.microbatch); None = by
    rows. The gradient is the same either way (one normaliser per optimiser step)."""
    old_logprobs: str = "recompute"
    """π_old of ratio losses (ppo_clip, cispo): recompute (a learner forward at the start of the step) or
    behavior (the sampler's log-probs: the ratio is taken to the behaviour policy, for stale samples).
    decoupled_ppo always recomputes π_prox and reads the behaviour log-probs itself."""
    reward_kl_coef: float = 0.0
    """β of a per-token KL penalty inside the reward, −β·(log π_old − log π_ref) at every token, for
    token-level estimators (gae); 0 = off."""

    def __post_init__(self) -> None:
        _positive(self, "num_iterations", "mini_batches", "micro_batch_size")
        if self.max_tokens_per_micro_batch is not None:
            _positive(self, "max_tokens_per_micro_batch")
        if self.kl_coef < 0:
            raise ConfigError(f"algo.kl_coef must be >= 0, got {self.kl_coef}")
        _one_of(self, "old_logprobs", ("recompute", "behavior"))
        if self.reward_kl_coef < 0:
            raise ConfigError(f"algo.reward_kl_coef must be >= 0, got {self.reward_kl_coef}")
        if self.k is not None and self.k < 1:
            raise ConfigError(f"algo.k must be >= 1, got {self.k}")


@dataclass(frozen=True)
class CriticConfig:
    """The value model, built only for estimators that need values (gae); see rlvr.value."""

    lr: float = 1e-3
    """The critic's own AdamW learning rate, constant (no warmup, no schedule); betas and weight decay as optim."""
    value_clip: float = 0.5
    """ε_v of the clipped value loss (0 = no clipping)."""
    lora: bool | None = None
    """Train LoRA adapters on the critic's backbone (None: as model.lora); the head is always trained."""

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.value_clip < 0:
            raise ConfigError(f"critic: need lr > 0 and value_clip >= 0, got lr={self.lr}, "
                              f"value_clip={self.value_clip}")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-4
    """AdamW learning rate of the policy (peak, after warmup)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (0 = none)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (β1, β2)."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 = off); a non-finite norm skips the step."""
    warmup_steps: int = 0
    """Optimiser steps over which the learning rate rises linearly to lr (0 = no warmup)."""
    schedule: str = "constant"
    """constant or cosine (to 10% of lr at the last step)."""

    def __post_init__(self) -> None:
        _one_of(self, "schedule", ("constant", "cosine"))
        if not self.lr > 0 or self.weight_decay < 0 or self.max_grad_norm < 0 or self.warmup_steps < 0:
            raise ConfigError("optim: need lr > 0 and weight_decay, max_grad_norm, warmup_steps >= 0")


@dataclass(frozen=True)
class EvalConfig:
    every: int = 0
    """Evaluate every N steps as well (0: only at the start and the end)."""
    temperature: float = 0.0
    """0 = greedy."""
    n: int = 1
    """Samples per held-out problem; n > 1 (with temperature > 0) adds pass@k and maj@k for k = 1, 2, 4, .., n."""
    max_new_tokens: int | None = None
    """None: rollout.max_new_tokens."""
    at_start: bool = True
    """Also evaluate before the first step (the baseline the end-of-run accuracy is compared with)."""

    def __post_init__(self) -> None:
        _positive(self, "n")
        if self.every < 0 or self.temperature < 0:
            raise ConfigError(f"eval: need every >= 0 and temperature >= 0, got every={self.every}, "
                              f"temperature={self.temperature}")
        if self.n > 1 and self.temperature == 0:
            raise ConfigError(f"eval.n={self.n} samples per problem need eval.temperature > 0 (greedy samples "
                              "are all the same)")


@dataclass(frozen=True)
class LogConfig:
    run_dir: str | None = None
    """Default runs/<time>-<model>-<advantage>."""
    completions_every: int = 5
    """Write sampled completions every N steps (0 = never)."""
    checkpoint_every: int = 0
    """Checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk, the newest ones (0 = keep all)."""
    tensorboard: bool = True
    """Also write TensorBoard event files (metrics.jsonl is always written)."""
    ref_kl: bool = False
    """Log policy/kl to the reference model when it costs no extra weights (LoRA) or is loaded anyway."""
    progress: bool = True
    """Rich progress bar."""
    wandb: bool = False
    """Also log metrics to Weights & Biases (pip install 'rlvr[wandb]'; WANDB_MODE=offline keeps it on disk; rank 0)."""
    wandb_project: str = "rlvr"
    """W&B project of the run."""
    wandb_name: str | None = None
    """W&B run name (None: the run directory's name)."""


@dataclass(frozen=True)
class DistConfig:
    world_size: int = 1
    """Learner ranks: rlvr train starts this many on this machine through torch.distributed.run (1 = one process).
    Under a launcher of your own (torchrun --nnodes ... -m rlvr train ...) its WORLD_SIZE rules and this stays 1."""
    strategy: str = "fsdp2"
    """How the policy is spread over the ranks: fsdp2 (parameters, gradients and optimiser state sharded) or ddp
    (replicated, gradients all-reduced)."""

    def __post_init__(self) -> None:
        _positive(self, "world_size")
        _one_of(self, "strategy", ("fsdp2", "ddp"))


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 14
    """Training steps: each samples prompts_per_step × group_size completions and updates the policy
    (num_iterations × mini_batches optimiser steps)."""
    seed: int = 0
    """Run seed: LoRA initialisation, prompt order, sampling (every seed is derived from it and the step)."""
    trainer: str = "sync"
    """sync (sample, then train, one batch per step) or async (generation overlaps training; rollout.max_staleness)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy model: preset, dtype, device, LoRA."""
    data: DataConfig = field(default_factory=DataConfig)
    """The problems: source, size, held-out split, prompt template, verifier."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Sampling: group size, temperature, token budget; the async trainer's workers, engine and backend."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward shaping and the verifier worker processes."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """The algorithm: advantage estimator, policy loss, aggregation, KL, update schedule."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """The value model, for estimators that need values (gae)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """The policy's AdamW optimiser and learning-rate schedule."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation during the run."""
    log: LogConfig = field(default_factory=LogConfig)
    """Run directory, logs, completions, checkpoints."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Data-parallel learner ranks (torch.distributed: gloo on CPU, NCCL on CUDA)."""

    def __post_init__(self) -> None:
        _positive(self, "steps")
        _one_of(self, "trainer", ("sync", "async"))
        from rlvr.rollout.engines import engine

        if engine(self.rollout.engine).async_only and self.trainer != "async":
            raise ConfigError(f"rollout.engine={self.rollout.engine} samples on rollout workers: it needs "
                              "trainer=async (rollout.max_staleness=0 is the synchronous schedule)")
        if self.rollout.weight_sync == "token" and self.trainer != "async":
            raise ConfigError("rollout.weight_sync=token updates the weights of rollout workers while they sample: "
                              "it needs trainer=async (the sync trainer samples between updates)")
        if self.rollout.weight_sync == "token" and not engine(self.rollout.engine).in_flight:
            raise ConfigError(f"rollout.weight_sync=token: the {self.rollout.engine} engine cannot take new weights "
                              "between decode steps (rlvr.rollout.engines: in_flight=False); use "
                              "rollout.weight_sync=batch or rollout.engine=hf")


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------

def _section(obj: object) -> str:
    names = {cls: name for name, cls in _SECTIONS.items()}
    return names.get(type(obj), "")


def _key(obj: object, name: str) -> str:
    sec = _section(obj)
    return f"{sec}.{name}" if sec else name


def _one_of(obj: object, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        raise ConfigError(f"{_key(obj, name)} must be one of {', '.join(allowed)}, got {value!r}")


def _positive(obj: object, *names: str) -> None:
    for name in names:
        if not getattr(obj, name) > 0:
            raise ConfigError(f"{_key(obj, name)} must be > 0, got {getattr(obj, name)!r}")


def _registered(obj: object, name: str, lookup: Callable[[str], Any]) -> None:
    """The value names a registry entry (``lookup``: a registered name or the import path of a registered
    function); the registry's error, which lists the valid names, is prefixed with the key."""
    try:
        lookup(getattr(obj, name))
    except ValueError as err:
        raise ConfigError(f"{_key(obj, name)}: {err}") from None


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "rollout": RolloutConfig, "rollout.vllm": VLLMConfig,
             "rollout.ray": RayConfig, "reward": RewardConfig, "algo": AlgoConfig, "critic": CriticConfig,
             "optim": OptimConfig, "eval": EvalConfig, "log": LogConfig, "dist": DistConfig}

RENAMED = {"rollout.vllm_kwargs": "rollout.vllm.engine_kwargs (or rollout.vllm.gpu_memory_utilization, "
                                  "rollout.vllm.max_model_len, rollout.vllm.enforce_eager)",
           "rollout.ray_address": "rollout.ray.address", "rollout.worker_cpus": "rollout.ray.cpus_per_worker",
           "rollout.worker_threads": "rollout.ray.threads_per_worker"}
"""Keys that moved, old -> new: an unknown-key error for an old key names its new place."""


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstring of each field of the dataclass ``cls`` (the string literal right under the field
    in the class body), by field name; fields without one are absent."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


# ----------------------------------------------------------------------------------------------
# Typed construction from plain dicts
# ----------------------------------------------------------------------------------------------

_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp`` (lists become tuples); ConfigError names ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ConfigError(f"{key} must be a {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"config field {key}: unsupported annotation {tp!r}")


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        moved = f" (moved to {RENAMED[key]})" if key in RENAMED else ""
        raise ConfigError(f"unknown config key '{key}'{moved}; valid keys{' of ' + prefix if prefix else ''}: "
                          f"{', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML."""
    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (tuple, list)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x
    return plain(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"algo.k=4"`` -> (["algo", "k"], 4). The value is a YAML scalar or flow collection."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. algo.k=4)")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {e}") from e
    return parts, value


def _set(values: dict[str, Any], parts: list[str], value: Any) -> dict[str, Any]:
    """A copy of ``values`` with the key path ``parts`` set to ``value`` (the leaf is replaced, not merged)."""
    out = dict(values)
    head, rest = parts[0], parts[1:]
    if not rest:
        out[head] = value
    else:
        inner = out.get(head)
        out[head] = _set(inner if isinstance(inner, dict) else {}, rest, value)
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults, then the YAML file (if any), then each dotted override, validated as a whole.

    A YAML file sets whole fields: ``task_kwargs: {}`` in a file empties the mapping. A dotted override
    sets one key, also inside a mapping: ``data.task_kwargs.max_digits=2`` keeps the other knobs.
    """
    values = to_dict(TrainConfig())
    if path is not None:  # a file replaces whole fields (a kwargs mapping in a file is the full mapping)
        for key, value in load_yaml(path).items():
            section = isinstance(value, dict) and isinstance(values.get(key), dict)
            values[key] = {**values[key], **value} if section else value
    for text in overrides:
        parts, value = parse_override(text)
        values = _set(values, parts, value)
    try:
        return _build(TrainConfig, values)
    except ConfigError as e:
        where = f" (in {path})" if path is not None else ""
        raise ConfigError(f"{e}{where}") from None


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
