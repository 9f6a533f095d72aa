"""``rlvr eval TARGET``: evaluate a model preset, a local model, a run directory or one of its checkpoints.

TARGET is resolved in this order:
1. a run directory (holds ``config.yaml`` and ``checkpoints/``): the run's model with its latest weights;
2. a checkpoint directory (``RUN/checkpoints/step_XXXXXX``): the run's model with those weights;
3. anything ``rlvr.models.load_model`` accepts (preset, save_pretrained directory, hub id).
A run's own config supplies the model settings (LoRA, system prompt, template) and the default sampling budget;
a bare model uses ``TrainConfig()``'s. Datasets (``--data``, repeatable): ``heldout`` (the run's held-out split, or
the embedded default's for a bare model) or any registered data source: ``champ``, ``rg:<task>``, ``arith``, a
``.jsonl`` / ``.parquet`` file, ``hf:<repo>[:<config>][@<split>]``, a benchmark preset (``math500``, ``gsm8k``, ...:
``rlvr.data.benchmarks``; local copies under ``$RLVR_DATA_DIR/<preset>``).

``--suite math`` adds the suite's presets (MATH-500, AIME24, AMC23, Minerva, OlympiadBench) and makes its sampling
settings the defaults (``rlvr.data.benchmarks.SUITES``: AAPO's evaluation, one sample per problem at T 0.6, top-p
0.95, 32,768 new tokens); ``--n``, ``--temperature``, ``--top-p`` and ``--max-new-tokens`` override them (DeepSeek-R1,
arXiv 2501.12948, estimates pass@1 from 4-64 samples per problem at the same T and top-p: ``--n 16``).
Besides the per-dataset files it writes ``suite.md`` and ``suite.json``: one row per metric (avg@n, pass@k), one
column per benchmark in percent with its 95% bootstrap interval, and the unweighted average over the benchmarks, as
the papers' tables report it.

Output per dataset in ``--out``: ``eval.json`` (metrics with CIs and every setting), ``eval.md`` (the same as a
table) and ``problems.jsonl`` (prompt, samples, extracted answers, scores); the terminal gets one table over all
datasets (with an average column for a suite).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rlvr.config import ConfigError, TrainConfig, load_config
from rlvr.data.benchmarks import BENCHMARKS, Suite, suite as get_suite
from rlvr.types import Problem, SamplingParams


@dataclass
class Target:
    """What is evaluated: the model's config, and the checkpoint whose weights replace the trainable ones."""

    label: str
    cfg: TrainConfig
    checkpoint: Path | None


def resolve_target(target: str) -> Target:
    """A run dir, a checkpoint dir or a model name; see the module docstring."""
    from rlvr.trainer.checkpoint import latest_checkpoint

    path = Path(target).expanduser()
    if (path / "config.yaml").is_file():
        return Target(str(path), load_config(path / "config.yaml"), latest_checkpoint(path / "checkpoints"))
    if (path / "state.json").is_file() and ((path / "model.safetensors").is_file() or (path / "dcp").is_dir()):
        run = path.parent.parent
        if not (run / "config.yaml").is_file():
            raise FileNotFoundError(f"checkpoint {path} is not inside a run directory: {run / 'config.yaml'} "
                                    "is missing")
        return Target(str(path), load_config(run / "config.yaml"), path)
    if path.is_dir() and (path / "checkpoints").is_dir():
        raise FileNotFoundError(f"{path} looks like a run directory but has no config.yaml")
    return Target(target, replace(TrainConfig(), model=replace(TrainConfig().model, name=target, lora=False)), None)


def load_target(t: Target, device: str) -> tuple[Any, Any]:
    """(model, tokenizer) with the checkpoint's trainable weights loaded (either layout: ``checkpoint_weights``)."""
    from rlvr.models import load_trainable_state_dict
    from rlvr.trainer import build
    from rlvr.trainer.checkpoint import checkpoint_weights

    model, tokenizer = build.load_policy(t.cfg, build.resolve_device(device))
    if t.checkpoint is not None:
        state = checkpoint_weights(t.checkpoint)
        try:
            load_trainable_state_dict(model, state)
        except ValueError as e:
            raise ValueError(f"checkpoint {t.checkpoint}: {e}") from None
    return model.eval(), tokenizer


