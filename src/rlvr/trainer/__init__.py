"""Trainers. ``train(cfg)`` runs the loop ``cfg.trainer`` names: ``sync`` (``rlvr.trainer.sync``) or ``async``
(``rlvr.trainer.async_``).

Public names for code outside the package (benchmarks, studies): ``train``, ``RunSummary``, ``PromptStream`` (the
seeded order in which a run takes its problems), ``build_problems(cfg) -> (train, eval)``,
``make_encoder(tokenizer, system_prompt)``, and the module ``rlvr.trainer.staleness``. The other submodules are the
trainer's own."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rlvr.config import TrainConfig
from rlvr.trainer.batch import PromptStream
from rlvr.trainer.build import build_problems, make_encoder
from rlvr.trainer.run import RunSummary

__all__ = ["PromptStream", "RunSummary", "build_problems", "make_encoder", "train"]


def train(cfg: TrainConfig, *, run_dir: str | Path | None = None, resume: bool = False,
          console: Any = None) -> RunSummary:
    """Run (or, with ``resume``, continue) training with the loop ``cfg.trainer`` names."""
    if cfg.trainer == "async":
        from rlvr.trainer import async_ as loop
    else:
        from rlvr.trainer import sync as loop
    return loop.train(cfg, run_dir=run_dir, resume=resume, console=console)
