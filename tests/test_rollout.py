"""HFSampler and its sampling pieces, against oracles: single-prompt decoding, HF generate, brute-force nucleus
sets, exact softmax frequencies, hand-worked finish positions."""
from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from rlvr.models import tiny_random
from rlvr.rollout import (HFSampler, Sampler, inverse_cdf_sample, nucleus_filter, plan_batches, row_keys, token_probs,
                          uniforms)
from rlvr.rollout.hf import GQA_SDPA, _sdpa_gqa_attention
from rlvr.rollout.sampler import check_generate_args
from rlvr.types import SamplingParams

EOS = 2
PAD = 0
TEXTS = ["Hello", "What is 2+2?", "a", "The quick brown fox jumps", "xyz"]   # ragged lengths


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models are too small to gain from intra-op threads; one thread avoids waiting on a busy core."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny():
    """The stock tiny-random model: near-uniform logits; greedy repeats one token per prompt, never EOS."""
    return tiny_random(0)


@pytest.fixture(scope="module")
def peaky():
    """tiny-random with N(0, 0.3²) weight matrices: confident, varied greedy text that sometimes ends in EOS."""
    model, tok = tiny_random(0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model, tok


class LogitsOverride(torch.nn.Module):
    """A causal LM whose logits are ``fn(logits, position_ids)`` of an inner HF model (its real KV cache is used).
    Records the train/eval mode seen by each forward."""

    def __init__(self, inner, fn):
        super().__init__()
        self.inner, self.fn = inner, fn
        self.config, self.generation_config = inner.config, inner.generation_config
        self.modes_seen: list[bool] = []
        self.attention_seen: list[str] = []

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, position_ids, **kwargs):
        self.modes_seen.append(self.training)
        self.attention_seen.append(self.inner.config._attn_implementation)
        out = self.inner(input_ids=input_ids, position_ids=position_ids, **kwargs)
        out.logits = self.fn(out.logits, position_ids)
        return out


def fixed_logits(values: dict[int, float]):
    """fn for LogitsOverride: every position gets logits ``values`` (token -> logit), -1e4 (probability 0) elsewhere."""
    def fn(logits, _positions):
        out = torch.full_like(logits, -1e4)
        for token, value in values.items():
            out[..., token] = value
        return out
    return fn


def encode(tok, texts):
    return [tok.encode(t) for t in texts]


def greedy(max_new_tokens=20, stop=()):
    return SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop=stop)


# ----------------------------------------------------------------------------------------------
# Pure pieces
# ----------------------------------------------------------------------------------------------

def test_plan_batches_hand_worked_and_covers_every_row_once():
    # lengths [5, 2, 9], n=2, 3 rows per batch: order by length is prompts 1, 0, 2.
    assert plan_batches([5, 2, 9], 2, 3) == [[(1, 0, 2), (0, 0, 1)], [(0, 1, 1), (2, 0, 2)]]
    assert plan_batches([4, 4], 3, 64) == [[(0, 0, 3), (1, 0, 3)]]
    lengths = [7, 1, 3, 3, 12, 5, 2]
    for n, cap in itertools.product([1, 3, 8], [1, 2, 5, 64]):
        plan = plan_batches(lengths, n, cap)
        rows = [(i, j) for batch in plan for i, j0, c in batch for j in range(j0, j0 + c)]
        assert sorted(rows) == [(i, j) for i in range(len(lengths)) for j in range(n)]
        assert all(sum(c for _, _, c in batch) <= cap for batch in plan)
        assert [lengths[i] for i, _ in rows] == sorted(lengths[i] for i, _ in rows)    # similar lengths together
    with pytest.raises(ValueError, match="max_batch_size"):
        plan_batches([3], 1, 0)


def brute_force_nucleus(p: list[float], top_p: float) -> list[float]:
    """Oracle: try prefix sizes k = 1, 2, ... of the tokens in descending probability (ties: lower id first);
    the first prefix whose mass reaches top_p is the nucleus; renormalise it."""
    order = sorted(range(len(p)), key=lambda i: (-p[i], i))
    for k in range(1, len(p) + 1):
        if sum(p[i] for i in order[:k]) >= top_p:
            break
    kept = set(order[:k])
    total = sum(p[i] for i in kept)
    return [p[i] / total if i in kept else 0.0 for i in range(len(p))]


