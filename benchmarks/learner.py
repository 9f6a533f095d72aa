"""The learner's step time at world size 1 and N: ``rlvr train`` with ``dist.world_size`` = 1 and N on one config.

Each side is a real run (``rlvr train CONFIG dist.world_size=W steps=S``, through the launcher for W > 1; the same
batch every step, samples from rank 0's sampler), alternating over ``--repeats``; reported per side are the median
seconds of the update (``perf/train_s``), split into forward, backward and optimiser step (``perf/forward_s``,
``perf/backward_s``, ``perf/optim_s``), and of the whole step (``perf/step_s``), after ``--warmup`` steps, with the
ratio to world size 1. One rank runs ``--threads`` torch threads at world size 1; each of N ranks runs
``threads / N`` (torchrun's default is 1), so both sides use the same cores. On a CPU the ranks share one machine's
cores and memory bandwidth and add the collectives' cost, so N ranks are expected to be slower per step: the point
of this benchmark there is the measured overhead; speed is a GPU matter (``--device cuda``, one GPU per rank).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.cli import machine_info, positive_int

__all__ = ["add_arguments", "command", "run_side"]

PARTS = ("train", "forward", "backward", "optim", "step")


def run_side(config: str, world: int, *, steps: int, threads: int, strategy: str, device: str,
             overrides: list[str], out: Path) -> dict[str, list[float]]:
    """One ``rlvr train`` run at ``world`` ranks; per-step seconds of each part (``perf/<part>_s``)."""
    from rlvr.metrics import read_metrics

    run = out / f"w{world}"
    per_rank = max(1, threads // world)
    cmd = [sys.executable, "-m", "rlvr", "train", config, f"steps={steps}", f"dist.world_size={world}",
           f"dist.strategy={strategy}", f"model.device={device}", f"model.threads={per_rank}", "eval.at_start=false",
           "eval.every=0", "log.progress=false", "log.tensorboard=false", "log.completions_every=0", *overrides,
           "--run-dir", str(run)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(per_rank)}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"rlvr train at world size {world} failed:\n{res.stderr[-3000:]}")
    rows = [r for r in read_metrics(run) if "perf/train_s" in r]
    return {part: [r.get(f"perf/{part}_s", float("nan")) for r in rows] for part in PARTS}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/tiny_arith/grpo.yaml", help="the run's config (default tiny-arith GRPO)")
    p.add_argument("--world", type=positive_int, default=2, help="the ranks compared with one process (default 2)")
    p.add_argument("--strategy", choices=("fsdp2", "ddp"), default="fsdp2")
    p.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per rank)")
    p.add_argument("--steps", type=positive_int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    p.add_argument("--repeats", type=positive_int, default=2)
    p.add_argument("--threads", type=positive_int, default=2, help="torch threads in all (split over the ranks)")
    p.add_argument("overrides", nargs="*", help="config overrides for both sides (key=value)")


def command(args: argparse.Namespace) -> int:
    sides: dict[int, dict[str, list[float]]] = {1: {p: [] for p in PARTS}, args.world: {p: [] for p in PARTS}}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for world in (1, args.world):
                got = run_side(args.config, world, steps=args.steps, threads=args.threads, strategy=args.strategy,
                               device=args.device, overrides=args.overrides, out=Path(tmp) / f"r{r}")
                for part in PARTS:
                    sides[world][part] += got[part][args.warmup:]
    print(_table(sides, args))
    return 0


def _table(sides: dict[int, dict[str, list[float]]], args: argparse.Namespace) -> str:
    med = {w: {p: statistics.median(v) if v else float("nan") for p, v in parts.items()} for w, parts in sides.items()}
    n, m = len(sides[1]["train"]), machine_info()
    lines = [f"{args.config} {' '.join(args.overrides)}; {args.strategy} on {args.device}; {args.threads} threads in "
             f"all; {n} steps per side ({args.repeats} runs × {args.steps} − {args.warmup} warm-up); {m['cpu']}, "
             f"{m['cores']} cores, torch {m['torch']}",
             "", f"| median seconds | world size 1 | world size {args.world} | {args.world} ÷ 1 |", "|:--|--:|--:|--:|"]
    names = {"train": "update (perf/train_s)", "forward": "  forward", "backward": "  backward",
             "optim": "  clip + optimiser step", "step": "whole step (perf/step_s)"}
    for part in PARTS:
        a, b = med[1][part], med[args.world][part]
        lines.append(f"| {names[part]} | {a:.3f} | {b:.3f} | {b / a:.2f}× |")
    return "\n".join(lines)
