"""Advantage-estimator benchmark: time every registered estimator and check the max@k ones exactly.

``run`` times the registry estimators at [P, G] (median of repeats after a warm-up; token-level ones such as gae,
which need values [B, T], are skipped), times the slow reference constructions of MaxPO and PKPO for the maxpo and
pkpo rows — the literal O(G²) leave-one-out / Leave-Two-Out constructions and, for G <= 16, brute force over all
C(G, k) subsets (``tests/maxk_references.py``, written independently of ``rlvr.advantages``; also the tests'
oracles) — and records the largest |fast − slow|. ``format_table`` / ``to_markdown`` render the rows;
``add_arguments`` / ``command`` are the command line of ``python -m benchmarks advantages`` (``make bench``).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from benchmarks.cli import available_cores, machine_info, positive_int
from rlvr import advantages as adv
from tests.maxk_references import (MAX_ENUMERATION_G, PKPO_BASELINES, maxpo_enumeration, maxpo_l2o_quadratic,
                                   pkpo_enumeration, pkpo_quadratic)

Tensor = torch.Tensor
_F64 = torch.float64

__all__ = ["run", "format_table", "to_markdown", "add_arguments", "command", "TOL"]

TOL = 1e-9                      # largest |fast − slow| accepted


# ----------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------

def _time_calls(fn: Callable[[], Tensor], repeats: int, budget_s: float | None = None) -> tuple[Tensor, list[float]]:
    """One warm-up call (its output is returned for checking), then timed calls (seconds).

    With ``budget_s``, the number of timed calls is cut to what fits in about budget_s judging
    by the warm-up (at least one).
    """
    t0 = time.perf_counter()
    out = fn()
    warm = time.perf_counter() - t0
    if budget_s is not None:
        repeats = max(1, min(repeats, int(budget_s / max(warm, 1e-9))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return out, times


def _cases(name: str, facts: adv.AdvantageSpec, G: int, k: int) -> list[dict[str, Any]]:
    """Benchmark rows for one registered estimator at group size G: label, kwargs, k_eff, reward
    kind, and the slow constructions (label -> callable(rewards) -> [P, G]) for maxpo/pkpo.
    Token-level estimators (``facts.needs_values``, e.g. gae) get no row: they need values and a
    mask [B, T], not just rewards [P, G]."""
    if facts.needs_values:
        return []
    if name == "pkpo":
        rows = []
        for b in PKPO_BASELINES:
            k_eff = min(k, G - 1) if b == "loo" else min(k, G)
            if k_eff < (2 if b == "loo_minus_one" else 1):
                continue                                            # no valid k at this G
            slow = {"quadratic": functools.partial(pkpo_quadratic, k=k_eff, baseline=b)}
            if G <= MAX_ENUMERATION_G:
                slow["enumeration"] = functools.partial(pkpo_enumeration, k=k_eff, baseline=b)
            rows.append({"label": f"pkpo[{b}]", "kwargs": {"k": k_eff, "baseline": b}, "k": k_eff,
                         "binary": False, "slow": slow})
        return rows
    case: dict[str, Any] = {"label": name, "kwargs": {}, "k": None, "binary": False, "slow": {}}
    if name == "passk_training":                                    # needs 0/1 rewards, valid for k <= G
        case["binary"] = True
        case["k"] = min(k, G)
    elif facts.takes_k:                                             # maxpo, and any k-estimator added later
        case["k"] = min(k, G - 1)
    if case["k"] is not None:
        if case["k"] < 1:
            return []
        case["kwargs"]["k"] = case["k"]
    if name == "maxpo":
        case["slow"] = {"quadratic": functools.partial(maxpo_l2o_quadratic, k=case["k"])}
        if G <= MAX_ENUMERATION_G:
            case["slow"]["enumeration"] = functools.partial(maxpo_enumeration, k=case["k"])
    return [case]


def _warm_allocator(nbytes: int = 16 * 2**20) -> None:
    """Allocate and free one 16 MiB block before timing.

    glibc serves blocks above its mmap threshold (128 KiB at start) with fresh, page-faulting
    mmaps, and raises the threshold to the size of the first such block that is freed. A training
    process has long passed that point; without this step whichever estimator is timed first pays
    page faults on every [P, G] temporary (we measured 2x on maxpo at [1024, 64]).
    """
    block = torch.empty(nbytes // 8, dtype=_F64)
    block.fill_(0.0)
    del block


def run(P: int = 1024, groups: Sequence[int] = (8, 16, 64, 256), k: int = 8, repeats: int = 7,
        seed: int = 0, *, threads: int | None = None, slow_budget_s: float = 10.0, tol: float = TOL,
        strict: bool = False, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Time every registered rewards-only estimator on float64 rewards [P, G] for each G in ``groups``.

    Token-level estimators (``spec(name).needs_values``: gae) are left out; they take values and a
    mask [B, T] as well, and cost O(B·T), not O(P·G).

    Rewards ~ U(0, 1) (binary, P(1) = 0.3, for passk_training; AAPO gets U(0, 1) ref_rewards),
    drawn once per G from ``seed``. Each timing is the median of ``repeats`` calls after one
    warm-up call (time.perf_counter), with torch using ``threads`` threads (default: every core
    this process may use; restored afterwards). k-estimators use k_eff = min(k, G−1) (maxpo,
    pkpo[loo]) or min(k, G) (pkpo[none], pkpo[loo_minus_one], passk_training); pkpo gives one row
    per baseline. maxpo and pkpo rows also time the quadratic construction and, for G <= 16, the
    enumeration (timed repeats cut to fit ``slow_budget_s`` per construction and row, at least 1;
    the count used is in the row), and record max |fast − slow| over the warm-up outputs.

    Returns one dict per row with keys: estimator, G, k (None if not a k-estimator), P, ms
    (median ms per call), us_per_group, repeats, quadratic_ms, quadratic_repeats,
    speedup_quadratic, diff_quadratic, enumeration_ms, enumeration_repeats, speedup_enumeration,
    diff_enumeration, max_abs_diff, ok (every diff <= tol). Absent measurements are None.
    With ``strict``, a diff above tol raises RuntimeError once all rows are done.
    """
    if P < 1 or repeats < 1 or k < 1 or any(G < 2 for G in groups):
        raise ValueError(f"run: need P >= 1, repeats >= 1, k >= 1 and every G >= 2; got P={P}, "
                         f"repeats={repeats}, k={k}, groups={tuple(groups)}")
    say = progress or (lambda _msg: None)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or available_cores())
    rows: list[dict[str, Any]] = []
    _warm_allocator()
    try:
        for G in groups:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + G)
            inputs = {"rewards": torch.rand(P, G, generator=gen, dtype=_F64),
                      "binary": (torch.rand(P, G, generator=gen, dtype=_F64) < 0.3).to(_F64),
                      "ref": torch.rand(P, G, generator=gen, dtype=_F64)}
            for name in adv.names():
                for case in _cases(name, adv.spec(name), G, k):
                    row = _measure(adv.spec(name), case, inputs, repeats, slow_budget_s, tol)
                    rows.append(row)
                    say(f"{case['label']:<24} G={G:<4} {row['ms']:10.3f} ms"
                        + (f"  O(G²) {row['speedup_quadratic']:.1f}×" if row["speedup_quadratic"] else "")
                        + (f"  |Δ| {row['max_abs_diff']:.1e}" if row["max_abs_diff"] is not None else ""))
    finally:
        torch.set_num_threads(old_threads)
    bad = [r for r in rows if not r["ok"]]
    if strict and bad:
        raise RuntimeError("fast and slow constructions disagree beyond "
                           f"{tol:g}: " + ", ".join(f"{r['estimator']} G={r['G']} |Δ|={r['max_abs_diff']:.3g}" for r in bad))
    return rows