def test_nucleus_filter_hand_worked_boundaries():
    p = torch.tensor([[0.125, 0.5, 0.125, 0.25]], dtype=torch.float64)        # dyadic: sums are exact
    assert nucleus_filter(p, 0.75).tolist() == [[0.0, 2 / 3, 0.0, 1 / 3]]     # 0.5 + 0.25 reaches 0.75 exactly
    assert nucleus_filter(p, 0.76).tolist() == [[0.125 / 0.875, 0.5 / 0.875, 0.0, 0.25 / 0.875]]  # tie: lower id
    assert nucleus_filter(p, 0.1).tolist() == [[0.0, 1.0, 0.0, 0.0]]          # always the top token
    assert nucleus_filter(p, 1.0).tolist() == p.tolist()
    with pytest.raises(ValueError, match="top_p"):
        nucleus_filter(p, 0.0)


def test_nucleus_filter_matches_brute_force_oracle():
    gen = torch.Generator().manual_seed(3)
    for trial in range(60):
        V = int(torch.randint(1, 12, (1,), generator=gen))
        logits = torch.randn(4, V, generator=gen, dtype=torch.float64) * (0.5 + trial / 20)
        probs = torch.softmax(logits, -1)
        for top_p in (0.05, 0.3, 0.5, 0.9, 0.99, 1.0):
            got = nucleus_filter(probs, top_p)
            for row in range(4):
                want = brute_force_nucleus(probs[row].tolist(), top_p)
                assert got[row].tolist() == pytest.approx(want, abs=1e-12), (trial, top_p, row)


def test_nucleus_filter_large_vocab_and_ties_match_oracle():
    # V = 2000 exercises the top-64 and top-1024 candidate stages and the full-sort fallback; probabilities
    # rounded to a few levels create ties at the nucleus boundary (broken by lower token id).
    gen = torch.Generator().manual_seed(4)
    for scale, levels in ((8.0, None), (1.0, None), (0.05, None), (3.0, 6)):
        logits = torch.randn(2, 2000, generator=gen, dtype=torch.float64) * scale
        if levels:
            logits = (logits * levels / 3).round()
        probs = torch.softmax(logits, -1)
        for top_p in (0.2, 0.7, 0.95):
            got = nucleus_filter(probs, top_p)
            for row in range(2):
                want = torch.tensor(brute_force_nucleus(probs[row].tolist(), top_p), dtype=torch.float64)
                assert torch.equal(got[row] > 0, want > 0), (scale, levels, top_p, row)
                assert torch.allclose(got[row], want, atol=1e-12)


def test_token_probs_is_tempered_softmax():
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0]])
    T = 0.7
    want = [math.exp(x / T) for x in logits[0].tolist()]
    want = [w / sum(want) for w in want]
    assert token_probs(logits, T).tolist()[0] == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        token_probs(logits, 0.0)


def test_inverse_cdf_sample_hand_worked():
    probs = torch.tensor([[0.2, 0.0, 0.8]] * 5, dtype=torch.float64)
    u = torch.tensor([1e-9, 0.1, 0.2, 0.2000001, 1 - 1e-12], dtype=torch.float64)
    assert inverse_cdf_sample(probs, u).tolist() == [0, 0, 0, 2, 2]             # cdf [0.2, 0.2, 1.0]; token 1 never
    unnormalised = torch.tensor([[1.0, 0.0, 3.0]])                               # any positive total
    assert inverse_cdf_sample(unnormalised, torch.tensor([0.26])).tolist() == [2]
    with pytest.raises(ValueError, match="rows \\[0\\]"):
        inverse_cdf_sample(torch.zeros(1, 3), torch.tensor([0.5]))


def test_inverse_cdf_sample_two_level_matches_flat_cumsum():
    gen = torch.Generator().manual_seed(5)
    probs = torch.softmax(torch.randn(64, 5000, generator=gen) * 3, -1)             # V not a multiple of 256
    probs[:, 1000:1300] = 0                                                      # a zero block
    u = torch.rand(64, generator=gen, dtype=torch.float64)
    cdf = probs.double().cumsum(-1)
    want = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    assert torch.equal(inverse_cdf_sample(probs, u), want)
    edge = torch.zeros(2, 5000)
    edge[:, 4999] = 1.0                                                          # all mass in the last token
    assert inverse_cdf_sample(edge, torch.tensor([1e-12, 1 - 1e-12])).tolist() == [4999, 4999]


