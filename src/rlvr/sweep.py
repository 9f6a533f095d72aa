"""``rlvr sweep SWEEP.yaml [k=v ...]``: run a study (variants × grid × seeds of ``rlvr train``), resumably; report.

The sweep file (YAML; every key optional)::

    # what the study is, the command, roughly how long
    base: configs/tiny_arith/async_asympo.yaml   # base config: a path relative to the current directory or,
                                                 # if missing there, to the sweep file
    overrides: [steps=60, eval.every=20]         # dotted overrides applied to every run, after base
    seeds: [0, 1, 2, 3, 4]                       # each run sets the top-level `seed`; default [0]
    grid:                                        # cartesian product of the axes, in file order
      rollout.max_staleness: [0, 2, 4, 8]
    variants:                                    # named override lists; every run takes exactly one variant
      asympo: [algo.loss=asympo]
      grpo_behavior: [algo.loss=ppo_clip, algo.old_logprobs=behavior]
    out: runs/sweeps/async_staleness             # default runs/sweeps/<sweep file stem>
    compare:                                     # arguments of the report (see `rlvr compare --help`)
      metrics: [eval/accuracy, reward/mean]      # default eval/accuracy, reward/mean
      thresholds: [eval/accuracy=0.45]           # (or a mapping {eval/accuracy: 0.45})
      label_keys: [algo.loss, rollout.max_staleness]

Runs are variants × grid × seeds (variant outermost, seed innermost). A run's overrides are, in this order (later
wins): the base file < ``overrides`` < its variant < its grid values < ``seed=S`` < the ``k=v`` given on the
command line (e.g. ``model.name=smollm2-135m-instruct`` or ``steps=5`` for the whole sweep; as with ``rlvr train``,
give them before the options). Each run's directory
is ``OUT/<name>``, the name joined with ``__`` from the variant, each ``axis=value`` and ``seed=S``, e.g.
``asympo__rollout.max_staleness=2__seed=1`` (characters other than letters, digits and ``._=+-`` become ``_``).

Checked before anything runs, each naming the sweep file and the key: unknown top-level or ``compare`` keys, an
override or axis that is not a config key (``algo.nope``), an axis that is not a non-empty list, ``seed`` set
anywhere but ``seeds``, duplicate run names or identical run configs; then every run's full config is built with
``load_config`` and its algorithm checked (``rlvr train`` would fail on it), so a typo fails the sweep at once.
A run directory that already exists must hold the same config (``steps`` and ``log.*`` aside).

Each run is a subprocess ``python -m rlvr train BASE OVERRIDES... --run-dir OUT/<name>`` (environment plus
``HF_HUB_OFFLINE=1`` unless set), its stdout and stderr appended to ``OUT/logs/<name>.log``; a crash or OOM of one
run does not stop the sweep. Runs are sequential; ``--jobs N`` runs N at a time (a thread pool of N workers, each
waiting on its subprocess), each with ``OMP_NUM_THREADS`` = cores / N (unless set) so that they do not fight over the
cores. Resuming is per run, so re-running the same
command continues a sweep:

* the latest checkpoint has reached the run's ``steps``: done, skipped;
* a checkpoint short of that: continued with ``rlvr train OVERRIDES... --resume OUT/<name>``;
* a directory without a checkpoint (it crashed before the first): moved aside to ``OUT/<name>.failed-<n>`` and
  started again.

A run that exits non-zero (or exits without reaching ``steps``) is failed: the sweep goes on with the others,
lists the failures with their logs at the end, and exits 1. ``OUT/sweep.json`` holds the expanded plan (name,
variant, grid values, seed, overrides, steps, status, seconds, log), rewritten atomically whenever a run starts or
ends; status is ``pending``, ``running``, ``done`` (complete before this invocation), ``started`` (trained from
scratch now), ``resumed``, ``failed`` or ``excluded`` (left out by ``--only``). ``--only PATTERN`` (repeatable)
runs only the runs that one of the patterns selects: a glob (with ``*``, ``?`` or ``[``) must match the whole name
(``grpo__*`` picks GRPO's runs and not ``dr_grpo__seed=0``), any other pattern is a substring of the name.

At the end, also when nothing was left to run, the report: ``rlvr compare`` over every complete run of the sweep
with the ``compare:`` settings, written to ``OUT/report/`` (``compare.md`` and the PNG curves) and printed.
``--dry-run`` validates everything and prints the plan (each run's action and full override list) and runs
nothing. Exit status: 0, 1 if a run or the report failed, 2 for a bad sweep file or config.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
import typing
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from rlvr.config import ConfigError, TrainConfig, load_config, parse_override, to_dict

__all__ = ["SweepError", "SWEEP_KEYS", "COMPARE_KEYS", "Sweep", "RunSpec", "load_sweep", "read_plan", "expand",
           "run_state", "train_command", "run_sweep", "write_report", "add_arguments", "command"]

SWEEP_KEYS = ("base", "overrides", "seeds", "grid", "variants", "out", "compare")
COMPARE_KEYS = ("metrics", "thresholds", "label_keys")
DEFAULT_METRICS = ("eval/accuracy", "reward/mean")
MAX_NAME = 180


class SweepError(ValueError):
    """A problem with a sweep file or its runs' configs (printed as ``rlvr sweep: error: ...``)."""


