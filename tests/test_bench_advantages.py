"""The benchmark's slow reference constructions equal the registry estimators, and `run` works at tiny sizes."""

import argparse
import math

import pytest
import torch
from rich.console import Console

from rlvr import advantages as adv
from rlvr.bench import advantages as bench

TOL = 1e-9
GROUPS = range(3, 9)
KINDS = ("random", "tied", "binary")


def _rewards(kind: str, G: int, seed: int) -> torch.Tensor:
    """[3, G] float64 rewards: U(0, 1), few levels (ties), or 0/1; one constant row in the tied case."""
    gen = torch.Generator().manual_seed(1000 * seed + G)
    if kind == "random":
        return torch.rand(3, G, generator=gen, dtype=torch.float64)
    if kind == "tied":
        r = torch.randint(0, 3, (3, G), generator=gen).to(torch.float64) * 0.5 - 0.25
        r[2] = 0.7                                                   # a constant group
        return r
    return (torch.rand(3, G, generator=gen) < 0.4).to(torch.float64)


def _k_range(name: str, G: int) -> range:
    return {"maxpo": range(1, G), "none": range(1, G + 1), "loo": range(1, G),
            "loo_minus_one": range(2, G + 1)}[name]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.to(torch.float64) - b).abs().max())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("G", GROUPS)
def test_maxpo_slow_constructions_equal_fast(G, kind):
    r = _rewards(kind, G, seed=1)
    for k in _k_range("maxpo", G):
        fast = adv.maxpo(r, k=k)
        quad = bench.maxpo_l2o_quadratic(r, k)
        enum = bench.maxpo_enumeration(r, k)
        assert quad.dtype == enum.dtype == torch.float64
        assert _max_diff(fast, quad) <= TOL, (G, kind, k)
        assert _max_diff(fast, enum) <= TOL, (G, kind, k)


@pytest.mark.parametrize("baseline", bench.PKPO_BASELINES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("G", GROUPS)
def test_pkpo_slow_constructions_equal_fast(G, kind, baseline):
    r = _rewards(kind, G, seed=2)
    for k in _k_range(baseline, G):
        fast = adv.pkpo(r, k=k, baseline=baseline)
        assert _max_diff(fast, bench.pkpo_quadratic(r, k, baseline)) <= TOL, (G, kind, k)
        assert _max_diff(fast, bench.pkpo_enumeration(r, k, baseline)) <= TOL, (G, kind, k)


def test_maxpo_quadratic_k1_is_rloo_and_chunking_does_not_matter():
    r = _rewards("random", 7, seed=3)
    assert _max_diff(adv.rloo(r), bench.maxpo_l2o_quadratic(r, 1)) <= TOL
    whole = bench.maxpo_l2o_quadratic(r, 3)
    one_row_chunks = bench.maxpo_l2o_quadratic(r, 3, chunk_elems=1)
    assert _max_diff(whole, one_row_chunks) <= 1e-15                 # matmul blocking may differ per chunk size
    assert _max_diff(bench.pkpo_enumeration(r, 3, "loo", chunk_elems=1), bench.pkpo_enumeration(r, 3, "loo")) <= 1e-15


def test_slow_constructions_accept_float32_and_compute_in_float64():
    r64 = _rewards("random", 6, seed=4)
    r32 = r64.to(torch.float32)
    out = bench.maxpo_l2o_quadratic(r32, 2)
    assert out.dtype == torch.float64
    assert _max_diff(adv.maxpo(r32.to(torch.float64), k=2), out) <= TOL


def test_slow_constructions_reject_bad_input():
    r = _rewards("random", 5, seed=5)
    with pytest.raises(ValueError, match="k"):
        bench.maxpo_l2o_quadratic(r, 5)                              # needs k <= G − 1
    with pytest.raises(ValueError, match="k"):
        bench.pkpo_quadratic(r, 1, "loo_minus_one")                  # needs k >= 2
    with pytest.raises(ValueError, match="baseline"):
        bench.pkpo_enumeration(r, 2, "mean")
    with pytest.raises(ValueError, match="G <= 16"):
        bench.maxpo_enumeration(torch.rand(1, 17, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match=r"\[P, G\]"):
        bench.pkpo_quadratic(r[0], 2, "none")
    with pytest.raises(ValueError, match="finite"):
        bench.maxpo_enumeration(torch.tensor([[0.0, math.nan, 1.0]]), 1)


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
    expected = (set(adv.names()) - {"pkpo"} - token_level) | {f"pkpo[{b}]" for b in bench.PKPO_BASELINES}
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
    md = bench.to_markdown(rows, bench.machine_info())
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
