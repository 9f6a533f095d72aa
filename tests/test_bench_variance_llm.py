"""``python -m benchmarks variance --setting tiny-arith``: the batched estimator gradients against per-sample
backward passes, the Monte-Carlo statistics against direct formulas, unbiasedness against the closed-form ∇max@k of
single-token responses, and the command (table, errors, the unchanged bandit output)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import t as student_t
from transformers import Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from benchmarks import variance
from benchmarks import variance_llm as V
from benchmarks.__main__ import main
from rlvr.bandit import exact_max_at_k
from rlvr.logprobs import completion_logprobs
from rlvr.models import char_tokenizer, tiny_qwen2_config
from rlvr.rollout import HFSampler
from rlvr.types import Rollout, SamplingParams

VOCAB = len(char_tokenizer())


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors here are tiny: extra threads only add synchronisation (10x slower on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_model(seed: int = 0, *, tied: bool = True, dtype: torch.dtype = torch.float32) -> Qwen2ForCausalLM:
    """A 1-layer Qwen2 (hidden 32) on the character vocabulary: every parameter kind of tiny-arith, tiny."""
    config = tiny_qwen2_config(VOCAB, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                               intermediate_size=64)
    config.tie_word_embeddings = tied
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
        for p in model.parameters():                     # weights of a trained model, not the near-zero init
            p.data.normal_(0.0, 0.3)
    return model.to(dtype).eval()


def flat_grad(model: torch.nn.Module, scalar: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(scalar, params)]).to(torch.float64)


def oracle(model: torch.nn.Module, prompts: list[list[int]], completions: torch.Tensor, lengths: torch.Tensor,
           weights: torch.Tensor) -> torch.Tensor:
    """Σ_b W[e, b] ∇ℓ_b with one forward and backward per sample, each on its own unpadded row."""
    per_sample = []
    for b, n in enumerate(lengths.tolist()):
        lp, _ = completion_logprobs(model, [prompts[b]], completions[b:b + 1, :n], lengths[b:b + 1])
        per_sample.append(flat_grad(model, lp.sum()))
    return weights.to(torch.float64) @ torch.stack(per_sample)


def random_batch(B: int = 6, T: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, VOCAB, (int(n),), generator=gen).tolist() for n in torch.randint(1, 6, (B,),
                                                                                                  generator=gen)]
    completions = torch.randint(0, VOCAB, (B, T), generator=gen)
    lengths = torch.tensor([1, T, 3, 2, T, 4][:B])
    weights = torch.randn(3, B, generator=gen, dtype=torch.float64)
    weights[1, 2] = 0.0
    return prompts, completions, lengths, weights


# ----------------------------------------------------------------------------------------------
# 1. Batched gradients = per-sample backward passes
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def float64_norms(monkeypatch):
    """Qwen2RMSNorm normalises in float32 even in a float64 model, which leaves ~1e-7 relative differences between
    backward passes whose cotangents are scaled differently; in the model's dtype every path agrees to ~1e-15."""
    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    monkeypatch.setattr(Qwen2RMSNorm, "forward", forward)


@pytest.mark.parametrize("tied", [True, False], ids=["tied-head", "separate-head"])
def test_one_backward_for_all_estimators_equals_per_sample_backward_passes(tied, float64_norms):
    model = small_model(1, tied=tied, dtype=torch.float64)
    prompts, completions, lengths, weights = random_batch()
    want = oracle(model, prompts, completions, lengths, weights)
    got = V.estimator_gradients(model, prompts, completions, lengths, weights)
    assert got.shape == want.shape == (3, sum(p.numel() for p in model.parameters()))
    assert float((got - want).norm() / want.norm()) < 1e-10
    seq = V.sequence_logprobs(model, prompts, completions, lengths)
    params = [p for p in model.parameters() if p.requires_grad]
    for e in range(3):                                              # the simple path: one backward per estimator
        assert float((V.weighted_gradient(seq, weights[e], params) - want[e]).norm() / want[e].norm()) < 1e-10


def test_replicate_gradients_skips_zero_rows_and_falls_back_to_one_backward_per_estimator(monkeypatch,
                                                                                          float64_norms):
    model = small_model(2, dtype=torch.float64)
    prompts, completions, lengths, weights = random_batch(seed=3)
    weights[:, 1] = 0.0                                             # a row no estimator uses
    rollout = Rollout(prompts, completions, lengths, ["stop"] * 6, [""] * 6)
    want = oracle(model, prompts, completions, lengths, weights)
    fast = V.replicate_gradients(model, rollout, weights)
    assert float((fast - want).norm() / want.norm()) < 1e-10

    def unsupported(*args, **kwargs):
        raise V.UnsupportedModel("forced")
    monkeypatch.setattr(V, "estimator_gradients", unsupported)
    slow = V.replicate_gradients(model, rollout, weights)
    assert float((slow - want).norm() / want.norm()) < 1e-10
    assert not V.replicate_gradients(model, rollout, torch.zeros_like(weights)).any()