def test_uniforms_are_in_range_deterministic_and_uniform():
    i = torch.arange(4000) // 8
    j = torch.arange(4000) % 8
    keys = row_keys(123, i, j)
    u0, u1 = uniforms(keys, 0), uniforms(keys, 1)
    assert u0.dtype == torch.float64 and bool(((u0 > 0) & (u0 < 1)).all())
    assert torch.equal(u0, uniforms(row_keys(123, i, j), 0))
    assert not torch.equal(u0, u1) and not torch.equal(keys, row_keys(124, i, j))
    assert len(set(u0.tolist())) == 4000
    # 10 equal bins: counts within 5 sd of 400; mean and lag correlation of a uniform
    counts = torch.bincount((u0 * 10).long(), minlength=10)
    assert (counts - 400).abs().max() < 5 * math.sqrt(4000 * 0.1 * 0.9)
    assert abs(float(u0.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / 4000)
    assert abs(float(torch.corrcoef(torch.stack([u0, u1]))[0, 1])) < 5 / math.sqrt(4000)
    assert torch.equal(row_keys(2**64 + 5, i, j), row_keys(5, i, j))             # seed taken mod 2⁶⁴


def test_gqa_attention_equals_hf_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    class Attn:                                    # what HF's attention functions read from the module
        num_key_value_groups = 3
        is_causal = True

    gen = torch.Generator().manual_seed(6)
    b, kv, g, d, L = 4, 2, 3, 16, 9
    key, value = torch.randn(b, kv, L, d, generator=gen), torch.randn(b, kv, L, d, generator=gen)
    pad = torch.tensor([0, 3, 1, 5])                                             # left padding per row
    valid = torch.arange(L)[None, :] >= pad[:, None]                             # [b, L]
    for q_len in (1, 4):
        query = torch.randn(b, kv * g, q_len, d, generator=gen)
        causal = torch.arange(L)[None, :] <= torch.arange(L - q_len, L)[:, None]  # [q, L]
        mask = (valid[:, None, None, :] & causal[None, None]).expand(b, 1, q_len, L)
        for m in (mask, None):
            want = sdpa_attention_forward(Attn(), query, key, value, m, scaling=d ** -0.5)[0]
            got = _sdpa_gqa_attention(Attn(), query, key, value, m, scaling=d ** -0.5)[0]
            assert got.shape == (b, q_len, kv * g, d)
            assert torch.allclose(got, want, atol=1e-6), (q_len, m is None)


# ----------------------------------------------------------------------------------------------
# Greedy decoding against oracles
# ----------------------------------------------------------------------------------------------

def test_greedy_batched_equals_one_prompt_at_a_time(peaky):
    model, tok = peaky
    prompts = encode(tok, TEXTS)
    params = greedy(20)
    single = [HFSampler(model, tok).generate([p], params, n=1, seed=0) for p in prompts]
    assert {r.finish_reasons[0] for r in single} == {"stop", "length"}          # both kinds occur
    for cap in (64, 3):                                                          # 3: batches split a prompt's samples
        batched = HFSampler(model, tok, max_batch_size=cap).generate(prompts, params, n=2, seed=0)
        for i, one in enumerate(single):
            k = int(one.lengths[0])
            for row in (2 * i, 2 * i + 1):
                assert int(batched.lengths[row]) == k
                assert batched.completion_ids[row, :k].tolist() == one.completion_ids[0, :k].tolist()
                assert batched.finish_reasons[row] == one.finish_reasons[0]
                assert batched.texts[row] == one.texts[0]


def test_greedy_equals_hf_generate(peaky):
    model, tok = peaky
    sampler = HFSampler(model, tok)
    prompts = encode(tok, TEXTS)
    ours = sampler.generate(prompts, greedy(20), n=1, seed=0)
    for i, p in enumerate(prompts):
        with torch.inference_mode():
            ref = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 do_sample=False, max_new_tokens=20, pad_token_id=PAD, eos_token_id=EOS)[0, len(p):]
        k = int(ours.lengths[i])
        assert ref.tolist()[:k] == ours.completion_ids[i, :k].tolist()
        assert len(ref) == k or ref[k:].eq(PAD).all()                           # HF stopped where we did


def test_ablation_settings_give_identical_rollouts(peaky):
    model, tok = peaky
    prompts = encode(tok, TEXTS)
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=16)
    base = HFSampler(model, tok).generate(prompts, params, n=3, seed=11)
    assert len(set(base.lengths.tolist())) > 1                                   # rows end at different steps
    for kwargs in ({"prune_every": 4}, {"prune_every": 100}, {"share_prefill": False}):
        other = HFSampler(model, tok, **kwargs).generate(prompts, params, n=3, seed=11)
        assert torch.equal(other.completion_ids, base.completion_ids), kwargs
        assert torch.equal(other.lengths, base.lengths) and other.finish_reasons == base.finish_reasons


