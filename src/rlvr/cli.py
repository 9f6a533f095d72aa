"""The `rlvr` command line: `rlvr <command> ...`; `rlvr --help` lists the commands."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from rlvr import __version__

# The demo's line-up: (label, advantage, advantage kwargs). Every entry trains with the `reinforce` loss.
DEMO_ESTIMATORS = [
    ("grpo", "grpo", {}),
    ("dr_grpo", "dr_grpo", {}),
    ("rloo", "rloo", {}),
    ("gpg", "gpg", {}),
    ("aapo", "aapo", {}),
    ("pkpo k=4", "pkpo", {"k": 4, "baseline": "loo_minus_one"}),
    ("maxpo k=4", "maxpo", {"k": 4}),
    ("passk k=4", "passk_training", {"k": 4}),
]


def _cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from rlvr import advantages, kl, losses

    def first_line(fn) -> str:
        """The docstring's summary line, without its trailing shape note ('   [P, G] -> [P, G]')."""
        line = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        return line.split("   ")[0].rstrip(".")

    def yes(flag: bool) -> str:
        return "yes" if flag else ""

    def table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table:
        t = Table(title=title)
        for col in columns:
            t.add_column(col)
        for row in rows:
            t.add_row(*row)
        return t

    console = Console()
    specs = [advantages.spec(n) for n in advantages.names()]
    console.print(table("advantage estimators (rlvr.advantages)",
                        ("name", "ref samples", "k", "values", "centred", "summary"),
                        [(s.name, yes(s.needs_reference_samples), yes(s.takes_k), yes(s.needs_values), yes(s.centred),
                          first_line(s.fn)) for s in specs]))
    specs = [losses.spec(n) for n in losses.names()]
    console.print(table("policy losses (rlvr.losses)", ("name", "old lp", "behav lp", "aggregation", "summary"),
                        [(s.name, yes(s.needs_old_logprobs), yes(s.needs_behavior_logprobs), s.default_aggregation,
                          first_line(s.fn)) for s in specs]))
    console.print("ref samples: needs rewards of reference-model samples; k: takes the max@k order; values: needs a "
                  "value model (critic) and gives per-token advantages; centred: rows sum to 0. old lp / behav lp: "
                  "needs π_old / behaviour log-probs.")
    console.print(f"aggregation modes: {', '.join(losses.AGGREGATIONS)}")
    console.print(f"KL estimators: {', '.join(kl.names())}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from rlvr import bandit

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    console = Console()
    console.print(f"[bold]rlvr {__version__} demo[/bold]: every advantage estimator trains the same exactly "
                  f"solvable policy ({args.problems} problems × {args.answers} answers, one right answer each, "
                  f"initial p(right) in [0.02, 0.3]) with the reinforce loss, G={args.group_size}, "
                  f"{args.prompts} prompts/step, {args.steps} steps, {args.seeds} seeds. "
                  "pass@1 and pass@4 are exact (closed form), not sampled.")
    table = Table(title="exact pass@k of the trained policy (mean±sd over seeds)", box=box.SIMPLE_HEAD)
    table.caption = "pkpo: baseline loo_minus_one; passk: passk_training"
    for col in ("estimator", "pass@1 start", "pass@1 end", "pass@4 start", "pass@4 end", "s/run"):
        table.add_column(col, justify="right" if col != "estimator" else "left", no_wrap=True)
    for label, name, kwargs in DEMO_ESTIMATORS:
        p1s, p1e, p4s, p4e, secs = [], [], [], [], []
        for seed in range(args.seeds):
            problems = bandit.make_problems(args.problems, args.answers, seed=seed)
            t0 = time.perf_counter()
            res = bandit.train(problems, advantage=name, advantage_kwargs=kwargs, steps=args.steps,
                               prompts_per_step=args.prompts, group_size=args.group_size, lr=args.lr,
                               k_eval=4, seed=1000 + seed)
            secs.append(time.perf_counter() - t0)
            p1s.append(res.pass_at_1[0]), p1e.append(res.pass_at_1[-1])
            p4s.append(res.pass_at_k[0]), p4e.append(res.pass_at_k[-1])

        def fmt(xs: list[float]) -> str:
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            return f"{statistics.mean(xs):.3f}±{sd:.3f}"

        table.add_row(escape(label), fmt(p1s), fmt(p1e), fmt(p4s), fmt(p4e), f"{statistics.mean(secs):.2f}")
    console.print(table)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")            # the datasets library's cache notices
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from rlvr.config import ConfigError, load_config

    path, overrides = None, list(args.overrides)
    if overrides and "=" not in overrides[0]:
        path = overrides.pop(0)
    try:
        if args.resume:
            if path is not None:
                raise ConfigError("--resume takes the run's own config.yaml; give only key=value overrides")
            run_cfg = os.path.join(args.resume, "config.yaml")
            cfg = load_config(run_cfg, overrides)
        else:
            cfg = load_config(path, overrides)
    except ConfigError as e:
        print(f"rlvr train: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        from rlvr.config import to_dict
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    launched = _launch_ranks(cfg, args)
    if launched is not None:
        return launched
    from transformers.utils import logging as hf_logging

    from rlvr.trainer import train

    hf_logging.set_verbosity_error()  # weight-loading bars and tokenizer notices are not the run's output
    hf_logging.disable_progress_bar()
    try:
        train(cfg, run_dir=args.resume or args.run_dir, resume=bool(args.resume))
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"rlvr train: error: {e}", file=sys.stderr)
        return 2
    return 0


def _launch_ranks(cfg: Any, args: argparse.Namespace) -> int | None:
    """With ``dist.world_size`` N > 1 and no launcher around this process: run this same command as N learner ranks
    through torch.distributed.run on this machine and return its exit code. None when this process is one of the
    ranks (or the only one): under a launcher of the user's own (torchrun --nnodes ...) its WORLD_SIZE rules."""
    import os
    import subprocess

    from rlvr.trainer.dist import launched_by_torchrun
    from rlvr.trainer.run import default_run_dir

    n = cfg.dist.world_size
    if launched_by_torchrun() or n == 1:
        if launched_by_torchrun() and n not in (1, int(os.environ["WORLD_SIZE"])):
            print(f"rlvr train: config error: dist.world_size={n}, but the launcher started "
                  f"WORLD_SIZE={os.environ['WORLD_SIZE']} ranks", file=sys.stderr)
            return 2
        return None
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "rlvr",
           "train", *args.overrides]
    if args.resume:
        cmd += ["--resume", args.resume]
    else:  # every rank must write to the same run directory: fix it before the ranks start
        cmd += ["--run-dir", str(args.run_dir or default_run_dir(cfg))]
    return subprocess.call(cmd)


