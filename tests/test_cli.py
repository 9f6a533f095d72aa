"""The `rlvr` command: help, list, demo, train's config errors and plot run through the real entry points."""

import re
import subprocess
import sys

import pytest

from rlvr import advantages, losses
from rlvr.cli import DEMO_ESTIMATORS, build_parser, main

COMMANDS = ("list", "demo", "train", "plot", "eval", "compare", "sweep", "export")
SCREEN = 40        # lines of an 80-column terminal screen


def _subcommands(parser):
    return next(a for a in parser._subparsers._group_actions).choices   # argparse keeps them only here


def test_help_lists_exactly_the_commands_and_fits_on_a_screen(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    parser = build_parser()
    out = parser.format_help()
    assert tuple(_subcommands(parser)) == COMMANDS          # benchmarks and studies are scripts, not commands
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", out, re.M), command
    assert len(out.splitlines()) <= SCREEN


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_fits_on_a_screen(monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "80")
    text = _subcommands(build_parser())[command].format_help()
    assert text.startswith(f"usage: rlvr {command}") and len(text.splitlines()) <= SCREEN, text


def test_train_config_errors_exit_2_naming_the_key(tmp_path, capsys):
    """In-process twin of test_train_e2e's subprocess test: bad keys and values, and an algorithm check that fails
    before anything loads or is written."""
    assert main(["train", "algo.nope=1"]) == 2
    assert "algo.nope" in capsys.readouterr().err
    assert main(["train", "configs/tiny_arith/grpo.yaml", "rollout.group_size=many"]) == 2
    assert "rollout.group_size" in capsys.readouterr().err
    assert main(["train", "configs/tiny_arith/grpo.yaml", "algo.advantage=maxpo", "--run-dir", str(tmp_path / "r")]) == 2
    assert "algo.k" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_unknown_command_fails_with_usage():
    proc = subprocess.run([sys.executable, "-m", "rlvr", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_list_names_every_registered_algorithm(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in advantages.names() + losses.names() + list(losses.AGGREGATIONS):
        assert name in out


def test_demo_prints_a_row_per_estimator_with_learning(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["demo", "--problems", "8", "--answers", "4", "--steps", "40", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    labels = [lbl for lbl, _, _ in DEMO_ESTIMATORS]
    rows = [line.strip() for line in out.splitlines() if any(line.strip().startswith(lbl + "  ") for lbl in labels)]
    assert len(rows) == len(DEMO_ESTIMATORS)
    for row in rows:
        cells = re.split(r"\s{2,}", row)                 # label, p@1 start, p@1 end, p@4 start, p@4 end, s/run
        p1_start, p1_end, p4_start, p4_end = (float(c.split("±")[0]) for c in cells[1:5])
        assert p1_end > p1_start and p4_end > p4_start   # every estimator learns on this toy in 40 steps


def test_plot_writes_pngs_from_a_metrics_file(tmp_path, capsys):
    import json

    from rlvr.cli import main

    rows = [{"step": 0, "eval/accuracy": 0.2}] + [
        {"step": s, "reward/mean": 0.1 * s, "reward/accuracy": 0.1 * s, "policy/entropy": 1.0 / s,
         "response/length_mean": 10.0 + s} for s in range(1, 4)] + [{"step": 3, "eval/accuracy": 0.4}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plot", str(tmp_path)]) == 0
    written = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert written == ["accuracy.png", "curves.png", "entropy.png", "response_length.png", "reward.png"]
    assert all((tmp_path / "plots" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in written)
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "no metrics file" in capsys.readouterr().err
