"""Padding-free packing in rlvr.logprobs (``completion_logprobs(..., pack=True)``, ``model.pack_sequences``).

Oracle: the padded path (itself checked against full logits in test_logprobs.py). In float64 the packed paths give
the same log-probs, entropies and gradients for every parameter, to rounding, on batches whose completions have
lengths 0, 1 and the maximum; on Qwen2 (tiny_random) and on SmolLM2's Llama shape (9 query heads on 3 KV heads),
with SDPA, our GQA attention and eager attention; with and without shared prompts, LoRA and checkpointing.
"""
from __future__ import annotations

import pytest
import torch

from rlvr.logprobs import completion_logprobs, pack_into_rows
from rlvr.models import tiny_random
from test_logprobs import TokenCount, grads, grouped_batch, lora_with_random_b, naive_logprobs


def _llama(attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=99, hidden_size=36, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                         attn_implementation=attn)
    return LlamaForCausalLM(config).eval()


def _qwen2(attn: str = "sdpa"):
    m = tiny_random(4)[0]
    m.config._attn_implementation = attn
    return m


MODELS = {"qwen2": _qwen2, "llama": _llama}


def _run(model, prompts, completion, lengths, **kw):
    w = torch.linspace(-1, 1, completion.numel(), dtype=torch.float64).view(completion.shape)
    lp, ent = completion_logprobs(model, prompts, completion, lengths, with_entropy=True, **kw)
    return lp, ent, grads(model, (lp * w.to(lp.dtype)).sum())


def _assert_same(got, want, grad_rtol=1e-9, atol=1e-12):
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=atol)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=atol)
    assert set(got[2]) == set(want[2]) and all(g is not None for g in got[2].values())
    for name, g in want[2].items():
        assert float((got[2][name] - g).norm()) <= grad_rtol * float(g.norm()) + 1e-12, name


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("share", [True, False], ids=["shared", "unshared"])
def test_packed_equals_padded_in_float64(arch, attn, share):
    """Lengths 0, 1 and T in one batch; the shared path (3 prompts over 7 rows) and the unshared one. Gradients to
    ~1e-7 relative: RMSNorm computes in fp32 whatever the model dtype, and packing sums in another order. HF's eager
    attention takes its softmax in fp32 too, over another number of masked keys: values to 1e-7 there."""
    model = MODELS[arch](attn).double()
    prompts, completion, lengths = grouped_batch(seed=7)
    padded = _run(model, prompts, completion, lengths, share_prompts=share)
    packed = _run(model, prompts, completion, lengths, share_prompts=share, pack=True)
    assert packed[0].dtype == torch.float64
    _assert_same(packed, padded, grad_rtol=3e-7 if attn == "sdpa" else 3e-6, atol=1e-12 if attn == "sdpa" else 1e-7)


def test_packed_matches_full_logits_in_float32():
    """Against the oracle of test_logprobs (one unpadded row at a time, full logits)."""
    model = _llama()
    prompts, completion, lengths = grouped_batch(seed=8)
    lp, ent = completion_logprobs(model, prompts, completion, lengths, with_entropy=True, pack=True)
    ref, ref_ent = naive_logprobs(model, prompts, completion.clamp(min=0), lengths)
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=1e-5)
    mask = torch.arange(completion.shape[1])[None, :] < lengths[:, None]
    assert torch.all(lp[~mask] == 0)


def test_pack_into_rows_by_hand():
    # longest first into the first row with room (size 0 last, into the first row); an item over the capacity alone
    assert pack_into_rows([5, 0, 3, 4, 2, 5], 5) == [[0, 1], [5], [3], [2, 4]]
    assert pack_into_rows([7, 2], 5) == [[0], [1]]
    assert pack_into_rows([0, 0], 3) == [[0, 1]]
    assert pack_into_rows([], 3) == []


def test_a_packed_row_sees_only_the_prompts_it_continues():
    """Pass 2's cache for each packed row: the keys of the prompts of its own completions, back to back (prompts of
    3, 2, 1 tokens starting at flat positions 0, 5, 3 of pass 1), not every prompt of the micro-batch."""
    from rlvr.logprobs import _prompt_keys

    own = torch.tensor([[0, 0, 1, -1], [2, 2, 2, 2]])
    keys, whose = _prompt_keys(own, torch.tensor([3, 2, 1]), torch.tensor([0, 5, 3]))
    assert keys.tolist() == [[0, 1, 2, 5, 6], [3, 0, 0, 0, 0]]
    assert whose.tolist() == [[0, 0, 0, 1, 1], [2, -1, -1, -1, -1]]


