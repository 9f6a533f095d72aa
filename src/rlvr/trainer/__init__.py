"""Trainers. ``train(cfg)`` runs the synchronous loop (``rlvr.trainer.sync``)."""
from rlvr.trainer.sync import RunSummary, train

__all__ = ["RunSummary", "train"]
