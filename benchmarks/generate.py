"""Generation benchmark: tokens/s of ``HFSampler`` against Hugging Face ``model.generate`` in the same run.

Both get the same prompts (P ragged prompts, each sampled n times), the same ``max_new_tokens``, temperature,
top_p and stop strings, and the same rows per batch (``--batch-size``; HF gets each prompt repeated n times,
left-padded). Tokens counted are completion tokens that count: up to and including the ending EOS / stop token
(HF keeps decoding finished rows as padding; that work is not counted as tokens). Each time is the median of
``--repeats`` calls after one warm-up call of each; seeds differ per repeat and are the same for both.

``--ablations`` also times HFSampler variants: pruning finished rows every k steps instead of every step,
and prefilling every row instead of each distinct prompt once.

On a shared 2-core machine use ``--threads 1`` for small models: with 2 threads and a busy second core every
parallel op waits for it (tiny-random ran 10x slower than with 1 thread while other jobs ran).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable, Sequence

import torch

from benchmarks.cli import positive_int
from rlvr.types import SamplingParams

# rlvr.models / rlvr.rollout import transformers (seconds): imported where used, so `--help` stays fast.

__all__ = ["PROMPTS", "make_prompts", "counted_tokens", "hf_generate", "time_interleaved", "run", "add_arguments",
           "command"]

# Ragged questions of the kind RLVR samples on (ASCII only, so the character tokenizer reads them too).
PROMPTS = (
    "What is 12 + 7?",
    "Compute 3 * (4 + 5) and give only the number.",
    "A shop sells pens at 3 dollars each. How much do 14 pens cost?",
    "What is 100 - 37?",
    "Tom has 5 apples and buys 8 more. He gives 4 away. How many apples does he have now?",
    "Is 91 a prime number? Answer yes or no, then explain briefly.",
    "Sum the numbers 1, 2, 3, 4, 5, 6, 7, 8, 9 and 10.",
    "If x + 3 = 10, what is x?",
)


def make_prompts(tokenizer: Any, count: int) -> list[list[int]]:
    """``count`` token-id prompts cycling through PROMPTS, encoded by ``rlvr.models.encode_prompt`` (chat template
    when the tokenizer has one)."""
    from rlvr.models import encode_prompt

    return [encode_prompt(tokenizer, PROMPTS[i % len(PROMPTS)]) for i in range(count)]


def counted_tokens(new: torch.Tensor, eos_ids: Sequence[int], pad_id: int) -> int:
    """Completion tokens that count in HF output.   new Long[b, T] -> int.

    Per row: up to and including the first EOS, and never the run of ``pad_id`` that HF writes after a row has
    finished (by a stop string, when pad is not an EOS).
    """
    is_eos = torch.isin(new, torch.tensor(list(eos_ids), dtype=torch.long))
    T = new.shape[1]
    first_eos = torch.where(is_eos.any(-1), is_eos.long().argmax(-1) + 1, T)
    not_pad = (new != pad_id).long()
    trailing_pads = T - torch.where(not_pad.any(-1), T - not_pad.flip(-1).argmax(-1), 0)
    return int(torch.minimum(first_eos, T - trailing_pads).sum())


def hf_generate(model: Any, tokenizer: Any, prompts: list[list[int]], params: SamplingParams, *, n: int,
                batch_size: int, seed: int, eos_ids: Sequence[int], pad_id: int) -> int:
    """HF ``model.generate`` on the P·n rows (prompt-major), ``batch_size`` rows at a time, left-padded.
    Returns the number of counted completion tokens."""
    rows = [p for p in prompts for _ in range(n)]
    sampling: dict[str, Any] = ({"do_sample": False} if params.temperature == 0 else
                                {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p,
                                 "top_k": 0})
    if params.stop:
        sampling.update(stop_strings=list(params.stop), tokenizer=tokenizer)
    torch.manual_seed(seed)                    # HF samples from the global RNG
    total = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=params.max_new_tokens,
                                 pad_token_id=pad_id, eos_token_id=list(eos_ids) or None, **sampling)
        total += counted_tokens(out[:, width:], eos_ids, pad_id)
    return total


def time_interleaved(fns: Sequence[Callable[[int], int]], repeats: int) -> list[tuple[float, int]]:
    """Time calls fn(seed) -> tokens: one warm-up call of each, then ``repeats`` rounds calling every fn once
    (interleaved, so that load from other processes hits all methods alike).
    Returns (median seconds, median tokens) per fn."""
    for fn in fns:
        fn(10_000)
    times: list[list[float]] = [[] for _ in fns]
    tokens: list[list[int]] = [[] for _ in fns]
    for r in range(repeats):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            tokens[k].append(fn(r))
            times[k].append(time.perf_counter() - start)
    return [(statistics.median(t), int(statistics.median(c))) for t, c in zip(times, tokens)]


def run(model: Any, tokenizer: Any, *, prompts: int = 8, n: int = 4, max_new_tokens: int = 64, batch_size: int = 64,
        repeats: int = 3, temperature: float = 1.0, top_p: float = 1.0, stop: tuple[str, ...] = (),
        ablations: bool = False, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Time HFSampler and HF generate on the same work. Returns rows with keys method, seconds, tokens, tok_s, ratio
    (tok/s relative to HF generate)."""
    say = progress or (lambda _msg: None)
    ids = make_prompts(tokenizer, prompts)
    from rlvr.rollout import HFSampler

    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop=stop)
    ours = HFSampler(model, tokenizer, max_batch_size=batch_size)
    variants: list[tuple[str, Callable[[int], int]]] = [
        ("HFSampler", lambda s: int(ours.generate(ids, params, n=n, seed=s).lengths.sum())),
        ("HF generate", lambda s: hf_generate(model, tokenizer, ids, params, n=n, batch_size=batch_size, seed=s,
                                              eos_ids=ours.eos_token_ids, pad_id=ours.pad_token_id)),
    ]
    if ablations:
        for label, kwargs in (("HFSampler prune_every=8", {"prune_every": 8}),
                              ("HFSampler prune never", {"prune_every": max_new_tokens + 1}),
                              ("HFSampler prefill per row", {"share_prefill": False})):
            sampler = HFSampler(model, tokenizer, max_batch_size=batch_size, **kwargs)
            variants.append((label, lambda s, smp=sampler: int(smp.generate(ids, params, n=n, seed=s).lengths.sum())))
    rows = []
    for (label, _), (seconds, tokens) in zip(variants, time_interleaved([fn for _, fn in variants], repeats)):
        rows.append({"method": label, "seconds": seconds, "tokens": tokens, "tok_s": tokens / seconds})
        say(f"{label:<26} {tokens:6d} tokens {seconds:8.3f} s {tokens / seconds:10.1f} tok/s")
    hf_rate = rows[1]["tok_s"]
    for row in rows:
        row["ratio"] = row["tok_s"] / hf_rate
    return rows


