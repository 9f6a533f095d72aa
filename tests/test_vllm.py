"""VLLMSampler: its pure pieces against hand-built vLLM-shaped outputs, its glue against a fake ``vllm`` module, and
(only where vLLM and a CUDA GPU are present) real generation with a tiny model against the HF model's log-probs."""
from __future__ import annotations

import copy
import json
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from rlvr.models import tiny_random
from rlvr.rollout import HFSampler, Sampler
from rlvr.rollout import vllm as rv
from rlvr.seeding import derive_seed
from rlvr.types import SamplingParams

EOS = 2
PAD = 0


def lp(value):
    """A vLLM ``Logprob``-shaped object."""
    return SimpleNamespace(logprob=value, rank=1, decoded_token=None)


def completion(token_ids, finish_reason, text="", logprobs=None):
    return SimpleNamespace(token_ids=list(token_ids), finish_reason=finish_reason, text=text, logprobs=logprobs)


def request(prompt, *completions):
    return SimpleNamespace(prompt_token_ids=list(prompt), outputs=list(completions))


PROMPTS = [[1, 5, 6], [1, 7]]
# Rows (prompt-major, n=2): EOS ends row 0 ("stop", EOS counted); row 1 hits max_tokens=4 ("length"); row 2 ends
# at a stop string ("stop", no EOS); row 3 draws EOS as its 4th = last allowed token, which vLLM reports "length".
ROWS = [
    ([10, 11, EOS], "stop", "ab", [{10: lp(-0.5), 3: lp(-1.0)}, {11: lp(-1.25)}, {EOS: lp(-2.0)}]),
    ([12, 13, 14, 15], "length", "cdef", [{12: lp(-0.1)}, {13: lp(-0.2)}, {14: lp(-0.3)}, {15: lp(-0.4)}]),
    ([16, 17], "stop", "g!", [{16: lp(-3.0)}, {17: lp(-4.0)}]),
    ([18, 19, 20, EOS], "length", "hij", [{18: lp(-0.01)}, {19: lp(-0.02)}, {20: lp(-0.03)}, {EOS: lp(-0.04)}]),
]


