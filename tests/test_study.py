"""rlvr study: sweeps built by hand in tmp_path (sweep.json + run dirs), no training; every figure checked by hand."""
from __future__ import annotations

import argparse
import json
import math

import pytest
from scipy.stats import t as student_t

from rlvr import study
from rlvr.compare import load_run
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


# ------------------------------------------------------------------------------------------------ per-run measures

def test_collapsed_is_a_one_sided_welch_test(tmp_path):
    down = [0.5, 0.52, 0.48, 0.5, 0.51] + [0.1, 0.12, 0.09, 0.1, 0.11, 0.1, 0.08, 0.12, 0.1, 0.09]
    assert study.collapsed(run_with(tmp_path / "a", eval_rows([0.4, 0.1], every=15, rewards=down))) is True
    up = list(reversed(down))
    assert study.collapsed(run_with(tmp_path / "b", eval_rows([0.4, 0.1], every=15, rewards=up))) is False
    # a small dip inside the noise is not a collapse: p = 0.30 here (scipy's Welch test on the same numbers)
    flat = [0.3, 0.5, 0.2, 0.6, 0.4] + [0.35, 0.45, 0.2, 0.5, 0.3, 0.4, 0.3, 0.45, 0.25, 0.35]
    from scipy.stats import ttest_ind
    p = ttest_ind(flat[5:], flat[:5], equal_var=False, alternative="less").pvalue
    assert 0.05 < p < 0.5
    assert study.collapsed(run_with(tmp_path / "c", eval_rows([0.4, 0.1], every=15, rewards=flat))) is False
    assert study.collapsed(run_with(tmp_path / "d", eval_rows([0.4, 0.4], every=15, rewards=[0.3] * 15))) is False
    assert study.collapsed(run_with(tmp_path / "e", eval_rows([0.4, 0.4], every=14, rewards=[0.3] * 14))) is None


def test_windows_and_means(tmp_path):
    run = run_with(tmp_path, eval_rows([0.4, 0.2], every=6, rewards=[1, 2, 3, 4, 5, 6],
                                       **{"policy/nll_neg_over_pos": 2.0}))
    assert study.window_mean(run, "reward/mean", first=2) == 1.5
    assert study.window_mean(run, "reward/mean", last=3) == 5.0
    assert study.lowest_window(run, "reward/mean", width=5) == 3.0
    assert study.lowest_window(run, "reward/mean", width=10) == 3.5  # shorter series: its mean
    assert study.mean_over(run, "policy/nll_neg_over_pos") == 2.0
    assert study.mean_over(run, "nope") is None
    assert study.eval_start_end(run) == (0.4, 0.2)


def test_budget_and_first_reach(tmp_path):
    # 16 samples a step (policy + reference), eval every 2 steps
    run = run_with(tmp_path, eval_rows([0.1, 0.3, 0.5, 0.45], every=2, samples_per_step=16))
    assert run.samples_at(4) == 64
    assert study.value_at_budget(run, "eval/accuracy", 64) == 0.5     # step 4 = 64 samples
    assert study.value_at_budget(run, "eval/accuracy", 63) == 0.3     # step 2 = 32 samples is the last within
    assert study.first_reach(run, "eval/accuracy", 0.45) == (4, 64)
    assert study.first_reach(run, "eval/accuracy", 0.6) is None


# ------------------------------------------------------------------------------------------------------- reports

def test_aapo_report_figures(tmp_path):
    root = sweep(tmp_path, [
        # GRPO: 8 samples a step, 4 steps: budget 32; finals 0.5 and 0.3 -> target 0.4
        ("grpo", {}, 0, eval_rows([0.2, 0.3, 0.4, 0.45, 0.5]), {}),
        ("grpo", {}, 1, eval_rows([0.2, 0.25, 0.3, 0.3, 0.3]), {}),
        # AAPO: 16 samples a step (reference included): equal budget is step 2
        ("aapo", {}, 0, eval_rows([0.2, 0.4, 0.6, 0.6, 0.7], samples_per_step=16), {"algo__advantage": "aapo"}),
        ("aapo", {}, 1, eval_rows([0.2, 0.3, 0.35, 0.5, 0.5], samples_per_step=16), {"algo__advantage": "aapo"}),
        ("aapo", {}, 2, None, {}),  # planned, never ran
    ])
    lines, written = study.aapo_report(study.load_sweep(root), None)
    assert written == []
    assert "= 0.400" in lines[0] and "32 (reference" in lines[0]
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in lines if r.startswith("| ")}
    grpo, aapo = rows["grpo"], rows["aapo"]
    assert grpo[:2] == ["2", "8"] and aapo[:2] == ["2/3", "16"]
    assert grpo[3] == f"0.400 ± {T2 * 0.1:.3f}"                # finals 0.5, 0.3
    assert aapo[3] == f"0.600 ± {T2 * 0.1:.3f}"                # finals 0.7, 0.5
    assert aapo[4] == f"0.475 ± {T2 * 0.125:.3f}"              # at 32 samples: 0.6, 0.35
    # steps to 0.4: grpo seed 0 at 2, seed 1 never; aapo at 1 and 3 -> samples 16 and 48
    assert grpo[5] == "2.0 (reached 1/2)" and grpo[6] == "16"
    assert aapo[5] == f"2.0 ± {T2 * 1.0:.1f} (reached 2/2)"
    assert aapo[6].startswith("32 ± ")


