"""Trainers. ``train(cfg)`` runs the loop ``cfg.trainer`` names: ``sync`` (``rlvr.trainer.sync``) or ``async``
(``rlvr.trainer.async_``).

The public surface for tools outside the library (benchmarks, studies): ``train`` and ``RunSummary``;
``build_problems(cfg)`` (the run's train and held-out problems), ``load_policy(cfg, device)`` (the policy model,
LoRA-wrapped or fully trainable as the run builds it, and its tokenizer), ``system_prompt(cfg)`` and
``make_encoder(tokenizer, system_prompt)`` (problem -> prompt token ids, as the trainer encodes them), and
``PromptStream`` (the seeded order in which a run takes its prompts); the module ``rlvr.trainer.staleness`` (the
async trainer's staleness rules). Everything a run measures is in its metrics.jsonl (``rlvr.metrics.read_metrics``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rlvr.config import TrainConfig
from rlvr.trainer.batch import PromptStream
from rlvr.trainer.build import build_problems, load_policy, make_encoder, system_prompt
from rlvr.trainer.run import RunSummary

__all__ = ["PromptStream", "RunSummary", "build_problems", "load_policy", "make_encoder", "system_prompt", "train"]


def train(cfg: TrainConfig, *, run_dir: str | Path | None = None, resume: bool = False,
          console: Any = None) -> RunSummary:
    """Run (or, with ``resume``, continue) training with the loop ``cfg.trainer`` names."""
    if cfg.trainer == "async":
        from rlvr.trainer import async_ as loop
    else:
        from rlvr.trainer import sync as loop
    return loop.train(cfg, run_dir=run_dir, resume=resume, console=console)