def dataset_problems(spec: str, t: Target, args: argparse.Namespace) -> list[Problem]:
    """The problems of one ``--data`` entry: ``heldout`` or a registered data source (``rlvr.data.sources``);
    options a source does not take (row fields, task kwargs) are left out rather than refused. Every verifier is
    checked against its golds here, before the model loads (``build.check_verifiers``)."""
    from rlvr.data import build_problems, sources
    from rlvr.trainer import build

    if spec == "heldout":
        heldout = build.build_problems(t.cfg)[1]
        return heldout if args.size is None else heldout[:args.size]
    entry, _ = sources.source(spec)
    kwargs = json.loads(args.task_kwargs) if args.task_kwargs else None
    fields = {"prompt_field": args.prompt_field, "answer_field": args.answer_field,
              "answer_extract": args.answer_extract} if entry.row_fields else {}
    problems = build_problems(spec, size=(args.size or 100) if entry.generated else None, seed=args.data_seed,
                              template=_template(args, t), verifier=args.verifier, **fields,
                              **({"task_kwargs": kwargs} if kwargs and entry.takes_task_kwargs else {}))
    build.check_verifiers(problems, f"--data {spec}")
    return problems if entry.generated or args.size is None else problems[:args.size]


def dataset_system(spec: str, t: Target, args: argparse.Namespace) -> str | None:
    """The system message of one dataset's prompts: the run's model.system_prompt, else the template's (the run's
    own for ``heldout``; ``--template``, the run's data.template or the source's default for the others)."""
    from rlvr.data import sources, templates
    from rlvr.trainer import build

    if spec == "heldout" or t.cfg.model.system_prompt is not None:
        return build.system_prompt(t.cfg)
    return templates.template(_template(args, t), sources.source(spec)[0].default_template).system


def _template(args: argparse.Namespace, t: Target) -> str | None:
    """``--template``, else the run's ``data.template`` (None for a bare model: each dataset's default)."""
    return args.template if args.template is not None else t.cfg.data.template


def slug(spec: str) -> str:
    """A directory name for a dataset spec: ``rg:basic_arithmetic`` -> ``rg_basic_arithmetic``, a file -> its stem."""
    from rlvr.data import sources

    name = Path(spec).stem if spec.lower().endswith(sources.suffixes()) else spec
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "data"


def markdown(report: dict[str, Any]) -> str:
    """eval.md: the settings and a metric | mean | 95% CI table."""
    s = report["sampling"]
    lines = [f"# {report['dataset']}: {report['target']}", "",
             f"{report['problems']} problems × n={report['n']} samples (T={s['temperature']}, top_p={s['top_p']}, "
             f"max_new_tokens={s['max_new_tokens']}), seed {report['seed']}, problem set {report['problems_hash']}; "
             f"95% percentile bootstrap CIs over problems ({report['bootstrap']} resamples); "
             f"{report['seconds']:.1f} s.", "", "| metric | mean | 95% CI |", "|---|---|---|"]
    for name, m in report["metrics"].items():
        lines.append(f"| {name} | {m['mean']:.4f} | [{m['lo']:.4f}, {m['hi']:.4f}] |")
    return "\n".join(lines) + "\n"


