"""``rlvr study {aapo,maxpo,async} SWEEP_DIR``: the tables and plots of docs/results.md from a finished sweep.

Each study reads the ``sweep.json`` that ``rlvr sweep`` wrote in SWEEP_DIR and every run directory it lists (runs
that never logged are counted as missing), groups the seeds of each variant and grid point, and prints Markdown:
cells are ``mean ± h`` with h the half-width of the 95% Student-t interval over seeds (``rlvr.compare.mean_ci``),
and a column saying how many seeds there are. One PNG per study goes to ``--img-dir`` (default SWEEP_DIR/report).

* ``aapo`` (configs/sweeps/aapo.yaml): held-out greedy accuracy at the end; the accuracy at an **equal sample
  budget** — the last evaluation whose cumulative samples (``rollout/samples``: AAPO's reference-model samples
  included) do not exceed GRPO's final budget; and the steps and samples each run needs to first reach GRPO's mean
  final accuracy (a run that never reaches it is left out of the mean and the cell says ``reached k/n``).
* ``maxpo`` (configs/sweeps/maxpo.yaml): held-out pass@1 .. pass@8 at the end (8 samples per problem at
  temperature 1, the unbiased pass@k estimator), one row per estimator and K; the column pass@K is the metric that
  estimator optimises; training reward and token entropy over the first 5 logged steps → the last 10 (seed means).
* ``async`` (configs/sweeps/async_staleness.yaml): per objective and staleness bound η: final held-out accuracy and
  its change from the start; **collapses**, a run whose training reward over its last 10 steps is below that over
  its first 5 (reward falling below its starting value) by a one-sided Welch t-test at the 5% level, and separately
  a final held-out accuracy below the start; the lowest 5-step mean reward; the scale imbalance ``policy/nll_neg_over_pos`` (mean NLL of tokens with
  negative advantage over that of positive ones) averaged over training and at the end; ``policy/behavior_kl`` and
  the mean staleness actually seen (``async/staleness``).
"""
from __future__ import annotations

import argparse
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rlvr.compare import Estimate, Run, final_value, load_run, mean_ci

__all__ = ["Cell", "load_sweep", "mean_over", "window_mean", "collapsed", "value_at_budget", "first_reach",
           "aapo_report", "maxpo_report", "async_report", "add_arguments", "command"]

STUDIES = ("aapo", "maxpo", "async")


@dataclass
class Cell:
    """The runs of one variant at one grid point (its seeds), with how many the sweep planned."""

    variant: str
    grid: dict[str, Any]
    runs: list[Run] = field(default_factory=list)
    planned: int = 0

    def estimate(self, fn: Callable[[Run], float | None]) -> Estimate:
        vals = [v for v in (fn(r) for r in self.runs) if v is not None]
        return Estimate(tuple(vals), len(self.runs))


def load_sweep(out_dir: str | Path) -> list[Cell]:
    """Cells in the sweep's plan order; runs without ``metrics.jsonl`` rows are missing (``planned`` counts them)."""
    out = Path(out_dir)
    plan_path = out / "sweep.json"
    if not plan_path.is_file():
        raise FileNotFoundError(f"no sweep.json in {out} (run `rlvr sweep SWEEP.yaml` first)")
    plan = json.loads(plan_path.read_text())
    cells: dict[tuple[str, str], Cell] = {}
    for entry in plan.get("runs", []):
        if entry.get("status") == "excluded":
            continue
        key = (entry["variant"], json.dumps(entry.get("grid", {}), sort_keys=True))
        cell = cells.setdefault(key, Cell(entry["variant"], dict(entry.get("grid", {}))))
        cell.planned += 1
        run_dir = out / entry["name"]
        if (run_dir / "metrics.jsonl").is_file():
            run = load_run(run_dir)
            if any(k.startswith(("reward/", "eval/")) for r in run.rows for k in r):
                cell.runs.append(run)
    if not cells:
        raise ValueError(f"{plan_path}: the plan lists no runs")
    return list(cells.values())


# ------------------------------------------------------------------------------------------------ per-run measures

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


