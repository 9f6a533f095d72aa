"""Checkpoints: safetensors for every tensor (weights, optimiser moments, RNG states), JSON for the rest;
torch.distributed.checkpoint (DCP) for the sharded weights and optimiser state of a data-parallel learner.

Layout of ``RUN_DIR/checkpoints/step_000012/``, one process:
  model.safetensors      trainable weights (LoRA adapters only, with LoRA)
  optimizer.safetensors  optimiser state tensors, keyed ``state/<param index>/<name>``
  rng.safetensors        torch CPU (and CUDA) generator states
  critic.safetensors, critic_optimizer.safetensors   the value model and its optimiser (PPO with a critic)
  state.json             step, data position, policy version, scheduler, optimiser param groups, extras
Several learner ranks (``dist.world_size`` > 1):
  dcp/                   DCP of {model, optim[, critic, critic_optim]}: trainable weights and optimiser state, each
                         rank writing its shards (keyed by parameter name, so any world size can load them)
  rng_rank<R>.safetensors  each rank's generator states
  state.json             as above, with "weights": "dcp" and the world size that wrote it
A checkpoint is written into a temporary directory and renamed into place (after every rank has written its
part), so a crash mid-write leaves the previous checkpoint intact and loadable; ``latest`` is replaced atomically
last. Either layout loads at any world size: one process reads DCP without a process group, and ranks read a
one-process checkpoint's full tensors and keep their shards. Nothing is ever read with pickle.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rlvr.models import load_trainable_state_dict, trainable_state_dict
from rlvr.trainer.dist import World

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
                    critic: tuple[torch.nn.Module, torch.optim.Optimizer] | None = None,
                    world: World | None = None) -> Path:
    """Write ``ckpt_root/step_XXXXXX`` atomically and point ``ckpt_root/latest`` at it.

    critic: (value model, its optimiser), saved alongside when the run has one. With several learner ranks every
    rank calls this and the weights go through DCP (``_save_sharded``).
    """
    if world is not None and world.parallel:
        return _save_sharded(Path(ckpt_root), model, optimizer, scheduler, state, keep, critic, world)
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
    save_file(_rng_state(), str(tmp / "rng.safetensors"))
    meta = {**_meta(state, scheduler), "optimizer": opt_meta, "critic_optimizer": critic_meta}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    _publish(root, tmp, final, keep)
    return final


def _rng_state() -> dict[str, torch.Tensor]:
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = s
    return rng


def _meta(state: TrainState, scheduler: Any) -> dict[str, Any]:
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    return {"format": FORMAT, "step": state.step, "data_position": state.data_position,
            "policy_version": state.policy_version, "extras": state.extras, "scheduler": sched}


def _publish(root: Path, tmp: Path, final: Path, keep: int) -> None:
    """fsync ``tmp``'s files, rename it to ``final``, point ``latest`` at it, prune old checkpoints."""
    for f in tmp.rglob("*"):
        if f.is_file():
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


# ----------------------------------------------------------------------------------------------
# Several learner ranks: DCP
# ----------------------------------------------------------------------------------------------

