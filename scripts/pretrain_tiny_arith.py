"""Pretrain the ``tiny-arith`` preset: a small Qwen2-shaped character model, taught the ``arith`` task by
supervised training on worked solutions, stopped while its sampled pass@1 is still in the middle (default
window [0.25, 0.45]) so that RL has room to improve it.

What it does:

1. Builds a randomly initialised Qwen2 (``rlvr.models.tiny_qwen2_config``) with the character tokenizer.
2. Draws ``eval_size`` held-out problems (``arith_problems(eval_size, eval_seed)``) first; every training
   batch is drawn fresh (``arith_problems(batch_size, seed=<hash of seed and step>)``) and any prompt that is
   in the held-out set is dropped from it, so train and eval are disjoint while the eval set keeps the task's
   natural mix of 2- and 3-term problems.
3. Trains on ``[bos] + prompt + worked_solution + [eos]`` with the loss on the solution and eos only
   (``[bos] + prompt`` is exactly what ``rlvr.models.encode_prompt`` gives RL), AdamW with linear warmup and
   cosine decay, gradient clipping.
4. Every ``eval_every`` steps measures pass@1 on the held-out set the way RL samples (temperature 1, one
   completion per problem, ``rlvr.rollout.HFSampler``, checked with ``rlvr.rewards.verify_int``) and greedy
   accuracy; stops at the first evaluation at or after ``min_steps`` whose sampled pass@1 lies in the target
   window, or whose pass@1 is already above it, or at ``max_steps``.
5. Saves model (safetensors) + tokenizer with ``save_pretrained`` into a temporary sibling folder, writes
   ``metadata.json`` and ``README.md`` there, and renames it into place (an existing folder is replaced only
   after the new one is complete).

Deterministic for a given seed, thread count and machine (torch's CPU kernels may round differently elsewhere).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/pretrain_tiny_arith.py            # writes src/rlvr/assets/tiny_arith
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import Qwen2ForCausalLM  # noqa: E402

from rlvr.data import arith_problems, worked_solution  # noqa: E402
from rlvr.models import char_tokenizer, count_parameters, encode_prompt, tiny_qwen2_config  # noqa: E402
from rlvr.rewards import verify_int  # noqa: E402
from rlvr.rollout import HFSampler  # noqa: E402
from rlvr.types import Problem, SamplingParams  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "rlvr" / "assets" / "tiny_arith"
IGNORE = -100
"""Label value that the Hugging Face causal-LM loss skips."""


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--hidden-size", type=int, default=128)
    g.add_argument("--num-layers", type=int, default=4)
    g.add_argument("--num-heads", type=int, default=4)
    g.add_argument("--num-kv-heads", type=int, default=2)
    g.add_argument("--intermediate-size", type=int, default=576)
    g.add_argument("--max-positions", type=int, default=128,
                   help="position limit of the model (prompt + completion tokens)")
    g = p.add_argument_group("training")
    g.add_argument("--seed", type=int, default=0, help="model init, training-batch and eval-sampling seed")
    g.add_argument("--max-steps", type=int, default=3000, help="optimiser steps at most (the cosine runs over these)")
    g.add_argument("--min-steps", type=int, default=100, help="no early stop before this step")
    g.add_argument("--batch-size", type=int, default=64, help="sequences per optimiser step")
    g.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr = lr * this")
    g.add_argument("--warmup-steps", type=int, default=30)
    g.add_argument("--weight-decay", type=float, default=0.01, help="on matrices only (not norms, biases)")
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads; on the shared 2-core machine 1 thread ran a step 2x faster than 2")
    g = p.add_argument_group("task and evaluation")
    g.add_argument("--knobs", type=json.loads, default={},
                   help='arith task knobs as JSON, e.g. \'{"max_operand": 49}\'; {} = the task defaults')
    g.add_argument("--eval-size", type=int, default=512, help="held-out problems per evaluation")
    g.add_argument("--eval-seed", type=int, default=424242, help="seed of the held-out problems")
    g.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    g.add_argument("--max-new-tokens", type=int, default=48)
    g.add_argument("--target", type=float, nargs=2, default=(0.25, 0.45), metavar=("LOW", "HIGH"),
                   help="stop once sampled pass@1 (temperature 1) is in [LOW, HIGH] (or above HIGH)")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to (re)write")
    args = p.parse_args(argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """ValueError naming the first bad argument."""
    positive = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "max_positions",
                "max_steps", "batch_size", "eval_size", "eval_every", "max_new_tokens", "threads")
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    low, high = args.target
    if not 0 <= low <= high <= 1:
        raise ValueError(f"--target must satisfy 0 <= LOW <= HIGH <= 1, got {low} {high}")
    if not (args.lr > 0 and 0 <= args.min_lr_ratio <= 1 and args.warmup_steps >= 0 and args.min_steps >= 0):
        raise ValueError(f"need --lr > 0, 0 <= --min-lr-ratio <= 1, --warmup-steps >= 0, --min-steps >= 0; got "
                         f"{args.lr}, {args.min_lr_ratio}, {args.warmup_steps}, {args.min_steps}")
    if not isinstance(args.knobs, dict):
        raise ValueError(f"--knobs must be a JSON object, got {args.knobs!r}")


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def batch_seed(seed: int, step: int) -> int:
    """Seed of training batch ``step``: 64 bits of sha256("tiny-arith/train/<seed>/<step>").

    A hash rather than ``seed + step`` so that no training batch reuses the eval seed's stream.
    """
    digest = hashlib.sha256(f"tiny-arith/train/{seed}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def train_problems(step: int, *, seed: int, batch_size: int, held_out: set[str],
                   knobs: dict[str, Any]) -> list[Problem]:
    """The problems of training batch ``step``: distinct, none of whose prompts is in ``held_out``.

    Draws ``batch_size + 8`` so that dropping held-out prompts (a few per batch at most) still leaves
    ``batch_size``; raises if it does not.
    """
    drawn = arith_problems(batch_size + 8, seed=batch_seed(seed, step), **knobs)
    kept = [p for p in drawn if p.prompt not in held_out][:batch_size]
    if len(kept) < batch_size:
        raise ValueError(f"training batch {step}: only {len(kept)} of {len(drawn)} drawn problems are not held out")
    return kept


def encode_example(tokenizer: Any, problem: Problem) -> tuple[list[int], int]:
    """Token ids of one training sequence and the length of its prompt part.

    ids = encode_prompt(prompt) ([bos] + characters) + characters of worked_solution + [eos].
    Example: "1+2=" -> ([bos, '1', '+', '2', '='] + list("1+2=3\\n#### 3") + [eos], 5).
    """
    prompt = encode_prompt(tokenizer, problem.prompt)
    completion = tokenizer.encode(worked_solution(problem), add_special_tokens=False)
    return prompt + list(completion) + [tokenizer.eos_token_id], len(prompt)


def collate(examples: Sequence[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad examples into (input_ids Long[B, L], labels Long[B, L]); L = longest sequence.

    labels equal input_ids on completion tokens (solution + eos) and IGNORE on prompt and padding tokens.
    No attention mask is needed: padding is on the right, so under causal attention no real token sees it.
    """
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(examples):
        if not 0 < n_prompt < len(ids):
            raise ValueError(f"collate: example {row} has prompt length {n_prompt} for {len(ids)} tokens")
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[row, n_prompt:len(ids)] = input_ids[row, n_prompt:len(ids)]
    return input_ids, labels