def per_row_outputs():
    """One request per row, as VLLMSampler sends them."""
    return [request(PROMPTS[b // 2], completion(ids, reason, text, lps)) for b, (ids, reason, text, lps) in
            enumerate(ROWS)]


def decode_fake(rows):
    return ["|".join(map(str, r)) for r in rows]


# ----------------------------------------------------------------------------------------------
# Pure pieces
# ----------------------------------------------------------------------------------------------

def test_module_imports_without_vllm_and_constructor_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)                              # `import vllm` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'rlvr\[vllm\]'.*CUDA GPU"):
        rv.VLLMSampler("some/model")
    with pytest.raises(ImportError, match="CUDA"):
        rv.import_vllm()


def test_rollout_from_outputs_hand_worked():
    r = rv.rollout_from_outputs(per_row_outputs(), PROMPTS, 2, 7, True, PAD, eos_token_ids=(EOS,))
    assert r.prompt_ids == [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    assert r.completion_ids.tolist() == [[10, 11, EOS, PAD], [12, 13, 14, 15], [16, 17, PAD, PAD], [18, 19, 20, EOS]]
    assert r.lengths.tolist() == [3, 4, 2, 4]                                   # the EOS counts
    assert r.finish_reasons == ["stop", "length", "stop", "stop"]              # last-token EOS: "stop" as in HFSampler
    assert r.texts == ["ab", "cdef", "g!", "hij"]                               # vLLM's texts without a decoder
    assert r.policy_version == 7
    assert r.behavior_logprobs.dtype == torch.float32
    want = torch.tensor([[-0.5, -1.25, -2.0, 0.0], [-0.1, -0.2, -0.3, -0.4], [-3.0, -4.0, 0.0, 0.0],
                         [-0.01, -0.02, -0.03, -0.04]])                       # the sampled tokens' entries, 0 after
    assert torch.equal(r.behavior_logprobs, want)
    assert bool((r.behavior_logprobs[~r.loss_mask] == 0).all())


def test_rollout_from_outputs_without_logprobs_with_decoder_and_one_request_per_prompt():
    grouped = [request(PROMPTS[i], *[completion(ids, reason, text) for ids, reason, text, _ in ROWS[2 * i:2 * i + 2]])
               for i in range(2)]
    a = rv.rollout_from_outputs(grouped, PROMPTS, 2, 0, False, 99, eos_token_ids=(EOS,), decode=decode_fake)
    b = rv.rollout_from_outputs(per_row_outputs(), PROMPTS, 2, 0, False, 99, eos_token_ids=(EOS,), decode=decode_fake)
    for r in (a, b):
        assert r.behavior_logprobs is None
        assert r.completion_ids[2].tolist() == [16, 17, 99, 99]                 # pad_id after the end
        assert r.texts == ["10|11|2", "12|13|14|15", "16|17", "18|19|20|2"]     # decoded from the ids
    assert torch.equal(a.completion_ids, b.completion_ids) and a.finish_reasons == b.finish_reasons
    empty = rv.rollout_from_outputs([], [], 3, 0, True, PAD)
    assert empty.completion_ids.shape == (0, 0) and empty.behavior_logprobs.shape == (0, 0) and empty.texts == []


def test_rollout_from_outputs_rejects_malformed_outputs():
    outs = per_row_outputs()
    with pytest.raises(ValueError, match="3 completions for 2 prompts x n=2 = 4 rows"):
        rv.rollout_from_outputs(outs[:3], PROMPTS, 2, 0, False, PAD)
    with pytest.raises(ValueError, match="out of order"):
        rv.rollout_from_outputs([outs[2], outs[1], outs[0], outs[3]], PROMPTS, 2, 0, False, PAD)
    with pytest.raises(ValueError, match="no logprobs"):
        rv.rollout_from_outputs([request(PROMPTS[0], completion([5], "stop"))], PROMPTS[:1], 1, 0, True, PAD)
    bad = [request(PROMPTS[0], completion([5, 6], "stop", logprobs=[{5: lp(-1.0)}, {7: lp(-1.0)}]))]
    with pytest.raises(ValueError, match="step 1 lack the sampled token 6"):
        rv.rollout_from_outputs(bad, PROMPTS[:1], 1, 0, True, PAD)
    with pytest.raises(ValueError, match="finish_reason='abort'"):
        rv.rollout_from_outputs([request(PROMPTS[0], completion([5], "abort"))], PROMPTS[:1], 1, 0, False, PAD)


def test_finish_reason_and_sampled_logprobs():
    assert rv.finish_reason_of("stop", [5, 6], (EOS,)) == "stop"
    assert rv.finish_reason_of("length", [5, 6], (EOS,)) == "length"
    assert rv.finish_reason_of("length", [5, EOS], (EOS, 9)) == "stop"
    assert rv.finish_reason_of("length", [], (EOS,)) == "length"
    assert rv.sampled_logprobs([{4: lp(-0.25), 8: lp(-3.0)}, {8: -1.5}], [4, 8]) == [-0.25, -1.5]   # floats too
    with pytest.raises(ValueError, match="logprobs for 1 tokens but the completion has 2"):
        rv.sampled_logprobs([{4: lp(-0.25)}], [4, 8])


def test_request_seed_is_a_pure_function_of_seed_prompt_and_sample():
    seeds = {(i, j): rv.request_seed(11, i, j) for i in range(20) for j in range(8)}
    assert len(set(seeds.values())) == len(seeds)                               # distinct rows, distinct seeds
    assert all(0 <= s < 2 ** 31 for s in seeds.values())
    assert rv.request_seed(11, 3, 2) == seeds[(3, 2)] == derive_seed(11, "vllm", 3, 2) % 2 ** 31
    assert rv.request_seed(12, 3, 2) != seeds[(3, 2)]


def test_vllm_sampling_kwargs():
    kw = rv.vllm_sampling_kwargs(SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=32, stop=("\n\n",),
                                                logprobs=True), 123, (EOS, 9))
    assert kw == {"n": 1, "temperature": 0.7, "top_p": 0.9, "max_tokens": 32, "stop": ["\n\n"],
                  "stop_token_ids": [EOS, 9], "include_stop_str_in_output": True, "seed": 123, "logprobs": 0,
                  "skip_special_tokens": True}
    off = rv.vllm_sampling_kwargs(SamplingParams(temperature=0.0), 5)
    assert off["logprobs"] is None and off["temperature"] == 0.0 and off["stop"] == [] and off["stop_token_ids"] == []


def test_engine_kwargs_fix_raw_logprobs_and_the_worker_extension():
    kw = rv.engine_kwargs("m", dtype="float32", seed=3, tensor_parallel_size=1)
    assert kw["logprobs_mode"] == "raw_logprobs"
    assert kw["worker_extension_cls"] == "rlvr.rollout.vllm.WeightLoaderExtension"
    assert kw["model"] == "m" and kw["dtype"] == "float32" and kw["seed"] == 3 and kw["gpu_memory_utilization"] == 0.5
    assert rv.engine_kwargs("m", logprobs_mode="raw_logprobs")["logprobs_mode"] == "raw_logprobs"
    with pytest.raises(ValueError, match="logprobs_mode"):
        rv.engine_kwargs("m", logprobs_mode="processed_logprobs")
    with pytest.raises(ValueError, match="worker_extension_cls"):
        rv.engine_kwargs("m", worker_extension_cls="my.Ext")
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        rv.engine_kwargs("m", gpu_memory_utilization=1.5)


def test_weight_items_and_the_worker_extension():
    w = {"model.embed_tokens.weight": torch.arange(6.0).view(2, 3).T}          # non-contiguous
    items = rv.weight_items(w)
    assert [n for n, _ in items] == ["model.embed_tokens.weight"]
    assert items[0][1].is_contiguous() and torch.equal(items[0][1], w["model.embed_tokens.weight"])
    for name in ("base_model.model.model.layers.0.self_attn.q_proj.weight",
                 "model.layers.0.self_attn.q_proj.lora_A.default.weight"):
        with pytest.raises(ValueError, match="merged weights"):
            rv.weight_items({name: torch.zeros(1)})
    with pytest.raises(ValueError, match="non-empty dict"):
        rv.weight_items({})

    got = []
    model = SimpleNamespace(load_weights=lambda weights: got.extend(weights))
    worker = SimpleNamespace(model_runner=SimpleNamespace(model=model))
    assert rv.WeightLoaderExtension.rlvr_load_weights(worker, items) == 1
    assert got == items
    wrapped = SimpleNamespace(unwrap=lambda: model)                               # a CUDA-graph wrapper
    rv.WeightLoaderExtension.rlvr_load_weights(SimpleNamespace(model_runner=SimpleNamespace(model=wrapped)), items)
    assert len(got) == 2


# ----------------------------------------------------------------------------------------------
# The sampler's glue, against a fake `vllm` module
# ----------------------------------------------------------------------------------------------

class FakeLLM:
    """Records what VLLMSampler asks of ``vllm.LLM``; 'generates' tokens that are a function of the request seed."""

    instances: list["FakeLLM"] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list[tuple] = []
        self.tok = tiny_random(0)[1]
        FakeLLM.instances.append(self)

    def get_tokenizer(self):
        return self.tok

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append(("generate", prompts, sampling_params, use_tqdm))
        outs = []
        for prompt, sp in zip(prompts, sampling_params):
            a = 3 + sp.seed % 60
            ids = [a, a + 1, EOS][:sp.max_tokens]
            logprobs = [{t: lp(-0.5 * (k + 1))} for k, t in enumerate(ids)] if sp.logprobs is not None else None
            outs.append(request(prompt["prompt_token_ids"], completion(ids, "stop", "ignored", logprobs)))
        return outs

    def collective_rpc(self, method, args=()):
        self.calls.append(("collective_rpc", method, args))
        return [None]

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kw: SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.instances.clear()
    return module


def test_sampler_glue_with_a_fake_engine(fake_vllm, tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [EOS, 9]}))
    sampler = rv.VLLMSampler(str(tmp_path), dtype="float32", enforce_eager=True, seed=1)
    llm = FakeLLM.instances[-1]
    assert isinstance(sampler, Sampler)
    assert llm.kwargs["logprobs_mode"] == "raw_logprobs" and llm.kwargs["seed"] == 1
    assert sampler.eos_token_ids == (EOS, 9) and sampler.pad_token_id == PAD    # tokenizer's + generation_config's
    tok = llm.tok
    prompts = [tok.encode("hi"), tok.encode("abc")]
    params = SamplingParams(temperature=0.8, max_new_tokens=3, logprobs=True)
    r = sampler.generate(prompts, params, n=2, seed=5)
    _, sent, sps, use_tqdm = llm.calls[-1]
    assert sent == [{"prompt_token_ids": p} for p in prompts for _ in range(2)] and use_tqdm is False
    assert [sp.seed for sp in sps] == [rv.request_seed(5, i, j) for i in range(2) for j in range(2)]
    assert all(sp.logprobs == 0 and sp.stop_token_ids == [EOS, 9] and sp.max_tokens == 3 for sp in sps)
    firsts = [3 + sp.seed % 60 for sp in sps]
    assert r.completion_ids.tolist() == [[a, a + 1, EOS] for a in firsts]
    assert r.texts == [tok.decode([a, a + 1, EOS], skip_special_tokens=True) for a in firsts]   # ours, not vLLM's
    assert r.behavior_logprobs.tolist() == [[-0.5, -1.0, -1.5]] * 4 and r.policy_version == 0
    again = sampler.generate(prompts, params, n=2, seed=5)
    assert torch.equal(again.completion_ids, r.completion_ids)
    assert sampler.generate([], params, n=2, seed=5).completion_ids.shape == (0, 0)
    with pytest.raises(ValueError, match="prompt 1 must be a non-empty"):
        sampler.generate([[5], []], params, n=1, seed=0)

    w = {"model.norm.weight": torch.ones(4)}
    sampler.load_weights(4, w)
    assert sampler.version == 4
    assert llm.calls[-2][:2] == ("collective_rpc", "rlvr_load_weights") and llm.calls[-1] == ("reset_prefix_cache",)
    (items,) = llm.calls[-2][2]
    assert [n for n, _ in items] == ["model.norm.weight"] and torch.equal(items[0][1], w["model.norm.weight"])
    assert sampler.generate(prompts, params, n=1, seed=0).policy_version == 4
    n_calls = len(llm.calls)
    with pytest.raises(ValueError, match="version 3 is older than the loaded version 4"):
        sampler.load_weights(3, w)
    with pytest.raises(ValueError, match="merged weights"):
        sampler.load_weights(5, {"base_model.model.lm_head.weight": torch.ones(1)})
    assert sampler.version == 4 and len(llm.calls) == n_calls                  # nothing was sent


