"""``python -m benchmarks NAME [options]``: run one benchmark (see ``benchmarks/__init__.py``)."""
from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import textwrap

# name -> (module, one-line help)
BENCHMARKS = {
    "advantages": ("advantages", "time every advantage estimator; maxpo/pkpo vs O(G²) and enumeration"),
    "generate": ("generate", "tokens/s of rlvr's HFSampler vs transformers' generate, same run"),
    "variance": ("variance", "gradient bias and variance of the max@k estimators: exact on the bandit toy, "
                             "or Monte Carlo on tiny-arith (--setting tiny-arith)"),
    "async": ("async_", "async vs sync wall-clock for the same samples (simulator or tiny-arith)"),
    "trl": ("trl", "rlvr's GRPO step vs TRL's GRPOTrainer step, same model, prompts and settings"),
    "utilisation": ("utilisation", "tokens/s of generation and training and their FLOP fraction of the matmul "
                                   "peak (MFU)"),
    "packing": ("packing", "train tokens/s, padded vs packed sequences and row vs token-budget micro-batches"),
    "learner": ("learner", "the learner's step time at world size 1 and N (rlvr train dist.world_size=N)"),
}


def summary(module) -> str:
    """A module docstring's first paragraph, filled to the terminal, and where the rest is."""
    first = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
    width = max(40, min(100, shutil.get_terminal_size().columns) - 2)
    return f"{textwrap.fill(first, width)}\n\nDetails: python -m pydoc {module.__name__}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="rlvr's benchmarks (figures printed, "
                                     "not asserted); run from the repository root.")
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (module_name, help_text) in BENCHMARKS.items():
        module = importlib.import_module(f"benchmarks.{module_name}")
        p = sub.add_parser(name, help=help_text, description=summary(module),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(func=module.command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
