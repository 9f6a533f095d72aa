"""``rlvr export RUN_DIR OUT``: a trained run as a plain Hugging Face model folder (transformers, vLLM): the run's
base model with its latest checkpoint's weights, LoRA adapters merged in, written atomically.

The folder holds the run's base model (its ``config.yaml``'s ``model.name``: a preset, a local folder or a hub
id, built with ``rlvr.models.load_model``, so ``tiny-random`` works too) with the weights of the run's latest
checkpoint (or ``--checkpoint DIR``) in place; LoRA adapters are merged into the base weights
(W + (alpha/r)·B·A, PEFT's ``merge_and_unload``), so the folder has no adapter files and loads with
``AutoModelForCausalLM.from_pretrained(OUT)`` or ``vllm.LLM(model=OUT)``. Written: ``config.json``,
``generation_config.json``, ``model.safetensors`` (weights in ``--dtype``, default the run's ``model.dtype``; the
merge is done in float32), the tokenizer's files and ``rlvr_export.json`` (where the weights came from).

The folder is built in a temporary sibling of OUT and renamed into place, so a failed export leaves no OUT; an
existing non-empty OUT is refused unless ``--force``, which replaces it (never a folder that holds the run).
Checkpoint weights are read with safetensors, never pickle. Errors name the file: a missing ``config.yaml``,
no checkpoint, a checkpoint whose keys do not match the run's model (``model.lora`` changed, say).

The checkpoint's weight format is known to one function, ``checkpoint_weights(ckpt_dir)``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DTYPES = ("float32", "bfloat16")
EXPORT_MARKER = "rlvr_export.json"


@dataclass(frozen=True)
class ExportSource:
    """What an export reads: the run's resolved config and the checkpoint directory whose weights it takes."""

    run_dir: Path
    cfg: Any
    checkpoint: Path


def checkpoint_weights(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    """The trainable weights of a checkpoint, as one full (unsharded) CPU state dict.

    Keys are the trainer's ``trainable_state_dict`` names (LoRA adapters only under ``model.lora``; all weights
    otherwise), so ``rlvr.models.load_trainable_state_dict`` puts them into a model built as the trainer built
    it. Either checkpoint layout (one process's ``model.safetensors``, or several ranks' DCP shards):
    ``rlvr.trainer.checkpoint.checkpoint_weights``. A missing file raises FileNotFoundError naming it.
    """
    from rlvr.trainer.checkpoint import checkpoint_weights as read

    return read(ckpt_dir)


def load_checkpoint_weights(ckpt_dir: str | Path, model: torch.nn.Module) -> None:
    """Copy a checkpoint's trainable weights into ``model`` (built as the trainer builds the run's policy).

    Keys or shapes that do not match raise a ValueError naming the checkpoint; nothing is copied then.
    """
    _apply_weights(model, checkpoint_weights(ckpt_dir), Path(ckpt_dir))


def _apply_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], ckpt_dir: Path) -> None:
    from rlvr.models import load_trainable_state_dict

    try:
        load_trainable_state_dict(model, state)
    except ValueError as e:
        raise ValueError(f"checkpoint {ckpt_dir / 'model.safetensors'} does not fit the run's model: {e}. "
                         "It must come from a run with the same model.name and model.lora settings") from None


def resolve_source(run_dir: str | Path, checkpoint: str | Path | None = None) -> ExportSource:
    """The run's config and the checkpoint to export (``checkpoint``, else the run's latest); cheap checks only.

    Raises FileNotFoundError naming the missing ``config.yaml``, checkpoint directory or checkpoint, and
    ``rlvr.config.ConfigError`` (a ValueError) naming the file and the key of a config that does not load.
    """
    from rlvr.config import ConfigError, load_config
    from rlvr.trainer.checkpoint import latest_checkpoint

    run = Path(run_dir).expanduser()
    config_file = run / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} is missing: RUN_DIR must be a run directory written by rlvr train")
    try:
        cfg = load_config(config_file)
    except ConfigError as e:
        raise ConfigError(f"{config_file}: {e}") from None
    if checkpoint is None:
        ckpt = latest_checkpoint(run / "checkpoints")      # FileNotFoundError: "no complete checkpoint under ..."
    else:
        ckpt = Path(checkpoint).expanduser()
        if not ckpt.is_dir():
            raise FileNotFoundError(f"checkpoint directory {ckpt} does not exist")
    return ExportSource(run, cfg, ckpt)