# ----------------------------------------------------------------------------------------------
# Real vLLM (only with vLLM installed and a CUDA GPU)
# ----------------------------------------------------------------------------------------------

def confident_tiny(seed):
    """tiny-random with N(0, 0.3²) weight matrices: confident greedy text that sometimes ends in EOS."""
    model, tok = tiny_random(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model, tok


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    model, tok = confident_tiny(0)
    folder = tmp_path_factory.mktemp("tiny_vllm")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    sampler = rv.VLLMSampler(str(folder), dtype="float32", gpu_memory_utilization=0.2, max_model_len=256,
                             enforce_eager=True)
    return sampler, model, tok


class TestRealVLLM:
    TEXTS = ["Hello", "What is 2+2?", "a", "The quick brown fox"]

    def test_layout_determinism_and_raw_logprobs(self, engine):
        from rlvr.logprobs import completion_logprobs

        sampler, model, tok = engine
        prompts = [tok.encode(t) for t in self.TEXTS]
        for params in (SamplingParams(temperature=1.0, max_new_tokens=24, logprobs=True),
                       SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=24, logprobs=True)):
            r = sampler.generate(prompts, params, n=3, seed=0)
            assert r.prompt_ids == [p for p in prompts for _ in range(3)]
            assert torch.equal(sampler.generate(prompts, params, n=3, seed=0).completion_ids, r.completion_ids)
            assert not torch.equal(sampler.generate(prompts, params, n=3, seed=1).completion_ids, r.completion_ids)
            with torch.no_grad():
                ref = completion_logprobs(model, r.prompt_ids, r.completion_ids, r.lengths)[0]
            mask = r.loss_mask
            torch.testing.assert_close(r.behavior_logprobs[mask], ref[mask], atol=2e-3, rtol=0)
            assert bool((r.behavior_logprobs[~mask] == 0).all())
            for b, reason in enumerate(r.finish_reasons):
                k = int(r.lengths[b])
                ends_in_eos = k > 0 and int(r.completion_ids[b, k - 1]) in sampler.eos_token_ids
                assert reason == ("stop" if ends_in_eos else "length")        # no stop strings here

    def test_greedy_and_load_weights_match_hf(self, engine):
        sampler, model, tok = engine
        prompts = [tok.encode(t) for t in self.TEXTS]
        greedy = SamplingParams(temperature=0.0, max_new_tokens=16, stop=("xyz",))
        for hf_model, version in ((model, None), (confident_tiny(1)[0], 1)):
            if version is not None:
                sampler.load_weights(version, copy.deepcopy(hf_model).state_dict())
            ours = sampler.generate(prompts, greedy, n=1, seed=0)
            want = HFSampler(hf_model, tok).generate(prompts, greedy, n=1, seed=0)
            assert ours.texts == want.texts and torch.equal(ours.lengths, want.lengths)
            assert ours.finish_reasons == want.finish_reasons
            assert ours.policy_version == (version or 0)
        with pytest.raises(ValueError, match="older"):
            sampler.load_weights(0, model.state_dict())


