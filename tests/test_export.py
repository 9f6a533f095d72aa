"""`rlvr export`: a run trained for two steps on tiny-random, with and without LoRA, exported and loaded back with
transformers' AutoModelForCausalLM gives the logits of the trained model as the trainer holds it (base + the
checkpoint's weights, adapters unmerged); the folder is plain (no adapters); errors name the file before the model
loads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr import export
from rlvr.cli import main
from rlvr.config import load_config
from rlvr.models import char_tokenizer, load_trainable_state_dict, tiny_random
from rlvr.trainer import build
from tests.test_train_e2e import TINY

TEXTS = ["12+7=", "3*4=12\n", "99-100=-1 so the answer is", "~{}|"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[bool, Path]:
    """{lora: run dir} of two-step runs on tiny-random with a checkpoint after each step."""
    from rlvr.trainer import train

    root = tmp_path_factory.mktemp("runs")
    out = {}
    for lora in (True, False):
        cfg = load_config(None, [*TINY, "steps=2", f"model.lora={str(lora).lower()}", "log.checkpoint_every=1",
                                 "eval.at_start=false"])
        train(cfg, run_dir=root / f"lora={lora}")
        out[lora] = root / f"lora={lora}"
    return out


def _ids(texts=TEXTS) -> list[torch.Tensor]:
    tok = char_tokenizer()
    return [torch.tensor([[tok.bos_token_id, *tok.encode(t, add_special_tokens=False)]]) for t in texts]


def _logits(model) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(input_ids=ids).logits.float() for ids in _ids()]


def _trainer_model(run: Path, step: int):
    """The policy as the trainer builds it (``build.load_policy``: LoRA-wrapped when configured), with the
    checkpoint's trainable weights loaded: adapters unmerged."""
    from safetensors.torch import load_file

    model, _ = build.load_policy(load_config(run / "config.yaml"), torch.device("cpu"))
    load_trainable_state_dict(model, load_file(str(run / f"checkpoints/step_{step:06d}/model.safetensors")))
    return model.eval()


def _loaded(out: Path):
    return AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_exported_folder_gives_the_trained_models_logits(runs, tmp_path, lora):
    out = export.export_run(runs[lora], tmp_path / "model")
    trained, base = _logits(_trainer_model(runs[lora], 2)), _logits(tiny_random(0)[0])
    exported = _logits(_loaded(out))
    for e, t, b in zip(exported, trained, base):
        assert e.shape == t.shape == (1, t.shape[1], 99)
        torch.testing.assert_close(e, t, rtol=1e-5, atol=2e-5)       # fp32 rounding of W + s·B·A against Wx + s·BAx
        assert (t - b).abs().max() > 1e-3                            # training moved the logits: the check can fail
    info = json.loads((out / export.EXPORT_MARKER).read_text())
    assert info["step"] == 2 and info["lora_merged"] is lora and info["dtype"] == "float32"
    assert info["checkpoint"] == str((runs[lora] / "checkpoints/step_000002").resolve())


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_the_folder_is_plain_transformers_with_no_adapters(runs, tmp_path, lora):
    out = export.export_run(runs[lora], tmp_path / "model")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "generation_config.json", "model.safetensors", export.EXPORT_MARKER,
                     "tokenizer.json", "tokenizer_config.json"]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        dtypes = {f.get_tensor(k).dtype for k in keys}
    base_keys = {k for k in tiny_random(0)[0].state_dict() if k != "lm_head.weight"}   # tied to the embedding
    assert keys == base_keys and dtypes == {torch.float32}
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["tie_word_embeddings"] is True
    assert not any("peft" in k or "lora" in k or "adapter" in k for k in config)
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["eos_token_id"], gen["pad_token_id"], gen["bos_token_id"]) == (2, 0, 1)
    assert not list(out.parent.glob(".model.*"))                     # no temporary folder left behind


def test_tokenizer_round_trips(runs, tmp_path):
    """The character tokenizer's files load back as the same tokenizer with PreTrainedTokenizerFast (what the
    tiny-arith preset does); AutoTokenizer does not, and README says so: transformers 5.17 gives every qwen2
    folder Qwen2Tokenizer, whose byte-level pre-tokenizer drops the newline and spaces. If this test's last
    assertion fails, transformers changed that, and README's note on `rlvr export` can go."""
    from transformers import PreTrainedTokenizerFast

    out = export.export_run(runs[True], tmp_path / "model")
    ours, loaded = char_tokenizer(), PreTrainedTokenizerFast.from_pretrained(out)
    for text in TEXTS:
        ids = loaded.encode(text, add_special_tokens=False)
        assert ids == ours.encode(text, add_special_tokens=False) and len(ids) == len(text)
        assert loaded.decode(ids) == text
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    assert len(loaded) == len(ours) == 99
    auto = AutoTokenizer.from_pretrained(out)
    assert type(auto).__name__ == "Qwen2Tokenizer" and len(auto.encode("1\n2", add_special_tokens=False)) == 2