def check_out(out: Path, source: ExportSource, force: bool) -> None:
    """Refuse an OUT that is a file, a non-empty folder (without ``force``), or the run or one of its parents."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    resolved = out.resolve()
    for held in (source.run_dir.resolve(), source.checkpoint.resolve()):
        if resolved == held or resolved in held.parents:
            raise ValueError(f"OUT {out} holds {held}; export into a folder of its own")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; pass --force to replace it")


def build_policy(cfg: Any) -> tuple[Any, Any]:
    """(model, tokenizer): the run's base model in float32 on the CPU, LoRA-wrapped when the run used LoRA, with
    the same trainable parameters (and names) as the trainer's policy."""
    from dataclasses import replace

    from rlvr.trainer.build import load_policy

    m = replace(cfg.model, dtype="float32", device="cpu", gradient_checkpointing=False)
    return load_policy(replace(cfg, model=m), torch.device("cpu"))


def merged_model(model: Any) -> Any:
    """A plain transformers model: LoRA adapters merged into the base weights (PEFT's ``merge_and_unload``)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def export_run(run_dir: str | Path, out: str | Path, *, checkpoint: str | Path | None = None,
               dtype: str | None = None, force: bool = False) -> Path:
    """Write the run's trained model to ``out`` (see the module docstring); returns ``out``.

    dtype: ``float32`` or ``bfloat16`` for the saved weights; None is the run's ``model.dtype``.
    Every check that needs no model (files, config, OUT, dtype, the checkpoint's file) runs before the model loads.
    """
    out = Path(out).expanduser()
    source = resolve_source(run_dir, checkpoint)
    dtype = dtype or source.cfg.model.dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    check_out(out, source, force)
    state = checkpoint_weights(source.checkpoint)
    model, tokenizer = build_policy(source.cfg)
    _apply_weights(model, state, source.checkpoint)
    model = merged_model(model).to(getattr(torch, dtype))
    _publish(out, lambda tmp: _write_folder(tmp, model, tokenizer, source, dtype))
    return out


def _write_folder(folder: Path, model: Any, tokenizer: Any, source: ExportSource, dtype: str) -> None:
    """save_pretrained (safetensors: transformers 5 writes nothing else) + tokenizer + where it came from."""
    if model.generation_config is not None:
        gen = model.generation_config
        gen.pad_token_id = tokenizer.pad_token_id if gen.pad_token_id is None else gen.pad_token_id
        gen.eos_token_id = tokenizer.eos_token_id if gen.eos_token_id is None else gen.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    state = source.checkpoint / "state.json"
    step = json.loads(state.read_text()).get("step") if state.is_file() else None
    info = {"run_dir": str(source.run_dir.resolve()), "checkpoint": str(source.checkpoint.resolve()),
            "step": step, "base_model": source.cfg.model.name, "lora_merged": bool(source.cfg.model.lora),
            "dtype": dtype}
    (folder / EXPORT_MARKER).write_text(json.dumps(info, indent=1) + "\n")


def _publish(out: Path, build: Any) -> None:
    """Run ``build(tmp)`` in a temporary sibling of ``out``, then rename it to ``out`` (an existing ``out`` is
    moved aside first and deleted after the rename, or moved back if the rename fails). A failure inside
    ``build`` leaves ``out`` as it was and no temporary folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
        build(tmp)
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)     # mkdtemp made it 0700
        if out.exists():
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            if old.exists():
                os.rename(old, out)
            raise
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.usage = "%(prog)s RUN_DIR OUT [--checkpoint DIR] [--dtype D] [--force]"
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by rlvr train")
    p.add_argument("out", metavar="OUT", help="the model folder to write")
    p.add_argument("--checkpoint", metavar="DIR", help="export this checkpoint (default: the run's latest)")
    p.add_argument("--dtype", choices=DTYPES, help="weight dtype (default: the run's model.dtype)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty OUT")


def command(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        out = export_run(args.run_dir, args.out, checkpoint=args.checkpoint, dtype=args.dtype, force=args.force)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"rlvr export: error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.run_dir} to {out} (load with AutoModelForCausalLM.from_pretrained or vllm.LLM)")
    return 0
