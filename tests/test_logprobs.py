"""rlvr.logprobs: chunked selective log-softmax and completion log-probs.

Oracle: the naive path, one unpadded row at a time: ``model(prompt + completion).logits.float()
.log_softmax(-1)`` gathered at the completion tokens (and −Σ p log p for the entropy). Values and the
gradients w.r.t. every parameter must agree to ~1e-5.
"""
from __future__ import annotations

import math

import pytest
import torch

from rlvr.logprobs import completion_logprobs, selective_log_softmax
from rlvr.models import apply_lora, tiny_random

V = 99  # char tokenizer vocabulary of tiny_random


# ----------------------------------------------------------------------------------------------
# Oracle and fixtures
# ----------------------------------------------------------------------------------------------

def naive_logprobs(model, prompts, completion_ids, lengths):
    """(logprobs [B, T], entropy [B, T]) from full logits, one row at a time, zeros past each length."""
    B, T = completion_ids.shape
    lp_rows, ent_rows = [], []
    for b in range(B):
        p, n = len(prompts[b]), int(lengths[b])
        ids = torch.tensor([prompts[b] + completion_ids[b, :n].tolist()])
        logp = model(input_ids=ids).logits.float().log_softmax(-1)[0]          # [p + n, V]
        pred = logp[p - 1:p - 1 + n]                                             # rows predicting tokens 0..n-1
        lp = pred.gather(1, completion_ids[b, :n, None]).squeeze(1)
        ent = -(pred.exp() * pred).sum(-1).detach()
        lp_rows.append(torch.cat([lp, lp.new_zeros(T - n)]))
        ent_rows.append(torch.cat([ent, ent.new_zeros(T - n)]))
    return torch.stack(lp_rows), torch.stack(ent_rows)


def ragged_batch(seed: int = 0, T: int = 7):
    """Five rows: prompt lengths 1..6, completion lengths including 0 and T; garbage (-1) past each length."""
    g = torch.Generator().manual_seed(seed)
    prompt_lens = [3, 1, 6, 2, 4]
    lengths = torch.tensor([T, 0, 3, 1, 5])
    prompts = [[1] + torch.randint(3, V, (n - 1,), generator=g).tolist() for n in prompt_lens]
    completion = torch.randint(3, V, (5, T), generator=g)
    completion[torch.arange(T)[None, :] >= lengths[:, None]] = -1   # never read: -1 is not a token id
    return prompts, completion, lengths


