"""Train tokens/s, padded against packed, on a batch with a realistic spread of completion lengths
(``python -m benchmarks packing``).

One policy-gradient forward + backward over a whole batch, cut into micro-batches the way the trainer cuts them
(``rlvr.trainer.microbatch.micro_batches``), for four ways of running it, all in one process on the same batch:

=================  ==========================================================================================
rows, padded       today's default: ``algo.micro_batch_size`` rows per micro-batch in batch order, right-padded
                   to the micro-batch's longest row (shared prompts on, as the trainer runs)
budget, padded     ``algo.max_tokens_per_micro_batch``: rows sorted by length into micro-batches of at most
                   ``--max-tokens`` padded tokens
rows, packed       ``model.pack_sequences``: the same row split, each micro-batch packed without padding (rows
                   of at most its longest sequence)
budget, packed     both: micro-batches of at most ``--max-tokens`` real tokens, each packed
=================  ==========================================================================================

The batch: ``--prompts`` chat-templated questions of the main job's task (``rlvr.data``'s arithmetic problems through
the model's chat template, as the trainer encodes them), ``--group-size`` completions each, of random token ids with
lengths drawn log-uniformly from ``[--min-new, --max-new]`` (a 10× spread by default, as reasoning completions
have); the compute of a forward/backward does not depend on which ids. The loss is −Σ A_b Σ_t log π(y_bt) with
fixed random advantages A_b = ±1, ``rlvr.logprobs.completion_logprobs`` (the training pass), then ``backward``; the
LoRA adapters of the main job (``--lora``, default on) or every weight are trained; no optimiser step.

Counted: real tokens (prompt + completion of every row, no padding) per second of forward + backward, and the
token positions the decoder actually ran (padding and each shared prompt once included). Timing: one warm-up pass,
then the median of ``--repeats``. On a shared 2-core machine the figures move with other jobs' load; the ratios
come from one process and alternate the modes within each repeat.
"""
from __future__ import annotations

import argparse
import datetime
import math
import statistics
import time

import torch

from benchmarks.cli import machine_info, positive_int

MODES = (("rows, padded", False, False), ("budget, padded", True, False), ("rows, packed", False, True),
         ("budget, packed", True, True))


def build_batch(tokenizer, args: argparse.Namespace) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    """(prompt_ids [B lists], completion_ids [B, T], lengths [B]) with B = prompts × group_size."""
    from rlvr.models import encode_prompt

    g = torch.Generator().manual_seed(args.seed)
    prompts = []
    for i in range(args.prompts):
        a, b = torch.randint(0, 100, (2,), generator=g).tolist()
        prompts += [encode_prompt(tokenizer, f"Calculate {a} + {b}.", None)] * args.group_size
    B = len(prompts)
    u = torch.rand(B, generator=g, dtype=torch.float64)
    lengths = torch.exp(math.log(args.min_new) + u * math.log(args.max_new / args.min_new)).round().long()
    completion = torch.randint(3, len(tokenizer), (B, int(lengths.max())), generator=g)
    return prompts, completion, lengths


def one_pass(model, batch, plan, pack: bool, advantages: torch.Tensor) -> int:
    """Forward + backward over the micro-batches of ``plan``; returns the token positions the decoder ran."""
    from rlvr.logprobs import completion_logprobs

    prompts, completion, lengths = batch
    counter = {"tokens": 0}
    hook = model.get_input_embeddings().register_forward_hook(
        lambda m, a, o: counter.__setitem__("tokens", counter["tokens"] + a[0].numel()))
    try:
        for mb in plan:
            T = max(int(lengths[mb].max()), 1)
            lp, _ = completion_logprobs(model, [prompts[i] for i in mb.tolist()], completion[mb, :T], lengths[mb],
                                        pack=pack)
            (-(lp.sum(1) * advantages[mb]).sum()).backward()
    finally:
        hook.remove()
    model.zero_grad(set_to_none=True)
    return counter["tokens"]


def measure(model, batch, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Seconds (median of ``--repeats``) and decoder token positions of each mode."""
    from rlvr.trainer.dist import World
    from rlvr.trainer.microbatch import Budget, micro_batches

    prompts, _, lengths = batch
    total = torch.tensor([len(p) for p in prompts]) + lengths
    rows = torch.arange(len(prompts))
    advantages = torch.where(torch.rand(len(rows), generator=torch.Generator().manual_seed(1)) < 0.5, -1.0, 1.0)
    plans = {name: micro_batches(rows, Budget(args.micro_batch_size, args.max_tokens if budget else None, packed),
                                 World(), args.group_size, total) for name, budget, packed in MODES}
    times: dict[str, list[float]] = {name: [] for name, _, _ in MODES}
    positions = {}
    for repeat in range(args.repeats + 1):                      # the first is a warm-up
        for name, _, packed in MODES:
            t0 = time.perf_counter()
            positions[name] = one_pass(model, batch, plans[name], packed, advantages)
            if repeat:
                times[name].append(time.perf_counter() - t0)
    return {name: {"s": statistics.median(times[name]), "positions": positions[name],
                   "micro_batches": len(plans[name]), "tokens": int(total.sum())} for name, _, _ in MODES}


def table(results: dict[str, dict[str, float]], args: argparse.Namespace, lengths: torch.Tensor) -> str:
    base = results[MODES[0][0]]
    info = machine_info()
    lines = [f"{args.model}, lora={args.lora}, {len(lengths)} rows ({args.prompts} prompts × {args.group_size}), "
             f"completion lengths {int(lengths.min())}..{int(lengths.max())} (mean {float(lengths.float().mean()):.0f}), "
             f"micro_batch_size={args.micro_batch_size}, max_tokens={args.max_tokens}; {info['cpu']}, "
             f"{info['threads']} threads, torch {info['torch']}, {datetime.date.today()}", "",
             "| mode | micro-batches | decoder positions | real tokens | s (median) | real tokens/s | vs rows, padded |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['micro_batches']} | {r['positions']} | {r['tokens']} | {r['s']:.2f} | "
                     f"{r['tokens'] / r['s']:.0f} | {base['s'] / r['s']:.2f}× |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m-instruct", help="a model preset (rlvr.models.load_model)")
    p.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True, help="train LoRA r=16 on q/k/v/o "
                   "(the main job's) rather than every weight")
    p.add_argument("--prompts", type=positive_int, default=4)
    p.add_argument("--group-size", type=positive_int, default=8)
    p.add_argument("--min-new", type=positive_int, default=24)
    p.add_argument("--max-new", type=positive_int, default=256)
    p.add_argument("--micro-batch-size", type=positive_int, default=16)
    p.add_argument("--max-tokens", type=positive_int, default=2048, help="the token budget of the budget modes")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None)


def command(args: argparse.Namespace) -> int:
    from rlvr.models import apply_lora, load_model

    if args.min_new > args.max_new:
        raise SystemExit(f"--min-new {args.min_new} exceeds --max-new {args.max_new}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    model = apply_lora(model, rank=16, alpha=32) if args.lora else model
    model.train()
    batch = build_batch(tokenizer, args)
    print(table(measure(model, batch, args), args, batch[2]))
    return 0
