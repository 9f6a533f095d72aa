"""The `rlvr` command: help, list, demo and bench run through the real entry points."""

import re
import subprocess
import sys

from rlvr import advantages, losses
from rlvr.cli import DEMO_ESTIMATORS, main


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "rlvr", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("list", "demo", "train", "plot", "bench"):
        assert command in out


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


def test_bench_advantages_small_run(tmp_path, capsys):
    md = tmp_path / "bench.md"
    assert main(["bench", "advantages", "--prompts", "8", "--groups", "4", "--k", "2", "--repeats", "1",
                 "--markdown", str(md)]) == 0
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split(" | ")]
                                         for line in md.read_text().splitlines() if line.startswith("| ")) }
    maxpo = rows["maxpo"]                       # estimator, G, k, ms, µs/group, vs O(G²), vs enum, max |Δ|
    assert maxpo[1:3] == ["4", "2"]
    assert float(maxpo[3]) > 0 and float(maxpo[-1]) <= 1e-9     # timed, and equal to both slow constructions
    assert {"pkpo[none]", "pkpo[loo]", "pkpo[loo_minus_one]", "grpo", "aapo"} <= set(rows)


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