def _dcp_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               critic: tuple[torch.nn.Module, torch.optim.Optimizer] | None) -> dict[str, Any]:
    """The trainable weights and optimiser state as DCP state dicts (keyed by parameter name; frozen base weights
    under LoRA left out): what a sharded checkpoint holds, at any world size."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(ignore_frozen_params=True)
    m, o = get_state_dict(model, optimizer, options=opts)
    out = {"model": m, "optim": o}
    if critic is not None:
        out["critic"], out["critic_optim"] = get_state_dict(critic[0], critic[1], options=opts)
    return out


def _save_sharded(root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                  state: TrainState, keep: int, critic: Any, world: World) -> Path:
    """Every rank writes its shards (DCP) and its RNG state into one temporary directory; after a barrier rank 0
    writes state.json and renames the directory into place."""
    import torch.distributed as tdist
    import torch.distributed.checkpoint as dcp

    final = root / f"step_{state.step:06d}"
    tmp = root / f".tmp-{final.name}"
    if world.main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    tdist.barrier()
    dcp.save(_dcp_state(model, optimizer, critic), checkpoint_id=str(tmp / "dcp"))
    save_file(_rng_state(), str(tmp / f"rng_rank{world.rank}.safetensors"))
    tdist.barrier()
    if world.main:
        names = [n for n, p in model.named_parameters() if p.requires_grad]   # trainable_state_dict's keys
        meta = {**_meta(state, scheduler), "weights": "dcp", "world_size": world.size, "critic": critic is not None,
                "trainable": names}
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        _publish(root, tmp, final, keep)
    tdist.barrier()
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
                    scheduler: Any, *, critic: tuple[torch.nn.Module, torch.optim.Optimizer] | None = None,
                    world: World | None = None) -> TrainState:
    """Restore weights, optimiser, scheduler and RNG (and the critic) from a checkpoint of either layout, at any
    world size; return its TrainState."""
    d, world = Path(path), world or World()
    meta = _read_meta(d)
    if meta.get("weights") == "dcp":
        _load_sharded(d, model, optimizer, critic)
        rng_file = d / f"rng_rank{world.rank if (d / f'rng_rank{world.rank}.safetensors').is_file() else 0}.safetensors"
    else:
        needed = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")
        needed += ("critic.safetensors", "critic_optimizer.safetensors") if critic is not None else ()
        for name in needed:
            if not (d / name).is_file():
                raise FileNotFoundError(f"checkpoint {d} is incomplete: {name} is missing")
        load = _load_full_into_shards if world.parallel else _load_full
        load(model, optimizer, d / "model.safetensors", d / "optimizer.safetensors", meta["optimizer"])
        if critic is not None:
            load(critic[0], critic[1], d / "critic.safetensors", d / "critic_optimizer.safetensors",
                 meta["critic_optimizer"])
        rng_file = d / "rng.safetensors"
    scheduler.load_state_dict({**scheduler.state_dict(), **meta["scheduler"]})
    _set_rng(load_file(str(rng_file)))
    return TrainState(step=meta["step"], data_position=meta["data_position"],
                      policy_version=meta["policy_version"], extras=meta["extras"])


def _read_meta(d: Path) -> dict[str, Any]:
    if not (d / "state.json").is_file():
        raise FileNotFoundError(f"checkpoint {d} is incomplete: state.json is missing")
    meta = json.loads((d / "state.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"checkpoint {d}: format {meta.get('format')} is not the supported {FORMAT}")
    if meta.get("weights") == "dcp" and not (d / "dcp" / ".metadata").is_file():
        raise FileNotFoundError(f"checkpoint {d} is incomplete: dcp/.metadata is missing")
    return meta


def _load_full(model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: Path, opt_file: Path,
               opt_meta: dict[str, Any]) -> None:
    device = next(model.parameters()).device
    load_trainable_state_dict(model, {k: v.to(device) for k, v in load_file(str(weights)).items()})
    _load_optimizer(optimizer, load_file(str(opt_file)), opt_meta)


def _load_full_into_shards(model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: Path, opt_file: Path,
                           opt_meta: dict[str, Any]) -> None:
    """A one-process checkpoint into a sharded model: every rank reads the full tensors and keeps its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    names = [n for n, p in model.named_parameters() if p.requires_grad]   # the optimiser's parameter order
    full = load_file(str(weights))
    state: dict[str, dict[str, Any]] = {}
    for key, v in load_file(str(opt_file)).items():
        _, idx, name = key.split("/", 2)
        state.setdefault(names[int(idx)], {})[name] = v
    for key, v in opt_meta["scalars"].items():
        idx, name = key.split("/", 1)
        state.setdefault(names[int(idx)], {})[name] = v
    groups = [{**g, "params": names, **({"betas": tuple(g["betas"])} if "betas" in g else {})}
              for g in opt_meta["param_groups"]]
    set_state_dict(model, optimizer, model_state_dict=full, optim_state_dict={"state": state, "param_groups": groups},
                   options=StateDictOptions(full_state_dict=True, strict=False))


def _load_sharded(d: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, critic: Any) -> None:
    """A DCP checkpoint into this world's model (sharded or whole): DCP reshards by parameter name."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = _dcp_state(model, optimizer, critic)
    with warnings.catch_warnings():   # one process reading a sharded checkpoint: DCP says so, as intended
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(d / "dcp"))
    opts = StateDictOptions(ignore_frozen_params=True)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=opts)
    if critic is not None:
        set_state_dict(critic[0], critic[1], model_state_dict=state["critic"], optim_state_dict=state["critic_optim"],
                       options=opts)


def checkpoint_weights(ckpt_dir: str | Path) -> dict[str, torch.Tensor]:
    """The trainable weights of a checkpoint of either layout as one full CPU state dict, keyed by the trainer's
    ``trainable_state_dict`` names (LoRA adapters only under LoRA): ``model.safetensors``, or the ``model`` part
    of a sharded (DCP) checkpoint, read without building a model. A missing file raises FileNotFoundError naming
    it."""
    d = Path(ckpt_dir)
    if (d / "model.safetensors").is_file():
        return load_file(str(d / "model.safetensors"))
    if not (d / "dcp" / ".metadata").is_file():
        raise FileNotFoundError(f"checkpoint {d} has no weights: neither model.safetensors nor dcp/.metadata")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(d / "dcp"))
    entries = reader.read_metadata().state_dict_metadata
    state = {key[len("model."):]: torch.empty(m.size, dtype=m.properties.dtype) for key, m in entries.items()
             if key.startswith("model.") and isinstance(m, TensorStorageMetadata)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": state}, storage_reader=reader)
    names = _read_meta(d)["trainable"]                    # a tied weight is in the state dict twice: keep one
    return {n: state[n] for n in names}


def _set_rng(rng: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if states:
            torch.cuda.set_rng_state_all(states)