def test_lora_adapters_per_sample_gradients_equal_per_sample_backward_passes(float64_norms):
    """The smollm2 setting trains LoRA adapters (PEFT): only lora_A / lora_B are trainable, each a Linear called
    as module(tensor). lora_B is drawn non-zero (at initialisation it is 0, and lora_A's gradient with it)."""
    from rlvr.models import apply_lora

    torch.manual_seed(0)
    model = apply_lora(small_model(3, dtype=torch.float64), rank=4, alpha=8,
                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0.0, 0.3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    prompts, completions, lengths, weights = random_batch(seed=7)
    want = oracle(model, prompts, completions, lengths, weights)
    got = V.estimator_gradients(model, prompts, completions, lengths, weights)
    assert got.shape == want.shape == (3, sum(p.numel() for p in model.parameters() if p.requires_grad))
    assert float(want.norm()) > 0 and float((got - want).norm() / want.norm()) < 1e-10


def test_the_settings_defaults_fill_in_per_setting():
    import argparse

    from benchmarks.variance import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    smol = V.check_args(p.parse_args(["--setting", "smollm2"]))
    assert smol == {"prompts": 8, "group": 8, "replicates": 32, "seed": 0, "threads": None, "ks": [2, 4],
                    "setting": "smollm2"}
    tiny = V.check_args(p.parse_args(["--setting", "tiny-arith", "--replicates", "8"]))
    assert (tiny["group"], tiny["replicates"], tiny["ks"]) == (16, 8, [2, 4, 8])
    with pytest.raises(ValueError, match="--ks"):                     # G = 8 leaves no room for k = 8
        V.check_args(p.parse_args(["--setting", "smollm2", "--ks", "8"]))
    cfg = V._config("smollm2", 3, 1)
    assert (cfg.model.name, cfg.model.lora, cfg.rollout.temperature, cfg.rollout.top_p, cfg.seed) == \
        ("smollm2-135m-instruct", True, 1.0, 1.0, 3)


def test_fp32_model_agrees_with_the_oracle_to_float_precision():
    model = small_model(4)
    prompts, completions, lengths, weights = random_batch(seed=5)
    want = oracle(model, prompts, completions, lengths, weights)
    got = V.estimator_gradients(model, prompts, completions, lengths, weights)
    assert float((got - want).norm() / want.norm()) < 1e-5


# ----------------------------------------------------------------------------------------------
# 2. Statistics = direct formulas
# ----------------------------------------------------------------------------------------------

def feed(vectors: np.ndarray) -> V.Moments:
    m = V.Moments()
    for start, end in V.block_bounds(len(vectors)):
        for g in vectors[start:end]:
            m.add(torch.from_numpy(g))
        m.end_block()
    return m


@pytest.mark.parametrize("R", [2, 5, 10, 37, 64, 100])
def test_blocks_partition_the_replicates_into_at_most_16_blocks_of_two_or_more(R):
    bounds = V.block_bounds(R)
    assert bounds[0][0] == 0 and bounds[-1][1] == R and len(bounds) == min(16, R // 2)
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:])) and all(e - s >= 2 for s, e in bounds)


def test_moments_equal_the_direct_mean_trace_covariance_and_norms():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(10, 7)) * np.arange(1, 8) + 3.0                 # R = 10 vectors of N = 7
    m = feed(g)
    mean = g.mean(0)
    trcov = ((g - mean) ** 2).sum() / 9
    assert m.n == 10 and np.allclose(m.mean.numpy(), mean, rtol=1e-14)
    assert m.trace_cov == pytest.approx(trcov, rel=1e-12)
    assert m.trace_cov == pytest.approx(np.trace(np.cov(g.T)), rel=1e-12)
    assert m.mean_norm == pytest.approx(np.linalg.norm(mean), rel=1e-14)
    assert m.mean_norm2_debiased == pytest.approx(mean @ mean - trcov / 10, rel=1e-12)
    blocks = [((b - b.mean(0)) ** 2).sum() / (len(b) - 1) for b in (g[s:e] for s, e in V.block_bounds(10))]
    assert np.allclose(m.block_trace_covs, blocks, rtol=1e-12) and len(blocks) == 5


def test_the_ratio_interval_is_the_delta_method_on_the_block_estimates():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 4)) * 2.0, rng.normal(size=(20, 4))
    ma, mb = feed(a), feed(b)
    rho, lo, hi = V.ratio_interval(ma, mb)
    assert rho == pytest.approx(ma.trace_cov / mb.trace_cov, rel=1e-14)
    va, vb = np.array(ma.block_trace_covs), np.array(mb.block_trace_covs)
    M = len(va)
    se = np.sqrt(((va / va.mean() - vb / vb.mean()) ** 2).sum() / (M * (M - 1)))
    q = student_t.ppf(0.975, M - 1)
    assert (lo, hi) == pytest.approx((rho * np.exp(-q * se), rho * np.exp(q * se)), rel=1e-12)
    assert lo < rho < hi
    rho2, lo2, hi2 = V.ratio_interval(feed(a[:3]), feed(b[:3]))      # one block: no interval
    assert math.isfinite(rho2) and math.isnan(lo2) and math.isnan(hi2)