# ----------------------------------------------------------------------------------------------
# The trainer's side of rollout.engine=vllm: merged weights, the model folder, the config rule
# ----------------------------------------------------------------------------------------------

def _lora_tiny():
    from rlvr.models import apply_lora, tiny_random

    model, _ = tiny_random(0)
    model = apply_lora(model, rank=4, alpha=8, target_modules=("q_proj", "v_proj"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B = 0 at init would make the merge trivially the base weights
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_merged_state_dict_equals_peft_merge_and_unload():
    import copy

    from rlvr.models import merged_state_dict, tiny_random

    model = _lora_tiny()
    merged = merged_state_dict(model)
    reference = copy.deepcopy(model).merge_and_unload()
    expected = {n: p.detach() for n, p in reference.named_parameters()}
    assert set(merged) == set(expected) == {n for n, _ in tiny_random(0)[0].named_parameters()}
    for name in expected:
        assert torch.allclose(merged[name], expected[name], atol=1e-6), name
    changed = [n for n in expected if not torch.equal(merged[n], dict(tiny_random(0)[0].named_parameters())[n])]
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed)
    plain, _ = tiny_random(0)
    assert all(torch.equal(merged_state_dict(plain)[n], p) for n, p in plain.named_parameters())


def test_pretrained_dir_maps_presets_to_folders():
    from rlvr.models import TINY_ARITH_DIR, ModelLoadError, pretrained_dir

    assert pretrained_dir("tiny-arith") == str(TINY_ARITH_DIR)
    assert pretrained_dir("org/some-model") == "org/some-model"
    with pytest.raises(ModelLoadError, match="built in memory"):
        pretrained_dir("tiny-random")


def test_the_vllm_engine_needs_the_async_trainer():
    from rlvr.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="rollout.engine=vllm .* needs trainer=async"):
        load_config(None, ["rollout.engine=vllm"])
    assert load_config(None, ["rollout.engine=vllm", "trainer=async"]).rollout.engine == "vllm"


