"""Asynchronous vs synchronous training: wall-clock for the same number of samples, staleness, drops, timeline.

Two settings, each measured in one run, sync and async alternating over ``--repeats``:

* ``--setting sim`` (default): the staleness simulator (``benchmarks.simulator``). Generation is a ``SimSampler`` on
  a thread-backend worker that takes ``--gen-s`` seconds per batch; the learner "trains" for ``--train-s`` seconds per
  step (a sleep: the device is busy elsewhere, as a GPU learner would be). The async side runs the trainer's own
  machinery (``WorkerPool``, and ``rlvr.trainer.staleness``: ``StalenessGate``, ``Producer``, the learner's drop rule
  ``take_fresh``); sync runs the same generation and training back to back. With generation ≈ training the two-stage
  limit is 2×.
* ``--setting tiny-arith``: the real trainers on ``configs/tiny_arith/grpo.yaml`` with ``--prompts`` prompts per
  step (4: generation then costs about what training does) and the objective ``--loss`` (default asympo, which
  needs no behaviour log-probs), no evaluation. Sync runs with 1 and with 2 torch threads; async runs give the
  learner one thread and generation the other (a thread of the same process, or a Ray actor with
  ``--backends ray``). Reported: wall-clock including start-up, and the steady-state seconds per step (median of
  ``perf/step_s`` after 3 warm-up steps), against both sync runs. Sync on 1 thread is the two-stage comparison
  (each stage has the same one core); sync on 2 threads gives every core to whichever stage runs, the most a
  synchronous trainer gets out of this machine.

Printed: for async, the staleness histogram and the dropped samples too; for ``sim`` also an ASCII timeline of one async run (``G`` generation of chunk k,
``T`` training step k, one column per ``--tick`` seconds).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.cli import int_list, positive_int

__all__ = ["add_arguments", "command", "run_sim", "timeline"]


# ----------------------------------------------------------------------------------------------
# The simulator setting
# ----------------------------------------------------------------------------------------------

class _Batch:
    def __init__(self, rollout: Any) -> None:
        self.rollout, self.metrics = rollout, {"rollout/samples": rollout.lengths.shape[0]}


def _sim_params(tokens: int):
    from rlvr.types import SamplingParams
    return SamplingParams(max_new_tokens=tokens, logprobs=True)


SIM_TOKENS = 16
"""Decode steps of an in-flight simulated generation (``--weight-sync token``), over which ``--gen-s`` is spread."""


def run_sim(*, steps: int, gen_s: float, train_s: float, max_staleness: int | None, prompts: int = 8,
            group_size: int = 8, weight_delay_s: float = 0.0, weight_sync: str = "batch") -> dict[str, Any]:
    """One run: ``max_staleness=None`` is the synchronous loop, else the async machinery with that bound;
    ``weight_sync="token"``: the sampler decodes ``SIM_TOKENS`` steps of ``gen_s / SIM_TOKENS`` seconds and takes
    weights published meanwhile between them. Returns seconds, samples, per-step staleness (oldest token) and mean
    token staleness, drops and the (kind, index, start, end) events."""
    from benchmarks.simulator import SimSampler
    from rlvr.rollout import ThreadBackend, WorkerPool
    from rlvr.trainer.staleness import Producer, StalenessGate, StalenessStats, take_fresh, token_staleness

    prompt_ids = [[1 + i] for i in range(prompts)]
    in_flight = weight_sync == "token"
    params = _sim_params(SIM_TOKENS if in_flight else 4)
    timing = dict(seconds_per_token=gen_s / SIM_TOKENS) if in_flight else dict(seconds_per_call=gen_s)
    events: list[tuple[str, int, float, float]] = []
    token_age: list[float] = []
    t_start = time.monotonic()
    with WorkerPool(ThreadBackend(lambda: SimSampler(weight_delay_s=weight_delay_s, **timing)),
                    1, in_flight=in_flight) as pool:
        def make(j: int) -> _Batch:
            t0 = time.monotonic()
            batch = _Batch(pool.generate(prompt_ids, params, n=group_size, seed=j))
            events.append(("G", j, t0 - t_start, time.monotonic() - t_start))
            return batch

        def learn(step: int) -> None:
            t0 = time.monotonic()
            time.sleep(train_s)
            events.append(("T", step, t0 - t_start, time.monotonic() - t_start))
            pool.publish(step + 1, {})

        staleness: list[int] = []
        if max_staleness is None:
            for step in range(steps):
                batch = make(step)
                staleness.append(step - batch.rollout.policy_version)
                token_age.append(token_staleness(batch.rollout, step)["async/token_staleness_mean"])
                learn(step)
            dropped = 0
        else:
            gate = StalenessGate(max_staleness)
            stats = StalenessStats(max_staleness)
            producer = Producer(make, lambda: 0, gate)
            try:
                for step in range(steps):
                    chunk, _ = take_fresh(producer, gate, step, stats)
                    staleness.append(step - chunk.batch.rollout.policy_version)
                    token_age.append(token_staleness(chunk.batch.rollout, step)["async/token_staleness_mean"])
                    learn(step)
                    gate.publish(step + 1)
            finally:
                producer.close(timeout=60)
            dropped = stats.dropped_samples
        seconds = time.monotonic() - t_start
    return {"seconds": seconds, "samples": steps * prompts * group_size, "staleness": staleness,
            "token_staleness": statistics.mean(token_age), "dropped": dropped,
            "events": sorted(events, key=lambda e: e[2])}


def timeline(events: list[tuple[str, int, float, float]], tick: float, width: int = 100) -> str:
    """Two text rows, generation and training, one column per ``tick`` seconds; a busy column shows the
    chunk or step index (mod 10), an idle one a dot."""
    end = max(e[3] for e in events)
    cols = min(width, int(end / tick) + 1)
    rows = {"G": ["."] * cols, "T": ["."] * cols}
    for kind, idx, t0, t1 in events:
        for c in range(int(t0 / tick), min(cols, max(int(t0 / tick) + 1, int(round(t1 / tick))))):
            rows[kind][c] = str(idx % 10)
    return (f"generation |{''.join(rows['G'])}|\n"
            f"training   |{''.join(rows['T'])}|\n"
            f"            one column = {tick:g} s")


def _staleness_summary(staleness: list[int]) -> str:
    counts = {k: staleness.count(k) for k in sorted(set(staleness))}
    return " ".join(f"{k}:{v}" for k, v in counts.items())


def _bench_sim(args: argparse.Namespace) -> list[str]:
    lines = [f"setting sim: {args.steps} steps x {args.prompts * args.group_size} samples; generation "
             f"{args.gen_s:g} s/batch, training {args.train_s:g} s/step, weights visible to the sampler "
             f"{args.weight_delay_s:g} s after publishing; median of {args.repeats} alternating repeats", "",
             "| trainer | max_staleness | weight_sync | seconds | samples/s | speed-up vs sync | staleness "
             "(value:steps) | mean token staleness | dropped |", "|:--|--:|:--|--:|--:|--:|:--|--:|--:|"]
    variants: list[tuple[int | None, str]] = [(None, "batch")] + [(v, w) for v in args.staleness
                                                                  for w in args.weight_sync]
    results: dict[Any, list[dict]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v, w in variants:
            results[v, w].append(run_sim(steps=args.steps, gen_s=args.gen_s, train_s=args.train_s, max_staleness=v,
                                         prompts=args.prompts, group_size=args.group_size,
                                         weight_delay_s=args.weight_delay_s, weight_sync=w))
    base = statistics.median(r["seconds"] for r in results[None, "batch"])
    for v, w in variants:
        secs = statistics.median(r["seconds"] for r in results[v, w])
        last = results[v, w][-1]
        lines.append(f"| {'sync' if v is None else 'async'} | {'—' if v is None else v} | {w} | {secs:.2f} | "
                     f"{last['samples'] / secs:.0f} | {base / secs:.2f}× | {_staleness_summary(last['staleness'])} | "
                     f"{statistics.mean(r['token_staleness'] for r in results[v, w]):.2f} | {last['dropped']} |")
    show = 1 if 1 in args.staleness else args.staleness[0]
    tick = max(args.gen_s, args.train_s) / 4
    for name, v in (("sync", (None, "batch")), (f"async, max_staleness={show}", (show, args.weight_sync[0]))):
        events = [e for e in results[v][-1]["events"] if e[1] < 8]
        lines += ["", f"timeline ({name}, first 8 steps):", "```", timeline(events, tick), "```"]
    return lines


# ----------------------------------------------------------------------------------------------
# The tiny-arith setting: the real trainers
# ----------------------------------------------------------------------------------------------

def _trainer_variants(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    out = [(f"sync, {t} thread{'s' * (t > 1)}", ["trainer=sync", f"model.threads={t}"]) for t in (1, 2)]
    for backend in args.backends:
        extra = ["rollout.ray.threads_per_worker=1"] if backend == "ray" else []
        out += [(f"async {backend}, η={s}, weight_sync={w}",
                 ["trainer=async", f"rollout.backend={backend}", "model.threads=1", f"rollout.max_staleness={s}",
                  f"rollout.weight_sync={w}", *extra]) for s in args.staleness for w in args.weight_sync]
    return out


def _bench_trainer(args: argparse.Namespace) -> list[str]:
    from rlvr.config import load_config
    from rlvr.metrics import read_metrics
    from rlvr.trainer import train

    base = [f"steps={args.steps}", "eval.at_start=false", "eval.every=0", "log.progress=false",
            "log.tensorboard=false", "log.completions_every=0", f"algo.loss={args.loss}",
            f"rollout.prompts_per_step={args.prompts}", *args.override]
    if args.loss == "ppo_clip":
        base.append("algo.old_logprobs=behavior")
    variants = _trainer_variants(args)
    results: dict[str, list[tuple[float, list[dict]]]] = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name, extra in variants:
                run_dir = Path(tmp) / f"{rep}-{len(results[name])}-{name.replace(' ', '_').replace(',', '')}"
                t0 = time.perf_counter()
                train(load_config(args.config, [*base, *extra]), run_dir=run_dir)
                results[name].append((time.perf_counter() - t0,
                                      [r for r in read_metrics(run_dir) if "loss/policy" in r]))
    warm = min(3, args.steps - 1)
    steady = {name: statistics.median(r["perf/step_s"] for _, rows in runs for r in rows[warm:])
              for name, runs in results.items()}
    rows1 = results[variants[0][0]][-1][1]
    gen = statistics.median(r["perf/gen_s"] for r in rows1[warm:])
    train_s = statistics.median(r["perf/train_s"] for r in rows1[warm:])
    samples = args.steps * int(rows1[0]["rollout/samples"])
    s1, s2 = steady[variants[0][0]], steady[variants[1][0]]
    lines = [f"setting tiny-arith: {args.config}, algo.loss={args.loss}, rollout.prompts_per_step={args.prompts}, "
             f"{args.steps} steps = {samples} samples; one sync step on 1 thread: generation {gen:.3f} s, training "
             f"{train_s:.3f} s; medians over {args.repeats} alternating repeats", "",
             "| trainer | wall-clock s (incl. start-up) | steady s/step | speed-up vs sync 1 thread | "
             "vs sync 2 threads | staleness (value:steps) | mean token staleness | dropped |",
             "|:--|--:|--:|--:|--:|:--|--:|--:|"]
    for name, _ in variants:
        secs = statistics.median(s for s, _ in results[name])
        rows = results[name][-1][1]
        stale = [int(r.get("async/staleness", 0)) for r in rows]
        dropped = int(sum(r.get("async/dropped_samples", 0) for r in rows))
        token = statistics.mean(r.get("async/token_staleness_mean", 0.0) for r in rows)
        lines.append(f"| {name} | {secs:.1f} | {steady[name]:.3f} | {s1 / steady[name]:.2f}× | "
                     f"{s2 / steady[name]:.2f}× | {_staleness_summary(stale)} | {token:.2f} | {dropped} |")
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--setting", choices=["sim", "tiny-arith"], default="sim")
    p.add_argument("--steps", type=positive_int, default=None, help="learner steps (sim 16, tiny-arith 12)")
    p.add_argument("--staleness", type=int_list, default=[0, 1, 2, 4],
                   help="comma-separated max_staleness values of the async runs")
    p.add_argument("--weight-sync", type=lambda s: s.split(","), default=["batch", "token"],
                   help="comma-separated rollout.weight_sync values of the async runs (batch, token)")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--gen-s", type=float, default=0.2, help="sim: seconds of generation per batch")
    p.add_argument("--train-s", type=float, default=0.2, help="sim: seconds of training per step")
    p.add_argument("--weight-delay-s", type=float, default=0.0,
                   help="sim: seconds before published weights reach the sampler (late weights cause drops)")
    p.add_argument("--prompts", type=positive_int, default=None, help="prompts per step (sim 8, tiny-arith 4: "
                   "there generation then costs about what training does)")
    p.add_argument("--group-size", type=positive_int, default=8)
    p.add_argument("--config", default="configs/tiny_arith/grpo.yaml", help="tiny-arith: the base config")
    p.add_argument("--loss", default="asympo", help="tiny-arith: the policy loss of both trainers")
    p.add_argument("--backends", type=lambda s: s.split(","), default=["thread"],
                   help="tiny-arith: comma-separated rollout backends of the async runs (thread, ray)")
    p.add_argument("--override", nargs="*", default=[], help="tiny-arith: extra key=value overrides")


def command(args: argparse.Namespace) -> int:
    sim = args.setting == "sim"
    args.steps = args.steps or (16 if sim else 16)
    args.prompts = args.prompts or (8 if sim else 4)
    lines = _bench_sim(args) if args.setting == "sim" else _bench_trainer(args)
    print("\n".join(lines))
    return 0
