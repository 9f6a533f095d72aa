"""The sampler-engine registry: what ``rollout.engine`` names, and what the trainer must know about it.

An engine builds one rollout worker's sampler (the Sampler protocol plus ``load_weights(version, weights)``) from
the run's config. It is registered with its facts, in its own module::

    from rlvr.rollout import engines

    @engines.register("my_engine", full_weights=True, async_only=True)
    def my_engine(cfg, policy):
        return MySampler(cfg.model.name)

and named by its name or its import path (``rollout.engine=my_package.my_module:my_engine``). ``policy()``
loads the learner's initial model and tokenizer (the same preset, LoRA initialisation and device as the
learner), for engines that sample with the Hugging Face model itself. Nothing here imports torch or vLLM: an
engine imports what it needs when it builds a sampler, so vLLM is imported only when chosen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from rlvr.registry import Registry

if TYPE_CHECKING:
    from rlvr.config import TrainConfig

__all__ = ["Engine", "register", "engine", "names", "hf_engine", "vllm_engine"]


@dataclass(frozen=True)
class Engine:
    """A registered sampler engine and what the trainer must know about it.

    fn: ``fn(cfg: TrainConfig, policy: () -> (model, tokenizer)) -> sampler``, called once in each rollout
        worker (so it must be importable there: a module-level function).
    full_weights: workers load the learner's whole model with LoRA merged in, under its Hugging Face parameter
        names (an engine that holds full weights, e.g. vLLM), instead of the learner's trainable parameters.
    async_only: the engine samples only on rollout workers, so it needs ``trainer=async`` (the learner's own
        sampler, which the sync loop trains with and both loops evaluate with, stays HFSampler).
    in_flight: the sampler's ``generate`` takes ``refresh`` (called between decode steps, it may load newer
        weights) and then reports ``Rollout.token_versions``: what ``rollout.weight_sync=token`` needs.
    """

    name: str
    fn: Callable[..., Any]
    full_weights: bool = False
    async_only: bool = False
    in_flight: bool = False


_REGISTRY: Registry[Engine] = Registry("sampler engine", Engine, decorator="rlvr.rollout.engines.register")
register = _REGISTRY.register  # decorator: register(name, **Engine facts)
engine = _REGISTRY.entry       # engine(name or its 'module:function' path) -> Engine


def names() -> list[str]:
    """Sorted names of the registered engines."""
    return _REGISTRY.names()


@register("hf", in_flight=True)
def hf_engine(cfg: TrainConfig, policy: Callable[[], tuple[Any, Any]]) -> Any:
    """HFSampler on the learner's initial model (the same trainable parameters, so ``load_weights`` matches
    them by name); CPU or GPU."""
    from rlvr.rollout.hf import HFSampler

    model, tokenizer = policy()
    return HFSampler(model, tokenizer, max_batch_size=cfg.rollout.max_batch_size)


@register("vllm", full_weights=True, async_only=True)
def vllm_engine(cfg: TrainConfig, policy: Callable[[], tuple[Any, Any]]) -> Any:
    """VLLMSampler on the model's folder (LoRA's initial B = 0 makes the initial policy the base model), with
    ``rollout.vllm``'s settings; pip install 'rlvr[vllm]', CUDA GPUs."""
    from rlvr.models import pretrained_dir
    from rlvr.rollout import vllm as vllm_sampler

    m, v = cfg.model, cfg.rollout.vllm
    return vllm_sampler.VLLMSampler(pretrained_dir(m.name, m.cache_dir), dtype=m.dtype,
                                    gpu_memory_utilization=v.gpu_memory_utilization, max_model_len=v.max_model_len,
                                    enforce_eager=v.enforce_eager, **v.engine_kwargs)