# ----------------------------------------------------------------------------------------------
# Optimisation
# ----------------------------------------------------------------------------------------------

def lr_at(step: int, *, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warmup to ``peak`` over ``warmup`` steps
    (step 0 gets peak/warmup, step warmup-1 gets peak), then a cosine down to ``peak * min_ratio`` at step
    ``total - 1``.

    Example: peak 1, warmup 2, total 5, min_ratio 0 -> 0.5, 1.0, 0.75, 0.25, 0.0.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step + 1 - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (dim >= 2: projections, embedding) and none on norms and biases."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8)


def build_model(args: argparse.Namespace, vocab_size: int) -> Qwen2ForCausalLM:
    """The randomly initialised model, deterministic in ``args.seed``."""
    config = tiny_qwen2_config(vocab_size, hidden_size=args.hidden_size, num_layers=args.num_layers,
                               num_heads=args.num_heads, num_kv_heads=args.num_kv_heads,
                               intermediate_size=args.intermediate_size, max_positions=args.max_positions)
    torch.manual_seed(args.seed)
    return Qwen2ForCausalLM(config).float()


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, input_ids: torch.Tensor,
               labels: torch.Tensor, lr: float, grad_clip: float) -> tuple[float, float]:
    """One optimiser step on the mean completion-token cross-entropy; returns (loss, grad norm before clipping)."""
    model.train()
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = model(input_ids=input_ids, labels=labels).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.item(), norm.item()


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

