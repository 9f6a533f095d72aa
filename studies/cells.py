"""A sweep's runs grouped into cells (one variant at one grid point: its seeds), and the per-run measures of the
studies. Runs that never logged a reward or evaluation, or have not reached the plan's ``steps`` (still running,
interrupted or failed), are missing (``Cell.planned`` counts them)."""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rlvr.compare import Run, load_run
from rlvr.eval import Estimate
from rlvr.sweep import read_plan

__all__ = ["Cell", "load_cells", "mean_over", "window_mean", "lowest_window", "collapsed", "eval_start_end",
           "eval_start", "eval_end", "eval_change", "value_at_step", "value_at_budget", "first_reach"]


@dataclass
class Cell:
    """The runs of one variant at one grid point (its seeds), with how many the sweep planned."""

    variant: str
    grid: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    planned: int = 0

    def estimate(self, fn: Callable[[Run], float | None]) -> Estimate:
        """``fn`` of every run that has it (None: left out), as a mean with its t-interval over seeds."""
        return Estimate.over_seeds([v for v in (fn(r) for r in self.runs) if v is not None])


def load_cells(out_dir: str | Path) -> list[Cell]:
    """The cells of the sweep in ``out_dir`` (its ``sweep.json``), in plan order; runs without a reward or
    evaluation logged, or short of the plan's ``steps``, are missing. FileNotFoundError / ValueError from ``rlvr.sweep.read_plan``."""
    out = Path(out_dir)
    cells: dict[tuple[str, str], Cell] = {}
    for entry in read_plan(out):
        if entry.get("status") == "excluded":
            continue
        key = (entry["variant"], json.dumps(entry.get("grid", {}), sort_keys=True))
        cell = cells.setdefault(key, Cell(entry["variant"], dict(entry.get("grid", {}))))
        cell.planned += 1
        run_dir = out / entry["name"]
        if (run_dir / "metrics.jsonl").is_file():
            run = load_run(run_dir)
            logged = any(k.startswith(("reward/", "eval/")) for r in run.rows for k in r)
            last = max((int(r.get("step", 0)) for r in run.rows), default=0)
            if logged and last >= int(entry.get("steps") or 0):      # a run still going (or failed) is missing
                cell.runs.append(run)
    if not cells:
        raise ValueError(f"{out / 'sweep.json'}: every run of the plan is excluded")
    return list(cells.values())


def mean_over(run: Run, metric: str) -> float | None:
    """Mean of a metric over every step that logs it (finite values only); None if never logged."""
    ys = [y for y in run.series(metric)[1] if math.isfinite(y)]
    return math.fsum(ys) / len(ys) if ys else None


def window_mean(run: Run, metric: str, first: int | None = None, last: int | None = None) -> float | None:
    """Mean of the first ``first`` (or the last ``last``) logged values of a metric."""
    ys = run.series(metric)[1]
    ys = ys[:first] if first is not None else ys[-last:] if last is not None else ys
    return math.fsum(ys) / len(ys) if ys else None


def lowest_window(run: Run, metric: str, width: int = 5) -> float | None:
    """The lowest mean of ``width`` consecutive logged values (the whole series if shorter)."""
    ys = run.series(metric)[1]
    if not ys:
        return None
    w = min(width, len(ys))
    return min(math.fsum(ys[i:i + w]) / w for i in range(len(ys) - w + 1))


def collapsed(run: Run, metric: str = "reward/mean", start: int = 5, end: int = 10, alpha: float = 0.05) -> bool | None:
    """Reward fell below its starting value: the last ``end`` logged values are lower than the first ``start``
    by a one-sided Welch t-test at level ``alpha`` (so a flat, noisy run is not called a collapse half the time)."""
    ys = run.series(metric)[1]
    if len(ys) < start + end:
        return None
    from scipy.stats import ttest_ind

    first, last = ys[:start], ys[-end:]
    if max(first) == min(first) and max(last) == min(last):  # no noise at all: the means decide
        return last[0] < first[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision note on near-constant samples
        return bool(ttest_ind(last, first, equal_var=False, alternative="less").pvalue < alpha)


def eval_start_end(run: Run, metric: str = "eval/accuracy") -> tuple[float, float] | None:
    """(value at the first evaluation, value at the last) if the run evaluated at least twice."""
    _, ys = run.series(metric)
    return (ys[0], ys[-1]) if len(ys) >= 2 else None


def eval_start(run: Run, metric: str = "eval/accuracy") -> float | None:
    se = eval_start_end(run, metric)
    return None if se is None else se[0]


def eval_end(run: Run, metric: str = "eval/accuracy") -> float | None:
    se = eval_start_end(run, metric)
    return None if se is None else se[1]


def eval_change(run: Run, metric: str = "eval/accuracy") -> float | None:
    se = eval_start_end(run, metric)
    return None if se is None else se[1] - se[0]


def value_at_step(run: Run, metric: str, step: int) -> float | None:
    """The metric's value logged at ``step``; None if it was not logged there."""
    return next((y for s, y in zip(*run.series(metric)) if s == step), None)


def value_at_budget(run: Run, metric: str, budget: float) -> float | None:
    """The metric at the last step that logs it whose cumulative samples are <= ``budget``."""
    if run.samples is None:
        return None
    best = None
    for s, y in zip(*run.series(metric)):
        if run.samples_at(s) <= budget + 1e-9:
            best = y
    return best


def first_reach(run: Run, metric: str, target: float) -> tuple[int, float] | None:
    """(step, cumulative samples) where the metric first reaches ``target`` (>=); None if never."""
    for s, y in zip(*run.series(metric)):
        if y >= target:
            return s, (run.samples_at(s) if run.samples is not None else math.nan)
    return None