# ------------------------------------------------------------------------------------------------- sweep file

class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a mapping key given twice (two variants of one name would silently merge)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        except TypeError:  # an unhashable key: the default constructor reports it
            pass
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass
class CompareSettings:
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    thresholds: list[str] = field(default_factory=list)
    label_keys: list[str] | None = None


@dataclass
class Sweep:
    """A parsed, structurally checked sweep file (plus the command line's overrides and --out)."""

    path: Path
    base: str | None
    """The base config's path as passed to ``rlvr train`` (relative to the current directory or absolute)."""
    overrides: list[str]
    seeds: list[int]
    grid: dict[str, list[Any]]
    variants: dict[str, list[str]] | None
    out: Path
    compare: CompareSettings
    cli_overrides: list[str] = field(default_factory=list)


@dataclass
class RunSpec:
    """One run of the plan."""

    name: str
    variant: str | None
    grid: dict[str, Any]
    seed: int
    overrides: list[str]
    """Everything after the base file, in order: file overrides, variant, grid, seed, command line."""
    config: TrainConfig
    run_dir: Path

    @property
    def steps(self) -> int:
        return self.config.steps


def _err(path: Path, key: str, msg: str) -> SweepError:
    return SweepError(f"{path}: {key}: {msg}")


def _check_config_key(dotted: str) -> str | None:
    """None if ``dotted`` names a config field (or a key inside a mapping field such as ``algo.loss_kwargs.x``);
    else why not."""
    parts = dotted.split(".")
    if not all(parts):
        return f"{dotted!r} has an empty key segment"
    cls: Any = TrainConfig
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        where = ".".join(parts[:i])
        if part not in names:
            return (f"{dotted!r} is not a config key; valid keys{' of ' + where if where else ''}: "
                    f"{', '.join(names)}")
        tp = typing.get_type_hints(cls)[part]
        if dataclasses.is_dataclass(tp):
            if i == len(parts) - 1:
                return f"{dotted!r} is a config section, not a key; its keys: " + \
                    ", ".join(f.name for f in dataclasses.fields(tp))
            cls = tp
            continue
        if i == len(parts) - 1:
            return None
        if tp is dict or typing.get_origin(tp) is dict or dict in [typing.get_origin(a) or a
                                                                    for a in typing.get_args(tp)]:
            return None  # a key inside a mapping field (task_kwargs, loss_kwargs, ...)
        return f"{dotted!r}: {'.'.join(parts[:i + 1])} is a value, not a section"
    return None


