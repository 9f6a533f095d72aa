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

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    lora: bool = True
    """Train LoRA adapters (PEFT) instead of all weights."""
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    cache_dir: str | None = None
    """Where converted presets are cached (default $RLVR_CACHE or ~/.cache/rlvr)."""
    system_prompt: str | None = None
    """System message for chat templates; None keeps the template's default."""
    logprob_chunk_size: int = 1024
    """Token positions per chunk of the chunked log-softmax."""
    share_prompts: bool = True
    """Log-prob passes (training, π_old, reference) run each distinct prompt of a micro-batch through the decoder
    once and let its completions attend to its KV cache, gradients included (``logprobs.shared_prompt_hidden``);
    false runs prompt + completion per row. Same values up to float rounding."""
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
    """rg:<reasoning-gym task>, arith (synthetic, for tiny models), or a .jsonl / .parquet path."""
    size: int | None = None
    """Problems generated (rg:, arith; None = 2000) or read (files; None = all rows)."""
    eval_size: int = 100
    """Held-out problems, split off deterministically before training."""
    seed: int = 0
    task_kwargs: dict[str, Any] = field(default_factory=lambda: dict(MAIN_JOB_TASK))
    """Keyword arguments of the task generator (reasoning-gym's difficulty knobs; default: one-digit ±)."""
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    template: str = "{prompt}"
    """Prompt template (str.format over the row; {prompt} is the prompt field)."""
    verifier: str | None = "int_last"
    """Verifier name (math, int, int_last, or module:function); None: the task's default."""

    def __post_init__(self) -> None:
        _positive(self, "eval_size")
        if self.size is not None and self.size <= self.eval_size:
            raise ConfigError(f"data.size ({self.size}) must exceed data.eval_size ({self.eval_size})")


@dataclass(frozen=True)
class RolloutConfig:
    prompts_per_step: int = 8
    group_size: int = 8
    """G: samples per prompt."""
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ()
    max_batch_size: int = 64
    """Rows generated together."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and sample more prompts to refill."""
    max_refill_rounds: int = 3
    """Extra sampling rounds dynamic sampling may spend per step."""
    max_staleness: int = 1
    """Async trainer: a batch sampled with weights more than this many learner steps old is never trained on
    (dropped and counted), and generation waits rather than run further ahead (0 = synchronous)."""
    engine: str = "hf"
    """Async trainer: what samples on the rollout workers, hf (HFSampler, CPU or GPU) or vllm (VLLMSampler;
    pip install 'rlvr[vllm]', CUDA GPUs; workers get the learner's LoRA-merged full weights each version)."""
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)
    """engine=vllm: keyword arguments of VLLMSampler (gpu_memory_utilization, max_model_len, enforce_eager, ...)."""
    backend: str = "thread"
    """Async trainer: where rollout workers run, thread (in this process) or ray (actors; local or a cluster)."""
    num_workers: int = 1
    """Async trainer: rollout workers; each step's prompts are split into this many shards."""
    worker_timeout_s: float = 600.0
    """A worker that has not answered a call within this many seconds is taken as hung, replaced, and its
    prompts re-issued."""
    max_worker_restarts: int = 3
    """Restarts one generate call may spend before the run fails."""
    ray_address: str | None = None
    """backend=ray: None starts a local Ray; "auto" or host:port joins a running cluster."""
    worker_threads: int | None = None
    """backend=ray: torch threads in each rollout actor (None: Ray's default, one per reserved CPU)."""
    worker_cpus: float = 1.0
    """backend=ray: CPUs Ray reserves for each rollout actor."""

    def __post_init__(self) -> None:
        _positive(self, "prompts_per_step", "group_size", "max_new_tokens", "max_batch_size", "num_workers")
        _one_of(self, "backend", ("thread", "ray"))
        _one_of(self, "engine", ("hf", "vllm"))
        if self.max_refill_rounds < 0 or self.max_staleness < 0 or self.max_worker_restarts < 0:
            raise ConfigError("rollout.max_refill_rounds, rollout.max_staleness and rollout.max_worker_restarts "
                              f"must be >= 0, got {self.max_refill_rounds}, {self.max_staleness}, "
                              f"{self.max_worker_restarts}")
        if not self.worker_timeout_s > 0 or not self.worker_cpus > 0:
            raise ConfigError(f"rollout.worker_timeout_s and rollout.worker_cpus must be > 0, got "
                              f"{self.worker_timeout_s}, {self.worker_cpus}")


@dataclass(frozen=True)
class RewardConfig:
    format_weight: float = 0.0
    """Weight of the format reward (an extractable answer), logged as reward/format."""
    overlong_buffer: int = 0
    """DAPO overlong shaping: L_cache tokens before max_new_tokens where a penalty ramps to -1 (0 = off)."""
    overlong_penalty: float = 1.0
    """Scale of the overlong penalty."""
    num_workers: int = 2
    """Verifier worker processes (0 = in the trainer's process)."""
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
    k: int | None = None
    """max@k / pass@k order for estimators that take k (pkpo, maxpo, passk_training)."""
    loss: str = "ppo_clip"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    aggregation: str | None = None
    """Loss aggregation; None: the loss's own default."""
    kl_coef: float = 0.0
    """β of the KL penalty to the reference model (0 = no KL term, no reference forward)."""
    kl_estimator: str = "k3"
    num_iterations: int = 1
    """Passes over each batch (μ); old log-probs are then computed once per batch."""
    mini_batches: int = 1
    """Optimiser steps per pass over a batch."""
    micro_batch_size: int = 16
    """Sequences per forward/backward (gradient accumulation inside a mini-batch)."""
    old_logprobs: str = "recompute"
    """π_old of ratio losses (ppo_clip, cispo): recompute (a learner forward at the start of the step) or
    behavior (the sampler's log-probs: the ratio is taken to the behaviour policy, for stale samples).
    decoupled_ppo always recomputes π_prox and reads the behaviour log-probs itself."""
    reward_kl_coef: float = 0.0
    """β of a per-token KL penalty inside the reward, −β·(log π_old − log π_ref) at every token, for
    token-level estimators (gae); 0 = off."""

    def __post_init__(self) -> None:
        _positive(self, "num_iterations", "mini_batches", "micro_batch_size")
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
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    """Gradient clipping (0 = off); a non-finite norm skips the step."""
    warmup_steps: int = 0
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
    tensorboard: bool = True
    ref_kl: bool = False
    """Log policy/kl to the reference model when it costs no extra weights (LoRA) or is loaded anyway."""
    progress: bool = True
    """Rich progress bar."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 14
    seed: int = 0
    trainer: str = "sync"
    """sync (sample, then train, one batch per step) or async (generation overlaps training; rollout.max_staleness)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        _positive(self, "steps")
        _one_of(self, "trainer", ("sync", "async"))
        if self.rollout.engine == "vllm" and self.trainer != "async":
            raise ConfigError("rollout.engine=vllm samples on rollout workers: it needs trainer=async "
                              "(rollout.max_staleness=0 is the synchronous schedule)")


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


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "rollout": RolloutConfig, "reward": RewardConfig,
             "algo": AlgoConfig, "critic": CriticConfig, "optim": OptimConfig, "eval": EvalConfig, "log": LogConfig}


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
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key '{where}{unknown[0]}'; valid keys{' of ' + prefix if prefix else ''}: "
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
