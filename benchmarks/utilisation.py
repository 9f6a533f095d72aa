"""Tokens/s and FLOP-based utilisation of generation and training (``python -m benchmarks utilisation``).

Three measurements on one device (``--device cpu|cuda``) in one dtype (``--dtype``; default float32 on a CPU,
bfloat16 on CUDA), printed as a Markdown table with a settings line (device name, torch, threads, dtype, N_matmul,
date) and optionally written as JSON (``--json PATH``):

1. **Matmul peak**: ``torch.mm`` of two n×n matrices for a few sizes n (``--sizes``; CPU 256..4096, CUDA
   1024..8192), FLOP/s = 2n³/t with t the best of ``--repeats`` samples (each sample runs enough calls to last
   ~50 ms; one warm-up call first; ``torch.cuda.synchronize`` around samples on CUDA). The peak is the max over n.
   It is the yardstick of the "fraction of matmul peak" columns: what this device, library and dtype achieve on
   the easiest dense work, measured in the same process and under the same load.
2. **Generation**: tokens/s of rlvr's own sampler (``rlvr.rollout.HFSampler``, KV cache, finished rows pruned)
   on ``--batch`` rows: tiny-arith samples ``--batch / --group-size`` arith prompts of configs/tiny_arith/grpo.yaml
   (its temperature and top_p) ``--group-size`` times each; smollm2-135m-instruct the chat-templated questions
   of ``python -m benchmarks generate``; the random models (qwen2-0.5b-random, tiny-random) ``--batch`` prompts of
   ``--prompt-len`` uniform random token ids at temperature 1 with no EOS, so every row makes ``--new-tokens``.
   Counted: generated (response) tokens, the ending EOS included. FLOPs per generated token

       2·N_matmul + 4·L·d_attn·ctx

   (2N: Kaplan et al., arXiv 2001.08361, Table 1, C_forward ≈ 2N + 2·n_layer·n_ctx·d_attn. The attention term
   is the forward third of PaLM's 12·L·H·Q·T instead: 2·ctx·d_attn per layer for QKᵀ and as much for the
   weighted sum of the values, twice Kaplan's term. A decoded token attends to every cached key, so no causal
   half arises.) ctx is the number of keys the token's forward pass attends to: p + t for token t
   (from 0) of a row with a p-token prompt, and the FLOPs use the mean ctx over the generated tokens (exact, the
   cost being linear in ctx). Not counted: the prefill of the prompt tokens before the last one (each distinct
   prompt is prefilled once and shared by its samples; the count is printed), masked padding keys, sampling.
3. **Training**: tokens/s of the forward and backward pass of one policy-gradient step on a [B, T] batch
   (``--train-batch`` rows of ``--seq-len`` tokens: a ``--prompt-len`` prompt and T − P response tokens of random
   ids; all rows the same length, so no padding): the response tokens' log-probs by rlvr's own
   ``rlvr.logprobs.completion_logprobs`` (chunked log-softmax head), the loss −Σ_b A_b Σ_t log π(y_bt) with fixed
   random advantages A_b = ±1, then ``loss.backward()``. Not timed: ``zero_grad`` and the optimiser step.
   Counted: all B·T tokens processed, prompt and response. FLOPs per token, the PaLM MFU formula (Chowdhery et
   al., arXiv 2204.02311, App. B: 6N for forward and backward, Kaplan's 2N times 3; plus 12·L·H·Q·T = 12·L·d_attn·T
   for the attention, the causal mask's skipped half counted in full, as PaLM does):

       6·N_matmul + 12·L·d_attn·T   − 6·N_head·P/T

   The last term: rlvr applies the LM head only at the R = T − P positions that predict a response token, not at
   the prompt's, so the head's FLOPs are counted at R of every T tokens (the table also states the figure with
   the head at every position, PaLM as written). Model FLOPs only: the chunked head's backward recomputes the
   logits (2·N_head per response token more) and that hardware work is not counted (MFU, not HFU). The head's
   logits are computed in fp32 whatever ``--dtype`` is (``rlvr.logprobs``): on CUDA its matmuls then run as fp32,
   on TF32 tensor cores only with ``--tf32``.

   MFU = achieved model FLOP/s / measured matmul peak; on CUDA in bf16 on an H100 or H200 also against NVIDIA's
   dense BF16 peak (989.4 TFLOP/s SXM; H100 PCIe 756; NVL parts 835.5; datasheet figures, half the "with
   sparsity" ones).

Shapes and counts: N_matmul = weights of every ``nn.Linear`` in the module tree (q, k, v, o, gate, up, down of
every layer and the LM head, counted once whether or not it is tied to the embedding); biases, norms and the
embedding lookup are not matmuls and are not counted. L = layers, d_attn = query heads × head dim (the width of
Q, which sets the QKᵀ and AV cost also under grouped-query attention). N_head = the LM head's weights (V·d).

Models (``--model``): ``tiny-arith``, ``smollm2-135m-instruct`` (presets of ``rlvr.models.load_model``, offline),
``qwen2-0.5b-random`` (a randomly initialised ``Qwen2ForCausalLM`` of Qwen2-0.5B's shape built in code: hidden
896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocabulary 151936, tied embeddings, RoPE θ 1e6; the GPU
MFU target) and ``tiny-random`` (``rlvr.models.tiny_random``, for tests). On CUDA the models run transformers'
"sdpa" attention, switched by rlvr to SDPA with ``enable_gqa`` (``rlvr.attention``; the flash kernel when no mask
is needed, as for the unpadded training batch), with parameters in ``--dtype`` (no autocast).

Timing: one warm-up call, then the median of ``--repeats`` (generation and training; matmul: best). Peak memory:
``torch.cuda.max_memory_allocated`` per phase on CUDA; on a CPU the process's peak RSS (``ru_maxrss``), a
high-water mark over the whole run so far. On a shared 2-core machine the figures move with other jobs' load.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from benchmarks import config_path
from benchmarks.cli import machine_info, positive_int

__all__ = ["MODEL_CHOICES", "ModelShape", "model_shape", "generation_flops_per_token", "generation_flops",
           "training_flops_per_token", "matmul_peak", "vendor_peak", "build_qwen2_05b_random", "run",
           "format_table", "add_arguments", "command"]

TINY_ARITH_CONFIG = "configs/tiny_arith/grpo.yaml"

MODEL_CHOICES = ("tiny-arith", "smollm2-135m-instruct", "qwen2-0.5b-random", "tiny-random")
RANDOM_MODELS = ("qwen2-0.5b-random", "tiny-random")

# Per-model defaults: generation rows, samples per prompt, prompt length (random models and training),
# new tokens, training rows, training row length (None: prompt + new tokens).
DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny-arith": {"batch": 256, "group_size": 8, "prompt_len": None, "new_tokens": 48, "train_batch": 256,
                   "seq_len": None},
    "smollm2-135m-instruct": {"batch": 32, "group_size": 4, "prompt_len": None, "new_tokens": 64, "train_batch": 16,
                              "seq_len": None},
    "qwen2-0.5b-random": {"batch": 256, "group_size": 1, "prompt_len": 128, "new_tokens": 128, "train_batch": 8,
                          "seq_len": 2048},
    "tiny-random": {"batch": 8, "group_size": 1, "prompt_len": 8, "new_tokens": 16, "train_batch": 8,
                    "seq_len": None},
}

DEFAULT_SIZES = {"cpu": (256, 512, 1024, 2048, 4096), "cuda": (1024, 2048, 4096, 8192)}

# NVIDIA dense BF16 tensor-core peaks (datasheets; half the "with sparsity" figures), matched on the device name.
VENDOR_BF16_PEAKS: tuple[tuple[str, str | None, float], ...] = (
    ("H100", "PCIe", 756e12),
    ("H100", "NVL", 835.5e12),
    ("H200", "NVL", 835.5e12),
    ("H100", None, 989.4e12),     # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200", None, 989.4e12),     # SXM
)


# ----------------------------------------------------------------------------------------------
# FLOP accounting
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    n_matmul: int      # weights of all nn.Linear layers, LM head included (once), embedding excluded
    n_head: int        # weights of the LM head (V·d)
    layers: int        # L
    d_attn: int        # query heads × head dim
    n_params: int      # all distinct parameters (for the settings line)


def model_shape(model: torch.nn.Module) -> ModelShape:
    """N_matmul and the attention shape of a Hugging Face causal LM, counted from its module tree."""
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"{type(model).__name__}: the output head is a {type(head).__name__}, not an nn.Linear")
    cfg = model.config
    heads = int(cfg.num_attention_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return ModelShape(n_matmul=int(n_matmul), n_head=int(head.weight.numel()), layers=int(cfg.num_hidden_layers),
                      d_attn=int(heads * head_dim), n_params=sum(p.numel() for p in model.parameters()))


def generation_flops_per_token(shape: ModelShape, ctx: float) -> float:
    """Forward FLOPs of one generated token attending to ``ctx`` keys: 2·N_matmul + 4·L·d_attn·ctx."""
    return 2 * shape.n_matmul + 4 * shape.layers * shape.d_attn * ctx


def generation_flops(shape: ModelShape, prompt_lens: Sequence[int], lengths: Sequence[int]) -> tuple[int, float,
                                                                                                      float]:
    """(generated tokens, total FLOPs, mean ctx) of rows with these prompt and completion lengths.

    Token t (from 0) of a row with a p-token prompt is predicted by a forward pass attending to p + t keys."""
    tokens = sum(int(n) for n in lengths)
    ctx_sum = sum(int(n) * int(p) + int(n) * (int(n) - 1) // 2 for p, n in zip(prompt_lens, lengths))
    mean_ctx = ctx_sum / tokens if tokens else 0.0
    return tokens, generation_flops_per_token(shape, mean_ctx) * tokens, mean_ctx


def training_flops_per_token(shape: ModelShape, seq_len: int, prompt_len: int = 0) -> float:
    """Forward + backward FLOPs per token of [B, T] rows (PaLM App. B): 6·N_matmul + 12·L·d_attn·T, less the
    LM head at the ``prompt_len`` prompt positions where rlvr does not apply it (6·N_head·P/T)."""
    T, P = int(seq_len), int(prompt_len)
    if not 0 <= P < T:
        raise ValueError(f"need 0 <= prompt_len < seq_len, got prompt_len={P}, seq_len={T}")
    return 6 * shape.n_matmul + 12 * shape.layers * shape.d_attn * T - 6 * shape.n_head * P / T


def vendor_peak(device_name: str, dtype: torch.dtype) -> float | None:
    """NVIDIA's dense BF16 peak FLOP/s for a known device name in bf16, else None."""
    if dtype != torch.bfloat16:
        return None
    for chip, variant, peak in VENDOR_BF16_PEAKS:
        if chip in device_name and (variant is None or variant in device_name):
            return peak
    return None