def grads(model, loss):
    """{name: grad} of the trainable parameters (None where no gradient arrived)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    got = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return dict(zip(params, got))


@pytest.fixture(scope="module")
def model():
    m, _ = tiny_random(0)
    return m


def _weights(lengths, T, seed=1):
    """Random per-token loss weights, so every position has a distinct gradient."""
    return torch.randn(len(lengths), T, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# selective_log_softmax: hand-worked values, gradcheck, chunking, memory
# ----------------------------------------------------------------------------------------------

def test_hand_worked_row():
    # One row, H = 1: logits z = h·W = [0, ln 2, ln 3], so softmax = [1, 2, 3] / 6.
    hidden = torch.tensor([[1.0]])
    weight = torch.tensor([[0.0], [math.log(2)], [math.log(3)]])
    lp, ent = selective_log_softmax(hidden, weight, torch.tensor([2]), with_entropy=True)
    assert lp.item() == pytest.approx(math.log(3 / 6), abs=1e-6)
    expected_entropy = -sum(p * math.log(p) for p in (1 / 6, 2 / 6, 3 / 6))
    assert ent.item() == pytest.approx(expected_entropy, abs=1e-6)
    # With bias b = [ln 3, 0, 0] the logits become [ln 3, ln 2, ln 3]: p(target 1) = 2 / 8.
    lp_b, _ = selective_log_softmax(hidden, weight, torch.tensor([1]), bias=torch.tensor([math.log(3), 0.0, 0.0]))
    assert lp_b.item() == pytest.approx(math.log(2 / 8), abs=1e-6)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 2, 64])
def test_gradcheck_float64(with_bias, chunk_size):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(7, 3, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True) if with_bias else None
    targets = torch.tensor([0, 6, 3, 3, 1])

    def fn(h, w, *b):
        return selective_log_softmax(h, w, targets, bias=b[0] if b else None, chunk_size=chunk_size)[0]

    inputs = (hidden, weight) + ((bias,) if with_bias else ())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8)


def test_gradient_only_for_inputs_that_need_it():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(6, 3, dtype=torch.float64, generator=g)          # frozen head (LoRA case)
    assert torch.autograd.gradcheck(lambda h: selective_log_softmax(h, weight, torch.tensor([1, 2, 3, 5]))[0],
                                    (hidden,), eps=1e-6, atol=1e-8)


def test_chunk_size_invariance_direct():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(11, 8, generator=g, requires_grad=True)
    weight = torch.randn(30, 8, generator=g, requires_grad=True)
    targets = torch.randint(0, 30, (11,), generator=g)
    upstream = torch.randn(11, generator=g)
    results = []
    for chunk in (1, 3, 10_000):
        lp, ent = selective_log_softmax(hidden, weight, targets, chunk_size=chunk, with_entropy=True)
        results.append((lp, ent, *torch.autograd.grad((lp * upstream).sum(), (hidden, weight))))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_no_n_by_v_tensor_is_saved_for_backward():
    N, H, Vocab = 50, 8, 30                               # N·V = 1500 exceeds every legitimate saved tensor
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, H, generator=g, requires_grad=True)
    weight = torch.randn(Vocab, H, generator=g, requires_grad=True)
    targets = torch.randint(0, Vocab, (N,), generator=g)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        lp, _ = selective_log_softmax(hidden, weight, targets, chunk_size=7, with_entropy=True)
    assert sorted(saved) == sorted([(N, H), (Vocab, H), (N,), (N,)])      # hidden, weight, targets, lse
    assert all(math.prod(s) < N * Vocab for s in saved)
    lp.sum().backward()                                                      # still differentiable
    assert hidden.grad.shape == (N, H) and weight.grad.shape == (Vocab, H)


def test_head_runs_in_fp32_under_autocast_and_for_bf16_hidden():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(9, 16, generator=g)
    weight = torch.randn(40, 16, generator=g)
    targets = torch.randint(0, 40, (9,), generator=g)
    ref, _ = selective_log_softmax(hidden, weight, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast, _ = selective_log_softmax(hidden, weight, targets)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, ref, rtol=0, atol=0)        # a bf16 matmul would differ

    h16 = hidden.bfloat16().requires_grad_(True)
    lp16, _ = selective_log_softmax(h16, weight, targets)
    ref16, _ = selective_log_softmax(h16.detach().float(), weight, targets)
    assert lp16.dtype == torch.float32
    torch.testing.assert_close(lp16, ref16, rtol=0, atol=0)
    lp16.sum().backward()
    assert h16.grad.dtype == torch.bfloat16


def test_selective_log_softmax_rejects_bad_input():
    h, w = torch.zeros(3, 4), torch.zeros(5, 4)
    with pytest.raises(ValueError, match="target id 5 is outside the vocabulary"):
        selective_log_softmax(h, w, torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match=r"hidden must be \[N, H\]"):
        selective_log_softmax(h, torch.zeros(5, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="targets must be Long"):
        selective_log_softmax(h, w, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="bias must be"):
        selective_log_softmax(h, w, torch.tensor([0, 1, 2]), bias=torch.zeros(4))
    with pytest.raises(ValueError, match="chunk_size"):
        selective_log_softmax(h, w, torch.tensor([0, 1, 2]), chunk_size=0)


# ----------------------------------------------------------------------------------------------
# completion_logprobs against the naive full-logits path
# ----------------------------------------------------------------------------------------------

def test_values_and_entropy_match_naive(model):
    prompts, completion, lengths = ragged_batch()
    lp, ent = completion_logprobs(model, prompts, completion, lengths, chunk_size=4, with_entropy=True)
    ref_lp, ref_ent = naive_logprobs(model, prompts, completion.clamp(min=0), lengths)
    assert lp.dtype == torch.float32 and lp.shape == completion.shape
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=1e-5)
    assert not ent.requires_grad


def test_masked_positions_are_exactly_zero_and_get_no_gradient(model):
    prompts, completion, lengths = ragged_batch()
    lp, ent = completion_logprobs(model, prompts, completion, lengths, with_entropy=True)
    mask = torch.arange(completion.shape[1])[None, :] < lengths[:, None]
    assert torch.all(lp[~mask] == 0) and torch.all(ent[~mask] == 0)
    assert torch.all(lp[mask] < 0)
    # A loss on masked positions only has zero gradient everywhere.
    loss = (lp * (~mask) * 1e3).sum()
    assert all(g is None or torch.all(g == 0) for g in grads(model, loss).values())


def test_gradients_match_naive_for_every_parameter(model):
    prompts, completion, lengths = ragged_batch(seed=4)
    w = _weights(lengths, completion.shape[1])
    lp, _ = completion_logprobs(model, prompts, completion, lengths, chunk_size=3)
    ref, _ = naive_logprobs(model, prompts, completion.clamp(min=0), lengths)
    got, want = grads(model, (lp * w).sum()), grads(model, (ref * w).sum())
    assert set(got) == set(want) and len(got) == len(list(model.parameters()))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)


def test_chunk_size_invariance_through_the_model(model):
    prompts, completion, lengths = ragged_batch(seed=5)
    w = _weights(lengths, completion.shape[1])
    outs = []
    for chunk in (1, 3, 4096):
        lp, _ = completion_logprobs(model, prompts, completion, lengths, chunk_size=chunk)
        outs.append((lp, grads(model, (lp * w).sum())))
    for lp, g in outs[1:]:
        torch.testing.assert_close(lp, outs[0][0], rtol=1e-6, atol=1e-6)
        for name in g:
            torch.testing.assert_close(g[name], outs[0][1][name], rtol=1e-5, atol=1e-5)


def test_lora_gradients_reach_only_adapters_and_match_naive():
    base, _ = tiny_random(1)
    peft_model = apply_lora(base, rank=4, alpha=8)
    with torch.no_grad():                                   # B = 0 at init; make the adapters do something
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    prompts, completion, lengths = ragged_batch(seed=6)
    w = _weights(lengths, completion.shape[1])
    lp, _ = completion_logprobs(peft_model, prompts, completion, lengths, chunk_size=5)
    ref, _ = naive_logprobs(peft_model, prompts, completion.clamp(min=0), lengths)
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-5)
    with peft_model.disable_adapter():                     # the adapters really changed the values
        no_lora, _ = completion_logprobs(peft_model, prompts, completion, lengths)
    assert (lp - no_lora).abs().max() > 1e-3

    (lp * w).sum().backward()
    with_grad = {n for n, p in peft_model.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert with_grad == {n for n, p in peft_model.named_parameters() if p.requires_grad}
    got = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.grad is not None}
    peft_model.zero_grad(set_to_none=True)
    (ref * w).sum().backward()
    for n, p in peft_model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)


def test_autocast_bf16_matches_naive_autocast(model):
    prompts, completion, lengths = ragged_batch(seed=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, _ = completion_logprobs(model, prompts, completion, lengths)
        ref, _ = naive_logprobs(model, prompts, completion.clamp(min=0), lengths)
    fp32, _ = completion_logprobs(model, prompts, completion, lengths)
    assert lp.dtype == torch.float32
    # Same bf16 body; our head is fp32, the naive head is bf16, so they agree to bf16 precision only.
    torch.testing.assert_close(lp, ref, rtol=0, atol=5e-2)
    torch.testing.assert_close(lp, fp32, rtol=0, atol=5e-2)
    lp.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_full_logits_are_never_computed(model):
    def refuse(*_):
        raise AssertionError("lm_head forward was called")

    handle = model.get_output_embeddings().register_forward_pre_hook(refuse)
    try:
        prompts, completion, lengths = ragged_batch()
        lp, _ = completion_logprobs(model, prompts, completion, lengths)
    finally:
        handle.remove()
    assert lp.abs().sum() > 0


def test_all_empty_completions_give_zeros_and_a_working_backward(model):
    lp, ent = completion_logprobs(model, [[1, 5], [1]], torch.zeros(2, 3, dtype=torch.long),
                                  torch.tensor([0, 0]), with_entropy=True)
    assert torch.equal(lp, torch.zeros(2, 3)) and torch.equal(ent, torch.zeros(2, 3))
    assert all(g is None or torch.all(g == 0) for g in grads(model, lp.sum()).values())


def test_completion_logprobs_rejects_bad_input(model):
    comp = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=3\]"):
        completion_logprobs(model, [[1], [1]], comp, torch.tensor([1, 4]))
    with pytest.raises(ValueError, match=r"prompt_ids rows \[1\] are empty"):
        completion_logprobs(model, [[1], []], comp, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="prompt_ids has 1 rows but completion_ids has B=2"):
        completion_logprobs(model, [[1]], comp, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="completion_ids must be Long"):
        completion_logprobs(model, [[1], [1]], comp.float(), torch.tensor([1, 1]))


def test_rejects_models_whose_logits_are_not_a_plain_linear_head():
    m, _ = tiny_random(0)
    m.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping=30.0"):
        completion_logprobs(m, [[1]], torch.zeros(1, 1, dtype=torch.long), torch.tensor([1]))


def test_training_forward_uses_the_gqa_attention_and_restores_sdpa():
    from rlvr.attention import GQA_SDPA
    from rlvr.logprobs import completion_logprobs
    from rlvr.models import tiny_random

    model, _ = tiny_random(0)
    assert model.config._attn_implementation == "sdpa"
    seen = []
    layer = model.model.layers[0].self_attn
    h = layer.register_forward_pre_hook(lambda mod, args: seen.append(mod.config._attn_implementation))
    lp, _ = completion_logprobs(model, [[1, 5, 6], [1, 7]], torch.tensor([[8, 9], [10, 2]]), torch.tensor([2, 1]))
    lp.sum().backward()
    h.remove()
    assert seen == [GQA_SDPA] and model.config._attn_implementation == "sdpa"


# ----------------------------------------------------------------------------------------------
# Shared prompts: each distinct prompt runs once, its rows attend to its KV cache
# ----------------------------------------------------------------------------------------------

def grouped_batch(seed: int = 0, T: int = 6):
    """Seven rows over three prompts (lengths 5, 2 and 1), not contiguous; completion lengths include 0, 1 and T;
    garbage (-1) past each length."""
    g = torch.Generator().manual_seed(seed)
    pa, pb, pc = ([1] + torch.randint(3, V, (n - 1,), generator=g).tolist() for n in (5, 2, 1))
    prompts = [pa, pa, pb, pa, pb, pc, pb]
    lengths = torch.tensor([T, 0, 3, 1, 5, 2, T])
    completion = torch.randint(3, V, (7, T), generator=g)
    completion[torch.arange(T)[None, :] >= lengths[:, None]] = -1
    return prompts, completion, lengths


class TokenCount:
    """Counts the token positions (and calls) the decoder's embedding sees."""

    def __init__(self, model):
        self.tokens, self.calls = 0, 0
        self.handle = model.get_input_embeddings().register_forward_hook(self)

    def __call__(self, module, args, output):
        self.tokens += args[0].numel()
        self.calls += 1


