"""Checkpoints: safetensors for every tensor (weights, optimiser moments, RNG states), JSON for the rest.

Layout of ``RUN_DIR/checkpoints/step_000012/``:
  model.safetensors      trainable weights (LoRA adapters only, with LoRA)
  optimizer.safetensors  optimiser state tensors, keyed ``state/<param index>/<name>``
  rng.safetensors        torch CPU (and CUDA) generator states
  critic.safetensors, critic_optimizer.safetensors   the value model and its optimiser (PPO with a critic)
  state.json             step, data position, policy version, scheduler, optimiser param groups, extras
A checkpoint is written into a temporary directory and renamed into place, so a crash mid-write
leaves the previous checkpoint intact and loadable; ``latest`` is replaced atomically last.
Nothing is ever read with pickle.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rlvr.models import load_trainable_state_dict, trainable_state_dict

FORMAT = 1


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs."""

    step: int
    data_position: int
    policy_version: int
    extras: dict[str, Any] = field(default_factory=dict)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state/{idx}/{name}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}/{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, idx, name = key.split("/", 2)
        state.setdefault(int(idx), {})[name] = v
    for key, v in meta["scalars"].items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = v
    groups = [{**g, **({"betas": tuple(g["betas"])} if "betas" in g else {})} for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(ckpt_root: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: TrainState, *, keep: int = 2,
                    critic: tuple[torch.nn.Module, torch.optim.Optimizer] | None = None) -> Path:
    """Write ``ckpt_root/step_XXXXXX`` atomically and point ``ckpt_root/latest`` at it.

    critic: (value model, its optimiser), saved alongside when the run has one.
    """
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{state.step:06d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable_state_dict(model).items()},
              str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    critic_meta = None
    if critic is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable_state_dict(critic[0]).items()},
                  str(tmp / "critic.safetensors"))
        critic_tensors, critic_meta = _optimizer_tensors(critic[1])
        save_file(critic_tensors, str(tmp / "critic_optimizer.safetensors"))
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = s
    save_file(rng, str(tmp / "rng.safetensors"))
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    meta = {"format": FORMAT, "step": state.step, "data_position": state.data_position,
            "policy_version": state.policy_version, "extras": state.extras, "scheduler": sched, "optimizer": opt_meta,
            "critic_optimizer": critic_meta}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    latest_tmp = root / f".latest-{os.getpid()}"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, root / "latest")
    _fsync_dir(root)
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(ckpt_root: str | Path) -> Path:
    """The checkpoint ``latest`` names; falls back to the highest complete ``step_*`` directory."""
    root = Path(ckpt_root)
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / "state.json").is_file():
            return cand
    steps = sorted(p for p in root.glob("step_*") if (p / "state.json").is_file())
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint under {root}")
    return steps[-1]


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, *, critic: tuple[torch.nn.Module, torch.optim.Optimizer] | None = None
                    ) -> TrainState:
    """Restore weights, optimiser, scheduler and RNG (and the critic) from a checkpoint; return its TrainState."""
    d = Path(path)
    needed = ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json")
    if critic is not None:
        needed += ("critic.safetensors", "critic_optimizer.safetensors")
    for name in needed:
        if not (d / name).is_file():
            raise FileNotFoundError(f"checkpoint {d} is incomplete: {name} is missing")
    meta = json.loads((d / "state.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"checkpoint {d}: format {meta.get('format')} is not the supported {FORMAT}")
    device = next(model.parameters()).device
    load_trainable_state_dict(model, {k: v.to(device) for k, v in load_file(str(d / "model.safetensors")).items()})
    _load_optimizer(optimizer, load_file(str(d / "optimizer.safetensors")), meta["optimizer"])
    if critic is not None:
        cdev = next(critic[0].parameters()).device
        load_trainable_state_dict(critic[0], {k: v.to(cdev) for k, v in
                                              load_file(str(d / "critic.safetensors")).items()})
        _load_optimizer(critic[1], load_file(str(d / "critic_optimizer.safetensors")), meta["critic_optimizer"])
    scheduler.load_state_dict({**scheduler.state_dict(), **meta["scheduler"]})
    rng = load_file(str(d / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if states:
            torch.cuda.set_rng_state_all(states)
    return TrainState(step=meta["step"], data_position=meta["data_position"],
                      policy_version=meta["policy_version"], extras=meta["extras"])
