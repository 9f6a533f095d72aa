"""``rlvr compare RUN_DIR [RUN_DIR ...]``: compare runs, grouping seeds of one config, with t-intervals.

Runs whose ``config.yaml`` agree apart from the top-level ``seed`` and anything under ``log.`` form one *group*
(the seeds of one configuration). Each group gets one row of a Markdown table and one curve per plot; a group is
labelled by the config keys that differ between groups (``algo.advantage=maxpo, algo.k=4``), or by ``--label-keys``.

Per run and metric (the rows of ``metrics.jsonl`` that share a step are merged first, later keys winning; the
strings ``"nan"``/``"inf"`` that ``RunLog`` writes for non-finite floats are read as NaN):

* **final**: the value at the last step where the metric is logged. A run that ended on NaN shows ``nan`` here
  rather than an older value.
* **best**: the best finite value over all steps. The rule (``higher_is_better``): a metric whose name contains
  ``loss`` (any case) is better when lower, so best is the minimum; every other metric is better when higher, so
  best is the maximum. The column header says which (``best (max)`` / ``best (min)``).
* **steps to reach** ``METRIC=VALUE``: the first step where the metric is ``>= VALUE`` (``<= VALUE`` for the
  lower-is-better metrics of the rule above); ``—`` if never. NaN never reaches a threshold.

With several seeds in a group a cell is ``mean ± h``, h the half-width of the 95% Student-t interval across seeds,
``t(0.975, n-1) · sd / sqrt(n)`` with the n-1 sample standard deviation; one seed prints the plain value; if some
seed's value is NaN the cell is ``nan (k/n seeds nan)``. A seed
that lacks the metric is left out (the cell then says ``(k/n seeds)``). Steps to a threshold are averaged over the
seeds that reached it and the cell says ``reached k/n``.

Plots (``--out``): per metric, ``<metric, / -> _>_vs_step.png`` and ``..._vs_samples.png``. Samples generated at
step s is the cumulative sum of ``rollout/samples`` over steps <= s (reference-model samples included, as logged);
a run that logs no ``rollout/samples`` falls back to ``s × rollout.prompts_per_step × rollout.group_size`` from its
config. A group with several seeds draws the mean over seeds at the steps every seed logged the metric (against
the mean of the seeds' samples at that step) with a shaded min..max band.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from rlvr.eval.metrics import Estimate

__all__ = [
    "IGNORED_KEYS", "Run", "Group", "Threshold", "MetricSummary", "ThresholdSummary", "GroupSummary",
    "CompareError", "load_run", "merge_rows", "flatten_config", "group_runs", "differing_keys", "label_groups",
    "higher_is_better", "parse_threshold", "final_value", "best_value", "steps_to_reach", "summarize_group",
    "format_cell", "markdown_table", "render_markdown", "plot_metrics", "add_arguments", "command",
]

IGNORED_KEYS = ("seed", "log.*")
"""Config keys that do not separate groups: the top-level seed and everything under ``log``."""

CONFIDENCE = 0.95
_UNSET = "unset"  # shown for a config key that a group's config lacks


class CompareError(ValueError):
    """A problem with the input of ``rlvr compare`` (printed as ``rlvr compare: error: ...``)."""


# ----------------------------------------------------------------------------------------------------------- runs

def _number(v: Any) -> Any:
    """A metric value as float (NaN for the non-finite strings RunLog writes); other values unchanged."""
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v.strip().lower() in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity"):
        return math.nan
    return v


def _is_num(v: Any) -> bool:
    return isinstance(v, float)


@dataclass
class Run:
    """One run directory: its config, its metrics merged per step, and the samples generated up to each step."""

    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    """One dict per logged step, ascending, each with ``"step"``; numbers are floats (NaN for "nan"/"inf")."""
    samples: list[float] | None
    """Cumulative samples generated at each step of ``rows`` (None: neither logged nor derivable)."""
    samples_source: str | None
    """``"rollout/samples"`` (logged), ``"config"`` (step × prompts_per_step × group_size) or None."""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def steps(self) -> list[int]:
        return [r["step"] for r in self.rows]

    def has(self, metric: str) -> bool:
        return any(_is_num(r.get(metric)) for r in self.rows)

    def series(self, metric: str) -> tuple[list[int], list[float]]:
        """(steps, values) where ``metric`` is logged as a number (NaN included)."""
        xs, ys = [], []
        for r in self.rows:
            v = r.get(metric)
            if _is_num(v):
                xs.append(r["step"])
                ys.append(v)
        return xs, ys

    def samples_at(self, step: int) -> float | None:
        if self.samples is None:
            return None
        return self.samples[self.steps.index(step)]

    def metric_names(self) -> set[str]:
        return {k for r in self.rows for k, v in r.items() if k != "step" and _is_num(v)}


def merge_rows(rows: Iterable[dict[str, Any]], source: str = "metrics.jsonl") -> list[dict[str, Any]]:
    """Merge rows that share a step (later keys win), convert values with ``_number``; ascending by step."""
    merged: dict[int, dict[str, Any]] = {}
    for i, row in enumerate(rows, 1):
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step != int(step):
            raise ValueError(f"{source}: row {i} has no integer 'step'")
        step = int(step)
        into = merged.setdefault(step, {"step": step})
        into.update({k: _number(v) for k, v in row.items() if k != "step"})
    return [merged[s] for s in sorted(merged)]


def _cumulative_samples(rows: list[dict[str, Any]], config: dict[str, Any]) -> tuple[list[float] | None, str | None]:
    if any(_is_num(r.get("rollout/samples")) for r in rows):
        total, out = 0.0, []
        for r in rows:
            v = r.get("rollout/samples")
            if _is_num(v) and math.isfinite(v):  # a step without samples (e.g. an eval-only step 0) adds none
                total += v
            out.append(total)
        return out, "rollout/samples"
    rollout = config.get("rollout") if isinstance(config.get("rollout"), dict) else {}
    p, g = rollout.get("prompts_per_step"), rollout.get("group_size")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in (p, g)):
        return [float(r["step"] * p * g) for r in rows], "config"
    return None, None


def load_run(path: str | Path) -> Run:
    """Read ``path/config.yaml`` and ``path/metrics.jsonl``. Raises FileNotFoundError / ValueError naming the file."""
    from rlvr.config import load_yaml
    from rlvr.metrics import read_metrics

    run = Path(path)
    if not run.is_dir():
        raise FileNotFoundError(f"no run directory at {run}")
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no config.yaml in {run}")
    config = _with_defaults(cfg_path, load_yaml(cfg_path))  # ConfigError (a ValueError) names the file
    rows = merge_rows(read_metrics(run), str(run / "metrics.jsonl"))
    samples, source = _cumulative_samples(rows, config)
    return Run(run, config, rows, samples, source)


def _with_defaults(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The config as today's TrainConfig reads it: keys a run predates get their defaults, so a run written
    before a field existed groups with a new run that leaves it at the default. A config this version
    cannot read (a newer one) is compared as written."""
    from rlvr.config import ConfigError, load_config, to_dict

    try:
        return to_dict(load_config(path))
    except (ConfigError, TypeError):
        return config