def test_shared_prompts_match_naive_values_entropy_and_every_gradient(model):
    prompts, completion, lengths = grouped_batch()
    w = _weights(lengths, completion.shape[1], seed=3)
    counter = TokenCount(model)
    lp, ent = completion_logprobs(model, prompts, completion, lengths, chunk_size=4, with_entropy=True)
    counter.handle.remove()
    # Two passes: 3 prompts padded to 5, then 7 rows of max(lengths) - 1 = 5 completion tokens (unshared: 7 × 11).
    assert (counter.calls, counter.tokens) == (2, 3 * 5 + 7 * 5)
    ref, ref_ent = naive_logprobs(model, prompts, completion.clamp(min=0), lengths)
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=1e-5)
    mask = torch.arange(completion.shape[1])[None, :] < lengths[:, None]
    assert torch.all(lp[~mask] == 0) and torch.all(lp[mask] < 0)
    got, want = grads(model, (lp * w).sum()), grads(model, (ref * w).sum())
    assert set(got) == set(want) and all(got[n] is not None for n in got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)


def test_shared_and_unshared_agree_in_float64():
    """Values to fp64 rounding; gradients to ~3e-8 relative (norm), because Qwen2's RMSNorm computes in fp32 and the
    shared path sums the prompt's gradient over its rows in another order."""
    m, _ = tiny_random(2)
    m = m.double()
    prompts, completion, lengths = grouped_batch(seed=1)
    w = _weights(lengths, completion.shape[1], seed=4).double()
    out = {}
    for share in (True, False):
        lp, ent = completion_logprobs(m, prompts, completion, lengths, with_entropy=True, share_prompts=share)
        assert lp.dtype == torch.float64
        out[share] = (lp, ent, grads(m, (lp * w).sum()))
    torch.testing.assert_close(out[True][0], out[False][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=0, atol=1e-12)
    for name, g in out[False][2].items():
        assert float((out[True][2][name] - g).norm()) <= 3e-7 * float(g.norm()) + 1e-12, name


def lora_with_random_b(base, rank=4, alpha=8):
    """LoRA on ``base`` with its B matrices drawn (not zero), so that the adapters change the outputs."""
    model = apply_lora(base, rank=rank, alpha=alpha)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    return model


def test_shared_prompts_with_lora_match_naive():
    peft_model = lora_with_random_b(tiny_random(3)[0])
    prompts, completion, lengths = grouped_batch(seed=2)
    w = _weights(lengths, completion.shape[1], seed=5)
    lp, _ = completion_logprobs(peft_model, prompts, completion, lengths)
    ref, _ = naive_logprobs(peft_model, prompts, completion.clamp(min=0), lengths)
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-5)
    got, want = grads(peft_model, (lp * w).sum()), grads(peft_model, (ref * w).sum())
    assert got and all("lora_" in n for n in got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)