def _cmd_plot(args: argparse.Namespace) -> int:
    from rlvr.plot import plot_run

    try:
        paths = plot_run(args.run_dir, args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"rlvr plot: error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


def _summary(module: Any) -> str:
    """A module docstring's first paragraph, filled to the terminal, and where the rest is (``--help`` fits on a
    screen; the reference is ``pydoc``)."""
    import shutil
    import textwrap

    first = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
    width = max(40, min(100, shutil.get_terminal_size().columns) - 2)
    return f"{textwrap.fill(first, width)}\n\nReference: python -m pydoc {module.__name__}"


def _module_command(sub: Any, name: str, module: Any, help: str) -> None:
    """A subcommand whose arguments (``add_arguments``), action (``command``) and description (the docstring's
    first paragraph, with where the rest is) live in ``module``."""
    p = sub.add_parser(name, help=help, description=_summary(module),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(p)
    p.set_defaults(func=module.command)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="train an exactly solvable toy policy with every estimator and print exact pass@k")
    p.add_argument("--problems", type=int, default=64)
    p.add_argument("--answers", type=int, default=6)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--prompts", type=int, default=16, help="prompts per step")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seeds", type=int, default=3)
    p.set_defaults(func=_cmd_demo)


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="RL-train a model; no arguments runs the embedded default (SmolLM2 + LoRA, "
                                     "GRPO on arithmetic, CPU)",
                       description="rlvr train [CONFIG.yaml] [section.key=value ...]. Without a config the defaults "
                                   "of rlvr.config.TrainConfig are used; overrides are YAML scalars.")
    p.add_argument("overrides", nargs="*", metavar="CONFIG_OR_OVERRIDE",
                   help="an optional YAML config first, then dotted overrides such as algo.advantage=maxpo algo.k=4")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("--run-dir", help="where to write the run (default runs/<time>-<model>-<advantage>)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_cmd_train)


def _add_plot(sub: Any) -> None:
    p = sub.add_parser("plot", help="write PNG curves (reward, accuracy, KL, entropy, length) of a run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", help="output directory (default RUN_DIR/plots)")
    p.set_defaults(func=_cmd_plot)


def build_parser() -> argparse.ArgumentParser:
    """The ``rlvr`` parser: one subcommand per command (benchmarks and studies are scripts outside the package:
    ``python -m benchmarks``, ``python -m studies``)."""
    parser = argparse.ArgumentParser(prog="rlvr", description="Reinforcement learning with verifiable rewards.")
    parser.add_argument("--version", action="version", version=f"rlvr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("list", help="list the registered advantage estimators, losses, aggregations and KL estimators")
    p.set_defaults(func=_cmd_list)
    _add_demo(sub)
    _add_train(sub)
    _add_plot(sub)
    from rlvr import compare, export, sweep
    from rlvr.eval import command as eval_command

    _module_command(sub, "eval", eval_command, "evaluate a model, run or checkpoint: pass@k, maj@k, mean@n with "
                                               "95%% CIs")
    _module_command(sub, "compare", compare, "compare runs: final/best metrics, steps to a threshold, seeds pooled "
                                             "with 95%% t-intervals, overlaid curves")
    _module_command(sub, "sweep", sweep, "run a study from a sweep file (variants × grid × seeds of rlvr train), "
                                         "resumably, then the rlvr compare report")
    _module_command(sub, "export", export, "write a run's trained model (LoRA merged) as a Hugging Face folder for "
                                           "transformers and vLLM")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