# ----------------------------------------------------------------------------------------------
# Matmul peak
# ----------------------------------------------------------------------------------------------

def _calls_per_sample(one_call_s: float, min_time: float, cap: int = 1000) -> int:
    """Calls per timed sample so that a sample lasts about ``min_time`` (at least 1, at most ``cap``)."""
    return max(1, min(cap, math.ceil(min_time / max(one_call_s, 1e-9))))


def matmul_peak(sizes: Sequence[int], *, dtype: torch.dtype, device: str | torch.device, repeats: int = 3,
                min_time: float = 0.05, timer: Callable[[], float] = time.perf_counter,
                sync: Callable[[], None] = lambda: None) -> list[dict[str, float]]:
    """FLOP/s of ``torch.mm`` on n×n matrices, per size: rows {n, calls, seconds (best sample / calls), flops}.

    Per size: one untimed warm-up call, one timed call to choose ``calls`` per sample (~``min_time`` s), then
    ``repeats`` samples of ``calls`` calls; FLOP/s = 2n³·calls / best sample. ``timer`` and ``sync`` (called before
    every reading of the timer; ``torch.cuda.synchronize`` on CUDA) are injectable."""
    rows = []
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        torch.mm(a, b, out=out)
        sync()
        t0 = timer()
        torch.mm(a, b, out=out)
        sync()
        calls = _calls_per_sample(timer() - t0, min_time)
        best = math.inf
        for _ in range(repeats):
            sync()
            t0 = timer()
            for _ in range(calls):
                torch.mm(a, b, out=out)
            sync()
            best = min(best, timer() - t0)
        rows.append({"n": n, "calls": calls, "seconds": best / calls, "flops": 2 * n ** 3 * calls / best})
        del a, b, out
    return rows


