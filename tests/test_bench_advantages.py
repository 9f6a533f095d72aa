"""The advantage benchmark (``python -m benchmarks advantages``, ``make bench``): its rows at tiny sizes, the
renderers and the command. That its slow constructions equal the registry is tests/test_maxk_references.py."""

import argparse
import math

import pytest
import torch
from rich.console import Console

from benchmarks import advantages as bench
from benchmarks.__main__ import main
from benchmarks.cli import machine_info
from maxk_references import PKPO_BASELINES
from rlvr import advantages as adv

TOL = 1e-9


EXPECTED_KEYS = {
    "estimator", "G", "k", "P", "ms", "us_per_group", "repeats",
    "quadratic_ms", "quadratic_repeats", "speedup_quadratic", "diff_quadratic",
    "enumeration_ms", "enumeration_repeats", "speedup_enumeration", "diff_enumeration",
    "max_abs_diff", "ok",
}


def test_run_tiny():
    threads = torch.get_num_threads()
    rows = bench.run(P=4, groups=(4, 8), k=2, repeats=1)
    assert torch.get_num_threads() == threads                        # restored
    labels = {r["estimator"] for r in rows}
    token_level = {n for n in adv.names() if adv.spec(n).needs_values}        # gae: needs values [B, T]
    assert "gae" in token_level
    expected = (set(adv.names()) - {"pkpo"} - token_level) | {f"pkpo[{b}]" for b in PKPO_BASELINES}
    assert labels == expected
    assert len(rows) == 2 * len(expected)
    for row in rows:
        assert set(row) == EXPECTED_KEYS
        assert row["G"] in (4, 8) and row["P"] == 4 and row["repeats"] == 1
        assert math.isfinite(row["ms"]) and row["ms"] > 0
        assert math.isfinite(row["us_per_group"]) and row["us_per_group"] > 0
        assert row["ok"]
        if row["estimator"] == "maxpo" or row["estimator"].startswith("pkpo["):
            assert row["k"] == 2
            for kind in ("quadratic", "enumeration"):
                assert math.isfinite(row[f"{kind}_ms"]) and row[f"{kind}_ms"] > 0
                assert row[f"{kind}_repeats"] >= 1
                assert math.isfinite(row[f"speedup_{kind}"])
                assert 0.0 <= row[f"diff_{kind}"] <= TOL
        else:
            assert row["quadratic_ms"] is None and row["max_abs_diff"] is None
    assert {r["k"] for r in rows if r["estimator"] == "passk_training"} == {2}
    assert {r["k"] for r in rows if r["estimator"] == "grpo"} == {None}


def test_renderers_and_command(tmp_path, capsys):
    rows = bench.run(P=2, groups=(4,), k=8, repeats=1)             # k capped: 3 for maxpo, 4 for pkpo[none]
    caps = {r["estimator"]: r["k"] for r in rows}
    assert caps["maxpo"] == 3 and caps["pkpo[loo]"] == 3
    assert caps["pkpo[none]"] == 4 and caps["pkpo[loo_minus_one]"] == 4 and caps["passk_training"] == 4
    md = bench.to_markdown(rows, machine_info())
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table_lines) == 2 + len(rows)
    assert "vs O(G²) ×" in table_lines[0] and "max \\|Δ\\|" in table_lines[0]   # pipes escaped
    assert {line.replace("\\|", "").count("|") for line in table_lines} == {9}  # 8 columns on every line
    table = bench.format_table(rows)
    assert table.row_count == len(rows)
    console = Console(record=True, width=160)
    console.print(table)
    assert "pkpo[loo_minus_one]" in console.export_text()              # brackets are not rich markup

    parser = bench.add_arguments(argparse.ArgumentParser())
    path = tmp_path / "bench.md"
    args = parser.parse_args(["--prompts", "2", "--groups", "4,5", "--k", "2", "--repeats", "1",
                              "--markdown", str(path)])
    assert args.groups == (4, 5)
    assert bench.command(args) == 0
    assert "| maxpo | 5 | 2 |" in path.read_text()
    assert "maxpo" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["--groups", "1,8"])


def test_make_bench_command_small_run(tmp_path):
    """What ``make bench`` runs (``python -m benchmarks advantages``), at a tiny size, through the module's main."""
    md = tmp_path / "bench.md"
    assert main(["advantages", "--prompts", "8", "--groups", "4", "--k", "2", "--repeats", "1",
                 "--markdown", str(md)]) == 0
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split(" | ")]
                                         for line in md.read_text().splitlines() if line.startswith("| "))}
    maxpo = rows["maxpo"]                       # estimator, G, k, ms, µs/group, vs O(G²), vs enum, max |Δ|
    assert maxpo[1:3] == ["4", "2"]
    assert float(maxpo[3]) > 0 and float(maxpo[-1]) <= 1e-9     # timed, and equal to both slow constructions
    assert {"pkpo[none]", "pkpo[loo]", "pkpo[loo_minus_one]", "grpo", "aapo"} <= set(rows)