# ----------------------------------------------------------------------------------------------
# 3. Unbiasedness against a closed form: single-token responses are a softmax bandit per prompt
# ----------------------------------------------------------------------------------------------

def test_unbiased_estimators_average_to_the_exact_max_at_k_gradient():
    """With max_new_tokens = 1 each response is one token a ~ softmax(z_p(θ)), so
    E[g] = ∇_θ (1/P) Σ_p max@k(softmax(z_p(θ)), r_p) exactly (``bandit.exact_max_at_k``). Two distinct prompts with
    graded rewards, each repeated 4 times (P = 8: smaller noise, and the 1/P is checked)."""
    model, tokenizer = small_model(0), char_tokenizer()
    prompts = [[1, 5, 6, 7], [1, 9, 10]] * 4
    P, G, k, R = len(prompts), 16, 2, 200
    table = torch.rand(2, VOCAB, generator=torch.Generator().manual_seed(0), dtype=torch.float64).repeat(4, 1)
    sampler, params = HFSampler(model, tokenizer), SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=1)

    def draw(r: int):
        rollout = sampler.generate(prompts, params, n=G, seed=r)
        return rollout, table.gather(1, rollout.completion_ids[:, 0].view(P, G))

    unbiased = ("maxpo", "pkpo[none]", "pkpo[loo]", "pkpo[loo_minus_one]")
    columns = [c for c in V.estimator_columns(G, [k]) if c.label in unbiased]
    assert [c.label for c in columns] == list(unbiased)
    res = V.monte_carlo(model, draw, columns, R)
    logits = [model(input_ids=torch.tensor([p])).logits[0, -1].double() for p in prompts]
    exact = flat_grad(model, sum(exact_max_at_k(torch.softmax(z, -1), r, k) for z, r in zip(logits, table)) / P)
    for c in columns:
        m = res.moments[c.key]
        se = math.sqrt(m.trace_cov / R)                                  # E‖ḡ − E g‖² = tr Cov / R
        assert float((m.mean - exact).norm()) < 4 * se, c.label
        if c.label != "pkpo[none]":                                      # enough signal to see a wrong mean
            assert float(exact.norm()) > 6 * se, c.label
            assert float((m.mean - 2 * exact).norm()) > 4 * se, c.label
    d = res.diffs[("pkpo[loo]", k)]                                      # the table's agreement column
    assert float(d.mean.norm()) < 4 * math.sqrt(d.trace_cov / R)


# ----------------------------------------------------------------------------------------------
# 4. The command
# ----------------------------------------------------------------------------------------------

def test_tiny_arith_command_prints_every_estimator_row_with_numbers(capsys):
    assert main(["variance", "--setting", "tiny-arith", "--prompts", "2", "--group", "4",
                 "--replicates", "4", "--ks", "1,2", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == V.HEADER and lines[1] == V.ALIGN
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:] if line.startswith("| ")]
    labels = {k: [r[1] for r in rows if r[0] == k] for k in ("1", "2")}
    everything = [e[0] for e in variance.ESTIMATORS]
    assert labels["2"] == everything
    assert labels["1"] == [e for e in everything if e != "pkpo[loo_minus_one]"]       # needs k >= 2
    for r in rows:
        norm, debiased, trcov = (float(x) for x in r[2:5])
        assert all(math.isfinite(x) and x >= 0 for x in (norm, debiased, trcov))
        assert debiased <= norm
        if r[1] == "maxpo":
            assert r[6] == "1 (ref.)"
        if r[1].startswith("pkpo"):
            value, noise = r[8].replace("(", "").replace(")", "").split()
            assert float(value) >= 0 and float(noise) >= 0
    assert lines[-1].startswith("setting tiny-arith: model tiny-arith (") and "P=2" in lines[-1] and "R=4" in lines[-1]


@pytest.mark.parametrize("argv,option", [
    (["--setting", "tiny-arith", "--replicates", "1"], "--replicates"),
    (["--setting", "tiny-arith", "--group", "4", "--ks", "2,4"], "--ks"),
    (["--setting", "tiny-arith", "--group", "1"], "--group"),
    (["--setting", "tiny-arith", "--groups", "4"], "--groups"),
    (["--prompts", "3"], "--prompts"),
])
def test_bad_input_names_the_option(capsys, argv, option):
    assert main(["variance", *argv]) == 2
    err = capsys.readouterr().err
    assert "error" in err and option in err


def test_the_bandit_setting_prints_what_variance_run_returns(capsys, monkeypatch):
    assert main(["variance", "--groups", "4", "--ks", "2"]) == 0
    assert capsys.readouterr().out == "\n".join(variance.run([4], [2])) + "\n"
    calls = []

    def spy(Gs, ks):
        calls.append((Gs, ks))
        return ["table"]
    monkeypatch.setattr(variance, "run", spy)                         # the defaults, without the 15 s enumeration
    assert main(["variance"]) == 0 and main(["variance", "--setting", "bandit"]) == 0
    assert calls == [([4, 8], [2, 4])] * 2 and capsys.readouterr().out == "table\ntable\n"