def test_packed_rows_hold_at_most_the_longest_sequence():
    """grouped_batch: prompts of 5, 2, 1 tokens over 7 rows, completion lengths 6, 0, 3, 1, 5, 2, 6 (inputs
    l − 1 ≥ 0). Shared and packed: pass 1 holds the 3 prompts in rows of at most 5: [5], [2 + 1] -> 2 × 5 = 10
    positions (Σ = 8; 3 × 5 padded); pass 2 the completion inputs 5, 0, 2, 0, 4, 1, 5 in rows of at most 5:
    [5], [5], [4 + 1], [2] -> 4 × 5 = 20 positions (Σ = 17), against 7 × 5 padded. Unshared: prompt + inputs
    10, 5, 4, 5, 6, 2, 7 in rows of at most 10: [10], [7 + 2], [6 + 4], [5 + 5] -> 4 × 10 = 40 (Σ = 39),
    against 7 × 11 padded."""
    model = _qwen2()
    prompts, completion, lengths = grouped_batch()
    for share, want in ((True, (2, 10 + 20)), (False, (1, 40))):
        counter = TokenCount(model)
        completion_logprobs(model, prompts, completion, lengths, share_prompts=share, pack=True)
        counter.handle.remove()
        assert (counter.calls, counter.tokens) == want


def test_flash_attention_packs_one_row_without_a_mask(monkeypatch):
    """Without custom masks (flash attention's varlen kernels) every sequence shares one row, Σ positions, and the
    decoder gets no mask: transformers reads the boundaries from the restarting position ids."""
    import rlvr.logprobs as L

    model = _qwen2().double()
    prompts, completion, lengths = grouped_batch(seed=3)
    want = _run(model, prompts, completion, lengths, share_prompts=False)
    seen = []
    model.model.register_forward_pre_hook(lambda m, a, kw: seen.append((kw["input_ids"].shape, kw["attention_mask"])),
                                          with_kwargs=True)
    monkeypatch.setattr(L, "can_mask", lambda decoder: False)
    got = _run(model, prompts, completion, lengths, share_prompts=False, pack=True)
    assert seen == [(torch.Size([1, 39]), None)]
    _assert_same(got, want, grad_rtol=3e-7)


def test_packed_rows_never_see_each_other():
    """Changing one row's tokens changes no other row's log-probs (attention confined to each sequence)."""
    model = _llama()
    prompts, completion, lengths = grouped_batch(seed=9)
    completion = completion.clamp(min=0)
    for share in (True, False):
        base, _ = completion_logprobs(model, prompts, completion, lengths, share_prompts=share, pack=True)
        other = completion.clone()
        other[0] = (other[0] + 1) % 99
        changed, _ = completion_logprobs(model, prompts, other, lengths, share_prompts=share, pack=True)
        assert not torch.equal(changed[0], base[0])
        torch.testing.assert_close(changed[1:], base[1:], rtol=0, atol=0)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_with_lora_and_checkpointing_match_padded(checkpointing):
    """LoRA gradients reach only the adapters and equal the padded path's; under checkpointing the packed path runs
    without a cache (one pass over the packed rows of prompt + completion)."""
    model = lora_with_random_b(_llama().double())
    prompts, completion, lengths = grouped_batch(seed=10)
    padded = _run(model, prompts, completion, lengths)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    counter = TokenCount(model)
    packed = _run(model, prompts, completion, lengths, pack=True)
    counter.handle.remove()
    assert counter.calls == (1 if checkpointing else 2)
    assert all("lora_" in n for n in packed[2])
    _assert_same(packed, padded, grad_rtol=3e-7)


def test_all_empty_and_single_row_batches():
    model = _qwen2().double()
    for prompts, lengths in (([[1, 4], [1, 4]], [0, 0]), ([[1, 4, 5]], [3]), ([[1]], [1])):
        completion = torch.full((len(prompts), 3), 7)
        lengths = torch.tensor(lengths)
        for share in (True, False):
            padded = _run(model, prompts, completion, lengths, share_prompts=share)
            packed = _run(model, prompts, completion, lengths, share_prompts=share, pack=True)
            torch.testing.assert_close(packed[0], padded[0], rtol=0, atol=1e-12)