def accuracy(model: Any, tokenizer: Any, problems: Sequence[Problem], *, temperature: float, seed: int,
             max_new_tokens: int) -> tuple[float, list[str]]:
    """Fraction of ``problems`` whose one completion (HFSampler, n=1) verify_int accepts, and the completions.

    temperature 1.0 = pass@1 as RL samples it; 0 = greedy accuracy.
    """
    sampler = HFSampler(model, tokenizer, max_batch_size=256)
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
    rollout = sampler.generate([encode_prompt(tokenizer, p.prompt) for p in problems], params, n=1, seed=seed)
    scores = [verify_int(text, p.answer).score for text, p in zip(rollout.texts, problems)]
    return sum(scores) / len(scores), rollout.texts


def evaluate(model: Any, tokenizer: Any, problems: Sequence[Problem], *, seed: int,
             max_new_tokens: int) -> dict[str, float]:
    """``{"pass@1": sampled accuracy at temperature 1, "greedy": greedy accuracy}`` on ``problems``."""
    sampled, _ = accuracy(model, tokenizer, problems, temperature=1.0, seed=seed, max_new_tokens=max_new_tokens)
    greedy, _ = accuracy(model, tokenizer, problems, temperature=0.0, seed=seed, max_new_tokens=max_new_tokens)
    return {"pass@1": sampled, "greedy": greedy}


def should_stop(step: int, pass1: float, *, min_steps: int, target: Sequence[float]) -> bool:
    """Stop after ``step`` (1-based count of steps done) when step >= min_steps and pass@1 >= the window's low end.

    Above the window also stops: training longer would only move further away from it.
    """
    return step >= min_steps and pass1 >= target[0]


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------

