"""Metrics: the one sink that writes a run's logs.

Functions elsewhere *return* metric dicts with namespaced keys (``reward/``, ``adv/``, ``loss/``,
``policy/``, ``response/``, ``perf/``, ``eval/``); ``RunLog`` writes them: ``metrics.jsonl`` (one JSON
object per step), TensorBoard events (``tb/``), sampled completions (``completions.jsonl``) and, with
``log.wandb=true``, the same scalars to Weights & Biases (``WandbSettings``; the ``wandb`` package is imported only
then: ``pip install 'rlvr[wandb]'``). W&B reads its own environment: ``WANDB_MODE=offline`` writes the run under
``RUN_DIR/wandb/`` without any network call (``wandb sync`` uploads it later), ``WANDB_MODE=disabled`` turns it off.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep the fact visible
    return v


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` file (or of ``RUN_DIR/metrics.jsonl`` when given a directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"no metrics file at {p}")
    rows = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{i}: not a JSON object ({e})") from e
    return rows


@dataclass(frozen=True)
class WandbSettings:
    """A W&B run for ``RunLog``: project, run name (None: the run directory's name) and the config to record.
    The run id is derived from the run directory's absolute path, so a resumed run continues the same W&B run."""

    project: str = "rlvr"
    name: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


def require_wandb() -> None:
    """A ValueError saying how to install wandb when it is missing (checked before a run loads its model)."""
    if importlib.util.find_spec("wandb") is None:
        raise ValueError("log.wandb=true needs the wandb package: pip install 'rlvr[wandb]' (or log.wandb=false)")


def _open_wandb(run_dir: Path, settings: WandbSettings) -> Any:
    import wandb  # only here: log.wandb=true

    run_id = f"{run_dir.name[:100]}-{hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:8]}"
    run_id = "".join(c if c.isalnum() or c in "-_" else "_" for c in run_id)
    return wandb.init(project=settings.project, name=settings.name or run_dir.name, id=run_id, resume="allow",
                      dir=str(run_dir), config=settings.config)


class RunLog:
    """Writes metrics.jsonl, completions.jsonl and (optionally) TensorBoard events and a W&B run under ``run_dir``."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, resume_step: int | None = None,
                 wandb: WandbSettings | None = None) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:  # a resumed run continues from its checkpoint: drop anything logged after it
            for name in ("metrics.jsonl", "completions.jsonl"):
                self._truncate(self.dir / name, resume_step)
        self._metrics = open(self.dir / "metrics.jsonl", "a")
        self._completions = open(self.dir / "completions.jsonl", "a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tb"), purge_step=resume_step + 1 if resume_step else None)
        self._wandb = _open_wandb(self.dir, wandb) if wandb is not None else None

    @staticmethod
    def _truncate(path: Path, step: int) -> None:
        if not path.exists():
            return
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        tmp.replace(path)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        scalars = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))
                   and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def completions(self, step: int, rows: Iterable[dict[str, Any]]) -> None:
        for r in rows:
            self._completions.write(json.dumps({"step": step, **r}) + "\n")
        self._completions.flush()

    def close(self) -> None:
        self._metrics.close()
        self._completions.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
