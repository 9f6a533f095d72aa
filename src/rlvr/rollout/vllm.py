"""VLLMSampler: the Sampler protocol over a vLLM engine, for rollouts on CUDA GPUs (optional extra ``rlvr[vllm]``).

Importing this module does not import vLLM; ``VLLMSampler(...)`` does, and raises an ImportError with the install
hint when it is missing. Everything but the constructor's engine, ``generate``'s call into it and ``load_weights``'s
RPC is a pure function of plain data (``engine_kwargs``, ``vllm_sampling_kwargs``, ``request_seed``,
``rollout_from_outputs``, ``weight_items``), tested without vLLM on objects shaped like its outputs.

What this relies on from vLLM (checked against its documentation for 0.10 and later, V1 engine):

* **Rows and seeds.** Every completion row (prompt i, sample j) is its own request (``n=1``) with the seed
  ``request_seed(seed, i, j)`` (``SamplingParams.seed`` gives a request its own generator), so a rollout is a
  function of ``seed`` and row (i, j) does not depend on n or the other prompts, as with ``HFSampler`` (whose draws
  differ: the two backends use different random streams). ``LLM.generate`` returns outputs in request order.
  Automatic prefix caching shares a prompt's KV blocks between its samples.
* **Lengths and EOS.** ``CompletionOutput.token_ids`` holds every generated token including the EOS or stop token
  that ended the row (vLLM appends a token before its stop check; ``ignore_eos`` stays False), so
  ``lengths = len(token_ids)`` counts the EOS as ``Rollout`` asks. The EOS ids are the tokenizer's plus the
  model's ``generation_config.eos_token_id`` (the set HFSampler uses), passed as ``stop_token_ids``.
* **Finish reasons.** ``finish_reason`` "stop" (EOS, stop token or stop string) -> "stop"; "length" (max_tokens or
  max_model_len) -> "length", except that a row whose last token is an EOS id is "stop": vLLM checks the length cap
  before EOS, so an EOS drawn as the very last allowed token is reported "length" (HFSampler says "stop"). Anything
  else ("abort", None) is an error.
* **Stop strings.** ``stop`` with ``include_stop_str_in_output=True``: the row ends with the token that completes
  the string, which is kept, as in HFSampler. (With speculative decoding several tokens arrive per step and tokens
  after a stop string could be kept; this sampler does not enable it.)
* **Texts.** Decoded here from the token ids with ``skip_special_tokens=True`` (as HFSampler does), not vLLM's
  ``text``, which is cut at the stop string.
* **Behaviour log-probs.** ``SamplingParams(logprobs=0)`` returns, per generated token, a dict holding the sampled
  token's ``Logprob``; the engine runs with ``logprobs_mode="raw_logprobs"``: log-softmax of the model's logits
  before any processing (temperature, penalties, top-k/top-p), i.e. at temperature 1 without top-p, the quantity
  ``rlvr.logprobs.completion_logprobs`` computes. (Computed from the engine's logits, e.g. bf16 ones cast to fp32,
  so they differ from a fp32 learner by the engine's rounding.)
* **Weights.** ``load_weights`` calls ``LLM.collective_rpc("rlvr_load_weights", args=(items,))``: our
  ``WeightLoaderExtension`` is mixed into every GPU worker through the engine argument ``worker_extension_cls`` and
  hands the ``(name, tensor)`` pairs to the vLLM model's own ``load_weights`` (which maps Hugging Face names onto
  its fused layers, e.g. q/k/v into qkv_proj, and shards them under tensor parallelism). The names must be the full
  Hugging Face names of the base model (``model.layers.0.self_attn.q_proj.weight``): a LoRA-trained learner must
  publish merged weights (``merge_and_unload`` of a copy, or W + (alpha/r)·B·A per layer), not its adapters or
  PEFT-prefixed names, which ``weight_items`` rejects. Tensors travel through vLLM's RPC (CPU copies), fine for
  small models; a large one wants NCCL or CUDA IPC. The prefix cache is reset afterwards, so no KV block computed
  with old weights is reused.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch

from rlvr.rollout.hf import _eos_ids, check_weights_version
from rlvr.rollout.sampler import check_generate_args
from rlvr.seeding import derive_seed
from rlvr.types import Rollout, SamplingParams

Tensor = torch.Tensor

__all__ = ["VLLMSampler", "WeightLoaderExtension", "engine_kwargs", "vllm_sampling_kwargs", "request_seed",
           "rollout_from_outputs", "finish_reason_of", "sampled_logprobs", "weight_items", "INSTALL_HINT"]

INSTALL_HINT = ("VLLMSampler needs vLLM: pip install 'rlvr[vllm]'. vLLM runs on a CUDA GPU (Linux); on a CPU use "
                "rlvr.rollout.HFSampler instead.")
LOAD_METHOD = "rlvr_load_weights"
EXTENSION = "rlvr.rollout.vllm.WeightLoaderExtension"
LOGPROBS_MODE = "raw_logprobs"


def import_vllm() -> Any:
    """The ``vllm`` module, or an ImportError with the install hint."""
    try:
        import vllm
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return vllm


# ----------------------------------------------------------------------------------------------
# Pure pieces: engine and request arguments, seeds
# ----------------------------------------------------------------------------------------------

def engine_kwargs(model: str, *, tokenizer: str | None = None, dtype: str = "bfloat16",
                  gpu_memory_utilization: float = 0.5, max_model_len: int | None = None, enforce_eager: bool = False,
                  **extra: Any) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM``: ours plus ``extra`` (any other engine argument, e.g. ``seed``,
    ``tensor_parallel_size``). ``logprobs_mode`` must stay "raw_logprobs" and ``worker_extension_cls`` ours: the
    behaviour log-probs and ``load_weights`` depend on them (a ValueError otherwise)."""
    fixed = {"logprobs_mode": LOGPROBS_MODE, "worker_extension_cls": EXTENSION}
    for key, value in fixed.items():
        if key in extra and extra[key] != value:
            raise ValueError(f"VLLMSampler sets {key}={value!r} itself (got {extra[key]!r}): behaviour log-probs "
                             "must be raw (temperature 1, no top-p) and load_weights needs its worker extension")
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"VLLMSampler: gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    kwargs = {"model": model, "tokenizer": tokenizer, "dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization,
              "max_model_len": max_model_len, "enforce_eager": enforce_eager, **extra, **fixed}
    return kwargs