# ----------------------------------------------------------------------------------------------
# Finish reasons, lengths, masks, stop strings
# ----------------------------------------------------------------------------------------------

def test_eos_and_length_finish_rows_with_correct_mask(tiny):
    model, tok = tiny
    # EOS becomes the argmax once the position reaches 8. Step t is predicted at position L − 1 + t, so a
    # prompt of length L ends at t* = max(0, 8 − L + 1): L=9 -> t*=0 (length 1), L=5 -> 4 (5), L=4 -> 5 (6 =
    # max_new_tokens, still "stop"), L=2 -> 7 > 5: "length" with 6 tokens. Otherwise greedy repeats "o".
    def force_eos(logits, positions):
        out = logits.clone()
        out[..., EOS] = torch.where(positions >= 8, 1e4, out[..., EOS])
        return out

    wrapped = LogitsOverride(model, force_eos)
    prompts = encode(tok, ["abcdefghi", "abcde", "abcd", "ab"])
    r = HFSampler(wrapped, tok).generate(prompts, greedy(6), n=2, seed=0)
    assert r.lengths.tolist() == [1, 1, 5, 5, 6, 6, 6, 6]
    assert r.finish_reasons == ["stop"] * 6 + ["length"] * 2
    assert r.completion_ids.shape == (8, 6)
    plain = HFSampler(model, tok).generate(prompts, greedy(6), n=1, seed=0).completion_ids   # oracle: unforced
    assert EOS not in plain.flatten().tolist()
    want = [[EOS] + [PAD] * 5, plain[1, :4].tolist() + [EOS, PAD], plain[2, :5].tolist() + [EOS], plain[3].tolist()]
    assert r.completion_ids.tolist() == [row for row in want for _ in range(2)]
    assert r.texts == [tok.decode(row[:k]) for row, k in zip(r.completion_ids.tolist(), [0, 0, 4, 4, 5, 5, 6, 6])]
    want_mask = torch.tensor([[c < k for c in range(6)] for k in [1, 1, 5, 5, 6, 6, 6, 6]])
    assert torch.equal(r.loss_mask, want_mask)                                   # EOS inside, nothing after


def test_generation_config_eos_list_is_honoured(tiny):
    model, tok = tiny
    wrapped = LogitsOverride(model, fixed_logits({50: 5.0}))                    # always token 50
    wrapped.generation_config = copy.deepcopy(model.generation_config)
    wrapped.generation_config.eos_token_id = [EOS, 50]
    sampler = HFSampler(wrapped, tok)
    assert sampler.eos_token_ids == (EOS, 50)
    r = sampler.generate(encode(tok, ["hi"]), greedy(5), n=1, seed=0)
    assert r.lengths.tolist() == [1] and r.finish_reasons == ["stop"]


def test_stop_string_ends_row_at_completing_token(peaky):
    model, tok = peaky
    prompts = encode(tok, TEXTS)
    free = HFSampler(model, tok).generate(prompts[:1], greedy(24), n=1, seed=0)
    text = free.texts[0]                                                         # 24 chars, finish "length"
    assert free.finish_reasons[0] == "length" and len(text) == 24
    stop = text[9:12]                                                            # first occurs at some index <= 9
    end = text.index(stop) + len(stop)
    r = HFSampler(model, tok).generate(prompts[:1], greedy(24, stop=("never-occurs", stop)), n=1, seed=0)
    assert r.finish_reasons == ["stop"] and int(r.lengths[0]) == end             # char tokens: 1 token = 1 char
    assert r.texts[0] == text[:end] and r.texts[0].endswith(stop)
    assert r.completion_ids[0, :end].tolist() == free.completion_ids[0, :end].tolist()
    untouched = HFSampler(model, tok).generate(prompts[:1], greedy(24, stop=("never-occurs",)), n=1, seed=0)
    assert untouched.finish_reasons == ["length"] and untouched.texts == [text]


# ----------------------------------------------------------------------------------------------
# Sampling: determinism, distributions
# ----------------------------------------------------------------------------------------------