# -------------------------------------------------------------------------------------------------------- groups

def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"algo.advantage": "grpo", ...}`` in the config's order. Lists stay values, and so does
    an empty mapping (``algo.advantage_kwargs: {}``), so that nothing is lost: two configs flatten to the same dict
    exactly when they are equal (``{"a": {}}`` and ``{}`` differ in key ``a``). ``rlvr compare`` groups runs and
    ``rlvr sweep`` checks an existing run's config with it."""
    flat: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            flat.update(flatten_config(v, key + "."))
        else:
            flat[key] = v
    return flat


def _ignored(key: str) -> bool:
    return key == "seed" or key == "log" or key.startswith("log.")


def _grouping_config(run: Run) -> dict[str, Any]:
    return {k: v for k, v in flatten_config(run.config).items() if not _ignored(k)}


def _canonical(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


@dataclass
class Group:
    """Runs that share their config apart from ``IGNORED_KEYS``: the seeds of one configuration."""

    runs: list[Run]
    config: dict[str, Any]
    """The shared flattened config (without the ignored keys)."""
    label: str = ""

    @property
    def n(self) -> int:
        return len(self.runs)


def group_runs(runs: Sequence[Run], label_keys: Sequence[str] | None = None) -> list[Group]:
    """Group ``runs`` by config (ignoring ``seed`` and ``log.*``), in order of first appearance, and label the
    groups (``label_groups``)."""
    by_key: dict[str, Group] = {}
    for run in runs:
        cfg = _grouping_config(run)
        key = _canonical(cfg)
        if key in by_key:
            by_key[key].runs.append(run)
        else:
            by_key[key] = Group([run], cfg)
    groups = list(by_key.values())
    label_groups(groups, label_keys)
    return groups


def differing_keys(groups: Sequence[Group]) -> list[str]:
    """Flattened config keys whose value is not the same in every group (a key some group lacks counts)."""
    keys: dict[str, None] = {}
    for g in groups:
        keys.update(dict.fromkeys(g.config))
    return [k for k in keys if len({_canonical(g.config[k]) if k in g.config else None for g in groups}) > 1]


def _fmt_config_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return str(v)
    return json.dumps(v, default=str)


def _common_name(runs: Sequence[Run]) -> str:
    names = [r.name for r in runs]
    if len(names) == 1:
        return names[0]
    prefix = names[0]
    for n in names[1:]:
        while not n.startswith(prefix):
            prefix = prefix[:-1]
    prefix = prefix.rstrip("-_. ")
    return prefix or "all runs"


LABEL_KEYS = 3
"""Default labels show at most this many differing keys (then ``…``; the table's header lists them all)."""


def label_groups(groups: Sequence[Group], label_keys: Sequence[str] | None = None) -> None:
    """Set each group's label: ``k=v, ...`` over ``label_keys`` (default: the first ``LABEL_KEYS`` of
    ``differing_keys``); with no such key,
    the run directory's name (for several seeds, their common prefix). Duplicate labels get `` #i``."""
    keys = list(label_keys) if label_keys else differing_keys(groups)[:LABEL_KEYS]
    more = not label_keys and len(differing_keys(groups)) > LABEL_KEYS
    for g in groups:
        if keys:
            flat = flatten_config(g.runs[0].config)
            g.label = ", ".join(f"{k}={_fmt_config_value(flat[k]) if k in flat else _UNSET}" for k in keys)
            g.label += ", …" if more else ""
        else:
            g.label = _common_name(g.runs)
    counts: dict[str, int] = {}
    for g in groups:
        counts[g.label] = counts.get(g.label, 0) + 1
    seen: dict[str, int] = {}
    for g in groups:
        if counts[g.label] > 1:
            seen[g.label] = seen.get(g.label, 0) + 1
            g.label = f"{g.label} #{seen[g.label]}"


# ----------------------------------------------------------------------------------------------------- summaries

def higher_is_better(metric: str) -> bool:
    """The direction rule: metrics whose name contains "loss" are better when lower, all others when higher."""
    return "loss" not in metric.lower()


@dataclass(frozen=True)
class Threshold:
    metric: str
    value: float

    @property
    def op(self) -> str:
        return "≥" if higher_is_better(self.metric) else "≤"

    def reached(self, v: float) -> bool:
        return v >= self.value if higher_is_better(self.metric) else v <= self.value  # NaN: False either way

    def header(self) -> str:
        return f"steps to {self.metric} {self.op} {self.value:g}"


def parse_threshold(text: str) -> Threshold:
    """``"eval/accuracy=0.5"`` -> Threshold("eval/accuracy", 0.5); CompareError if malformed."""
    metric, eq, value = text.rpartition("=")
    metric = metric.strip()
    if not eq or not metric:
        raise CompareError(f"bad --threshold {text!r}: expected METRIC=VALUE, e.g. eval/accuracy=0.5")
    try:
        v = float(value)
    except ValueError:
        raise CompareError(f"bad --threshold {text!r}: {value.strip()!r} is not a number") from None
    if math.isnan(v):
        raise CompareError(f"bad --threshold {text!r}: the value is NaN")
    return Threshold(metric, v)


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == int(x) and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.4g}"