def _measure(facts: adv.AdvantageSpec, case: dict[str, Any], inputs: dict[str, Tensor], repeats: int,
             slow_budget_s: float, tol: float) -> dict[str, Any]:
    """One row of ``run``: the estimator's median time and, for each slow construction of the case, its time,
    the speed-up and the largest |fast − slow|."""
    x = inputs["binary"] if case["binary"] else inputs["rewards"]
    P, G = x.shape
    kwargs = dict(case["kwargs"], **({"ref_rewards": inputs["ref"]} if facts.needs_reference_samples else {}))
    fast_out, times = _time_calls(functools.partial(facts.fn, x, **kwargs), repeats)
    ms = statistics.median(times) * 1e3
    row: dict[str, Any] = {"estimator": case["label"], "G": G, "k": case["k"], "P": P, "ms": ms,
                           "us_per_group": ms * 1e3 / P, "repeats": len(times)}
    for kind in ("quadratic", "enumeration"):
        row.update({f"{kind}_ms": None, f"{kind}_repeats": None, f"speedup_{kind}": None, f"diff_{kind}": None})
    for kind, slow in case["slow"].items():
        slow_out, slow_times = _time_calls(functools.partial(slow, x), repeats, slow_budget_s)
        slow_ms = statistics.median(slow_times) * 1e3
        row.update({f"{kind}_ms": slow_ms, f"{kind}_repeats": len(slow_times), f"speedup_{kind}": slow_ms / ms,
                    f"diff_{kind}": float((fast_out.to(_F64) - slow_out).abs().max())})
    diffs = [row[d] for d in ("diff_quadratic", "diff_enumeration") if row[d] is not None]
    row["max_abs_diff"] = max(diffs) if diffs else None
    row["ok"] = all(d <= tol for d in diffs)             # NaN compares False: not ok
    return row


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