class _FakeVLLMSampler:
    """Stands in for VLLMSampler: an HFSampler on the model folder, taking full weights as vLLM does."""

    built: list = []

    def __init__(self, model, *, dtype, **kwargs):
        from rlvr.models import load_model
        from rlvr.rollout import HFSampler

        m, tok = load_model(model, dtype=dtype)
        self.hf, self.model_dir, self.kwargs, self.loaded = HFSampler(m, tok), model, kwargs, []
        _FakeVLLMSampler.built.append(self)

    @property
    def version(self):
        return self.hf.version

    def generate(self, *args, **kwargs):
        return self.hf.generate(*args, **kwargs)

    def load_weights(self, version, weights):
        missing, unexpected = self.hf.model.load_state_dict(weights, strict=False)
        tied = {"lm_head.weight"} if self.hf.model.config.tie_word_embeddings else set()
        assert not unexpected and set(missing) <= tied, (missing, unexpected)  # a tied head comes once
        self.loaded.append((version, sorted(weights)))
        self.hf.version = version


def test_async_trainer_with_the_vllm_engine_publishes_merged_weights(tmp_path, monkeypatch):
    import rlvr.rollout.vllm as vllm_mod
    from rlvr.config import load_config
    from rlvr.metrics import read_metrics
    from rlvr.models import TINY_ARITH_DIR, load_model
    from rlvr.trainer import train

    monkeypatch.setattr(vllm_mod, "VLLMSampler", _FakeVLLMSampler)
    _FakeVLLMSampler.built = []
    cfg = load_config(None, ["model.name=tiny-arith", "model.lora=true", "data.source=arith", "data.task_kwargs={}",
                             "data.verifier=int", "data.size=60", "data.eval_size=8", "rollout.prompts_per_step=2",
                             "rollout.group_size=4", "rollout.max_new_tokens=8", "reward.num_workers=0",
                             "log.progress=false", "log.tensorboard=false", "eval.at_start=false", "steps=3",
                             "trainer=async", "rollout.engine=vllm", "rollout.max_staleness=0",
                             "rollout.vllm.gpu_memory_utilization=0.3", "rollout.vllm.engine_kwargs.seed=7"])
    train(cfg, run_dir=tmp_path / "r")
    assert len(_FakeVLLMSampler.built) == 1
    fake = _FakeVLLMSampler.built[0]
    assert fake.model_dir == str(TINY_ARITH_DIR)
    assert fake.kwargs == {"gpu_memory_utilization": 0.3, "max_model_len": None, "enforce_eager": False, "seed": 7}
    base_names = sorted(n for n, _ in load_model("tiny-arith")[0].named_parameters())
    versions = [v for v, _ in fake.loaded]
    assert versions[:2] == [1, 2] and versions == sorted(versions)
    assert all(names == base_names for _, names in fake.loaded)  # full HF names, no LoRA parameters
    rows = [r for r in read_metrics(tmp_path / "r") if "loss/policy" in r]
    assert [r["policy/version"] for r in rows] == [1, 2, 3] and all(r["async/staleness"] == 0 for r in rows)