def suite_report(st: Suite, reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """suite.json: per metric (avg@n, pass@k, greedy pass@1) each benchmark's mean and CI, and their unweighted
    average (as the papers' Avg column)."""
    first = next(iter(reports.values()))
    n = first["n"]
    names = {f"mean@{n}": f"avg@{n}"}
    names.update({k: k for k in first["metrics"] if k.startswith("pass@") or k == "greedy_pass@1"})
    rows = {}
    for key, label in names.items():
        cells = {spec: r["metrics"][key] for spec, r in reports.items() if key in r["metrics"]}
        rows[label] = {"benchmarks": cells, "average": sum(c["mean"] for c in cells.values()) / len(cells)}
    return {"suite": st.name, "target": first["target"], "n": n, "sampling": first["sampling"],
            "seed": first["seed"], "bootstrap": first["bootstrap"], "source": st.source,
            "benchmarks": {spec: {"title": BENCHMARKS[spec].title if spec in BENCHMARKS else spec,
                                  "problems": r["problems"]} for spec, r in reports.items()},
            "metrics": rows}


def suite_markdown(rep: dict[str, Any]) -> str:
    """suite.md: one row per metric, one column per benchmark (percent, 95% CI), then the average."""
    s, bench = rep["sampling"], rep["benchmarks"]
    head = [f"{b['title']} ({b['problems']})" for b in bench.values()]
    lines = [f"# {rep['target']}: suite {rep['suite']}", "",
             f"n={rep['n']} samples per problem (T={s['temperature']}, top_p={s['top_p']}, "
             f"max_new_tokens={s['max_new_tokens']}), seed {rep['seed']}; percent, with 95% percentile bootstrap CIs "
             f"over problems ({rep['bootstrap']} resamples); Avg is the unweighted mean over the benchmarks. "
             f"The suite's default settings follow {rep['source']}.", "",
             "| metric | " + " | ".join(head) + " | Avg |", "|---|" + "---:|" * (len(head) + 1)]
    for label, row in rep["metrics"].items():
        cells = [_pct(row["benchmarks"][spec]) if spec in row["benchmarks"] else "—" for spec in bench]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {100 * row['average']:.1f} |")
    return "\n".join(lines) + "\n"


def _pct(m: dict[str, float]) -> str:
    return f"{100 * m['mean']:.1f} [{100 * m['lo']:.1f}, {100 * m['hi']:.1f}]"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def write_outputs(out: Path, report: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "problems.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    _write_atomic(out / "eval.md", markdown(report))
    _write_atomic(out / "eval.json", json.dumps(report, indent=1) + "\n")


def default_out(t: Target) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if t.checkpoint is not None:
        run = t.checkpoint.parent.parent
        return run / "eval" / f"{stamp}-{t.checkpoint.name}"
    return Path("evals") / f"{stamp}-{slug(t.label)}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``rlvr eval`` (short metavars, one line each, so ``--help`` fits on a screen)."""
    p.usage = "%(prog)s TARGET [--data SOURCE ...] [--suite math] [--n N] [--greedy] [options]"
    p.add_argument("target", metavar="TARGET", help="run/checkpoint dir, model preset, model dir or hub id")
    p.add_argument("--data", action="append", metavar="SOURCE",
                   help="heldout (default), champ, rg:<task>, arith, a .jsonl/.parquet file, hf:<repo>, "
                        "math500, gsm8k, ...; repeatable")
    p.add_argument("--suite", metavar="NAME", help="math: MATH-500, AIME24, AMC23, Minerva, OlympiadBench")
    p.add_argument("--n", type=int, metavar="N", help="samples per problem (default 1, or the suite's)")
    p.add_argument("--ks", metavar="K,...", help="k for pass@k / maj@k (default 1, 2, 4, ..., n)")
    p.add_argument("--temperature", type=float, metavar="T", help="default 0 (greedy) for n=1, else 0.6; suite's")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus mass (default 1, or the suite's)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="default: the suite's, else the run's budget")
    p.add_argument("--greedy", action="store_true", help="also report greedy pass@1")
    p.add_argument("--size", type=int, metavar="N", help="problems per dataset (rg:, arith: 100; others: all)")
    p.add_argument("--data-seed", type=int, default=0, metavar="S", help="generation seed of rg:/arith datasets")
    p.add_argument("--task-kwargs", metavar="JSON", help="generator options for rg:/arith datasets")
    p.add_argument("--template", metavar="T", help="plain, boxed, qwen_math, r1 or a format string")
    p.add_argument("--prompt-field", default="prompt", metavar="F", help="prompt field of file / hf: rows")
    p.add_argument("--answer-field", default="answer", metavar="F", help="gold-answer field of file / hf: rows")
    p.add_argument("--answer-extract", metavar="X", help="gold in the answer field: boxed, hash")
    p.add_argument("--verifier", metavar="V", help="verifier (default: the dataset's)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="sampling and bootstrap seed")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B", help="bootstrap resamples for the CIs")
    p.add_argument("--out", metavar="DIR", help="default RUN/eval/<time>-<step> or evals/<time>-<model>")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--max-batch-size", type=int, default=64, metavar="B", help="rows the sampler decodes together")
    p.add_argument("--workers", type=int, default=2, metavar="W", help="verifier worker processes")
    p.add_argument("--threads", type=int, metavar="T", help="torch CPU threads")


@dataclass(frozen=True)
class Settings:
    """What one ``rlvr eval`` call samples: the datasets, n, the ks, the sampling parameters and the suite."""

    specs: tuple[str, ...]
    n: int
    ks: list[int] | None
    params: SamplingParams
    suite: Suite | None


def settings(args: argparse.Namespace, cfg: TrainConfig) -> Settings:
    """Flags first, then the suite's settings, then the defaults (n 1; T 0 for n = 1 else 0.6; top-p 1; the run's
    budget); ValueError for a bad --n, --ks or --bootstrap."""
    st = get_suite(args.suite) if args.suite else None
    n = args.n if args.n is not None else (st.n if st else 1)
    if n < 1 or args.bootstrap < 1:
        raise ValueError("--n and --bootstrap must be >= 1")
    ks = [int(k) for k in args.ks.split(",")] if args.ks else None
    if ks and (min(ks) < 1 or max(ks) > n):
        raise ValueError(f"--ks {args.ks}: every k must lie in [1, n={n}]")
    temperature = args.temperature if args.temperature is not None else (
        st.temperature if st else (0.0 if n == 1 else 0.6))
    top_p = args.top_p if args.top_p is not None else (st.top_p if st else 1.0)
    budget = args.max_new_tokens or (st.max_new_tokens if st else None) or cfg.eval.max_new_tokens \
        or cfg.rollout.max_new_tokens
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=budget, stop=cfg.rollout.stop)
    specs = tuple(dict.fromkeys([*(args.data or []), *(st.datasets if st else ())])) or ("heldout",)
    return Settings(specs, n, ks, params, st)


def run(args: argparse.Namespace, console: Any) -> dict[str, dict[str, Any]]:
    """Evaluate ``args.target`` on every dataset; returns {dataset: report} (also written to disk)."""
    import torch

    from rlvr.rollout import HFSampler

    if args.threads:
        torch.set_num_threads(args.threads)
    t = resolve_target(args.target)
    s = settings(args, t.cfg)
    datasets = {spec: dataset_problems(spec, t, args) for spec in s.specs}  # fail on bad data before loading
    systems = {spec: dataset_system(spec, t, args) for spec in s.specs}
    model, tokenizer = load_target(t, args.device)
    sampler = HFSampler(model, tokenizer, max_batch_size=args.max_batch_size)
    out = Path(args.out) if args.out else default_out(t)
    reports = _evaluate_all(args, t, s, datasets, systems, sampler, tokenizer, out, console)
    console.print(table(reports, average=s.suite is not None))
    written = f"written to {out}/<dataset>/eval.json, eval.md, problems.jsonl"
    if s.suite is not None:
        rep = suite_report(s.suite, reports)
        _write_atomic(out / "suite.json", json.dumps(rep, indent=1) + "\n")
        _write_atomic(out / "suite.md", suite_markdown(rep))
        written += f"; {out}/suite.md, suite.json"
    console.print(written)
    return reports


def _evaluate_all(args: argparse.Namespace, t: Target, s: Settings, datasets: dict[str, list[Problem]],
                  systems: dict[str, str | None], sampler: Any, tokenizer: Any, out: Path,
                  console: Any) -> dict[str, dict[str, Any]]:
    """Each dataset sampled and scored in turn under one progress bar; its files written as soon as it is done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from rlvr.eval.evaluate import evaluate
    from rlvr.rewards import RewardPool
    from rlvr.trainer import build

    reports: dict[str, dict[str, Any]] = {}
    total = sum(len(p) for p in datasets.values()) * (2 if args.greedy else 1)
    columns = (TextColumn("{task.description}"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with RewardPool(num_workers=args.workers) as pool, Progress(*columns, console=console) as progress:
        task = progress.add_task("eval", total=total)
        for spec, problems in datasets.items():
            progress.update(task, description=f"eval {spec}")
            encode = build.make_encoder(tokenizer, systems[spec])
            res = evaluate(sampler, encode, problems, pool, s.params, seed=args.seed, n=s.n, ks=s.ks,
                           greedy=args.greedy, n_boot=args.bootstrap, progress=lambda k: progress.advance(task, k))
            reports[spec] = _report(args, t, s, spec, problems, systems[spec], res)
            write_outputs(out / slug(spec), reports[spec], res.rows)
    return reports


def _report(args: argparse.Namespace, t: Target, s: Settings, spec: str, problems: list[Problem],
            system: str | None, res: Any) -> dict[str, Any]:
    """eval.json of one dataset: the target, the problem set, every setting and the metrics with their CIs."""
    from rlvr.data import problems_hash

    p = s.params
    return {"target": t.label, "model": t.cfg.model.name, "checkpoint": str(t.checkpoint) if t.checkpoint else None,
            "dataset": spec, "problems": res.n_problems, "problems_hash": problems_hash(problems), "n": s.n,
            "sampling": {"temperature": p.temperature, "top_p": p.top_p, "max_new_tokens": p.max_new_tokens,
                         "stop": list(p.stop)},
            "system_prompt": system, "suite": s.suite.name if s.suite else None,
            "seed": args.seed, "bootstrap": args.bootstrap, "seconds": res.seconds, "mean_length": res.mean_length,
            "metrics": {k: {"mean": v.mean, "lo": v.lo, "hi": v.hi} for k, v in res.metrics.items()},
            "args": {k: v for k, v in vars(args).items() if k != "func"}}


def table(reports: dict[str, dict[str, Any]], average: bool = False) -> Any:
    """A rich table: one row per metric, one column per dataset, cells ``mean [lo, hi]``; with ``average``, a last
    column with the unweighted mean over the datasets (a suite's Avg)."""
    from rich.table import Table

    first = next(iter(reports.values()))
    tab = Table(title=f"rlvr eval {first['target']} (95% bootstrap CI over problems)")
    tab.add_column("metric")
    for spec, r in reports.items():
        tab.add_column(f"{slug(spec)} ({r['problems']})", justify="right")
    if average:
        tab.add_column("average", justify="right")
    names: list[str] = []
    for r in reports.values():
        names += [k for k in r["metrics"] if k not in names]
    for name in names:
        cells = [r["metrics"].get(name) for r in reports.values()]
        avg = [f"{sum(c['mean'] for c in cells if c) / sum(1 for c in cells if c):.3f}"] if average else []
        tab.add_row(name, *[_fmt_dict(c) for c in cells], *avg)
    return tab


def _fmt_dict(m: dict[str, float] | None) -> str:
    return "—" if m is None else f"{m['mean']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]"


def command(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")            # the datasets library's cache notices
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from rich.console import Console
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        run(args, Console())
    except (ValueError, FileNotFoundError, ConfigError, json.JSONDecodeError) as e:
        print(f"rlvr eval: error: {e}", file=sys.stderr)
        return 2
    return 0