def _check_overrides(path: Path, key: str, value: Any) -> list[str]:
    """A list of ``k=v`` strings with config keys (``seed`` excluded); SweepError naming ``key`` otherwise."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _err(path, key, f"must be a list of key=value overrides, got {type(value).__name__} {value!r}")
    out = []
    for item in value:
        if not isinstance(item, str):
            raise _err(path, key, f"{item!r} is not a key=value string (quote items that YAML reads as "
                                  "mappings, e.g. 'algo.loss_kwargs={clip_eps_low: 0.2}')")
        try:
            parts, _ = parse_override(item)
        except ConfigError as e:
            raise _err(path, key, str(e)) from None
        dotted = ".".join(parts)
        if dotted == "seed":
            raise _err(path, key, f"{item!r}: set seeds with the top-level `seeds:` list")
        problem = _check_config_key(dotted)
        if problem:
            raise _err(path, key, problem)
        out.append(item)
    return out


def _str_list(path: Path, key: str, value: Any) -> list[str]:
    """A list of strings, also from one comma-separated string."""
    if isinstance(value, str):
        value = [p.strip() for p in value.split(",") if p.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise _err(path, key, f"must be a non-empty list of strings, got {value!r}")
    return [v.strip() for v in value]


def _resolve_base(path: Path, base: Any) -> str | None:
    if base is None:
        return None
    if not isinstance(base, str) or not base.strip():
        raise _err(path, "base", f"must be the path of a config file, got {base!r}")
    if "=" in base:
        raise _err(path, "base", f"{base!r}: a config path may not contain '=' (rlvr train would read it as an "
                                 "override)")
    if Path(base).is_file():
        return base
    beside = path.parent / base
    if beside.is_file():
        return str(beside)
    raise _err(path, "base", f"no config file {base!r} (looked in the current directory and in {path.parent})")


def _read_file(p: Path) -> dict[str, Any]:
    """The sweep file's top-level mapping (unknown keys refused)."""
    if not p.is_file():
        raise SweepError(f"no sweep file {str(p)!r}")
    try:
        data = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise SweepError(f"{p}: not valid YAML: {e}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise SweepError(f"{p}: a sweep file holds a mapping of {', '.join(SWEEP_KEYS)}; got {type(data).__name__}")
    for key in data:
        if key not in SWEEP_KEYS:
            raise _err(p, str(key), f"unknown key; valid keys: {', '.join(SWEEP_KEYS)}")
    return data


def _load_seeds(p: Path, seeds: Any) -> list[int]:
    seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if not isinstance(seeds, list) or not seeds or \
            not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise _err(p, "seeds", f"must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise _err(p, "seeds", f"repeats a seed: {seeds}")
    return list(seeds)


def _load_grid(p: Path, grid_raw: Any) -> dict[str, list[Any]]:
    if not isinstance(grid_raw, dict):
        raise _err(p, "grid", f"must be a mapping of config key -> list of values, got {grid_raw!r}")
    grid: dict[str, list[Any]] = {}
    for axis, values in grid_raw.items():
        key = f"grid.{axis}"
        if not isinstance(axis, str):
            raise _err(p, key, "an axis must be a dotted config key")
        if axis == "seed":
            raise _err(p, key, "set seeds with the top-level `seeds:` list")
        problem = _check_config_key(axis)
        if problem:
            raise _err(p, key, problem)
        if not isinstance(values, list):
            raise _err(p, key, f"must be a list of values, got {type(values).__name__} {values!r} "
                               f"(write [{_yaml_value(values)}] for one value)")
        if not values:
            raise _err(p, key, "is empty (an empty axis gives no runs)")
        grid[axis] = values
    return grid


def _load_variants(p: Path, raw: Any) -> dict[str, list[str]] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise _err(p, "variants", f"must be a non-empty mapping of name -> list of overrides, got {raw!r}")
    variants = {}
    for name, ovs in raw.items():
        if not isinstance(name, (str, int)) or isinstance(name, bool) or not str(name).strip():
            raise _err(p, f"variants.{name}", "a variant name must be a non-empty string")
        variants[str(name)] = _check_overrides(p, f"variants.{name}", ovs)
    return variants


def load_sweep(path: str | Path, cli_overrides: Sequence[str] = (), out: str | Path | None = None) -> Sweep:
    """Read and check the sweep file's structure (configs are built by ``expand``)."""
    p = Path(path)
    data = _read_file(p)
    out_raw = data.get("out")
    if out_raw is not None and (not isinstance(out_raw, str) or not out_raw.strip()):
        raise _err(p, "out", f"must be a directory path, got {out_raw!r}")
    out_dir = Path(out) if out is not None else Path(out_raw) if out_raw else Path("runs/sweeps") / p.stem
    return Sweep(p, _resolve_base(p, data.get("base")), _check_overrides(p, "overrides", data.get("overrides")),
                 _load_seeds(p, data.get("seeds", [0])), _load_grid(p, data.get("grid") or {}),
                 _load_variants(p, data.get("variants")), out_dir, _load_compare(p, data.get("compare")),
                 _check_overrides(p, "command-line overrides", list(cli_overrides)))


def read_plan(out_dir: str | Path) -> list[dict[str, Any]]:
    """The runs recorded in a sweep's ``OUT/sweep.json``, in plan order: one dict per run with ``name``,
    ``variant``, ``grid``, ``seed`` and ``status`` (and the other fields of the module docstring).
    FileNotFoundError when ``out_dir`` holds no sweep.json; ValueError when it lists no runs."""
    path = Path(out_dir) / "sweep.json"
    if not path.is_file():
        raise FileNotFoundError(f"no sweep.json in {Path(out_dir)} (run `rlvr sweep SWEEP.yaml` first)")
    runs = json.loads(path.read_text()).get("runs", [])
    if not runs:
        raise ValueError(f"{path}: the plan lists no runs")
    return runs


def _load_compare(p: Path, raw: Any) -> CompareSettings:
    from rlvr.compare import CompareError, parse_threshold

    if raw is None:
        return CompareSettings()
    if not isinstance(raw, dict):
        raise _err(p, "compare", f"must be a mapping of {', '.join(COMPARE_KEYS)}, got {raw!r}")
    for key in raw:
        if key not in COMPARE_KEYS:
            raise _err(p, f"compare.{key}", f"unknown key; valid keys: {', '.join(COMPARE_KEYS)}")
    settings = CompareSettings()
    if raw.get("metrics") is not None:
        settings.metrics = _str_list(p, "compare.metrics", raw["metrics"])
    thresholds = raw.get("thresholds")
    if thresholds is not None:
        if isinstance(thresholds, dict):
            thresholds = [f"{m}={v}" for m, v in thresholds.items()]
        for t in _str_list(p, "compare.thresholds", thresholds):
            try:
                parse_threshold(t)
            except CompareError as e:
                raise _err(p, "compare.thresholds", str(e)) from None
            settings.thresholds.append(t)
    if raw.get("label_keys") is not None:
        settings.label_keys = _str_list(p, "compare.label_keys", raw["label_keys"])
        for k in settings.label_keys:
            problem = _check_config_key(k) if k != "seed" else None
            if problem:
                raise _err(p, "compare.label_keys", problem)
    return settings


# -------------------------------------------------------------------------------------------------- expansion

def _yaml_value(v: Any) -> str:
    """``v`` as the text of an override value that ``parse_override`` reads back as ``v`` (YAML flow style)."""
    text = yaml.safe_dump(v, default_flow_style=True, width=1 << 30, sort_keys=False).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")].strip()
    elif text.endswith("..."):
        text = text[:-3].strip()
    return text


def _safe(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9._=+-]", "_", text)
    return re.sub(r"^[.-]", "_", text)


def run_name(variant: str | None, grid: dict[str, Any], seed: int) -> str:
    """``variant__axis=value__...__seed=S`` with unsafe characters replaced (long names are cut and hashed)."""
    parts = [variant] if variant is not None else []
    parts += [f"{k}={v if isinstance(v, str) else _yaml_value(v)}" for k, v in grid.items()]
    parts.append(f"seed={seed}")
    name = "__".join(_safe(p) for p in parts)
    if len(name) > MAX_NAME:
        name = name[:MAX_NAME - 9] + "~" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def expand(sweep: Sweep) -> list[RunSpec]:
    """Every run of the sweep, in order (variant, then grid, then seed), each config built with ``load_config``
    and its algorithm checked. SweepError names the file, the run and the key."""
    from rlvr.trainer.build import check_algorithm

    variants: list[tuple[str | None, list[str]]] = list(sweep.variants.items()) if sweep.variants else [(None, [])]
    axes = list(sweep.grid)
    specs: list[RunSpec] = []
    names: dict[str, RunSpec] = {}
    configs: dict[str, str] = {}
    for (variant, v_ovs), values in itertools.product(variants, itertools.product(*sweep.grid.values())):
        grid = dict(zip(axes, values))
        g_ovs = [f"{k}={_yaml_value(v)}" for k, v in grid.items()]
        for seed in sweep.seeds:
            name = run_name(variant, grid, seed)
            if name in names:
                raise SweepError(f"{sweep.path}: duplicate run name {name!r} (variant {variant!r}, grid {grid}, "
                                 f"and variant {names[name].variant!r}, grid {names[name].grid}); make the variant "
                                 "names or grid values differ in letters, digits or ._=+-")
            overrides = [*sweep.overrides, *v_ovs, *g_ovs, f"seed={seed}", *sweep.cli_overrides]
            try:
                cfg = load_config(sweep.base, overrides)
            except ConfigError as e:
                raise SweepError(f"{sweep.path}: run {name}: config error: {e}") from None
            try:
                check_algorithm(cfg)
            except ValueError as e:
                raise SweepError(f"{sweep.path}: run {name}: {e}") from None
            canon = json.dumps(to_dict(cfg), sort_keys=True, default=str)
            if canon in configs:
                raise SweepError(f"{sweep.path}: runs {configs[canon]} and {name} have the same config (does a "
                                 "command-line override or a variant set a grid axis?)")
            configs[canon] = name
            spec = RunSpec(name, variant, grid, seed, overrides, cfg, sweep.out / name)
            names[name] = spec
            specs.append(spec)
    return specs


# ---------------------------------------------------------------------------------------------------- running

@dataclass
class RunState:
    action: str
    """start (no directory), restart (a directory without a checkpoint), resume, or done."""
    step: int | None = None
    """The latest checkpoint's step."""


def _checkpoint_step(run_dir: Path) -> int | None:
    from rlvr.trainer.checkpoint import latest_checkpoint

    try:
        ckpt = latest_checkpoint(run_dir / "checkpoints")
        return int(json.loads((ckpt / "state.json").read_text())["step"])
    except (FileNotFoundError, ValueError, KeyError, TypeError, OSError):
        return None


def run_state(spec: RunSpec) -> RunState:
    """What the sweep does with ``spec``'s directory: start, restart, resume or nothing (done)."""
    if not spec.run_dir.exists():
        return RunState("start")
    step = _checkpoint_step(spec.run_dir)
    if step is None:
        return RunState("restart")
    return RunState("done" if step >= spec.steps else "resume", step)


def _check_existing(sweep: Sweep, spec: RunSpec) -> None:
    """An existing run directory with a checkpoint must hold this run's config (``steps`` and ``log.*`` aside)."""
    from rlvr.compare import flatten_config

    path = spec.run_dir / "config.yaml"
    try:
        have = flatten_config(to_dict(load_config(path)))
    except ConfigError as e:
        raise SweepError(f"{sweep.path}: run {spec.name}: the existing {path} cannot be read: {e}") from None
    want = flatten_config(to_dict(spec.config))
    diff = [k for k in dict.fromkeys([*want, *have]) if k != "steps" and not k.startswith("log.")
            and want.get(k, "<unset>") != have.get(k, "<unset>")]
    if diff:
        shown = "; ".join(f"{k}: {have.get(k, '<unset>')!r} there, {want.get(k, '<unset>')!r} in the plan"
                          for k in diff[:4])
        raise SweepError(f"{sweep.path}: run {spec.name}: {spec.run_dir} holds a run with another config ({shown}); "
                         "move it away or use another --out")


def train_command(sweep: Sweep, spec: RunSpec, resume: bool) -> list[str]:
    """The ``rlvr train`` command line of ``spec`` (``--resume`` continues its directory)."""
    cmd = [sys.executable, "-m", "rlvr", "train"]
    if resume:
        return [*cmd, *spec.overrides, "--resume", str(spec.run_dir)]
    return [*cmd, *([sweep.base] if sweep.base else []), *spec.overrides, "--run-dir", str(spec.run_dir)]


def _move_aside(run_dir: Path) -> Path:
    n = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.failed-{n}")).exists():
        n += 1
    run_dir.rename(aside)
    return aside


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


@dataclass
class _Entry:
    spec: RunSpec
    state: RunState
    selected: bool
    status: str
    seconds: float | None = None
    returncode: int | None = None
    moved_aside: str | None = None
    note: str | None = None

    def record(self, out: Path) -> dict[str, Any]:
        s = self.spec
        return {"name": s.name, "dir": str(s.run_dir), "variant": s.variant, "grid": s.grid, "seed": s.seed,
                "overrides": s.overrides, "steps": s.steps, "status": self.status, "seconds": self.seconds,
                "log": str(out / "logs" / f"{s.name}.log"), "returncode": self.returncode,
                "checkpoint_step": self.state.step, "moved_aside": self.moved_aside, "note": self.note}


def _plan_lines(sweep: Sweep, entries: list[_Entry], overrides: bool = True) -> list[str]:
    shape = [f"{len(sweep.variants)} variants"] if sweep.variants else []
    shape += [f"{len(v)} {k}" for k, v in sweep.grid.items()] + [f"{len(sweep.seeds)} seeds"]
    lines = [f"sweep {sweep.path}: {len(entries)} runs ({' × '.join(shape)}) under {sweep.out}",
             f"base: {sweep.base or '(TrainConfig defaults)'}"]
    if sweep.cli_overrides:
        lines.append(f"command-line overrides: {' '.join(sweep.cli_overrides)}")
    for e in entries:
        act = e.state.action if e.selected or e.state.action == "done" else "exclude"
        what = {"start": "start", "restart": "restart", "resume": "resume", "done": "skip", "exclude": "exclude"}[act]
        extra = {"restart": f" (no checkpoint: {e.spec.run_dir.name} moves to {e.spec.run_dir.name}.failed-<n>)",
                 "resume": f" (checkpoint at step {e.state.step} of {e.spec.steps})",
                 "done": f" (done: step {e.state.step} of {e.spec.steps})",
                 "exclude": " (not matched by --only)", "start": ""}[act]
        lines.append(f"  {what:<8}{e.spec.name}{extra}")
        if overrides:
            lines.append(f"          {' '.join(e.spec.overrides)}")
    counts: dict[str, int] = {}
    for e in entries:
        act = e.state.action if e.selected or e.state.action == "done" else "exclude"
        counts[act] = counts.get(act, 0) + 1
    lines.append("plan: " + ", ".join(f"{counts[k]} to {k}" if k != "done" else f"{counts[k]} done"
                                      for k in ("start", "restart", "resume", "done", "exclude") if k in counts))
    return lines


def _selects(pattern: str, name: str) -> bool:
    """``--only``: a glob (``*``, ``?``, ``[``) matches the whole run name; any other pattern is a substring of it."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def _plan(sweep: Sweep, specs: list[RunSpec], only: Sequence[str]) -> list[_Entry]:
    """Each run's state (an existing directory must hold its config) and whether ``--only`` selects it."""
    entries = []
    for spec in specs:
        state = run_state(spec)
        if state.action in ("done", "resume"):
            _check_existing(sweep, spec)
        selected = not only or any(_selects(pattern, spec.name) for pattern in only)
        status = "done" if state.action == "done" else "pending" if selected else "excluded"
        entries.append(_Entry(spec, state, selected, status))
    if only and not any(e.selected for e in entries):
        raise SweepError(f"--only {' '.join(only)}: matches no run of {sweep.path}")
    return entries


class _Runner:
    """Runs entries as ``rlvr train`` subprocesses (each from a thread of a standard executor) and records every
    start and end in ``OUT/sweep.json``; ``stop`` terminates what is running."""

    def __init__(self, sweep: Sweep, entries: list[_Entry], only: Sequence[str], jobs: int) -> None:
        self.sweep, self.entries, self.only = sweep, entries, list(only)
        self.todo = sum(e.status == "pending" for e in entries)
        self.lock = threading.Lock()
        self.active: dict[str, subprocess.Popen] = {}
        self.launched, self.stopping = 0, False
        self.started = datetime.datetime.now().isoformat(timespec="seconds")
        self.env = dict(os.environ)
        self.env.setdefault("HF_HUB_OFFLINE", "1")
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        if jobs > 1:  # N runs each spinning all cores' worth of OpenMP threads slow each other down several-fold
            self.env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))

    def save(self) -> None:
        sw = self.sweep
        with self.lock:
            _write_json(sw.out / "sweep.json", {
                "sweep": str(sw.path), "base": sw.base, "out": str(sw.out), "overrides": sw.overrides,
                "seeds": sw.seeds, "grid": sw.grid, "variants": sw.variants, "cli_overrides": sw.cli_overrides,
                "only": self.only, "started": self.started,
                "updated": datetime.datetime.now().isoformat(timespec="seconds"),
                "compare": dataclasses.asdict(sw.compare), "runs": [e.record(sw.out) for e in self.entries]})

    def run(self, e: _Entry) -> None:
        """Start (or resume, or restart) one run, wait for it, record how it ended."""
        spec, action = e.spec, e.state.action
        if self.stopping:
            return
        if action == "restart":
            e.moved_aside = str(_move_aside(spec.run_dir))
        log_path = self.sweep.out / "logs" / f"{spec.name}.log"
        cmd = train_command(self.sweep, spec, action == "resume")
        with open(log_path, "a") as log:
            log.write(f"# rlvr sweep {datetime.datetime.now().isoformat(timespec='seconds')}: {' '.join(cmd[1:])}\n")
            log.flush()
            t0 = time.perf_counter()
            with self.lock:                 # no run starts once ``stop`` has begun
                if self.stopping:
                    return
                self.launched += 1
                self.active[spec.name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                          stdin=subprocess.DEVNULL, env=self.env)
                e.status, n = "running", self.launched
            verb = {"resume": f"resume from step {e.state.step}", "start": "start",
                    "restart": f"restart (moved aside to {Path(e.moved_aside or '').name})"}[action]
            print(f"[{n}/{self.todo}] {verb}: {spec.name}  (log {log_path})", flush=True)
            self.save()
            rc = self.active[spec.name].wait()
        with self.lock:
            del self.active[spec.name]
        self._finish(e, rc, round(time.perf_counter() - t0, 1), log_path)

    def _finish(self, e: _Entry, rc: int, seconds: float, log_path: Path) -> None:
        e.seconds, e.returncode = seconds, rc
        step = _checkpoint_step(e.spec.run_dir)
        if self.stopping:
            e.status, e.note = "failed", "interrupted"
        elif rc == 0 and step is not None and step >= e.spec.steps:
            e.status = "resumed" if e.state.action == "resume" else "started"
            e.state = RunState("done", step)
            print(f"    finished {e.spec.name} in {e.seconds:.0f} s", flush=True)
        else:
            e.status = "failed"
            e.note = (f"exit status {rc}" if rc != 0 else
                      f"exited 0 but its latest checkpoint is at step {step} of {e.spec.steps}")
            last = _last_line(log_path)
            print(f"    FAILED {e.spec.name} ({e.note}) after {e.seconds:.0f} s; log {log_path}"
                  + (f"\n      {last}" if last else ""), flush=True)
        self.save()

    def stop(self) -> None:
        """Terminate the running runs (killed after 30 s); they are recorded as failed, interrupted."""
        with self.lock:
            self.stopping = True
            procs = list(self.active.values())
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_sweep(sweep: Sweep, specs: list[RunSpec], *, only: Sequence[str] = (), jobs: int = 1,
              dry_run: bool = False) -> int:
    """Run the plan (see the module docstring): ``jobs`` runs at a time on a thread pool, each a subprocess;
    0 if every selected run completed and the report was written, 1 if not, 130 when interrupted."""
    entries = _plan(sweep, specs, only)
    print("\n".join(_plan_lines(sweep, entries, overrides=dry_run)), flush=True)
    if dry_run:
        return 0
    (sweep.out / "logs").mkdir(parents=True, exist_ok=True)
    previous = _previous_seconds(sweep.out / "sweep.json")
    for e in entries:
        e.seconds = previous.get(e.spec.name) if e.status == "done" else None
    runner = _Runner(sweep, entries, only, jobs)
    runner.save()
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        for future in as_completed([pool.submit(runner.run, e) for e in entries if e.status == "pending"]):
            future.result()
    except BaseException as exc:  # Ctrl-C, or the sweep itself failing: stop its runs and record them
        runner.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        runner.save()
        if not isinstance(exc, KeyboardInterrupt):
            raise
        print(f"rlvr sweep: interrupted; run the same command again to continue ({sweep.out / 'sweep.json'})",
              file=sys.stderr)
        return 130
    pool.shutdown()
    return _conclude(sweep, entries)