def test_seed_determinism_and_global_rng_untouched(tiny):
    model, tok = tiny
    prompts = encode(tok, TEXTS)
    params = SamplingParams(temperature=1.0, max_new_tokens=12)
    state = torch.get_rng_state()
    a = HFSampler(model, tok).generate(prompts, params, n=3, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    b = HFSampler(model, tok, max_batch_size=4).generate(prompts, params, n=3, seed=5)
    c = HFSampler(model, tok).generate(prompts, params, n=3, seed=6)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts    # same seed, other batching
    assert a.texts != c.texts
    assert len(set(a.texts[0:3])) == 3                                           # a prompt's samples differ
    # Row (i, j) depends on prompt i and (seed, i, j) only: not on n, nor on the other prompts' contents.
    others = HFSampler(model, tok).generate(prompts[:2] + encode(tok, ["zz", "other prompt"]), params, n=2, seed=5)
    assert others.texts[0:2] == a.texts[0:2] and others.texts[2:4] == a.texts[3:5]


@pytest.mark.parametrize("temperature, top_p", [(0.7, 1.0), (1.0, 0.8)])
def test_first_token_frequencies_match_distribution(tiny, temperature, top_p):
    model, tok = tiny
    values = {10: 2.0, 11: 1.5, 12: 1.0, 13: 0.0, 14: -0.5, 15: -2.0}
    wrapped = LogitsOverride(model, fixed_logits(values))
    N = 20000
    r = HFSampler(wrapped, tok, max_batch_size=N).generate(encode(tok, ["q"]), SamplingParams(
        temperature=temperature, top_p=top_p, max_new_tokens=1), n=N, seed=0)
    counts = torch.bincount(r.completion_ids[:, 0], minlength=99).double()
    # Oracle: tempered softmax over the six tokens, then the brute-force nucleus.
    weights = {k: math.exp(v / temperature) for k, v in values.items()}
    p_all = [weights.get(k, 0.0) / sum(weights.values()) for k in range(99)]
    p = brute_force_nucleus(p_all, top_p)
    assert sum(x > 0 for x in p) == (6 if top_p == 1 else 3)                     # 0.8: {10, 11, 12} (0.41+0.25+0.15)
    chi2 = 0.0
    for k in range(99):
        if p[k] == 0:
            assert counts[k] == 0, k                                             # outside the nucleus: never drawn
        else:
            assert abs(counts[k] / N - p[k]) < 5 * math.sqrt(p[k] * (1 - p[k]) / N), k
            chi2 += (counts[k] - N * p[k]) ** 2 / (N * p[k])
    assert chi2 < 25.0                                                           # df <= 5: P(chi2 > 25) < 2e-4


# ----------------------------------------------------------------------------------------------
# Layout, versions, modes, PEFT, validation
# ----------------------------------------------------------------------------------------------

def test_rollout_layout_and_policy_version(tiny):
    model, tok = tiny
    sampler = HFSampler(model, tok)
    assert isinstance(sampler, Sampler)
    sampler.version = 7
    prompts = encode(tok, TEXTS[:4])
    r = sampler.generate(prompts, SamplingParams(max_new_tokens=5), n=3, seed=0)
    assert r.policy_version == 7
    assert r.completion_ids.shape == (12, int(r.lengths.max())) and r.lengths.shape == (12,)
    assert r.prompt_ids == [p for p in prompts for _ in range(3)]               # prompt-major
    empty = sampler.generate([], SamplingParams(max_new_tokens=5), n=3, seed=0)
    assert empty.completion_ids.shape == (0, 0) and empty.texts == []


def test_eval_mode_during_generation_and_prior_mode_restored(tiny):
    model, tok = tiny
    wrapped = LogitsOverride(model, lambda logits, _pos: logits)
    wrapped.train()
    wrapped.inner.model.layers[0].eval()                                         # a mixed state must survive
    HFSampler(wrapped, tok).generate(encode(tok, ["hi"]), SamplingParams(max_new_tokens=3), n=2, seed=0)
    assert wrapped.modes_seen and not any(wrapped.modes_seen)
    assert wrapped.training and wrapped.inner.training and not wrapped.inner.model.layers[0].training
    assert set(wrapped.attention_seen) == {GQA_SDPA} and model.config._attn_implementation == "sdpa"
    model.eval()


def test_peft_model_generates_like_its_merged_weights(peaky):
    from peft import LoraConfig, get_peft_model

    model, tok = peaky
    torch.manual_seed(0)                                                         # LoRA init draws from the global RNG
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights=False))
    merged = copy.deepcopy(lora).merge_and_unload()
    prompts = encode(tok, TEXTS)
    base = HFSampler(model, tok).generate(prompts, greedy(16), n=1, seed=0)
    for params in (greedy(16), SamplingParams(temperature=1.0, max_new_tokens=16)):
        via_peft = HFSampler(lora, tok).generate(prompts, params, n=2, seed=3)
        via_merged = HFSampler(merged, tok).generate(prompts, params, n=2, seed=3)
        assert via_peft.texts == via_merged.texts
    assert via_peft.texts != base.texts                                          # the adapter matters