_COLUMNS = ("estimator", "G", "k", "ms/call", "µs per group", "vs O(G²) ×", "vs enum ×", "max |Δ|")
_MIN_WIDTH = {"ms/call": 7, "µs per group": 6, "vs O(G²) ×": 6, "vs enum ×": 6, "max |Δ|": 7}


def _num(x: float) -> str:
    """3 significant digits, no exponent for ordinary magnitudes."""
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if x >= 0.001 else f"{x:.1e}"


def _cells(row: dict[str, Any]) -> list[str]:
    def speed(key: str) -> str:
        return "—" if row[key] is None else f"{_num(row[key])}×"

    diff = row["max_abs_diff"]
    return [row["estimator"], str(row["G"]), "—" if row["k"] is None else str(row["k"]),
            _num(row["ms"]), _num(row["us_per_group"]), speed("speedup_quadratic"),
            speed("speedup_enumeration"),
            "—" if diff is None else f"{diff:.1e}" + ("" if row["ok"] else " ✗")]


def _notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line on repeats: the fast rows' count, and the slow timings that used fewer."""
    if not rows:
        return []
    fast = sorted({r["repeats"] for r in rows})
    notes = [f"P = {rows[0]['P']} prompts; each time is the median of {'/'.join(map(str, fast))} calls after a warm-up."]
    fewer = [f"{r['estimator']} G={r['G']} ({kind}: {r[kind + '_repeats']})"
             for r in rows for kind in ("quadratic", "enumeration")
             if r[kind + "_repeats"] is not None and r[kind + "_repeats"] < r["repeats"]]
    if fewer:
        notes.append("Slow constructions timed with fewer calls: " + ", ".join(fewer) + ".")
    bad = [r for r in rows if not r["ok"]]
    if bad:
        notes.append(f"✗ = fast and slow constructions differ by more than {TOL:g}.")
    return notes