def test_shared_prompts_when_every_completion_is_at_most_one_token(model):
    """max(lengths) ≤ 1: only the prompt pass runs; its last hidden state predicts token 0."""
    prompts = [[1, 5, 6], [1, 5, 6], [1, 7]]
    completion = torch.tensor([[8], [9], [10]])
    lengths = torch.tensor([1, 0, 1])
    counter = TokenCount(model)
    lp, _ = completion_logprobs(model, prompts, completion, lengths)
    counter.handle.remove()
    assert (counter.calls, counter.tokens) == (1, 2 * 3)
    ref, _ = naive_logprobs(model, prompts, completion, lengths)
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-5)
    assert lp[1, 0] == 0


@pytest.mark.parametrize("case", ["distinct", "off", "checkpointing"])
def test_unshared_path_when_prompts_are_distinct_sharing_is_off_or_checkpointing(case):
    m, _ = tiny_random(0)
    prompts, completion, lengths = grouped_batch(seed=3)
    if case == "distinct":
        prompts = [p + [40 + i] for i, p in enumerate(prompts)]
    if case == "checkpointing":
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.train()
    counter = TokenCount(m)
    lp, _ = completion_logprobs(m, prompts, completion, lengths, share_prompts=case != "off")
    counter.handle.remove()
    L = max(len(p) + int(n) for p, n in zip(prompts, lengths))
    assert (counter.calls, counter.tokens) == (1, len(prompts) * L)
    m.eval()
    ref, _ = naive_logprobs(m, prompts, completion.clamp(min=0), lengths)
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-5)