# ----------------------------------------------------------------------------------------------
# Models and inputs
# ----------------------------------------------------------------------------------------------

def qwen2_05b_config() -> Any:
    """Qwen2-0.5B's shape (hub config of Qwen/Qwen2-0.5B), no weights."""
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                       rope_parameters={"rope_theta": 1e6, "rope_type": "default"}, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, use_sliding_window=False)


def build_qwen2_05b_random(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                           seed: int = 0, config: Any = None) -> torch.nn.Module:
    """A randomly initialised Qwen2ForCausalLM of Qwen2-0.5B's shape (or of ``config``), built on ``device``."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config if config is not None else qwen2_05b_config())
    return model.to(dtype=dtype).eval()


class _IdTokenizer:
    """What HFSampler needs of a tokenizer, for random-id prompts: pad id 0, no EOS, empty texts."""
    eos_token_id = None
    pad_token_id = 0

    def batch_decode(self, rows: Sequence[Any], skip_special_tokens: bool = True) -> list[str]:
        return [""] * len(rows)


@dataclass
class Workload:
    model: Any
    tokenizer: Any                # HFSampler's tokenizer (an _IdTokenizer for random models)
    prompts: list[list[int]]      # distinct generation prompts
    n: int                        # samples per prompt
    temperature: float
    top_p: float
    vocab: int


def load_workload(name: str, *, device: str, dtype: torch.dtype, batch: int, group_size: int,
                  prompt_len: int | None, seed: int = 0) -> Workload:
    """The model and the generation prompts of ``name`` (see the module docstring)."""
    from rlvr.models import load_model, tiny_random

    gen = torch.Generator().manual_seed(seed)
    if name in RANDOM_MODELS:
        if name == "tiny-random":
            model, _ = tiny_random(seed)
            model = model.to(device=device, dtype=dtype)
        else:
            model = build_qwen2_05b_random(device, dtype, seed)
        model.generation_config.eos_token_id = None           # random ids: every row makes --new-tokens
        vocab = model.get_input_embeddings().num_embeddings
        prompts = torch.randint(1, vocab, (batch, prompt_len), generator=gen).tolist()
        return Workload(model, _IdTokenizer(), prompts, 1, 1.0, 1.0, vocab)
    model, tokenizer = load_model(name, dtype=dtype, device=device)
    vocab = model.get_input_embeddings().num_embeddings
    count = batch // group_size
    if name == "tiny-arith":
        from rlvr.config import load_config
        from rlvr.trainer import build_problems, make_encoder

        cfg = load_config(config_path(TINY_ARITH_CONFIG))
        problems, _ = build_problems(cfg)
        encode = make_encoder(tokenizer, cfg.model.system_prompt)
        prompts = [encode(p) for p in problems[:count]]
        return Workload(model, tokenizer, prompts, group_size, cfg.rollout.temperature, cfg.rollout.top_p, vocab)
    from benchmarks.generate import make_prompts

    return Workload(model, tokenizer, make_prompts(tokenizer, count), group_size, 0.7, 1.0, vocab)


# ----------------------------------------------------------------------------------------------
# Phases
# ----------------------------------------------------------------------------------------------

def _sync_for(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _median_run(fn: Callable[[int], dict[str, float]], repeats: int, key: str) -> dict[str, float]:
    """One warm-up call, then ``repeats`` calls fn(i); the call whose ``key`` is the median (lower median)."""
    fn(10_000)
    runs = sorted((fn(i) for i in range(repeats)), key=lambda r: r[key])
    return runs[(len(runs) - 1) // 2]


def time_generation(work: Workload, shape: ModelShape, *, new_tokens: int, repeats: int, device: str,
                    max_batch_size: int) -> dict[str, float]:
    """Median-rate HFSampler.generate call: tokens, seconds, tok_s, mean_ctx, flops_per_token, flops (achieved)."""
    from rlvr.rollout import HFSampler
    from rlvr.types import SamplingParams

    sampler = HFSampler(work.model, work.tokenizer, max_batch_size=max_batch_size)
    params = SamplingParams(temperature=work.temperature, top_p=work.top_p, max_new_tokens=new_tokens)
    sync = _sync_for(device)

    def once(seed: int) -> dict[str, float]:
        sync()
        t0 = time.perf_counter()
        roll = sampler.generate(work.prompts, params, n=work.n, seed=seed)
        sync()
        seconds = time.perf_counter() - t0
        tokens, flops, mean_ctx = generation_flops(shape, [len(p) for p in roll.prompt_ids], roll.lengths.tolist())
        return {"tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds, "mean_ctx": mean_ctx,
                "flops_per_token": flops / max(tokens, 1), "flops": flops / seconds}

    out = _median_run(once, repeats, "tok_s")
    out["prefill_tokens_not_counted"] = sum(len(p) - 1 for p in work.prompts)
    out["rows"] = len(work.prompts) * work.n
    return out


def time_training(model: Any, shape: ModelShape, *, batch: int, seq_len: int, prompt_len: int, vocab: int,
                  repeats: int, device: str, seed: int = 0) -> dict[str, float]:
    """Median forward+backward of Σ A·log π over a [batch, seq_len] batch: tokens, seconds, tok_s, flops."""
    from rlvr.logprobs import completion_logprobs

    gen = torch.Generator().manual_seed(seed)
    R = seq_len - prompt_len
    prompts = torch.randint(1, vocab, (batch, prompt_len), generator=gen).tolist()
    completions = torch.randint(1, vocab, (batch, R), generator=gen).to(device)
    lengths = torch.full((batch,), R, dtype=torch.long)
    adv = (torch.randint(0, 2, (batch,), generator=gen) * 2 - 1).to(device=device, dtype=torch.float32)
    sync = _sync_for(device)
    was_training = model.training
    model.train()

    def once(_: int) -> dict[str, float]:
        model.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        # unshared: the FLOP count assumes every row's prompt tokens run through the decoder
        logprobs, _ = completion_logprobs(model, prompts, completions, lengths, share_prompts=False)
        loss = -(adv[:, None] * logprobs).sum() / batch
        loss.backward()
        sync()
        seconds = time.perf_counter() - t0
        tokens = batch * seq_len
        return {"tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds}

    try:
        out = _median_run(once, repeats, "tok_s")
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    out["flops_per_token"] = training_flops_per_token(shape, seq_len, prompt_len)
    out["flops_per_token_palm"] = training_flops_per_token(shape, seq_len, 0)
    out["flops"] = out["flops_per_token"] * out["tok_s"]
    out["rows"], out["seq_len"], out["prompt_len"] = batch, seq_len, prompt_len
    return out


def _peak_memory(device: str) -> float:
    """Bytes: CUDA max allocated since the last reset; CPU process peak RSS (ru_maxrss, KiB on Linux)."""
    if device == "cuda":
        return float(torch.cuda.max_memory_allocated())
    scale = 1 if sys.platform == "darwin" else 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else machine_info()["cpu"]


def run(args: argparse.Namespace, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every phase of the benchmark with resolved ``args`` (see ``resolve``); returns the JSON-able report."""
    device, dtype = args.device, args.dtype
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    sync = _sync_for(device)
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    report: dict[str, Any] = {
        "settings": {"model": args.model, "device": device, "device_name": device_name(device),
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": str(dtype).split(".")[-1],
                     "tf32": bool(args.tf32), "date": now, "repeats": args.repeats},
        "phases": [],
    }
    say(f"matmul peak: sizes {list(args.sizes)}, best of {args.repeats} ...")
    _reset_peak(device)
    mm = matmul_peak(args.sizes, dtype=dtype, device=device, repeats=args.repeats, sync=sync)
    peak = max(r["flops"] for r in mm)
    report["matmul"] = mm
    report["matmul_peak"] = peak
    report["vendor_peak"] = vendor_peak(report["settings"]["device_name"], dtype) if device == "cuda" else None
    report["phases"].append({"phase": "matmul peak", "tok_s": None, "flops_per_token": None, "flops": peak,
                             "peak_memory": _peak_memory(device)})

    work = load_workload(args.model, device=device, dtype=dtype, batch=args.batch, group_size=args.group_size,
                         prompt_len=args.prompt_len, seed=args.seed)
    shape = model_shape(work.model)
    report["shape"] = asdict(shape)
    if args.prompt_len is None:   # task models: the training prompt is as long as their mean prompt
        args.prompt_len = max(1, round(statistics.mean(len(p) for p in work.prompts)))
    if args.seq_len is None:
        args.seq_len = args.prompt_len + args.new_tokens
    if not args.prompt_len < args.seq_len:
        raise ValueError(f"--seq-len ({args.seq_len}) must exceed --prompt-len ({args.prompt_len})")
    if not args.skip_generation:
        say(f"generation: {len(work.prompts)} prompts x {work.n} samples x {args.new_tokens} new tokens, "
            f"median of {args.repeats} ...")
        _reset_peak(device)
        g = time_generation(work, shape, new_tokens=args.new_tokens, repeats=args.repeats, device=device,
                            max_batch_size=args.batch)
        report["phases"].append({"phase": "generation", **g, "peak_memory": _peak_memory(device)})
    if not args.skip_training:
        say(f"training: [{args.train_batch}, {args.seq_len}] (prompt {args.prompt_len}), median of {args.repeats} ...")
        _reset_peak(device)
        t = time_training(work.model, shape, batch=args.train_batch, seq_len=args.seq_len, prompt_len=args.prompt_len,
                          vocab=work.vocab, repeats=args.repeats, device=device, seed=args.seed)
        report["phases"].append({"phase": "training", **t, "peak_memory": _peak_memory(device)})
    for ph in report["phases"]:
        ph["of_matmul_peak"] = ph["flops"] / peak
        ph["of_vendor_peak"] = ph["flops"] / report["vendor_peak"] if report["vendor_peak"] else None
    return report


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------