def test_bad_inputs_raise_value_errors(tiny):
    model, tok = tiny
    sampler = HFSampler(model, tok)
    params = SamplingParams(max_new_tokens=3)
    with pytest.raises(ValueError, match="prompt 1 must be a non-empty"):
        sampler.generate([[5], []], params, n=1, seed=0)
    with pytest.raises(ValueError, match="prompt 0 has token 99"):
        sampler.generate([[5, 99]], params, n=1, seed=0)
    with pytest.raises(ValueError, match="n must be a positive int"):
        sampler.generate([[5]], params, n=0, seed=0)
    with pytest.raises(ValueError, match="stop strings"):
        sampler.generate([[5]], SamplingParams(stop=("",)), n=1, seed=0)
    with pytest.raises(ValueError, match="max_batch_size"):
        HFSampler(model, tok, max_batch_size=0)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(params=None), "params must be a SamplingParams"),
    (dict(params=SamplingParams(stop=("a", ""))), "params.stop strings must be non-empty"),
    (dict(n=0), "n must be"), (dict(n=True), "n must be"), (dict(n=2.0), "n must be"),
    (dict(seed="1"), "seed must be"), (dict(seed=False), "seed must be"),
    (dict(prompt_ids="12"), "prompt_ids must be"), (dict(prompt_ids=torch.tensor([[1]])), "prompt_ids must be"),
    (dict(prompt_ids=[[1], []]), r"prompt_ids\[1\]: prompt 1 must be a non-empty"),
    (dict(prompt_ids=[[1], "ab"]), r"prompt_ids\[1\]: prompt 1 must be"),
    (dict(prompt_ids=[[1, True]]), r"prompt_ids\[0\]: .*True"),
    (dict(prompt_ids=[[1], [2.0]]), r"prompt_ids\[1\]: prompt 1 has token 2\.0"),
    (dict(prompt_ids=[[1, -3]]), r"prompt_ids\[0\]: prompt 0 has token -3, not an int >= 0"),
])
def test_check_generate_args_names_the_argument(kwargs, pattern):
    args = dict(prompt_ids=[[1]], params=SamplingParams(), n=1, seed=0) | kwargs
    with pytest.raises(ValueError, match=r"^Who\.generate: " + pattern):
        check_generate_args("Who.generate", args["prompt_ids"], args["params"], args["n"], args["seed"])


def test_check_generate_args_vocab_bound_tensors_and_empty():
    params = SamplingParams()
    got = check_generate_args("S", [torch.tensor([0, 9]), (3,), [4]], params, 2, 7, vocab_size=10)
    assert got == [[0, 9], [3], [4]] and all(type(t) is int for p in got for t in p)
    assert check_generate_args("S", [[10**6]], params, 1, 0) == [[10**6]]           # no vocabulary: any id >= 0
    with pytest.raises(ValueError, match=r"prompt_ids\[1\]: prompt 1 has token 10, not an int in \[0, 10\)"):
        check_generate_args("S", [[9], [10]], params, 1, 0, vocab_size=10)
    with pytest.raises(ValueError, match=r"has token -1, not an int in \[0, 10\)"):
        check_generate_args("S", [[-1]], params, 1, 0, vocab_size=10)
    assert check_generate_args("S", [], params, 1, 0) == []
    with pytest.raises(ValueError, match="prompt_ids must be a non-empty list of token-id lists, got an empty list"):
        check_generate_args("S", [], params, 1, 0, allow_empty=False)


# ----------------------------------------------------------------------------------------------
# Behaviour log-probs (SamplingParams.logprobs) and load_weights
# ----------------------------------------------------------------------------------------------

from rlvr.logprobs import completion_logprobs  # noqa: E402
from rlvr.models import apply_lora, trainable_state_dict  # noqa: E402
from rlvr.rollout.hf import token_logprobs  # noqa: E402

