"""The studies (``python -m studies``): sweeps built by hand in tmp_path (sweep.json + run dirs), no training; every
figure checked by hand against the tables' data (Estimates and counts), and the Markdown against that data."""
from __future__ import annotations

import json
import math

import pytest
from scipy.stats import t as student_t

from rlvr.compare import load_run
from studies import cells as C
from studies import reports as R
from studies.__main__ import main
from test_compare import make_run

T2 = float(student_t.ppf(0.975, 1))  # 2 seeds: 1 degree of freedom; for values a, b: h = T2·|a − b|/2


def sweep(root, runs):
    """runs: list of (variant, grid, seed, rows, overrides). Writes the run dirs and sweep.json."""
    entries = []
    for variant, grid, seed, rows, overrides in runs:
        name = "__".join([variant, *(f"{k}={v}" for k, v in grid.items()), f"seed={seed}"])
        if rows is not None:
            make_run(root, name, rows, seed=seed, **overrides)
        entries.append({"name": name, "variant": variant, "grid": grid, "seed": seed, "status": "done"})
    (root / "sweep.json").write_text(json.dumps({"runs": entries}))
    return root


def eval_rows(accs, every=1, samples_per_step=8, rewards=None, **extra):
    """Eval at step 0 and every `every` steps (accs), a train row each step with rollout/samples."""
    steps = (len(accs) - 1) * every
    rows = [{"step": 0, "eval/accuracy": accs[0]}]
    for s in range(1, steps + 1):
        r = rewards[s - 1] if rewards is not None else 0.5
        rows.append({"step": s, "reward/mean": r, "rollout/samples": samples_per_step, **extra})
        if s % every == 0:
            rows.append({"step": s, "eval/accuracy": accs[s // every]})
    return rows


def run_with(tmp_path, rows):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return load_run(make_run(tmp_path, "r", rows))


def assert_estimate(e, mean, half_width=None, n=None):
    """An Estimate's mean, half-width (None: no interval) and number of seeds."""
    assert e.mean == pytest.approx(mean, abs=1e-12)
    if half_width is None:
        assert e.half_width is None
    else:
        assert e.half_width == pytest.approx(half_width, rel=1e-9, abs=1e-12)
    if n is not None:
        assert e.n == n


# ------------------------------------------------------------------------------------------------ per-run measures

def test_collapsed_is_a_one_sided_welch_test(tmp_path):
    down = [0.5, 0.52, 0.48, 0.5, 0.51] + [0.1, 0.12, 0.09, 0.1, 0.11, 0.1, 0.08, 0.12, 0.1, 0.09]
    assert C.collapsed(run_with(tmp_path / "a", eval_rows([0.4, 0.1], every=15, rewards=down))) is True
    up = list(reversed(down))
    assert C.collapsed(run_with(tmp_path / "b", eval_rows([0.4, 0.1], every=15, rewards=up))) is False
    # a small dip inside the noise is not a collapse: p = 0.30 here (scipy's Welch test on the same numbers)
    flat = [0.3, 0.5, 0.2, 0.6, 0.4] + [0.35, 0.45, 0.2, 0.5, 0.3, 0.4, 0.3, 0.45, 0.25, 0.35]
    from scipy.stats import ttest_ind
    p = ttest_ind(flat[5:], flat[:5], equal_var=False, alternative="less").pvalue
    assert 0.05 < p < 0.5
    assert C.collapsed(run_with(tmp_path / "c", eval_rows([0.4, 0.1], every=15, rewards=flat))) is False
    assert C.collapsed(run_with(tmp_path / "d", eval_rows([0.4, 0.4], every=15, rewards=[0.3] * 15))) is False
    assert C.collapsed(run_with(tmp_path / "e", eval_rows([0.4, 0.4], every=14, rewards=[0.3] * 14))) is None


def test_windows_and_means(tmp_path):
    run = run_with(tmp_path, eval_rows([0.4, 0.2], every=6, rewards=[1, 2, 3, 4, 5, 6],
                                       **{"policy/nll_neg_over_pos": 2.0}))
    assert C.window_mean(run, "reward/mean", first=2) == 1.5
    assert C.window_mean(run, "reward/mean", last=3) == 5.0
    assert C.lowest_window(run, "reward/mean", width=5) == 3.0
    assert C.lowest_window(run, "reward/mean", width=10) == 3.5  # shorter series: its mean
    assert C.mean_over(run, "policy/nll_neg_over_pos") == 2.0
    assert C.mean_over(run, "nope") is None
    assert C.eval_start_end(run) == (0.4, 0.2)


def test_budget_and_first_reach(tmp_path):
    # 16 samples a step (policy + reference), eval every 2 steps
    run = run_with(tmp_path, eval_rows([0.1, 0.3, 0.5, 0.45], every=2, samples_per_step=16))
    assert run.samples_at(4) == 64
    assert C.value_at_budget(run, "eval/accuracy", 64) == 0.5     # step 4 = 64 samples
    assert C.value_at_budget(run, "eval/accuracy", 63) == 0.3     # step 2 = 32 samples is the last within
    assert C.first_reach(run, "eval/accuracy", 0.45) == (4, 64)
    assert C.first_reach(run, "eval/accuracy", 0.6) is None
    assert C.value_at_step(run, "eval/accuracy", 0) == 0.1 and C.value_at_step(run, "eval/accuracy", 4) == 0.5
    assert C.value_at_step(run, "eval/accuracy", 3) is None                        # no evaluation at step 3


def test_cells_group_the_plans_seeds_and_count_missing_runs(tmp_path):
    root = sweep(tmp_path, [("a", {"x": 1}, 0, eval_rows([0.1, 0.2]), {}), ("a", {"x": 1}, 1, None, {}),
                            ("a", {"x": 2}, 0, eval_rows([0.1, 0.3]), {}), ("b", {"x": 1}, 0, [], {})])
    cells = C.load_cells(root)
    assert [(c.variant, c.grid, len(c.runs), c.planned) for c in cells] == [
        ("a", {"x": 1}, 1, 2), ("a", {"x": 2}, 1, 1), ("b", {"x": 1}, 0, 1)]   # b's run logged nothing: missing
    with pytest.raises(FileNotFoundError, match="no sweep.json"):
        C.load_cells(tmp_path / "nowhere")


def test_a_run_short_of_the_plans_steps_is_missing(tmp_path):
    """A run still going (or interrupted, or failed) counts as missing until it reaches the plan's steps."""
    root = sweep(tmp_path, [("a", {}, 0, eval_rows([0.1, 0.2, 0.3]), {}), ("a", {}, 1, eval_rows([0.1, 0.2]), {})])
    plan = json.loads((root / "sweep.json").read_text())
    for entry in plan["runs"]:
        entry["steps"] = 2
    (root / "sweep.json").write_text(json.dumps(plan))
    (cell,) = C.load_cells(root)
    assert (len(cell.runs), cell.planned) == (1, 2) and cell.runs[0].path.name == "a__seed=0"


# ------------------------------------------------------------------------------------------------------- reports

def test_aapo_table_figures(tmp_path):
    root = sweep(tmp_path, [
        # GRPO: 8 samples a step, 4 steps: budget 32; finals 0.5 and 0.3 -> target 0.4
        ("grpo", {}, 0, eval_rows([0.2, 0.3, 0.4, 0.45, 0.5]), {}),
        ("grpo", {}, 1, eval_rows([0.2, 0.25, 0.3, 0.3, 0.3]), {}),
        # AAPO: 16 samples a step (reference included): equal budget is step 2
        ("aapo", {}, 0, eval_rows([0.2, 0.4, 0.6, 0.6, 0.7], samples_per_step=16, **{
            "reward/frac_zero_std_groups": 0.5, "adv/frac_zero_std_groups_with_signal": 0.25}),
         {"algo__advantage": "aapo"}),
        ("aapo", {}, 1, eval_rows([0.2, 0.3, 0.35, 0.5, 0.5], samples_per_step=16, **{
            "reward/frac_zero_std_groups": 0.75, "adv/frac_zero_std_groups_with_signal": 0.5}),
         {"algo__advantage": "aapo"}),
        ("aapo", {}, 2, None, {}),  # planned, never ran
    ])
    t = R.aapo_table(C.load_cells(root))
    assert t["target"] == pytest.approx(0.4) and t["budget"] == 32
    grpo, aapo = t["rows"]
    assert (grpo["variant"], grpo["seeds"], grpo["samples_per_step"]) == ("grpo", (2, 2), 8)
    assert (aapo["variant"], aapo["seeds"], aapo["samples_per_step"]) == ("aapo", (2, 3), 16)
    assert_estimate(grpo["start"], 0.2, 0.0)
    assert_estimate(grpo["final"], 0.4, T2 * 0.1)                  # finals 0.5, 0.3
    assert_estimate(aapo["final"], 0.6, T2 * 0.1)                  # finals 0.7, 0.5
    assert_estimate(aapo["at_budget"], 0.475, T2 * 0.125)          # at 32 samples: 0.6, 0.35
    # steps to 0.4: grpo seed 0 at 2, seed 1 never; aapo at 1 and 3 -> samples 16 and 48
    assert grpo["reached"] == (1, 2) and aapo["reached"] == (2, 2)
    assert_estimate(grpo["steps_to_target"], 2.0, None, n=1)
    assert grpo["samples_to_target"].values == (16.0,)
    assert_estimate(aapo["steps_to_target"], 2.0, T2 * 1.0)
    assert aapo["samples_to_target"].values == (16.0, 48.0)
    assert_estimate(aapo["zero_std"], 0.625, T2 * 0.125)
    assert_estimate(aapo["margin_only"], 0.375, T2 * 0.125)
    assert grpo["zero_std"].values == () and R.fmt(grpo["zero_std"], 2) == "n/a"      # never logged
    lines, written = R.aapo_report(C.load_cells(root), None)
    assert written == [] and "= 0.400" in lines[0] and "32 (reference" in lines[0]
    md = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in lines if r.startswith("| ")}
    assert md["aapo"][:2] == ["2/3", "16"]                         # the Markdown shows the same data
    assert md["aapo"][3] == R.fmt(aapo["final"], 2) and md["grpo"][5] == "2.0 (reached 1/2)"
    assert md["aapo"][7:] == [R.fmt(aapo["zero_std"], 2), R.fmt(aapo["margin_only"], 2)]


def test_maxpo_table_picks_pass_at_K(tmp_path):
    def rows(p, entropy=None):
        train = [{"step": s, "reward/mean": 0.1 if s < 5 else 0.1 + 0.01 * s, "rollout/samples": 4,
                  **({"policy/entropy": entropy[s]} if entropy else {})} for s in range(16)]
        return train + [{"step": 16, **{f"eval/pass@{k}": v for k, v in zip((1, 2, 4), p)}}]
    root = sweep(tmp_path, [
        ("grpo", {}, 0, rows([0.30, 0.40, 0.50]), {}),
        ("maxpo_k2", {}, 0, rows([0.25, 0.45, 0.55]), {"algo__advantage": "maxpo", "algo__k": 2}),
        ("maxpo_k4", {}, 0, rows([0.20, 0.42, 0.60], [0.2] * 6 + [0.4] * 10),
         {"algo__advantage": "maxpo", "algo__k": 4}),
    ])
    t = R.maxpo_table(C.load_cells(root))
    assert t["metrics"] == ["eval/pass@1", "eval/pass@2", "eval/pass@4"]
    got = [(r["estimator"], r["k"], [r["pass"][m].mean for m in t["metrics"]],
            None if r["pass_K"] is None else r["pass_K"].mean) for r in t["rows"]]
    assert got == [("grpo", None, [0.30, 0.40, 0.50], None), ("maxpo", 2, [0.25, 0.45, 0.55], 0.45),
                   ("maxpo", 4, [0.20, 0.42, 0.60], 0.60)]
    # reward: steps 0-4 are 0.1; the last 10 (steps 6-15) are 0.1 + 0.01·s, mean 0.1 + 0.105 = 0.205
    assert all(r["reward"] == pytest.approx((0.1, 0.205)) for r in t["rows"])
    assert [r["entropy"] for r in t["rows"]][:2] == [None, None]
    assert t["rows"][2]["entropy"] == pytest.approx((0.2, 0.4))
    lines, written = R.maxpo_report(C.load_cells(root), tmp_path / "img")
    assert lines[0].split(" | ")[3:7] == ["pass@1", "pass@2", "pass@4", "pass@K"]
    assert written == [tmp_path / "img" / "study_maxpo.png"] and written[0].stat().st_size > 1000
    assert t["start"] is None and not any("start" in line for line in lines)


def test_maxpo_start_row_pools_the_runs_that_evaluated_at_step_0(tmp_path):
    def rows(start, end):
        first = [{"step": 0, **{f"eval/pass@{k}": v for k, v in zip((1, 2), start)}}] if start else []
        return first + [{"step": s, "reward/mean": 0.1, "rollout/samples": 4} for s in range(1, 5)] + \
            [{"step": 4, **{f"eval/pass@{k}": v for k, v in zip((1, 2), end)}}]
    root = sweep(tmp_path, [
        ("grpo", {}, 0, rows([0.10, 0.20], [0.5, 0.6]), {}),
        ("grpo", {}, 1, rows([0.14, 0.30], [0.5, 0.6]), {}),
        ("maxpo_k2", {}, 0, rows(None, [0.4, 0.7]), {"algo__advantage": "maxpo", "algo__k": 2}),
    ])
    t = R.maxpo_table(C.load_cells(root))
    assert_estimate(t["start"]["eval/pass@1"], 0.12, T2 * 0.02, n=2)
    assert_estimate(t["start"]["eval/pass@2"], 0.25, T2 * 0.05, n=2)
    assert [r["pass"]["eval/pass@1"].mean for r in t["rows"]] == [0.5, 0.4]   # the end, not the start
    lines, written = R.maxpo_report(C.load_cells(root), tmp_path / "img")
    assert lines[2].split(" | ")[:4] == ["| *start (no training)*", "", "2 evals", f"0.120 ± {T2 * 0.02:.3f}"]
    assert written[0].stat().st_size > 1000


def test_async_table_rows(tmp_path):
    down = [0.5] * 5 + [0.1] * 10
    flat = [0.3, 0.5, 0.2, 0.6, 0.4] + [0.35, 0.45, 0.2, 0.5, 0.3, 0.4, 0.3, 0.45, 0.25, 0.35]
    extra = {"policy/nll_neg_over_pos": 3.0, "async/staleness": 1.5, "loss_stats/clip_frac": 0.02}
    root = sweep(tmp_path, [
        ("current_policy", {"rollout.max_staleness": 8}, 0, eval_rows([0.4, 0.1], 15, rewards=down, **extra), {}),
        ("current_policy", {"rollout.max_staleness": 8}, 1, eval_rows([0.4, 0.3], 15, rewards=flat, **extra), {}),
        ("asympo", {"rollout.max_staleness": 0}, 0, eval_rows([0.4, 0.45], 15, rewards=flat), {}),
    ])
    rows = R.async_table(C.load_cells(root))
    assert [(r["objective"], r["eta"], len(r["cell"].runs)) for r in rows] == [("asympo", 0, 1),
                                                                              ("current_policy", 8, 2)]  # by η
    asympo, cp = rows
    assert_estimate(cp["final"], 0.2, T2 * 0.1)
    assert_estimate(cp["change"], -0.2, T2 * 0.1)
    assert cp["collapses"] == (1, 2) and cp["below_start"] == (2, 2)   # one reward collapse, both ended lower
    low_flat = min(sum(flat[i:i + 5]) / 5 for i in range(11))         # 0.34; the collapsed run's is 0.1
    assert_estimate(cp["lowest"], (0.1 + low_flat) / 2, T2 * abs(low_flat - 0.1) / 2)
    assert_estimate(cp["nll_mean"], 3.0, 0.0)
    assert_estimate(cp["staleness"], 1.5, 0.0)
    assert_estimate(cp["clipped"], 0.02, 0.0)
    assert asympo["collapses"] == (0, 1) and asympo["below_start"] == (0, 1) and not asympo["nll_mean"].values
    assert not asympo["clipped"].values                                # a loss without a clip logs none
    lines, written = R.async_report(C.load_cells(root), tmp_path / "img")
    md = [[c.strip() for c in r.split("|")[1:-1]] for r in lines[2:]]
    assert md[1][:7] == ["current_policy", "8", "2", R.fmt(cp["final"], 2), R.fmt(cp["change"], 2), "1/2", "2/2"]
    assert md[0][8] == "n/a" and md[0][11] == "n/a" and md[1][11] == R.fmt(cp["clipped"], 2, 4)
    assert written[0].name == "study_async.png" and written[0].stat().st_size > 1000


def test_cells_format_means_half_widths_and_missing_seeds():
    from rlvr.eval import Estimate

    assert R.fmt(Estimate.over_seeds([0.5, 0.3]), 2) == f"0.400 ± {T2 * 0.1:.3f}"
    assert R.fmt(Estimate.over_seeds([0.5]), 3) == "0.500 (1/3)"
    assert R.fmt(Estimate.over_seeds([2.0, 3.0]), 2, digits=1) == f"2.5 ± {T2 * 0.5:.1f}"
    assert R.fmt(Estimate.over_seeds([]), 2) == "n/a"


def test_cli_errors_and_output(tmp_path, capsys):
    assert main(["async", str(tmp_path / "nowhere")]) == 2
    assert "no sweep.json in" in capsys.readouterr().err
    (tmp_path / "s").mkdir()
    root = sweep(tmp_path / "s", [("grpo", {}, 0, None, {})])
    assert main(["aapo", str(root), "--no-plot"]) == 2
    assert "no runs of the baseline variant 'grpo'" in capsys.readouterr().err
    sweep(root, [("grpo", {}, 0, eval_rows([0.2, 0.4]), {})])
    assert main(["aapo", str(root), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"aapo study of {root}: 1 runs\n")
    row = next(line for line in out.splitlines() if line.startswith("| grpo |"))
    assert [c.strip() for c in row.split("|")[1:-1]][:6] == ["grpo", "1", "8", "0.200", "0.400", "0.400"]
    with pytest.raises(SystemExit):
        main(["nope", str(root)])