# ------------------------------------------------------------------------------------------------------- reports

def _fmt(e: Estimate, digits: int = 3) -> str:
    if not e.values:
        return "n/a"
    m, h = mean_ci(e.values)
    text = f"{m:.{digits}f}" + (f" ± {h:.{digits}f}" if h is not None and math.isfinite(h) else "")
    return text + (f" ({e.n}/{e.n_runs})" if e.n < e.n_runs else "")


def _first_to_last(c: Cell, metric: str, first: int = 5, last: int = 10) -> str:
    """Seed mean of a metric's first ``first`` logged values → seed mean of its last ``last``."""
    a = c.estimate(lambda r: window_mean(r, metric, first=first)).values
    b = c.estimate(lambda r: window_mean(r, metric, last=last)).values
    return f"{math.fsum(a) / len(a):.3f} → {math.fsum(b) / len(b):.3f}" if a and b else "n/a"


def _seeds(c: Cell) -> str:
    return f"{len(c.runs)}" + (f"/{c.planned}" if len(c.runs) < c.planned else "")


def _count(c: Cell, fn: Callable[[Run], bool | None]) -> str:
    vals = [v for v in (fn(r) for r in c.runs) if v is not None]
    return f"{sum(vals)}/{len(vals)}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(":--" if i == 0 else "--:" for i in range(len(header))) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curve(runs: Sequence[Run], metric: str, x: str = "step") -> tuple[list[float], list[float], list[float]]:
    """Mean and 95% t-interval half-width over runs at the steps every run logs (x: step or samples)."""
    common = sorted(set.intersection(*(set(r.series(metric)[0]) for r in runs))) if runs else []
    xs, ms, hs = [], [], []
    for s in common:
        vals = [dict(zip(*r.series(metric)))[s] for r in runs]
        m, h = mean_ci(vals)
        xs.append(s if x == "step" else math.fsum(r.samples_at(s) for r in runs) / len(runs))
        ms.append(m)
        hs.append(h or 0.0)
    return xs, ms, hs


def _band(ax: Any, xs: list[float], ms: list[float], hs: list[float], label: str, color: str,
          band: bool = True) -> None:
    """Mean curve with its 95% interval shaded (``band=False``: the curve alone, e.g. on a log axis)."""
    ax.plot(xs, ms, color=color, label=label, marker="o" if len(xs) < 15 else None, markersize=3)
    if band:
        ax.fill_between(xs, [m - h for m, h in zip(ms, hs)], [m + h for m, h in zip(ms, hs)], color=color,
                        alpha=0.15, linewidth=0)


def aapo_report(cells: Sequence[Cell], img: Path | None, baseline: str = "grpo",
                metric: str = "eval/accuracy") -> tuple[list[str], list[Path]]:
    base = next((c for c in cells if c.variant == baseline), None)
    if base is None or not base.runs:
        raise ValueError(f"aapo study: no runs of the baseline variant {baseline!r}")
    target = base.estimate(lambda r: final_value(r, metric)).mean
    budget = math.fsum(r.samples[-1] for r in base.runs) / len(base.runs)
    rows = []
    for c in cells:
        reach = [first_reach(r, metric, target) for r in c.runs]
        hit = [x for x in reach if x is not None]
        per_step = c.estimate(lambda r: r.samples[-1] / max(r.steps[-1], 1) if r.samples else None)
        rows.append([c.variant, _seeds(c), f"{per_step.mean:.0f}",
                     _fmt(c.estimate(lambda r: eval_start(r, metric))),
                     _fmt(c.estimate(lambda r: final_value(r, metric))),
                     _fmt(c.estimate(lambda r: value_at_budget(r, metric, budget))),
                     (_fmt(Estimate(tuple(float(s) for s, _ in hit), len(hit)), 1) if hit else "—")
                     + f" (reached {len(hit)}/{len(reach)})",
                     _fmt(Estimate(tuple(n for _, n in hit), len(hit)), 0) if hit else "—"])
    lines = [f"Target: GRPO's mean final {metric} = {target:.3f}; equal budget = GRPO's mean total samples, "
             f"{budget:,.0f} (reference-model samples count in AAPO's budget).", "",
             *_table(["variant", "seeds", "samples/step", f"{metric} at start", "final", "at equal budget",
                      "steps to target", "samples to target"], rows)]
    written = []
    if img is not None:
        plt = _plt()
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for i, c in enumerate(cells):
            if c.runs:
                for ax, x in zip(axes, ("step", "samples")):
                    _band(ax, *_curve(c.runs, metric, x), label=c.variant, color=f"C{i}")
        for ax, x in zip(axes, ("step", "samples generated (reference samples included)")):
            ax.axhline(target, color="grey", linestyle=":", linewidth=1)
            _style(ax, x, f"held-out {metric.split('/')[-1]} (mean ± 95% CI)")
        fig.tight_layout()
        written.append(_save(fig, img / "study_aapo.png"))
    return lines, written