def _conclude(sweep: Sweep, entries: list[_Entry]) -> int:
    """Print the counts, write the report over the complete runs, list the failures; the exit status."""
    failed = [e for e in entries if e.status == "failed"]
    complete = [e.spec for e in entries if e.state.action == "done" and e.status != "failed"]
    counts = {s: sum(e.status == s for e in entries) for s in ("done", "started", "resumed", "failed", "excluded")}
    print("\nsweep: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f"; {sweep.out / 'sweep.json'}")
    rc = write_report(sweep, complete) if complete else 0
    if not complete:
        print("no complete run to report on")
    if failed:
        print(f"\n{len(failed)} run(s) failed:", file=sys.stderr)
        for e in failed:
            print(f"  {e.spec.name} ({e.note}): log {sweep.out / 'logs' / (e.spec.name + '.log')}", file=sys.stderr)
        rc = 1
    return rc


def _previous_seconds(path: Path) -> dict[str, float]:
    try:
        runs = json.loads(path.read_text()).get("runs", [])
        return {r["name"]: r["seconds"] for r in runs if isinstance(r, dict) and r.get("seconds") is not None}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


def write_report(sweep: Sweep, specs: Sequence[RunSpec]) -> int:
    """``rlvr compare`` (its own argument parser and ``command``) over ``specs``' run directories into
    ``OUT/report/``; prints the table. 0, or 1 if compare refused."""
    from rlvr import compare

    report = sweep.out / "report"
    argv = [str(s.run_dir) for s in specs] + ["--metrics", ",".join(sweep.compare.metrics), "--out", str(report)]
    for t in sweep.compare.thresholds:
        argv += ["--threshold", t]
    if sweep.compare.label_keys:
        argv += ["--label-keys", ",".join(sweep.compare.label_keys)]
    parser = compare.add_arguments(argparse.ArgumentParser(prog="rlvr compare"))
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        return 1
    print(f"\nreport: rlvr compare over {len(specs)} complete run(s) -> {report}\n", flush=True)
    if compare.command(args) != 0:
        print(f"rlvr sweep: no report (see the error above); the runs are in {sweep.out}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of ``rlvr sweep`` to ``parser`` and return it."""
    parser.add_argument("sweep_file", metavar="SWEEP.yaml", help="the sweep file (format: python -m pydoc rlvr.sweep)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides for every run, after the file's (e.g. steps=5 "
                             "model.name=smollm2-135m-instruct); give them before the options")
    parser.add_argument("--out", metavar="DIR", help="where the runs go (default: the file's out:, else "
                                                     "runs/sweeps/<sweep file stem>)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; run nothing")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="run only the runs PATTERN selects: a glob (*, ?, [) matching the whole name, else a "
                             "substring of it (repeatable: any of them)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="runs at a time (default 1)")
    return parser


def command(args: argparse.Namespace) -> int:
    """Run ``rlvr sweep``: validate, run what is left, write the report. 2 on a bad sweep file or config."""
    try:
        if args.jobs < 1:
            raise SweepError(f"--jobs must be >= 1, got {args.jobs}")
        sweep = load_sweep(args.sweep_file, args.overrides, args.out)
        specs = expand(sweep)
        return run_sweep(sweep, specs, only=args.only, jobs=args.jobs, dry_run=args.dry_run)
    except (SweepError, OSError) as e:
        print(f"rlvr sweep: error: {e}", file=sys.stderr)
        return 2