def test_maxpo_report_picks_pass_at_K(tmp_path):
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
    lines, written = study.maxpo_report(study.load_sweep(root), tmp_path / "img")
    assert lines[0] == ("| estimator | K | seeds | pass@1 | pass@2 | pass@4 | pass@K | reward, first 5 → last 10 | "
                        "entropy, first 5 → last 10 |")
    body = [[c.strip() for c in r.split("|")[1:-1]] for r in lines[2:]]
    # reward: steps 0-4 are 0.1; the last 10 (steps 6-15) are 0.1 + 0.01·s, mean 0.1 + 0.105 = 0.205
    assert body == [["grpo", "—", "1", "0.300", "0.400", "0.500", "—", "0.100 → 0.205", "n/a"],
                    ["maxpo", "2", "1", "0.250", "0.450", "0.550", "0.450", "0.100 → 0.205", "n/a"],
                    ["maxpo", "4", "1", "0.200", "0.420", "0.600", "0.600", "0.100 → 0.205", "0.200 → 0.400"]]
    assert written == [tmp_path / "img" / "study_maxpo.png"] and written[0].stat().st_size > 1000


def test_async_report_rows(tmp_path):
    down = [0.5] * 5 + [0.1] * 10
    flat = [0.3, 0.5, 0.2, 0.6, 0.4] + [0.35, 0.45, 0.2, 0.5, 0.3, 0.4, 0.3, 0.45, 0.25, 0.35]
    extra = {"policy/nll_neg_over_pos": 3.0, "async/staleness": 1.5}
    root = sweep(tmp_path, [
        ("current_policy", {"rollout.max_staleness": 8}, 0, eval_rows([0.4, 0.1], 15, rewards=down, **extra), {}),
        ("current_policy", {"rollout.max_staleness": 8}, 1, eval_rows([0.4, 0.3], 15, rewards=flat, **extra), {}),
        ("asympo", {"rollout.max_staleness": 0}, 0, eval_rows([0.4, 0.45], 15, rewards=flat), {}),
    ])
    lines, written = study.async_report(study.load_sweep(root), tmp_path / "img")
    body = [[c.strip() for c in r.split("|")[1:-1]] for r in lines[2:]]
    assert [b[:3] for b in body] == [["asympo", "0", "1"], ["current_policy", "8", "2"]]  # by η, then plan order
    cp = body[1]
    assert cp[3] == f"0.200 ± {T2 * 0.1:.3f}" and cp[4] == f"-0.200 ± {T2 * 0.1:.3f}"
    assert cp[5] == "1/2" and cp[6] == "2/2"                      # one reward collapse, both ended below the start
    low_flat = min(sum(flat[i:i + 5]) / 5 for i in range(11))                 # 0.34; the collapsed run's is 0.1
    assert cp[7] == f"{(0.1 + low_flat) / 2:.3f} ± {T2 * abs(low_flat - 0.1) / 2:.3f}"
    assert cp[8] == "3.00 ± 0.00" and cp[11] == "1.50 ± 0.00"
    assert body[0][5] == "0/1" and body[0][6] == "0/1" and body[0][8] == "n/a"
    assert written[0].name == "study_async.png" and written[0].stat().st_size > 1000


def test_cli_errors_and_output(tmp_path, capsys):
    from rlvr.cli import main

    assert main(["study", "async", str(tmp_path / "nowhere")]) == 2
    assert "no sweep.json in" in capsys.readouterr().err
    (tmp_path / "s").mkdir()
    root = sweep(tmp_path / "s", [("grpo", {}, 0, None, {})])
    assert main(["study", "aapo", str(root), "--no-plot"]) == 2
    assert "no runs of the baseline variant 'grpo'" in capsys.readouterr().err
    sweep(root, [("grpo", {}, 0, eval_rows([0.2, 0.4]), {})])
    assert main(["study", "aapo", str(root), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"aapo study of {root}: 1 runs\n") and "| grpo | 1 | 8 | 0.200 | 0.400 | 0.400 |" in out


def test_parser_choices():
    p = argparse.ArgumentParser()
    study.add_arguments(p)
    with pytest.raises(SystemExit):
        p.parse_args(["nope", "dir"])