def _estimator(c: Cell) -> tuple[str, int | None]:
    """('maxpo', 4) from a variant named like ``maxpo_k4``; ('grpo', None) for one without ``_kN``."""
    name, _, k = c.variant.rpartition("_k")
    return (name, int(k)) if name and k.isdigit() else (c.variant, None)


def maxpo_report(cells: Sequence[Cell], img: Path | None) -> tuple[list[str], list[Path]]:
    metrics = sorted({m for c in cells for r in c.runs for m in r.metric_names() if m.startswith("eval/pass@")},
                     key=lambda m: int(m.split("@")[1]))
    if not metrics:
        raise ValueError("maxpo study: no run logged eval/pass@k (the sweep needs eval.n > 1)")
    rows = []
    for c in sorted(cells, key=lambda c: (_estimator(c)[1] or 0, _estimator(c)[0])):
        name, k = _estimator(c)
        rows.append([name, "—" if k is None else str(k), _seeds(c),
                     *[_fmt(c.estimate(lambda r, m=m: final_value(r, m))) for m in metrics],
                     _fmt(c.estimate(lambda r: final_value(r, f"eval/pass@{k}"))) if k else "—",
                     _first_to_last(c, "reward/mean"), _first_to_last(c, "policy/entropy")])
    lines = _table(["estimator", "K", "seeds", *[m.removeprefix("eval/") for m in metrics], "pass@K",
                    "reward, first 5 → last 10", "entropy, first 5 → last 10"], rows)
    written = []
    if img is not None:
        plt = _plt()
        names = list(dict.fromkeys(_estimator(c)[0] for c in cells))
        ks = sorted({k for c in cells if (k := _estimator(c)[1]) is not None})
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for ax, which in zip(axes, ("pass@1", "pass@K")):
            for i, name in enumerate(names):
                xs, ms, hs = [], [], []
                for k in ks:
                    c = next((c for c in cells if _estimator(c)[0] == name and _estimator(c)[1] in (k, None)), None)
                    metric = "eval/pass@1" if which == "pass@1" else f"eval/pass@{k}"
                    e = c.estimate(lambda r: final_value(r, metric)) if c is not None else None
                    if e is not None and e.values:
                        m, h = mean_ci(e.values)
                        xs.append(k + (i - len(names) / 2) * 0.06 * k)
                        ms.append(m)
                        hs.append(h or 0.0)
                ax.errorbar(xs, ms, yerr=hs, marker="o", capsize=3, label=name, color=f"C{i}",
                            linestyle="--" if name == "grpo" else "-")
            ax.set_xscale("log", base=2)
            ax.set_xticks(ks, [str(k) for k in ks])
            _style(ax, "K the estimator optimises (grpo: K-independent)", f"held-out {which} at the end (mean ± 95% CI)")
        fig.tight_layout()
        written.append(_save(fig, img / "study_maxpo.png"))
    return lines, written