def save_folder(model: Any, tokenizer: Any, out: Path, metadata: dict[str, Any]) -> None:
    """Write model.safetensors + config + tokenizer + metadata.json + README.md into a temporary sibling of
    ``out`` and rename it to ``out``; an existing ``out`` is replaced only once the new folder is complete."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        (tmp / "README.md").write_text(readme_text(metadata))
        old = out.with_name(f".{out.name}-old")
        if old.exists():
            shutil.rmtree(old)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def readme_text(meta: dict[str, Any]) -> str:
    """The folder's README: what the model is, how it was made, how well it does."""
    final = meta["final_eval"]
    return f"""# tiny-arith

A {meta['parameters'] / 1e6:.2f} M-parameter Qwen2-shaped causal LM with the character tokenizer of
`rlvr.models.char_tokenizer` (no chat template; a prompt is `[bos]` + its characters), pretrained on the
synthetic `arith` task (`rlvr.data.arith`, knobs {json.dumps(meta['knobs'])}; {{}} = task defaults) with worked
solutions such as `77+97-98=` -> `77+97=174\\n174-98=76\\n#### 76`. It is the starting point for CPU-sized
RL runs (`rlvr.models.load_model("tiny-arith")`), stopped on purpose while it is still often wrong.

Made by:

    {meta['command']}

in {meta['wall_time_s']:.0f} s ({meta['steps']} steps of {meta['batch_size']} sequences; torch {meta['torch_version']},
torch threads: {meta['threads']}). On {final['problems']} held-out problems (`arith_problems({final['problems']}, seed={meta['eval_seed']})`,
never trained on), with at most {meta['max_new_tokens']} new tokens:

- sampled pass@1 at temperature 1 (HFSampler seed {meta['seed']}): {final['pass@1']:.3f}
- greedy accuracy: {final['greedy']:.3f}

`metadata.json` has the full settings and the evaluation history.

Load the tokenizer with `PreTrainedTokenizerFast.from_pretrained(<this folder>)`: `AutoTokenizer` in
transformers 5.x replaces it with `Qwen2Tokenizer` for any folder whose config is qwen2 (its pre-tokenizer
drops spaces and newlines).
"""


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    tokenizer = char_tokenizer()
    model = build_model(args, len(tokenizer))
    _, n_params = count_parameters(model)
    held = arith_problems(args.eval_size, seed=args.eval_seed, **args.knobs)
    held_out = {p.prompt for p in held}
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    print(f"tiny-arith: {n_params:,} parameters, {args.eval_size} held-out problems, knobs {args.knobs}", flush=True)

    history: list[dict[str, Any]] = []
    recent: list[float] = []
    step = 0
    while step < args.max_steps:
        problems = train_problems(step, seed=args.seed, batch_size=args.batch_size, held_out=held_out, knobs=args.knobs)
        input_ids, labels = collate([encode_example(tokenizer, p) for p in problems], tokenizer.pad_token_id)
        lr = lr_at(step, peak=args.lr, warmup=args.warmup_steps, total=args.max_steps, min_ratio=args.min_lr_ratio)
        loss, norm = train_step(model, optimizer, input_ids, labels, lr, args.grad_clip)
        recent.append(loss)
        step += 1
        if step % args.eval_every == 0 or step == args.max_steps:
            eval_started = time.time()
            scores = evaluate(model, tokenizer, held, seed=args.seed, max_new_tokens=args.max_new_tokens)
            elapsed = time.time() - started
            history.append({"step": step, "loss": sum(recent) / len(recent), "lr": lr, "grad_norm": norm,
                            "elapsed_s": round(elapsed, 1), **scores})
            print(f"step {step:5d}  loss {history[-1]['loss']:.4f}  lr {lr:.2e}  pass@1 {scores['pass@1']:.3f}  "
                  f"greedy {scores['greedy']:.3f}  {elapsed:.0f}s (eval {time.time() - eval_started:.0f}s)", flush=True)
            recent = []
            if should_stop(step, scores["pass@1"], min_steps=args.min_steps, target=args.target):
                break

    final = history[-1]
    in_window = args.target[0] <= final["pass@1"] <= args.target[1]
    metadata = {
        "command": "HF_HUB_OFFLINE=1 python " + " ".join(shlex.quote(a) for a in
                                                        ["scripts/pretrain_tiny_arith.py", *(argv if argv is not None else sys.argv[1:])]),
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "seed": args.seed, "eval_seed": args.eval_seed, "knobs": args.knobs, "threads": args.threads,
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "parameters": n_params, "steps": step, "stopped_in_target": in_window,
        "final_eval": {"problems": len(held), "pass@1": final["pass@1"], "greedy": final["greedy"],
                       "temperature": 1.0, "sampler_seed": args.seed},
        "history": history, "wall_time_s": round(time.time() - started, 1),
        "torch_version": torch.__version__, "transformers_version": transformers.__version__,
        "python_version": platform.python_version(), "machine": platform.machine(),
    }
    save_folder(model, tokenizer, args.out, metadata)
    print(f"saved {args.out} after {step} steps: pass@1 {final['pass@1']:.3f}, greedy {final['greedy']:.3f}, "
          f"{'in' if in_window else 'NOT in'} the target window {list(args.target)}, {metadata['wall_time_s']:.0f}s",
          flush=True)
    return metadata


if __name__ == "__main__":
    main()