def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def format_table(report: dict[str, Any]) -> list[str]:
    """The Markdown lines: settings, per-size matmul figures, the phase table and notes."""
    s, shape = report["settings"], report.get("shape", {})
    cuda = s["device"] == "cuda"
    unit, scale = ("TFLOP/s", 1e12) if cuda else ("GFLOP/s", 1e9)
    mem = "peak GPU memory (GiB)" if cuda else "peak RSS so far (GiB)"
    lines = [f"settings: model {s['model']}; device {s['device']} ({s['device_name']}); torch {s['torch']}; "
             f"threads {s['threads']}; dtype {s['dtype']}{' (TF32 matmuls)' if s['tf32'] else ''}; "
             f"N_matmul {shape.get('n_matmul', 0):,} (head {shape.get('n_head', 0):,}; all parameters "
             f"{shape.get('n_params', 0):,}); L {shape.get('layers')}; d_attn {shape.get('d_attn')}; {s['date']}",
             "",
             f"| matmul n | calls/sample | ms/call (best of {s['repeats']}) | {unit} |",
             "|--:|--:|--:|--:|"]
    for r in report["matmul"]:
        lines.append(f"| {r['n']} | {r['calls']} | {r['seconds'] * 1e3:.3f} | {r['flops'] / scale:.3f} |")
    vendor = report.get("vendor_peak")
    head = f"| phase | tokens/s | FLOP/token | achieved {unit} | of matmul peak |"
    sep = "|:--|--:|--:|--:|--:|"
    if vendor:
        head += f" of vendor peak ({vendor / 1e12:.1f} TFLOP/s) |"
        sep += "--:|"
    lines += ["", head + f" {mem} |", sep + "--:|"]
    for ph in report["phases"]:
        tok = f"{ph['tok_s']:,.1f}" if ph["tok_s"] is not None else "–"
        fpt = _si(ph["flops_per_token"]) if ph["flops_per_token"] is not None else "–"
        row = f"| {ph['phase']} | {tok} | {fpt} | {ph['flops'] / scale:.3f} | {ph['of_matmul_peak']:.4f} |"
        if vendor:
            row += f" {ph['of_vendor_peak']:.4f} |"
        lines.append(row + f" {ph['peak_memory'] / 2 ** 30:.2f} |")
    notes = []
    for ph in report["phases"]:
        if ph["phase"] == "generation":
            notes.append(f"generation: {ph['rows']} rows, {ph['tokens']} generated tokens counted in "
                         f"{ph['seconds']:.3f} s (median-rate call), mean ctx {ph['mean_ctx']:.1f} keys; "
                         f"{ph['prefill_tokens_not_counted']} prefill tokens (prompts before their last token) "
                         "not counted")
        if ph["phase"] == "training":
            notes.append(f"training: [{ph['rows']}, {ph['seq_len']}] = {ph['tokens']} tokens (prompt "
                         f"{ph['prompt_len']} + response {ph['seq_len'] - ph['prompt_len']}) per forward+backward in "
                         f"{ph['seconds']:.3f} s (median); with the head counted at every position (PaLM as "
                         f"written, {_si(ph['flops_per_token_palm'])} FLOP/token) MFU would read "
                         f"{ph['flops_per_token_palm'] * ph['tok_s'] / report['matmul_peak']:.4f} of matmul peak")
    return lines + [""] + [f"- {n}" for n in notes]


