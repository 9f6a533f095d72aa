"""Rewards: answer extraction, verifiers and a crash-proof process pool to run them.

  extract     find_answer / extract_answer / format_score: the final answer of a completion
  verifiers   VerifyResult, verify_math (math-verify), verify_int (exact integer), verify_int_last (lenient),
              the VERIFIERS registry, its ``register`` decorator and facts (``verifier_spec``)
  pool        RewardPool: verifiers in worker processes with a per-item timeout
  shaping     reward shaping terms (torch)
  scoring     score (verifier + shaping of a rollout), Scores, RewardSettings (torch)

shaping and scoring import torch, so they are not imported with the package (its workers never import torch):
``rlvr.rewards.score``, ``Scores`` and ``RewardSettings`` load ``rlvr.rewards.scoring`` on first use.

Example:
    >>> with RewardPool(num_workers=2, timeout_s=5.0) as pool:
    ...     pool.score(["math", "int"], ["so \\\\boxed{\\\\frac{1}{2}}", "#### 1,000"], ["0.5", "1000"])
    [VerifyResult(score=1.0, extracted='\\\\frac{1}{2}', reason='correct'), VerifyResult(score=1.0, extracted='1,000', reason='correct')]
"""
from rlvr.rewards.extract import REQUESTED_FORMS, extract_answer, find_answer, format_score
from rlvr.rewards.pool import RewardPool, RewardPoolError
from rlvr.rewards.verifiers import (VERIFIERS, VerifierSpec, VerifyResult, get_verifier, parse_int, verifier_spec,
                                    verify_int, verify_int_last, verify_math)

__all__ = ["VerifyResult", "verify_math", "verify_int", "verify_int_last", "parse_int", "VERIFIERS", "get_verifier",
           "VerifierSpec", "verifier_spec",
           "find_answer", "extract_answer", "format_score", "REQUESTED_FORMS", "RewardPool", "RewardPoolError",
           "RewardSettings", "Scores", "score"]

_SCORING = ("RewardSettings", "Scores", "score")


def __getattr__(name: str):
    """``score``, ``Scores`` and ``RewardSettings`` from ``rlvr.rewards.scoring``, imported when first asked for."""
    if name in _SCORING:
        from rlvr.rewards import scoring

        return getattr(scoring, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