def request_seed(seed: int, prompt_idx: int, sample_idx: int) -> int:
    """vLLM seed of completion row (prompt ``prompt_idx``, sample ``sample_idx``): a pure function of the three,
    in [0, 2³¹) so that any int32 consumer accepts it."""
    return derive_seed(int(seed), "vllm", int(prompt_idx), int(sample_idx)) % (1 << 31)


def vllm_sampling_kwargs(params: SamplingParams, seed: int, stop_token_ids: Sequence[int] = ()) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one completion row (``n=1``).

    temperature 0 is greedy in vLLM as here; ``logprobs=0`` asks for the sampled token's log-prob only;
    stop strings are kept in the output (the completion ends with the token that completes one).
    """
    return {"n": 1, "temperature": float(params.temperature), "top_p": float(params.top_p),
            "max_tokens": int(params.max_new_tokens), "stop": list(params.stop),
            "stop_token_ids": [int(t) for t in stop_token_ids], "include_stop_str_in_output": True,
            "seed": int(seed), "logprobs": 0 if params.logprobs else None, "skip_special_tokens": True}


# ----------------------------------------------------------------------------------------------
# Pure pieces: vLLM outputs -> Rollout
# ----------------------------------------------------------------------------------------------

def finish_reason_of(reason: str | None, token_ids: Sequence[int], eos_token_ids: Sequence[int]) -> str:
    """Our finish reason of one vLLM completion: "stop" or "length" (see the module docstring); else ValueError."""
    if reason == "stop":
        return "stop"
    if reason == "length":
        return "stop" if len(token_ids) and int(token_ids[-1]) in set(eos_token_ids) else "length"
    raise ValueError(f"vLLM finished a completion with finish_reason={reason!r}; expected 'stop' or 'length'")


def sampled_logprobs(logprobs: Any, token_ids: Sequence[int]) -> list[float]:
    """Log-prob of each sampled token from vLLM's per-token logprobs (a sequence of ``{token_id: Logprob}``).

    logprobs: length-K sequence of mappings holding at least the sampled token (``Logprob.logprob`` or a float);
    token_ids: the K sampled ids -> K floats.
    """
    if logprobs is None:
        raise ValueError("vLLM returned no logprobs for a completion; was it asked for logprobs=0?")
    if len(logprobs) != len(token_ids):
        raise ValueError(f"vLLM returned logprobs for {len(logprobs)} tokens but the completion has {len(token_ids)}")
    out = []
    for t, (step, token) in enumerate(zip(logprobs, token_ids)):
        try:
            entry = step[int(token)]
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"vLLM logprobs of step {t} lack the sampled token {int(token)}") from e
        out.append(float(getattr(entry, "logprob", entry)))
    return out


def rollout_from_outputs(outputs: Sequence[Any], prompt_ids: list[list[int]], n: int, version: int,
                         with_logprobs: bool, pad_id: int, *, eos_token_ids: Sequence[int] = (),
                         decode: Callable[[list[list[int]]], list[str]] | None = None) -> Rollout:
    """Turn vLLM ``RequestOutput``s into a Rollout of B = len(prompt_ids)·n rows, prompt-major.

    outputs: in request order, each with ``.outputs`` (its ``CompletionOutput``s: ``token_ids``, ``finish_reason``,
        ``text``, ``logprobs``) and optionally ``.prompt_token_ids``; their completions, flattened in order, are the
        rows (one request per row, or one per prompt with n completions). A request's ``prompt_token_ids``, when
        given, must equal the prompt of its rows.
    Returns completion_ids Long[B, T] (T = longest row, ``pad_id`` after each row's end), lengths Long[B] =
    number of generated tokens (EOS included), finish_reasons (``finish_reason_of``), texts (``decode`` of each row's
    ids, else vLLM's ``text``), ``policy_version=version`` and, when ``with_logprobs``, behavior_logprobs
    Float32[B, T] from the sampled tokens' log-probs, 0 after each row's end.
    """
    B = len(prompt_ids) * n
    rows, reasons, texts, blps = [], [], [], []
    for k, request in enumerate(outputs):
        first = len(rows)
        for completion in request.outputs:
            ids = [int(t) for t in completion.token_ids]
            rows.append(ids)
            reasons.append(finish_reason_of(completion.finish_reason, ids, eos_token_ids))
            if decode is None:
                texts.append(completion.text)
            if with_logprobs:
                blps.append(sampled_logprobs(completion.logprobs, ids))
        _check_request_prompt(request, k, first, len(rows), prompt_ids, n)
    if len(rows) != B:
        raise ValueError(f"vLLM returned {len(rows)} completions for {len(prompt_ids)} prompts x n={n} = {B} rows")
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    T = int(lengths.max()) if B else 0
    completion_ids = torch.full((B, T), int(pad_id), dtype=torch.long)
    behavior = torch.zeros((B, T), dtype=torch.float32) if with_logprobs else None
    for b, ids in enumerate(rows):
        completion_ids[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        if behavior is not None:
            behavior[b, :len(ids)] = torch.tensor(blps[b], dtype=torch.float32)
    if decode is not None:
        texts = list(decode(rows)) if B else []
    return Rollout(prompt_ids=[list(p) for p in prompt_ids for _ in range(n)], completion_ids=completion_ids,
                   lengths=lengths, finish_reasons=reasons, texts=texts, policy_version=int(version),
                   behavior_logprobs=behavior)


def _check_request_prompt(request: Any, k: int, first: int, end: int, prompt_ids: list[list[int]], n: int) -> None:
    """The rows [first, end) of request k belong to one prompt, equal to the request's prompt_token_ids if given."""
    if end == first:
        raise ValueError(f"vLLM request {k} returned no completions")
    i = first // n
    if (end - 1) // n != i or i >= len(prompt_ids):
        raise ValueError(f"vLLM request {k} covers rows {first}..{end - 1}, which do not belong to one prompt of "
                         f"{len(prompt_ids)} with n={n}")
    got = getattr(request, "prompt_token_ids", None)
    if got is not None and [int(t) for t in got] != list(prompt_ids[i]):
        raise ValueError(f"vLLM request {k} answered prompt {list(got)[:8]}..., expected prompt {i} "
                         f"{list(prompt_ids[i])[:8]}...: outputs are out of order")


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------

def weight_items(weights: dict[str, Tensor]) -> list[tuple[str, Tensor]]:
    """``[(name, detached contiguous CPU tensor)]`` of full Hugging Face-named weights, checked.

    Adapter weights (``lora_A``/``lora_B``) or PEFT-prefixed names (``base_model.model.``) raise a ValueError: vLLM's
    ``load_weights`` wants the base model's names, so a LoRA learner must publish merged weights.
    """
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"VLLMSampler.load_weights: weights must be a non-empty dict of tensors, got "
                         f"{type(weights).__name__}")
    items = []
    for name, value in weights.items():
        if not isinstance(name, str) or not isinstance(value, Tensor):
            raise ValueError(f"VLLMSampler.load_weights: entry {name!r} is not a (str, Tensor) pair")
        if "lora_" in name or name.startswith("base_model.model."):
            raise ValueError(f"VLLMSampler.load_weights: {name!r} is a PEFT/LoRA name; publish merged weights with "
                             "the base model's Hugging Face names (e.g. merge_and_unload on a copy)")
        items.append((name, value.detach().to("cpu").contiguous()))
    return items


class WeightLoaderExtension:
    """Mixed into each vLLM GPU worker (engine argument ``worker_extension_cls``), so that
    ``LLM.collective_rpc("rlvr_load_weights", args=(items,))`` runs in every worker process."""

    def rlvr_load_weights(self, items: list[tuple[str, Tensor]]) -> int:
        """Load ``(name, tensor)`` pairs with the vLLM model's own ``load_weights``; returns how many were given."""
        model = self.model_runner.model                      # type: ignore[attr-defined]  (the vLLM worker's)
        model = model.unwrap() if hasattr(model, "unwrap") else model      # a CUDA-graph wrapper, if any
        model.load_weights(weights=iter(items))
        return len(items)


# ----------------------------------------------------------------------------------------------
# The sampler
# ----------------------------------------------------------------------------------------------

class VLLMSampler:
    """Sampler over a vLLM engine (``vllm.LLM``) on CUDA GPUs; the same protocol as ``HFSampler``.

    Args:
        model: a Hugging Face model id or local ``save_pretrained`` folder (what ``vllm.LLM(model=...)`` takes).
        tokenizer: tokenizer id or folder (default: the model's).
        dtype: engine weight dtype ("bfloat16", "float16", "float32", "auto").
        gpu_memory_utilization: fraction of the GPU's memory vLLM may take (weights + KV cache); leave room for a
            learner on the same GPU.
        max_model_len: context length cap (default: the model's).
        enforce_eager: no CUDA graphs (faster start, slower decode).
        **engine_kwargs: any other ``vllm.LLM`` argument (see ``engine_kwargs`` for the two it may not change).

    ``version`` starts at 0; ``load_weights`` sets it.
    """

    def __init__(self, model: str, *, tokenizer: str | None = None, dtype: str = "bfloat16",
                 gpu_memory_utilization: float = 0.5, max_model_len: int | None = None, enforce_eager: bool = False,
                 **engine_kwargs_: Any) -> None:
        kwargs = engine_kwargs(model, tokenizer=tokenizer, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                               max_model_len=max_model_len, enforce_eager=enforce_eager, **engine_kwargs_)
        vllm = import_vllm()
        self.llm = vllm.LLM(**kwargs)
        self._sampling_params = vllm.SamplingParams
        self.tokenizer = self.llm.get_tokenizer()
        self.eos_token_ids = _eos_ids(SimpleNamespace(generation_config=_generation_config(model)), self.tokenizer)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else 0)
        self.version = 0

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, *, n: int, seed: int) -> Rollout:
        """Sample n completions per prompt.   P prompts -> Rollout with B = P·n rows, prompt-major,
        ``policy_version = self.version``; the same seed gives the same rollout (up to GPU nondeterminism)."""
        prompts = check_generate_args("VLLMSampler.generate", prompt_ids, params, n, seed)
        if not prompts:
            return rollout_from_outputs([], [], n, self.version, params.logprobs, self.pad_token_id)
        requests = [{"prompt_token_ids": p} for p in prompts for _ in range(n)]
        sampling = [self._sampling_params(**vllm_sampling_kwargs(params, request_seed(seed, i, j), self.eos_token_ids))
                    for i in range(len(prompts)) for j in range(n)]
        outputs = self.llm.generate(requests, sampling_params=sampling, use_tqdm=False)
        return rollout_from_outputs(outputs, prompts, n, self.version, params.logprobs, self.pad_token_id,
                                    eos_token_ids=self.eos_token_ids, decode=self._decode)

    def load_weights(self, version: int, weights: dict[str, Tensor]) -> None:
        """Push full Hugging Face-named weights into the running engine, then set ``self.version``.

        How a rollout worker takes the learner's newest weights. ``weights`` are the whole model's (or any subset,
        e.g. only the changed layers), named as in the Hugging Face checkpoint; a LoRA learner publishes merged
        weights. Uses ``LLM.collective_rpc`` into ``WeightLoaderExtension`` (the model's ``load_weights``), then
        ``LLM.reset_prefix_cache()``. ``version`` must not be below the current one (ValueError naming both).
        """
        version = check_weights_version(self.version, version, "VLLMSampler")
        items = weight_items(weights)
        self.llm.collective_rpc(LOAD_METHOD, args=(items,))
        self.llm.reset_prefix_cache()
        self.version = version

    def _decode(self, rows: list[list[int]]) -> list[str]:
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in rows]


def _generation_config(model: str) -> Any:
    """The model's Hugging Face GenerationConfig, or None when it has none (or it cannot be read)."""
    from transformers import GenerationConfig
    try:
        return GenerationConfig.from_pretrained(model)
    except (OSError, ValueError):
        return None