# ----------------------------------------------------------------------------------------------
# Command line: `python -m benchmarks utilisation`
# ----------------------------------------------------------------------------------------------

def _size_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(positive_int(x) for x in text.split(","))
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r} ({err})") from None


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``python -m benchmarks utilisation`` to ``p`` and return it."""
    p.add_argument("--model", choices=MODEL_CHOICES, default="tiny-arith", help="default tiny-arith")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="parameter and matmul dtype (default float32 on cpu, bfloat16 on cuda)")
    p.add_argument("--batch", type=positive_int, default=None,
                   help="generation rows (tiny-arith 256 = 32 prompts x 8; smollm2 32; qwen2-0.5b-random 256; "
                        "tiny-random 8); also HFSampler's max batch")
    p.add_argument("--group-size", type=positive_int, default=None,
                   help="samples per prompt for the task models (tiny-arith 8, smollm2 4; must divide --batch)")
    p.add_argument("--prompt-len", type=positive_int, default=None,
                   help="prompt tokens: random models' generation prompts and every model's training prompt "
                        "(default: random models 128 / 8; task models the mean length of their prompts)")
    p.add_argument("--new-tokens", type=positive_int, default=None,
                   help="max new tokens per generated row (tiny-arith 48, smollm2 64, qwen2-0.5b-random 128)")
    p.add_argument("--train-batch", type=positive_int, default=None,
                   help="training rows B (tiny-arith 256, smollm2 16, qwen2-0.5b-random 8)")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="training row length T, prompt included (default prompt + new tokens; qwen2-0.5b-random 2048)")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="timed calls after a warm-up: median for generation and training, best for matmul (default 3)")
    p.add_argument("--sizes", type=_size_list, default=None,
                   help="matmul sizes n, comma-separated (default cpu 256..4096, cuda 1024..8192)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 for float32 matmuls (torch.set_float32_matmul_precision('high')); on CUDA this "
                        "also speeds up rlvr's fp32 log-prob head")
    p.add_argument("--skip-generation", action="store_true")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="prompts, training ids and random weights (default 0)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    return p


class UsageError(ValueError):
    """Options that cannot run here; the message names the option."""


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill per-model defaults, turn --dtype into a torch dtype and check the options against this machine."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device cuda: CUDA is not available in this torch build ({torch.__version__}) or on "
                         "this machine; use --device cpu")
    args.dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    try:
        torch.mm(torch.ones(2, 2, dtype=args.dtype, device=args.device),
                 torch.ones(2, 2, dtype=args.dtype, device=args.device))
    except RuntimeError as err:
        raise UsageError(f"--dtype {str(args.dtype).split('.')[-1]}: matmuls in this dtype are not supported on "
                         f"{args.device}: {err}") from None
    for key, value in DEFAULTS[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.model in RANDOM_MODELS:
        args.group_size = 1
    if args.batch % args.group_size:
        raise UsageError(f"--group-size {args.group_size} must divide --batch {args.batch}")
    if args.prompt_len is not None and args.seq_len is not None and args.prompt_len >= args.seq_len:
        raise UsageError(f"--seq-len ({args.seq_len}) must exceed --prompt-len ({args.prompt_len})")
    if args.sizes is None:
        args.sizes = DEFAULT_SIZES[args.device]
    return args


def command(args: argparse.Namespace) -> int:
    """Resolve the options, run the phases, print the table (and write --json)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        args = resolve(args)
    except UsageError as err:
        print(f"python -m benchmarks utilisation: error: {err}", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from rlvr.models import ModelLoadError

    try:
        report = run(args, say=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (ModelLoadError, ValueError) as err:
        print(f"python -m benchmarks utilisation: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(format_table(report)))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