def async_report(cells: Sequence[Cell], img: Path | None, axis: str = "rollout.max_staleness"
                 ) -> tuple[list[str], list[Path]]:
    rows = []
    variants = list(dict.fromkeys(c.variant for c in cells))
    order = sorted(cells, key=lambda c: (c.grid.get(axis, 0), variants.index(c.variant)))
    for c in order:
        rows.append([c.variant, str(c.grid.get(axis, "—")), _seeds(c),
                     _fmt(c.estimate(eval_end)),
                     _fmt(c.estimate(eval_change)),
                     _count(c, collapsed),
                     _count(c, lambda r: None if eval_change(r) is None else eval_change(r) < 0),
                     _fmt(c.estimate(lambda r: lowest_window(r, "reward/mean"))),
                     _fmt(c.estimate(lambda r: mean_over(r, "policy/nll_neg_over_pos")), 2),
                     _fmt(c.estimate(lambda r: final_value(r, "policy/nll_neg_over_pos")), 2),
                     _fmt(c.estimate(lambda r: mean_over(r, "policy/behavior_kl")), 4),
                     _fmt(c.estimate(lambda r: mean_over(r, "async/staleness")), 2)])
    lines = _table(["objective", "η", "seeds", "final held-out acc.", "change from start", "reward collapses",
                    "held-out below start", "lowest 5-step reward", "nll_neg/nll_pos (mean)", "(final)",
                    "behavior KL (mean)", "staleness seen"], rows)
    written = []
    if img is not None:
        plt = _plt()
        etas = sorted({c.grid.get(axis, 0) for c in cells})
        top = max(etas)
        fig, axes = plt.subplots(1, 3, figsize=(15, 3.9))
        for i, v in enumerate(variants):
            xs, ms, hs = [], [], []
            for eta in etas:
                c = next((c for c in cells if c.variant == v and c.grid.get(axis, 0) == eta), None)
                e = c.estimate(eval_end) if c else None
                if e is not None and e.values:
                    m, h = mean_ci(e.values)
                    xs.append(eta + (i - len(variants) / 2) * 0.08)
                    ms.append(m)
                    hs.append(h or 0.0)
            axes[0].errorbar(xs, ms, yerr=hs, marker="o", capsize=3, label=v, color=f"C{i}")
            c = next((c for c in cells if c.variant == v and c.grid.get(axis, 0) == top), None)
            if c is not None and c.runs:
                for ax, metric in zip(axes[1:], ("reward/mean", "policy/nll_neg_over_pos")):
                    _band(ax, *_curve(c.runs, metric), label=v, color=f"C{i}", band=metric == "reward/mean")
        _style(axes[0], "staleness bound η (rollout.max_staleness)", "final held-out accuracy (mean ± 95% CI)")
        _style(axes[1], "step", f"training reward at η = {top} (mean ± 95% CI)")
        _style(axes[2], "step", f"nll_neg / nll_pos at η = {top} (mean over seeds)")
        axes[2].set_yscale("log")
        fig.tight_layout()
        written.append(_save(fig, img / "study_async.png"))
    return lines, written


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _style(ax: Any, xlabel: str, ylabel: str) -> None:
    """Axis labels, grid and legend, the same on every panel."""
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(alpha=0.3)
    _legend(ax)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------- CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", choices=STUDIES, help="which study's tables and plot")
    p.add_argument("sweep_dir", help="the sweep's output directory (holds sweep.json)")
    p.add_argument("--img-dir", default=None, help="where the PNG goes (default SWEEP_DIR/report)")
    p.add_argument("--no-plot", action="store_true", help="tables only")


def command(args: argparse.Namespace) -> int:
    import sys

    img = None if args.no_plot else Path(args.img_dir or Path(args.sweep_dir) / "report")
    report = {"aapo": aapo_report, "maxpo": maxpo_report, "async": async_report}[args.study]
    try:
        cells = load_sweep(args.sweep_dir)
        lines, written = report(cells, img)
    except (FileNotFoundError, ValueError) as e:
        print(f"rlvr study: error: {e}", file=sys.stderr)
        return 2
    missing = sum(c.planned - len(c.runs) for c in cells)
    print(f"{args.study} study of {args.sweep_dir}: {sum(len(c.runs) for c in cells)} runs"
          + (f", {missing} planned runs missing" if missing else ""))
    print("\n".join(lines))
    for path in written:
        print(f"wrote {path}")
    return 0
