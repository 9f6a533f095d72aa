"""Evaluation: pass@k / maj@k / mean@n with bootstrap confidence intervals, scored by the training verifier.

- ``rlvr.eval.metrics``: the estimators (``pass_at_k``, ``maj_at_k``, ``max_at_k``, ``bootstrap_ci``,
  ``summarize``), pure functions checked against brute-force enumeration.
- ``rlvr.eval.evaluate``: ``evaluate(sampler, encode, problems, pool, params, n=...)``, used both by
  ``rlvr eval`` and by the trainer's held-out evaluation, so the two report the same numbers.
- ``rlvr.eval.command``: the ``rlvr eval`` command (models, checkpoints and run dirs; output files).
"""
from __future__ import annotations

from rlvr.eval.evaluate import EvalResult, evaluate
from rlvr.eval.metrics import Estimate, bootstrap_ci, default_ks, maj_at_k, max_at_k, pass_at_k, summarize

__all__ = ["EvalResult", "Estimate", "bootstrap_ci", "default_ks", "evaluate", "maj_at_k", "max_at_k", "pass_at_k",
           "summarize"]