# ----------------------------------------------------------------------------------------------
# Command line: `python -m benchmarks generate`
# ----------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``python -m benchmarks generate`` to ``parser`` and return it."""
    parser.add_argument("--model", default="tiny-random",
                        help="model preset, local dir or hub id (default tiny-random)")
    parser.add_argument("--prompts", type=positive_int, default=8, help="P, distinct prompts (default 8)")
    parser.add_argument("--n", type=positive_int, default=4, help="samples per prompt (default 4)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, help="default 64")
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="rows per batch, both methods (default 64)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed calls per method, median (default 3)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (default 1.0)")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--ablations", action="store_true",
                        help="also time HFSampler with lazy pruning and with per-row prefill")
    return parser


def command(args: argparse.Namespace) -> int:
    """Load the model, run the benchmark, print one line per method with tok/s and the ratio to HF generate."""
    if args.threads:
        torch.set_num_threads(args.threads)
    from rlvr.models import load_model

    model, tokenizer = load_model(args.model)
    print(f"model {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
          f"{next(model.parameters()).dtype}; {args.prompts} prompts x {args.n} samples x {args.max_new_tokens} "
          f"new tokens, batch {args.batch_size}, T={args.temperature}, top_p={args.top_p}, stop={args.stop}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats}", flush=True)
    rows = run(model, tokenizer, prompts=args.prompts, n=args.n, max_new_tokens=args.max_new_tokens,
               batch_size=args.batch_size, repeats=args.repeats, temperature=args.temperature, top_p=args.top_p,
               stop=tuple(args.stop), ablations=args.ablations)
    print(f"{'method':<26} {'tokens':>7} {'seconds':>9} {'tok/s':>10} {'vs HF':>7}")
    for row in rows:
        print(f"{row['method']:<26} {row['tokens']:7d} {row['seconds']:9.3f} {row['tok_s']:10.1f} {row['ratio']:6.2f}x")
    return 0
