"""The three studies of docs/results.md, each a table as data (``*_table``: Estimates and counts, what the tests
check) and its Markdown and plot (``*_report``: (lines, PNG paths written)).

* ``aapo`` (configs/sweeps/aapo.yaml): held-out greedy accuracy at the end; the accuracy at an **equal sample
  budget** — the last evaluation whose cumulative samples (``rollout/samples``: AAPO's reference-model samples
  included) do not exceed GRPO's final budget; and the steps and samples each run needs to first reach GRPO's mean
  final accuracy (a run that never reaches it is left out of the mean and the cell says ``reached k/n``); the
  fraction of zero-variance groups over training and of groups whose only signal is AAPO's margin.
* ``maxpo`` (configs/sweeps/maxpo.yaml): held-out pass@1 .. pass@8 at the end (8 samples per problem at
  temperature 1, the unbiased pass@k estimator), one row per estimator and K; the column pass@K is the metric that
  estimator optimises; training reward and token entropy over the first 5 logged steps → the last 10 (seed means);
  a first row for the untrained model when runs evaluated at step 0 (``eval.at_start``), pooled over those runs.
* ``async`` (configs/sweeps/async_staleness.yaml): per objective and staleness bound η: final held-out accuracy and
  its change from the start; **collapses**, a run whose training reward over its last 10 steps is below that over
  its first 5 (reward falling below its starting value) by a one-sided Welch t-test at the 5% level, and separately
  a final held-out accuracy below the start; the lowest 5-step mean reward; the scale imbalance
  ``policy/nll_neg_over_pos`` (mean NLL of tokens with negative advantage over that of positive ones) averaged over
  training and at the end; ``policy/behavior_kl``, the fraction of tokens a clipped loss cut
  (``loss_stats/clip_frac``: whether decoupled PPO's clip ever acts) and the mean staleness actually seen
  (``async/staleness``).

A cell is ``mean ± h`` (h: half-width of the 95% Student-t interval over seeds), followed by ``(k/n)`` when only k
of the cell's n seeds have the value.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

from rlvr.compare import Run, final_value
from rlvr.eval import Estimate
from studies.cells import (Cell, collapsed, eval_change, eval_end, eval_start, first_reach, lowest_window, mean_over,
                           value_at_budget, value_at_step, window_mean)

__all__ = ["REPORTS", "aapo_table", "aapo_report", "maxpo_table", "maxpo_report", "async_table", "async_report",
           "fmt", "estimator_of"]


# ------------------------------------------------------------------------------------------------------ cells

def fmt(e: Estimate, n_runs: int, digits: int = 3) -> str:
    """``mean ± h`` with ``digits`` decimals, ``(k/n)`` when k of ``n_runs`` seeds have a value; ``n/a`` for none."""
    if not e.values:
        return "n/a"
    h = e.half_width
    text = f"{e.mean:.{digits}f}" + (f" ± {h:.{digits}f}" if h is not None and math.isfinite(h) else "")
    return text + (f" ({e.n}/{n_runs})" if e.n < n_runs else "")


def _seeds(c: Cell) -> str:
    return f"{len(c.runs)}" + (f"/{c.planned}" if len(c.runs) < c.planned else "")


def _count(c: Cell, fn: Callable[[Run], bool | None]) -> tuple[int, int]:
    """(runs where ``fn`` is true, runs where it is defined)."""
    vals = [v for v in (fn(r) for r in c.runs) if v is not None]
    return sum(vals), len(vals)


def _first_to_last(c: Cell, metric: str, first: int = 5, last: int = 10) -> tuple[float, float] | None:
    """(seed mean of a metric's first ``first`` logged values, seed mean of its last ``last``); None if unlogged."""
    a = c.estimate(lambda r: window_mean(r, metric, first=first)).values
    b = c.estimate(lambda r: window_mean(r, metric, last=last)).values
    return (math.fsum(a) / len(a), math.fsum(b) / len(b)) if a and b else None


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(":--" if i == 0 else "--:" for i in range(len(header))) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


# ------------------------------------------------------------------------------------------------------ plots

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
        e = Estimate.over_seeds([dict(zip(*r.series(metric)))[s] for r in runs])
        xs.append(s if x == "step" else math.fsum(r.samples_at(s) for r in runs) / len(runs))
        ms.append(e.mean)
        hs.append(e.half_width or 0.0)
    return xs, ms, hs


def _band(ax: Any, xs: list[float], ms: list[float], hs: list[float], label: str, color: str,
          band: bool = True) -> None:
    """Mean curve with its 95% interval shaded (``band=False``: the curve alone, e.g. on a log axis)."""
    ax.plot(xs, ms, color=color, label=label, marker="o" if len(xs) < 15 else None, markersize=3)
    if band:
        ax.fill_between(xs, [m - h for m, h in zip(ms, hs)], [m + h for m, h in zip(ms, hs)], color=color,
                        alpha=0.15, linewidth=0)


def _style(ax: Any, xlabel: str, ylabel: str) -> None:
    """Axis labels, grid and legend, the same on every panel."""
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _errorbars(ax: Any, points: list[tuple[float, Estimate]], label: str, color: str, **kw: Any) -> None:
    """Means with their 95% half-widths at the given x (points without values left out)."""
    points = [(x, e) for x, e in points if e.values]
    ax.errorbar([x for x, _ in points], [e.mean for _, e in points], yerr=[e.half_width or 0.0 for _, e in points],
                marker="o", capsize=3, label=label, color=color, **kw)


# ------------------------------------------------------------------------------------------------------- aapo

def aapo_table(cells: Sequence[Cell], baseline: str = "grpo", metric: str = "eval/accuracy") -> dict[str, Any]:
    """{"target": GRPO's mean final ``metric``, "budget": GRPO's mean total samples, "rows": one dict per cell}.
    A row: variant, seeds (runs, planned), samples_per_step, start, final, at_budget (Estimates), steps_to_target,
    samples_to_target (Estimates over the runs that reached it), reached (runs that did, runs), zero_std (the
    fraction of groups whose rewards are all equal, averaged over training steps: AAPO's premise) and margin_only
    (the fraction of groups that are all-equal yet get an advantage, averaged likewise: for AAPO, the groups where
    the margin against the reference samples is the only signal)."""
    base = next((c for c in cells if c.variant == baseline), None)
    if base is None or not base.runs:
        raise ValueError(f"aapo study: no runs of the baseline variant {baseline!r}")
    target = base.estimate(lambda r: final_value(r, metric)).mean
    budget = math.fsum(r.samples[-1] for r in base.runs) / len(base.runs)
    rows = []
    for c in cells:
        hit = [x for x in (first_reach(r, metric, target) for r in c.runs) if x is not None]
        rows.append({"variant": c.variant, "seeds": (len(c.runs), c.planned),
                     "samples_per_step": c.estimate(lambda r: r.samples[-1] / max(r.steps[-1], 1) if r.samples
                                                    else None).mean,
                     "start": c.estimate(lambda r: eval_start(r, metric)),
                     "final": c.estimate(lambda r: final_value(r, metric)),
                     "at_budget": c.estimate(lambda r: value_at_budget(r, metric, budget)),
                     "steps_to_target": Estimate.over_seeds([float(s) for s, _ in hit]),
                     "samples_to_target": Estimate.over_seeds([n for _, n in hit]), "reached": (len(hit), len(c.runs)),
                     "zero_std": c.estimate(lambda r: mean_over(r, "reward/frac_zero_std_groups")),
                     "margin_only": c.estimate(lambda r: mean_over(r, "adv/frac_zero_std_groups_with_signal"))})
    return {"target": target, "budget": budget, "rows": rows}


def aapo_report(cells: Sequence[Cell], img: Path | None, baseline: str = "grpo",
                metric: str = "eval/accuracy") -> tuple[list[str], list[Path]]:
    t = aapo_table(cells, baseline, metric)
    rows = []
    for c, r in zip(cells, t["rows"]):
        k, n = r["reached"]
        n_runs = len(c.runs)
        rows.append([r["variant"], _seeds(c), f"{r['samples_per_step']:.0f}", fmt(r["start"], n_runs),
                     fmt(r["final"], n_runs), fmt(r["at_budget"], n_runs),
                     (fmt(r["steps_to_target"], k, 1) if k else "—") + f" (reached {k}/{n})",
                     fmt(r["samples_to_target"], k, 0) if k else "—", fmt(r["zero_std"], n_runs),
                     fmt(r["margin_only"], n_runs)])
    lines = [f"Target: GRPO's mean final {metric} = {t['target']:.3f}; equal budget = GRPO's mean total samples, "
             f"{t['budget']:,.0f} (reference-model samples count in AAPO's budget).", "",
             *_table(["variant", "seeds", "samples/step", f"{metric} at start", "final", "at equal budget",
                      "steps to target", "samples to target", "zero-variance groups", "of all groups: margin only"],
                     rows)]
    if img is None:
        return lines, []
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, c in enumerate(cells):
        if c.runs:
            for ax, x in zip(axes, ("step", "samples")):
                _band(ax, *_curve(c.runs, metric, x), label=c.variant, color=f"C{i}")
    for ax, x in zip(axes, ("step", "samples generated (reference samples included)")):
        ax.axhline(t["target"], color="grey", linestyle=":", linewidth=1)
        _style(ax, x, f"held-out {metric.split('/')[-1]} (mean ± 95% CI)")
    fig.tight_layout()
    return lines, [_save(fig, img / "study_aapo.png")]


# ------------------------------------------------------------------------------------------------------ maxpo

def estimator_of(c: Cell) -> tuple[str, int | None]:
    """('maxpo', 4) from a variant named like ``maxpo_k4``; ('grpo', None) for one without ``_kN``."""
    name, _, k = c.variant.rpartition("_k")
    return (name, int(k)) if name and k.isdigit() else (c.variant, None)


def maxpo_table(cells: Sequence[Cell]) -> dict[str, Any]:
    """{"metrics": the eval/pass@k logged, "rows": one dict per cell, ordered by K then estimator, "start": the
    untrained model's {metric: Estimate} over every run that evaluated at step 0 (``eval.at_start``; each such run
    is one more sample of the same model), or None}. A row: estimator, k, cell, pass ({metric: Estimate} at the
    end), pass_K (Estimate of pass@K, None without K), reward and entropy ((first-5 mean, last-10 mean) over seeds,
    or None)."""
    metrics = sorted({m for c in cells for r in c.runs for m in r.metric_names() if m.startswith("eval/pass@")},
                     key=lambda m: int(m.split("@")[1]))
    if not metrics:
        raise ValueError("maxpo study: no run logged eval/pass@k (the sweep needs eval.n > 1)")
    rows = []
    start = {m: Estimate.over_seeds([v for c in cells for r in c.runs if (v := value_at_step(r, m, 0)) is not None])
             for m in metrics}
    for c in sorted(cells, key=lambda c: (estimator_of(c)[1] or 0, estimator_of(c)[0])):
        name, k = estimator_of(c)
        rows.append({"estimator": name, "k": k, "cell": c,
                     "pass": {m: c.estimate(lambda r, m=m: final_value(r, m)) for m in metrics},
                     "pass_K": c.estimate(lambda r: final_value(r, f"eval/pass@{k}")) if k else None,
                     "reward": _first_to_last(c, "reward/mean"), "entropy": _first_to_last(c, "policy/entropy")})
    return {"metrics": metrics, "rows": rows, "start": start if any(e.values for e in start.values()) else None}


def _arrow(pair: tuple[float, float] | None) -> str:
    return f"{pair[0]:.3f} → {pair[1]:.3f}" if pair else "n/a"


def maxpo_report(cells: Sequence[Cell], img: Path | None) -> tuple[list[str], list[Path]]:
    t = maxpo_table(cells)
    rows = [[r["estimator"], "—" if r["k"] is None else str(r["k"]), _seeds(r["cell"]),
             *[fmt(r["pass"][m], len(r["cell"].runs)) for m in t["metrics"]],
             fmt(r["pass_K"], len(r["cell"].runs)) if r["pass_K"] is not None else "—",
             _arrow(r["reward"]), _arrow(r["entropy"])] for r in t["rows"]]
    if t["start"] is not None:
        n = max(e.n for e in t["start"].values())
        rows.insert(0, ["*start (no training)*", "", f"{n} evals",
                        *[fmt(t["start"][m], n) for m in t["metrics"]], "", "", ""])
    lines = _table(["estimator", "K", "seeds", *[m.removeprefix("eval/") for m in t["metrics"]], "pass@K",
                    "reward, first 5 → last 10", "entropy, first 5 → last 10"], rows)
    if img is None:
        return lines, []
    plt = _plt()
    names = list(dict.fromkeys(estimator_of(c)[0] for c in cells))
    ks = sorted({k for c in cells if (k := estimator_of(c)[1]) is not None})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, which in zip(axes, ("pass@1", "pass@K")):
        for i, name in enumerate(names):
            points = []
            for k in ks:
                c = next((c for c in cells if estimator_of(c)[0] == name and estimator_of(c)[1] in (k, None)), None)
                metric = "eval/pass@1" if which == "pass@1" else f"eval/pass@{k}"
                if c is not None:
                    points.append((k + (i - len(names) / 2) * 0.06 * k, c.estimate(lambda r: final_value(r, metric))))
            _errorbars(ax, points, name, f"C{i}", linestyle="--" if name == "grpo" else "-")
        start = [(k, e.mean) for k in ks if t["start"] is not None
                 and (e := t["start"].get("eval/pass@1" if which == "pass@1" else f"eval/pass@{k}")) and e.values]
        if len(start) == 1:                                      # one K: a level across the estimators
            ax.axhline(start[0][1], color="0.5", linestyle=":", label="start (no training)")
        elif start:
            ax.plot(*zip(*start), color="0.5", linestyle=":", marker="x", label="start (no training)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        _style(ax, "K the estimator optimises (grpo: K-independent)", f"held-out {which} at the end (mean ± 95% CI)")
    fig.tight_layout()
    return lines, [_save(fig, img / "study_maxpo.png")]


# ------------------------------------------------------------------------------------------------------ async

def async_table(cells: Sequence[Cell], axis: str = "rollout.max_staleness") -> list[dict[str, Any]]:
    """One dict per cell, ordered by η then plan order: objective, eta, cell, final, change (Estimates of the
    held-out accuracy), collapses and below_start ((runs, runs tested)), lowest (5-step reward), nll_mean,
    nll_final, behavior_kl, clipped (the fraction of tokens the loss's clip cut, mean over steps; none for a loss
    without a clip), staleness (Estimates)."""
    variants = list(dict.fromkeys(c.variant for c in cells))
    rows = []
    for c in sorted(cells, key=lambda c: (c.grid.get(axis, 0), variants.index(c.variant))):
        rows.append({"objective": c.variant, "eta": c.grid.get(axis), "cell": c, "final": c.estimate(eval_end),
                     "change": c.estimate(eval_change), "collapses": _count(c, collapsed),
                     "below_start": _count(c, lambda r: None if eval_change(r) is None else eval_change(r) < 0),
                     "lowest": c.estimate(lambda r: lowest_window(r, "reward/mean")),
                     "nll_mean": c.estimate(lambda r: mean_over(r, "policy/nll_neg_over_pos")),
                     "nll_final": c.estimate(lambda r: final_value(r, "policy/nll_neg_over_pos")),
                     "behavior_kl": c.estimate(lambda r: mean_over(r, "policy/behavior_kl")),
                     "clipped": c.estimate(lambda r: mean_over(r, "loss_stats/clip_frac")),
                     "staleness": c.estimate(lambda r: mean_over(r, "async/staleness"))})
    return rows


def async_report(cells: Sequence[Cell], img: Path | None, axis: str = "rollout.max_staleness"
                 ) -> tuple[list[str], list[Path]]:
    rows = []
    for r in async_table(cells, axis):
        n = len(r["cell"].runs)
        rows.append([r["objective"], "—" if r["eta"] is None else str(r["eta"]), _seeds(r["cell"]),
                     fmt(r["final"], n), fmt(r["change"], n), "{}/{}".format(*r["collapses"]),
                     "{}/{}".format(*r["below_start"]), fmt(r["lowest"], n), fmt(r["nll_mean"], n, 2),
                     fmt(r["nll_final"], n, 2), fmt(r["behavior_kl"], n, 4), fmt(r["clipped"], n, 4),
                     fmt(r["staleness"], n, 2)])
    lines = _table(["objective", "η", "seeds", "final held-out acc.", "change from start", "reward collapses",
                    "held-out below start", "lowest 5-step reward", "nll_neg/nll_pos (mean)", "(final)",
                    "behavior KL (mean)", "clipped tokens (mean)", "staleness seen"], rows)
    return lines, ([] if img is None else [_async_plot(cells, img, axis)])


def _async_plot(cells: Sequence[Cell], img: Path, axis: str) -> Path:
    plt = _plt()
    variants = list(dict.fromkeys(c.variant for c in cells))
    etas = sorted({c.grid.get(axis, 0) for c in cells})
    top = max(etas)
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.9))
    for i, v in enumerate(variants):
        at = {c.grid.get(axis, 0): c for c in cells if c.variant == v}
        _errorbars(axes[0], [(eta + (i - len(variants) / 2) * 0.08, at[eta].estimate(eval_end))
                             for eta in etas if eta in at], v, f"C{i}")
        if top in at and at[top].runs:
            for ax, metric in zip(axes[1:], ("reward/mean", "policy/nll_neg_over_pos")):
                _band(ax, *_curve(at[top].runs, metric), label=v, color=f"C{i}", band=metric == "reward/mean")
    _style(axes[0], "staleness bound η (rollout.max_staleness)", "final held-out accuracy (mean ± 95% CI)")
    _style(axes[1], "step", f"training reward at η = {top} (mean ± 95% CI)")
    _style(axes[2], "step", f"nll_neg / nll_pos at η = {top} (mean over seeds)")
    axes[2].set_yscale("log")
    fig.tight_layout()
    return _save(fig, img / "study_async.png")


REPORTS: dict[str, Callable[[Sequence[Cell], Path | None], tuple[list[str], list[Path]]]] = {
    "aapo": aapo_report, "maxpo": maxpo_report, "async": async_report}
"""Study name -> its report (the choices of ``python -m studies``)."""
