"""Trainers. ``train(cfg)`` runs the loop ``cfg.trainer`` names: ``sync`` (``rlvr.trainer.sync``) or ``async``
(``rlvr.trainer.async_``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rlvr.config import TrainConfig
from rlvr.trainer.run import RunSummary

__all__ = ["RunSummary", "train"]


def train(cfg: TrainConfig, *, run_dir: str | Path | None = None, resume: bool = False,
          console: Any = None) -> RunSummary:
    """Run (or, with ``resume``, continue) training with the loop ``cfg.trainer`` names."""
    if cfg.trainer == "async":
        from rlvr.trainer import async_ as loop
    else:
        from rlvr.trainer import sync as loop
    return loop.train(cfg, run_dir=run_dir, resume=resume, console=console)