def format_table(rows: Sequence[dict[str, Any]], title: str | None = None):
    """A rich Table of the rows (columns: estimator, G, k, ms/call, µs per group, vs O(G²) ×, vs enum ×, max |Δ|)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    notes = _notes(rows)
    table = Table(title=title or "advantage estimators", caption=escape("\n".join(notes)) or None,
                  caption_justify="left", box=box.SIMPLE_HEAD)                # fits 80 columns
    for col in _COLUMNS:
        if col == "estimator":
            table.add_column(col, justify="left", no_wrap=True)
        else:                                                       # "3.3e-16", "ms/call" unbroken
            table.add_column(col, justify="right", min_width=_MIN_WIDTH.get(col))
    for row in rows:
        style = None if row["ok"] else "bold red"
        table.add_row(*(escape(cell) for cell in _cells(row)), style=style)   # "pkpo[loo]" is not markup
    return table


def to_markdown(rows: Sequence[dict[str, Any]], info: dict[str, Any] | None = None) -> str:
    """A markdown table of the rows (same columns as ``format_table``), with the notes on repeats
    and, when ``info`` (see ``machine_info``) is given, a line naming the machine."""
    lines = []
    if info:
        lines += [f"Machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']} with "
                  f"{info['threads']} threads; Python {info['python']}.", ""]
    lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _COLUMNS) + " |")
    lines.append("|" + "|".join(":---" if c == "estimator" else "---:" for c in _COLUMNS) + "|")
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(row)) + " |")
    notes = _notes(rows)
    if notes:
        lines += [""] + notes
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Command line: `python -m benchmarks advantages`
# ----------------------------------------------------------------------------------------------

def _group_list(text: str) -> tuple[int, ...]:
    try:
        groups = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--groups must be comma-separated integers, got {text!r}") from None
    if not groups or any(G < 2 for G in groups):
        raise argparse.ArgumentTypeError(f"--groups needs group sizes >= 2, got {text!r}")
    return groups


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``python -m benchmarks advantages`` to ``parser`` and return it."""
    parser.add_argument("--prompts", type=positive_int, default=1024, help="P, prompts per batch (default 1024)")
    parser.add_argument("--groups", type=_group_list, default=(8, 16, 64, 256),
                        help="comma-separated group sizes G (default 8,16,64,256)")
    parser.add_argument("--k", type=positive_int, default=8, help="max@k order; capped per G (default 8)")
    parser.add_argument("--repeats", type=positive_int, default=7, help="timed calls per row, median reported (default 7)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random rewards (default 0)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads (default: every core this process may use)")
    parser.add_argument("--markdown", type=Path, default=None, metavar="PATH", help="also write the table as markdown here")
    return parser


def command(args: argparse.Namespace) -> int:
    """Run the benchmark, print the machine and the table; write markdown if asked.

    Returns 0, or 1 when a fast estimator differs from a slow construction by more than TOL.
    """
    from rich.console import Console

    console = Console()
    start = time.perf_counter()
    rows = run(P=args.prompts, groups=args.groups, k=args.k, repeats=args.repeats, seed=args.seed,
               threads=args.threads, progress=lambda msg: console.print(msg, style="dim", markup=False, highlight=False))
    elapsed = time.perf_counter() - start
    old = torch.get_num_threads()
    torch.set_num_threads(args.threads or available_cores())
    info = machine_info()                                           # the thread count the run used
    torch.set_num_threads(old)
    console.print(f"{info['cpu']}, {info['cores']} cores; torch {info['torch']}, {info['threads']} threads; "
                  f"Python {info['python']}; benchmark took {elapsed:.1f} s", markup=False, highlight=False)
    console.print(format_table(rows, title=f"advantage estimators, P={args.prompts}, k={args.k}"))
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(to_markdown(rows, info))
        console.print(f"wrote {args.markdown}", markup=False, highlight=False)
    bad = [r for r in rows if not r["ok"]]
    if bad:
        console.print(f"[bold red]{len(bad)} row(s) differ from the slow constructions by more than {TOL:g}[/]")
        return 1
    return 0
