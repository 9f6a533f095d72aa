"""Activation checkpointing (``model.gradient_checkpointing``) on a grouped-query-attention model.

tiny-random is Qwen2-shaped with 4 query heads sharing 2 KV heads, like SmolLM2 and Qwen2. rlvr swaps HF's
"sdpa" attention for its GQA kernel inside ``rlvr.attention.gqa_attention``; a checkpointed backward recomputes
the forward after that block has ended, which crashed with ``CheckpointError`` before. Here the log-probs, the
gradients and a whole ``rlvr train`` run with checkpointing equal those without it.
"""
from __future__ import annotations

import pytest
import torch

from rlvr.attention import GQA_SDPA, checkpointing_in_training, gqa_attention
from rlvr.config import load_config
from rlvr.logprobs import completion_logprobs
from rlvr.metrics import read_metrics
from rlvr.models import apply_lora, tiny_random, trainable_state_dict
from test_logprobs import grouped_batch
from test_train_e2e import TINY


def _tiny_llama():
    """SmolLM2's architecture (Llama, 9 query heads on 3 KV heads) at toy size, random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=99, hidden_size=36, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config)


def _model(lora: bool, checkpointing: bool, arch: str = "qwen2"):
    model = tiny_random(0)[0] if arch == "qwen2" else _tiny_llama()
    assert model.config._attn_implementation == "sdpa"
    assert model.config.num_key_value_heads < model.config.num_attention_heads          # GQA
    if lora:
        torch.manual_seed(0)
        model = apply_lora(model, rank=4, alpha=8)
        for name, p in model.named_parameters():   # B starts at 0: make the adapters matter
            if "lora_B" in name:
                p.data.normal_(0, 0.05, generator=torch.Generator().manual_seed(hash(name) % 2**31))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_logprobs_and_gradients_equal_those_without_checkpointing(lora, arch):
    prompts, completion, lengths = grouped_batch(seed=5)
    completion = completion.clamp(min=0)
    got = []
    for checkpointing in (False, True):
        model = _model(lora, checkpointing, arch)
        assert checkpointing_in_training(model) == checkpointing
        lp, _ = completion_logprobs(model, prompts, completion, lengths)
        weights = torch.linspace(-1, 1, lp.numel()).view_as(lp)
        (lp * weights).sum().backward()                     # crashed with CheckpointError before the fix
        params = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert all(g is not None for g in params.values())
        got.append((lp.detach(), params))
    (lp_a, g_a), (lp_b, g_b) = got
    torch.testing.assert_close(lp_b, lp_a, rtol=0, atol=1e-6)
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        torch.testing.assert_close(g_b[name], g_a[name], rtol=1e-5, atol=1e-6, msg=name)


def test_the_gqa_kernel_is_kept_outside_checkpointed_training():
    model = _model(lora=False, checkpointing=True)
    with gqa_attention(model.model):
        assert model.config._attn_implementation == "sdpa"       # forward and recompute see the same function
    model.eval()                                                   # no recompute in eval mode: the fast kernel
    with gqa_attention(model.model):
        assert model.config._attn_implementation == GQA_SDPA
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_rlvr_train_with_checkpointing_reproduces_the_run_without(tmp_path, lora):
    from rlvr.trainer import train
    from safetensors.torch import load_file

    rows, weights = {}, {}
    for checkpointing in (False, True):
        run = tmp_path / f"gc{int(checkpointing)}"
        cfg = load_config(None, [*TINY, "steps=2", "eval.at_start=false", f"model.lora={str(lora).lower()}",
                                 f"model.gradient_checkpointing={str(checkpointing).lower()}",
                                 "algo.num_iterations=2", "algo.micro_batch_size=3"])
        train(cfg, run_dir=run)
        rows[checkpointing] = [r for r in read_metrics(run) if "loss/policy" in r]
        weights[checkpointing] = load_file(str(run / "checkpoints" / "step_000002" / "model.safetensors"))
    a, b = rows[False], rows[True]
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        assert ra["reward/mean"] == rb["reward/mean"] and ra["response/length_mean"] == rb["response/length_mean"]
        for key in ("loss/policy", "train/grad_norm", "policy/entropy"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-7), key
        assert rb["train/skipped_steps"] == 0
    model, _ = tiny_random(0)
    if lora:
        torch.manual_seed(0)      # as the trainer initialises the adapters (seed 0)
        model = apply_lora(model)
    initial = trainable_state_dict(model)
    assert weights[False].keys() == weights[True].keys() == initial.keys()
    for name, w in weights[False].items():   # Adam turns rounding-level gradient differences into small steps:
        moved = float((w - initial[name]).abs().max())          # bound the gap by 1% of how far training moved
        gap = float((weights[True][name] - w).abs().max())
        assert gap <= 1e-6 + 0.01 * moved, (name, gap, moved)
    assert all(not torch.equal(w, initial[name]) for name, w in weights[True].items()
               if not (lora and "lora_A" in name))   # trained: A's gradient is 0 while B is still 0
