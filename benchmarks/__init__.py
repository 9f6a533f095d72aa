"""Benchmarks of rlvr: figures printed (and recorded in docs/benchmarks.md), never asserted.

Run from the repository root: ``python -m benchmarks NAME [options]`` (``python -m benchmarks --help`` lists them):

  advantages   time every advantage estimator; maxpo/pkpo against the slow O(G²) and enumeration constructions
  generate     tokens/s of rlvr's HFSampler against transformers' generate, same run
  variance     gradient bias and variance of the max@k estimators (exact on the bandit toy; Monte Carlo on tiny-arith)
  async        async against sync training for the same samples (staleness simulator or tiny-arith)
  trl          rlvr's GRPO step against TRL's GRPOTrainer step, with where the time goes
  packing      train tokens/s, padded against packed sequences, rows against token-budget micro-batches
  utilisation  matmul peak, generation and training tokens/s and their FLOP fraction (MFU)

Not part of the installed package: the benchmarks reach rlvr through its public API (``rlvr.advantages``,
``rlvr.rollout``, ``rlvr.trainer.train`` ...) and a run's logged metrics (``metrics.jsonl``), never the trainer's
internals. ``benchmarks.simulator`` is the staleness simulator (a model-free sampler) that the async benchmark and
the tests use; the slow reference constructions of ``advantages`` are the tests' oracles (``tests/maxk_references.py``).
"""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def config_path(path: str) -> Path:
    """A config named relative to the current directory if it is there, else relative to the repository root (so
    the benchmarks find ``configs/...`` from any directory)."""
    p = Path(path)
    return p if p.is_file() or p.is_absolute() else REPO_ROOT / p