def format_cell(e: Estimate, n_runs: int) -> str:
    """A table cell: ``mean ± h`` (one seed: the value; a NaN seed: ``nan (k/n seeds nan)``), then ``(k/n seeds)``
    when only k of the group's ``n_runs`` seeds have the value; ``n/a`` for none."""
    if not e.values:
        return "n/a"
    nans = sum(math.isnan(v) for v in e.values)
    if e.half_width is None or nans:
        text = _fmt(e.mean) + (f" ({nans}/{e.n} seeds nan)" if nans and e.n > 1 else "")
    else:
        text = f"{_fmt(e.mean)} ± {_fmt(e.half_width)}"
    return text + (f" ({e.n}/{n_runs} seeds)" if e.n < n_runs else "")


def final_value(run: Run, metric: str) -> float | None:
    """The value at the last step where ``metric`` is logged (may be NaN); None if never logged."""
    _, ys = run.series(metric)
    return ys[-1] if ys else None


def best_value(run: Run, metric: str) -> float | None:
    """The best finite value (max, or min for ``loss`` metrics); NaN if only non-finite; None if never logged."""
    _, ys = run.series(metric)
    if not ys:
        return None
    finite = [y for y in ys if math.isfinite(y)]
    if not finite:
        return math.nan
    return max(finite) if higher_is_better(metric) else min(finite)