def test_checkpoint_option_exports_that_step(runs, tmp_path):
    run = runs[True]
    out = export.export_run(run, tmp_path / "m1", checkpoint=run / "checkpoints/step_000001")
    step1, step2 = _logits(_trainer_model(run, 1)), _logits(_trainer_model(run, 2))
    for e, t, later in zip(_logits(_loaded(out)), step1, step2):
        torch.testing.assert_close(e, t, rtol=1e-5, atol=2e-5)
        assert (t - later).abs().max() > 1e-4
    assert json.loads((out / export.EXPORT_MARKER).read_text())["step"] == 1


def test_bfloat16_export(runs, tmp_path):
    out = export.export_run(runs[False], tmp_path / "model", dtype="bfloat16")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.dtype == torch.bfloat16
    trained = _trainer_model(runs[False], 2)
    for e, t in zip(_logits(loaded.float()), _logits(trained)):
        err = (e - t).abs().max()
        assert 0 < err < 0.02 * t.abs().max()          # rounded to bf16 (8 mantissa bits), not garbled


def test_cli_exports_and_refuses_a_non_empty_out_without_force(runs, tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert main(["export", str(runs[True]), str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} exists and is not empty" in err and "--force" in err
    assert (out / "stale.txt").read_text() == "old"
    assert main(["export", str(runs[True]), str(out), "--force", "--dtype", "float32"]) == 0
    assert f"to {out}" in capsys.readouterr().out
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]   # the old folder and the temporary one are gone


def _no_model(monkeypatch):
    monkeypatch.setattr(export, "build_policy", lambda cfg: pytest.fail("the model was loaded"))


def test_errors_name_the_file_before_the_model_loads(runs, tmp_path, monkeypatch):
    _no_model(monkeypatch)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{empty / 'config.yaml'} is missing"):
        export.export_run(empty, tmp_path / "o")
    (empty / "config.yaml").write_text((runs[True] / "config.yaml").read_text())
    with pytest.raises(FileNotFoundError, match=f"no complete checkpoint under {empty / 'checkpoints'}"):
        export.export_run(empty, tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="checkpoint directory .*nope does not exist"):
        export.export_run(runs[True], tmp_path / "o", checkpoint=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=f"checkpoint {empty} has no weights: neither model.safetensors nor "
                                                 "dcp/.metadata"):
        export.export_run(runs[True], tmp_path / "o", checkpoint=empty)
    (empty / "config.yaml").write_text("model:\n  nmae: tiny-random\n")
    with pytest.raises(ValueError, match=r"config.yaml: .*model.nmae"):
        export.export_run(empty, tmp_path / "o")
    with pytest.raises(ValueError, match="holds"):
        export.export_run(runs[True], runs[True].parent, force=True)   # never replace a folder holding the run
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16"):
        export.export_run(runs[True], tmp_path / "o", dtype="float16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]     # nothing written
    assert (runs[True] / "checkpoints/step_000002/model.safetensors").is_file()


def test_a_checkpoint_of_another_model_setup_is_refused_naming_its_file(runs, tmp_path):
    """A LoRA config with a full fine-tune's checkpoint: the keys do not match; nothing is written."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = yaml.safe_load((runs[False] / "config.yaml").read_text())
    cfg["model"]["lora"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    ckpt = runs[False] / "checkpoints/step_000002"
    with pytest.raises(ValueError, match=rf"checkpoint {ckpt / 'model.safetensors'} does not fit the run's model: "
                                         r"trainable state does not match the model: missing keys \[.*lora_A"):
        export.export_run(run, tmp_path / "o", checkpoint=ckpt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.slow
def test_smollm2_lora_run_exports_with_its_chat_tokenizer(tmp_path):
    """The real model: SmolLM2 + LoRA adapters (random B, a stand-in for a trained checkpoint) exported and loaded
    with AutoModelForCausalLM and AutoTokenizer (a llama folder: its chat template survives)."""
    from safetensors.torch import save_file

    from rlvr.config import to_dict
    from rlvr.models import encode_prompt, trainable_state_dict

    run, ckpt = tmp_path / "run", tmp_path / "run/checkpoints/step_000001"
    ckpt.mkdir(parents=True)
    cfg = load_config(None, ["model.name=smollm2-135m-instruct", "model.lora=true"])
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    model, tok = build.load_policy(cfg, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    save_file(trainable_state_dict(model), str(ckpt / "model.safetensors"))
    (ckpt / "state.json").write_text(json.dumps({"step": 1}))
    out = export.export_run(run, tmp_path / "out")
    ids = torch.tensor([encode_prompt(tok, "What is 7 + 38?")])
    with torch.no_grad():
        trained = model.eval()(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        exported = _loaded(out)(input_ids=ids).logits
    torch.testing.assert_close(exported, trained, rtol=1e-4, atol=1e-3)   # 30 layers of fp32 rounding, logits ~40
    assert (trained - base).abs().max() > 0.5
    loaded_tok = AutoTokenizer.from_pretrained(out)
    assert encode_prompt(loaded_tok, "What is 7 + 38?") == ids[0].tolist()
    assert loaded_tok.eos_token == tok.eos_token == "<|im_end|>"
    assert not (out / "adapter_config.json").exists()