BEHAVIOUR_PARAMS = [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)]        # (temperature, top_p); 0 = greedy


def with_logprobs(params: SamplingParams, on: bool = True) -> SamplingParams:
    return SamplingParams(temperature=params.temperature, top_p=params.top_p, max_new_tokens=params.max_new_tokens,
                          stop=params.stop, logprobs=on)


def learner_logprobs(model, r):
    """Oracle: the learner's teacher-forced log π(token) of the rollout (temperature 1, no top-p)."""
    with torch.no_grad():
        return completion_logprobs(model, r.prompt_ids, r.completion_ids, r.lengths)[0]


def assert_behaviour_matches(model, r, atol=1e-5):
    blp = r.behavior_logprobs
    assert blp is not None and blp.dtype == torch.float32 and blp.shape == r.completion_ids.shape
    mask = r.loss_mask
    torch.testing.assert_close(blp[mask], learner_logprobs(model, r)[mask].float(), atol=atol, rtol=0)
    assert bool((blp[~mask] == 0).all())                                       # exactly 0 at/after lengths
    assert bool((blp[mask] < 0).all())


def assert_same_samples(a, b):
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.lengths, b.lengths)
    assert a.texts == b.texts and a.finish_reasons == b.finish_reasons and a.policy_version == b.policy_version


def test_token_logprobs_hand_worked():
    logits = torch.tensor([[0.0, math.log(3.0), -1e4], [1.0, 1.0, 1.0]], dtype=torch.bfloat16)
    got = token_logprobs(logits, torch.tensor([1, 2]))
    assert got.dtype == torch.float32
    want = torch.log_softmax(logits.float(), -1)[[0, 1], [1, 2]]               # bf16 rounds log 3; compare to its value
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(token_logprobs(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1])),
                          torch.tensor([math.log(0.75)]), atol=1e-6)


@pytest.mark.parametrize("temperature, top_p", BEHAVIOUR_PARAMS)
def test_behaviour_logprobs_equal_learner_logprobs_and_leave_samples_unchanged(tiny, temperature, top_p):
    model, tok = tiny
    prompts = encode(tok, TEXTS)
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=16)
    for kwargs in ({"max_batch_size": 4}, {"max_batch_size": 4, "prune_every": 3}):   # 15 rows -> 4 planned batches
        sampler = HFSampler(model, tok, **kwargs)
        off = sampler.generate(prompts, params, n=3, seed=7)
        on = sampler.generate(prompts, with_logprobs(params), n=3, seed=7)
        assert off.behavior_logprobs is None
        assert_same_samples(on, off)                                           # logprobs on does not change sampling
        assert_behaviour_matches(model, on)
        if temperature > 0:
            assert len(set(on.lengths.tolist())) > 1 and "stop" in on.finish_reasons    # rows end at different steps


@pytest.mark.parametrize("temperature, top_p", [(0.5, 0.6), (2.0, 1.0), (0.0, 1.0)])
def test_behaviour_logprobs_are_temperature_one_without_top_p(tiny, temperature, top_p):
    model, tok = tiny
    values = {10: 2.0, 11: 1.5, 12: 1.0, 13: 0.0}                             # all other tokens at -1e4 (probability 0)
    wrapped = LogitsOverride(model, fixed_logits(values))
    r = HFSampler(wrapped, tok).generate(encode(tok, ["q", "hello"]), SamplingParams(
        temperature=temperature, top_p=top_p, max_new_tokens=6, logprobs=True), n=8, seed=0)
    log_z = math.log(sum(math.exp(v) for v in values.values()))                 # oracle: plain softmax of the logits
    want = torch.tensor([[values[t] - log_z for t in row] for row in r.completion_ids.tolist()])
    assert r.lengths.tolist() == [6] * 16
    assert torch.allclose(r.behavior_logprobs, want, atol=1e-6)
    if top_p == 0.6:                                          # at T=0.5 p(10) = 0.66: nucleus {10}; at T=1 p(10) = 0.47
        assert set(r.completion_ids.flatten().tolist()) == {10}
        assert torch.allclose(r.behavior_logprobs, torch.full((16, 6), 2.0 - log_z), atol=1e-6)