def steps_to_reach(run: Run, threshold: Threshold) -> int | None:
    """The first step where the threshold's metric reaches its value; None if never (or never logged)."""
    for s, y in zip(*run.series(threshold.metric)):
        if threshold.reached(y):
            return s
    return None


@dataclass(frozen=True)
class MetricSummary:
    metric: str
    final: Estimate
    best: Estimate
    n_runs: int
    """Seeds in the group (a seed without the metric has no value in ``final`` or ``best``)."""


@dataclass(frozen=True)
class ThresholdSummary:
    threshold: Threshold
    steps: tuple[int | None, ...]
    """Per run of the group: the first step reaching the threshold, None if never."""

    @property
    def reached(self) -> int:
        return sum(s is not None for s in self.steps)

    @property
    def estimate(self) -> Estimate:
        """Steps to the threshold over the seeds that reached it."""
        return Estimate.over_seeds([float(s) for s in self.steps if s is not None])

    def format(self) -> str:
        n = len(self.steps)
        text = format_cell(self.estimate, self.reached) if self.reached else "—"
        return text if n == 1 else f"{text} (reached {self.reached}/{n})"


@dataclass
class GroupSummary:
    group: Group
    metrics: dict[str, MetricSummary] = field(default_factory=dict)
    thresholds: list[ThresholdSummary] = field(default_factory=list)


def summarize_group(group: Group, metrics: Sequence[str], thresholds: Sequence[Threshold] = ()) -> GroupSummary:
    """Final and best values per metric and steps to each threshold, one value per seed."""
    out = GroupSummary(group)
    for m in metrics:
        finals = [v for v in (final_value(r, m) for r in group.runs) if v is not None]
        bests = [v for v in (best_value(r, m) for r in group.runs) if v is not None]
        out.metrics[m] = MetricSummary(m, Estimate.over_seeds(finals), Estimate.over_seeds(bests), group.n)
    for th in thresholds:
        out.thresholds.append(ThresholdSummary(th, tuple(steps_to_reach(r, th) for r in group.runs)))
    return out


# ------------------------------------------------------------------------------------------------------ markdown

def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(summaries: Sequence[GroupSummary], metrics: Sequence[str],
                   thresholds: Sequence[Threshold] = ()) -> str:
    """One row per group: seeds, then per metric final, best and the steps to that metric's thresholds; the
    thresholds on metrics not in ``metrics`` come last."""
    cols: list[tuple[str, Any]] = []  # (header, getter(summary) -> str)
    placed: set[int] = set()
    for m in metrics:
        best = "max" if higher_is_better(m) else "min"
        cols.append((f"{m} final", lambda s, m=m: format_cell(s.metrics[m].final, s.group.n)))
        cols.append((f"{m} best ({best})", lambda s, m=m: format_cell(s.metrics[m].best, s.group.n)))
        for i, th in enumerate(thresholds):
            if th.metric == m:
                placed.add(i)
                cols.append((th.header(), lambda s, i=i: s.thresholds[i].format()))
    for i, th in enumerate(thresholds):
        if i not in placed:
            cols.append((th.header(), lambda s, i=i: s.thresholds[i].format()))
    header = ["group", "seeds"] + [h for h, _ in cols]
    lines = ["| " + " | ".join(_md(h) for h in header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for s in summaries:
        cells = [s.group.label, str(s.group.n)] + [get(s) for _, get in cols]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    return "\n".join(lines)


def _runs_line(group: Group) -> str:
    parts = [f"{r.name} (seed {_fmt_config_value(r.seed)})" for r in group.runs]
    seeds = [_canonical(r.seed) for r in group.runs]
    note = " — note: a seed appears more than once" if len(set(seeds)) < len(seeds) else ""
    return f"- {_md(group.label)}: " + ", ".join(parts) + note


def render_markdown(groups: Sequence[Group], metrics: Sequence[str], thresholds: Sequence[Threshold] = (),
                    label_keys: Sequence[str] | None = None) -> str:
    """The whole report: which keys differ, the table, how cells are computed, and the runs in each group."""
    summaries = [summarize_group(g, metrics, thresholds) for g in groups]
    keys = differing_keys(groups)
    lines = ["# rlvr compare", ""]
    if len(groups) == 1:
        lines.append(f"One group: all {groups[0].n} run(s) share the config apart from `seed` and `log.*`.")
    else:
        lines.append(f"{len(groups)} groups; the configs differ in: " + ", ".join(f"`{k}`" for k in keys)
                     + " (`seed` and `log.*` ignored).")
    if label_keys:
        lines.append("Labels from --label-keys: " + ", ".join(f"`{k}`" for k in label_keys) + ".")
    lines += ["", markdown_table(summaries, metrics, thresholds), ""]
    if any(g.n > 1 for g in groups):
        lines.append(f"With several seeds a cell is mean ± half-width of the {CONFIDENCE:.0%} Student-t interval "
                     "across seeds; steps to a threshold are over the seeds that reached it.")
    lines.append("final: value at the last step logged; best: max, or min for metrics named *loss*; "
                 "— : never reached.")
    lines += ["", "Runs per group:"] + [_runs_line(g) for g in groups]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------- plots

def _group_curve(group: Group, metric: str, x_axis: str) -> tuple[list[float], list[float], list[float], list[float]]:
    """(xs, mean, lo, hi) over the steps at which every seed of the group logged ``metric``; for ``"samples"``
    the x of a step is the seeds' mean cumulative samples (runs without a samples count are left out)."""
    runs = [r for r in group.runs if r.has(metric) and (x_axis == "step" or r.samples is not None)]
    if not runs:
        return [], [], [], []
    series = [dict(zip(*r.series(metric))) for r in runs]
    common = sorted(set.intersection(*(set(s) for s in series)))
    xs, mean, lo, hi = [], [], [], []
    for step in common:
        vals = [s[step] for s in series]
        x = float(step) if x_axis == "step" else math.fsum(r.samples_at(step) for r in runs) / len(runs)
        xs.append(x)
        if any(math.isnan(v) for v in vals):
            mean.append(math.nan), lo.append(math.nan), hi.append(math.nan)
        else:
            mean.append(math.fsum(vals) / len(vals)), lo.append(min(vals)), hi.append(max(vals))
    return xs, mean, lo, hi


def _samples_label(groups: Sequence[Group]) -> str:
    sources = {r.samples_source for g in groups for r in g.runs if r.samples_source}
    if sources == {"rollout/samples"}:
        return "samples generated (cumulative rollout/samples)"
    if sources == {"config"}:
        return "samples generated (step × prompts_per_step × group_size)"
    return "samples generated (cumulative rollout/samples; step × P × G where not logged)"


def plot_metrics(groups: Sequence[Group], metrics: Sequence[str], out_dir: str | Path) -> list[Path]:
    """For each metric some run has: ``<metric>_vs_step.png`` and ``<metric>_vs_samples.png`` (``/`` -> ``_``),
    one curve per group (several seeds: mean with a min..max band). Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for metric in metrics:
        if not any(r.has(metric) for g in groups for r in g.runs):
            continue
        stem = metric.replace("/", "_")
        for x_axis, xlabel in (("step", "step"), ("samples", _samples_label(groups))):
            if x_axis == "samples" and not any(r.samples is not None for g in groups for r in g.runs):
                continue
            fig, ax = plt.subplots(figsize=(6.4, 4.0))
            banded = False
            for i, g in enumerate(groups):
                xs, mean, lo, hi = _group_curve(g, metric, x_axis)
                if not xs:
                    continue
                color = f"C{i % 10}"
                marker = "o" if len(xs) < 30 else None
                if g.n > 1:
                    banded = True
                    ax.plot(xs, mean, color=color, marker=marker, markersize=3,
                            label=f"{g.label} (mean of {g.n} seeds, band min..max)")
                    ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)
                else:
                    ax.plot(xs, mean, color=color, marker=marker, markersize=3, label=g.label)
            title = f"{metric} vs {'step' if x_axis == 'step' else 'samples generated'}"
            ax.set_title(title + (" (shaded: min..max over seeds)" if banded else ""), fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(metric, fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = out / f"{stem}_vs_{'step' if x_axis == 'step' else 'samples'}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


# ----------------------------------------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of ``rlvr compare`` to ``parser`` and return it."""
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (config.yaml + metrics.jsonl)")
    parser.add_argument("--metrics", default="eval/accuracy,reward/mean",
                        help="comma-separated metrics to tabulate and plot (default eval/accuracy,reward/mean)")
    parser.add_argument("--threshold", action="append", default=[], metavar="METRIC=VALUE",
                        help="also report the first step where METRIC >= VALUE (<= for *loss* metrics); repeatable")
    parser.add_argument("--out", metavar="DIR", help="write compare.md and the PNG plots here (default: only print "
                                                     "the Markdown)")
    parser.add_argument("--label-keys", metavar="KEYS",
                        help="comma-separated dotted config keys to label groups by (default: the keys that differ "
                             "between groups)")
    return parser


def _split(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def _run(args: argparse.Namespace) -> int:
    metrics = _split(args.metrics)
    if not metrics:
        raise CompareError("--metrics names no metric")
    thresholds = [parse_threshold(t) for t in (args.threshold or [])]
    label_keys = _split(getattr(args, "label_keys", None)) or None
    seen: set[Path] = set()
    runs = []
    for d in args.run_dirs:
        p = Path(d)
        if not p.is_dir():
            raise CompareError(f"no run directory at {p}")
        if p.resolve() in seen:
            raise CompareError(f"{p} is given twice")
        seen.add(p.resolve())
        try:
            runs.append(load_run(p))
        except (FileNotFoundError, ValueError) as e:
            raise CompareError(str(e)) from e
    available = set().union(*(r.metric_names() for r in runs))
    for m in dict.fromkeys(metrics + [t.metric for t in thresholds]):
        if m not in available:
            shown = ", ".join(sorted(available)) or "none"
            raise CompareError(f"metric {m!r} is in no run's metrics.jsonl (they have: {shown})")
    if label_keys:
        for k in label_keys:
            flat = {key for r in runs for key in flatten_config(r.config)}
            if k not in flat:
                under = sorted(key for key in flat if key.startswith(k + "."))
                hint = f" (it is a mapping: name one of its keys, {', '.join(under)})" if under else ""
                raise CompareError(f"--label-keys: {k!r} is in no run's config.yaml{hint}")
    groups = group_runs(runs, label_keys)
    text = render_markdown(groups, metrics, thresholds, label_keys)
    print(text, end="")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(text)
        paths = [out / "compare.md", *plot_metrics(groups, metrics, out)]
        print()
        for p in paths:
            print(p)
    return 0


def command(args: argparse.Namespace) -> int:
    """Run ``rlvr compare``: print the Markdown comparison (and write it and the plots to --out). 2 on bad input."""
    try:
        return _run(args)
    except (CompareError, OSError) as e:
        print(f"rlvr compare: error: {e}", file=sys.stderr)
        return 2