def test_behaviour_logprobs_with_stop_strings(tiny):
    model, tok = tiny
    prompts = encode(tok, TEXTS)
    params = SamplingParams(temperature=1.0, max_new_tokens=20, logprobs=True)
    free = HFSampler(model, tok).generate(prompts, params, n=2, seed=3)
    stop = free.texts[0][4:6]                                                   # occurs in row 0 by index 4
    r = HFSampler(model, tok, max_batch_size=3).generate(prompts, with_logprobs(SamplingParams(
        temperature=1.0, max_new_tokens=20, stop=(stop,))), n=2, seed=3)
    end = free.texts[0].index(stop) + len(stop)
    assert r.finish_reasons[0] == "stop" and int(r.lengths[0]) == end and r.texts[0].endswith(stop)
    assert torch.allclose(r.behavior_logprobs[0, :end], free.behavior_logprobs[0, :end], atol=1e-6)
    assert len(set(r.lengths.tolist())) > 2
    assert_behaviour_matches(model, r)


def test_behaviour_logprobs_float64_model_match_to_float32_precision(peaky):
    """A float64 copy of the confident model: the sampler's values are float32 roundings of the exact log-probs."""
    model64 = copy.deepcopy(peaky[0]).double()
    tok = peaky[1]
    r = HFSampler(model64, tok, max_batch_size=4).generate(encode(tok, TEXTS), SamplingParams(
        temperature=0.7, top_p=0.9, max_new_tokens=16, logprobs=True), n=3, seed=1)
    assert r.behavior_logprobs.dtype == torch.float32
    assert_behaviour_matches(model64, r, atol=2e-6)


def test_behaviour_logprobs_of_a_lora_model(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    lora = apply_lora(copy.deepcopy(model), rank=4, alpha=8)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)                                               # a non-zero adapter
    prompts = encode(tok, TEXTS)
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=12)
    on = HFSampler(lora, tok, max_batch_size=4).generate(prompts, with_logprobs(params), n=2, seed=5)
    assert_same_samples(on, HFSampler(lora, tok, max_batch_size=4).generate(prompts, params, n=2, seed=5))
    assert_behaviour_matches(lora, on)
    base = HFSampler(model, tok, max_batch_size=4).generate(prompts, with_logprobs(params), n=2, seed=5)
    assert not torch.equal(base.behavior_logprobs, on.behavior_logprobs)       # the adapter matters


def test_load_weights_takes_another_models_samples_and_version(tiny):
    model, tok = tiny
    other, _ = tiny_random(1)
    sampler = HFSampler(copy.deepcopy(model), tok)
    prompts = encode(tok, TEXTS)
    params = SamplingParams(temperature=1.0, max_new_tokens=12, logprobs=True)
    before = sampler.generate(prompts, params, n=2, seed=4)
    sampler.load_weights(3, trainable_state_dict(other))
    assert sampler.version == 3
    after = sampler.generate(prompts, params, n=2, seed=4)
    want = HFSampler(other, tok).generate(prompts, params, n=2, seed=4)
    assert after.policy_version == 3 and want.policy_version == 0
    assert torch.equal(after.completion_ids, want.completion_ids) and after.texts == want.texts
    assert torch.equal(after.behavior_logprobs, want.behavior_logprobs)
    assert after.texts != before.texts
    sampler.load_weights(3, trainable_state_dict(other))                        # the same version again is fine
    with pytest.raises(ValueError, match="version 2 is older than the loaded version 3"):
        sampler.load_weights(2, trainable_state_dict(model))
    with pytest.raises(ValueError, match="version must be an int"):
        sampler.load_weights(True, trainable_state_dict(model))
    with pytest.raises(ValueError, match="missing keys"):
        sampler.load_weights(5, {"lm_head.weight": torch.zeros(1)})
    assert sampler.version == 3                                                 # a failed load changes nothing
    assert sampler.generate(prompts, params, n=2, seed=4).texts == want.texts


def test_load_weights_of_lora_adapters(tiny):
    model, tok = tiny
    workers = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        lora = apply_lora(copy.deepcopy(model), rank=4, alpha=8)
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.2)
        workers.append(lora)
    prompts = encode(tok, TEXTS)
    params = SamplingParams(temperature=1.0, max_new_tokens=12, logprobs=True)
    sampler = HFSampler(workers[0], tok)
    state = trainable_state_dict(workers[1])
    assert state and all("lora_" in k for k in state)                           # only the adapters travel
    sampler.load_weights(1, state)
    got = sampler.generate(prompts, params, n=2, seed=2)
    want = HFSampler(workers[1], tok).generate(prompts, params, n=2, seed=2)
    assert got.texts == want.texts and torch.equal(got.behavior_logprobs, want.behavior_logprobs)
