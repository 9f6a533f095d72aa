"""rlvr compare: run dirs built by hand in tmp_path (config.yaml + metrics.jsonl), no training."""
from __future__ import annotations

import argparse
import copy
import json
import math

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from rlvr import compare
from rlvr.compare import Threshold, format_cell
from rlvr.eval.metrics import Estimate, mean_ci

T975_2 = 4.302652729749464   # Student-t 0.975 quantile, 2 degrees of freedom (tables: 4.3027)
T975_1 = 12.706204736174696  # ... 1 degree of freedom (tables: 12.706)

BASE = {
    "steps": 4, "seed": 0,
    "model": {"name": "tiny-random", "device": "cpu"},
    "data": {"dataset": "tiny_arith"},
    "rollout": {"prompts_per_step": 4, "group_size": 2, "max_new_tokens": 16},
    "reward": {"num_workers": 0},
    "algo": {"advantage": "grpo", "advantage_kwargs": {}, "k": None, "loss": "ppo_clip"},
    "optim": {"lr": 1e-5},
    "eval": {"every": 2},
    "log": {"run_dir": None, "tensorboard": False},
}


def make_run(root, name, rows, **overrides):
    """A run dir: config.yaml = BASE with dotted overrides (``algo__k=4`` -> algo.k), metrics.jsonl = rows
    (dicts are json-dumped, strings written as they are)."""
    cfg = copy.deepcopy(BASE)
    for key, v in overrides.items():
        *path, last = key.split("__")
        d = cfg
        for p in path:
            d = d[p]
        d[last] = v
    run = root / name
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (run / "metrics.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return run


def acc_rows(accs, **extra):
    """Step 0: data row + eval row; steps 1..n: a train row with reward/mean and an eval row, logged apart."""
    rows = [{"step": 0, "data/train_problems": 10}, {"step": 0, "eval/accuracy": accs[0]}]
    for s, a in enumerate(accs[1:], 1):
        rows.append({"step": s, "reward/mean": a / 2 if isinstance(a, float) else a, "loss/policy": 1.0 / s, **extra})
        rows.append({"step": s, "eval/accuracy": a})
    return rows


def table_rows(md: str) -> list[list[str]]:
    """The cells of a Markdown table's body rows (header and |---| line left out)."""
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in md.splitlines() if ln.startswith("| ")]
    return rows[1:]


def cell_numbers(cell: str) -> tuple[float, float | None]:
    """(mean, half-width) of a ``mean ± h`` cell, (value, None) of a plain one; the notes after them ignored."""
    parts = cell.split(" ")
    return float(parts[0]), float(parts[2]) if len(parts) > 2 and parts[1] == "±" else None


def args(run_dirs, **kw):
    p = compare.add_arguments(argparse.ArgumentParser(prog="rlvr compare"))
    argv = [str(d) for d in run_dirs]
    for k, v in kw.items():
        for item in (v if isinstance(v, list) else [v]):
            argv += [f"--{k.replace('_', '-')}", str(item)]
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ loading

def test_rows_merged_per_step_later_keys_win(tmp_path):
    d = make_run(tmp_path, "r", [
        {"step": 0, "data/train_problems": 10},
        {"step": 0, "eval/accuracy": 0.1},
        {"step": 1, "reward/mean": 0.2, "eval/accuracy": 0.3},
        {"step": 1, "eval/accuracy": 0.4},      # eval row logged after the train row: wins
        "",                                     # blank line ignored
        {"step": 2, "reward/mean": 0.5},
    ])
    run = compare.load_run(d)
    assert run.steps == [0, 1, 2]
    assert run.rows[0] == {"step": 0, "data/train_problems": 10.0, "eval/accuracy": 0.1}
    assert run.rows[1] == {"step": 1, "reward/mean": 0.2, "eval/accuracy": 0.4}
    assert run.series("eval/accuracy") == ([0, 1], [0.1, 0.4])
    assert run.config["algo"]["advantage"] == "grpo" and run.seed == 0


def test_rows_out_of_order_are_sorted(tmp_path):
    run = compare.load_run(make_run(tmp_path, "r", [{"step": 2, "m": 2}, {"step": 1, "m": 1}]))
    assert run.series("m") == ([1, 2], [1.0, 2.0])


def test_nan_and_inf_strings_read_as_nan(tmp_path):
    d = make_run(tmp_path, "r", [
        {"step": 1, "eval/accuracy": 0.5, "loss/policy": "inf"},
        {"step": 2, "eval/accuracy": 0.9, "loss/policy": 0.3},
        {"step": 3, "eval/accuracy": "nan", "loss/policy": "nan"},
    ])
    run = compare.load_run(d)
    xs, ys = run.series("eval/accuracy")
    assert xs == [1, 2, 3] and ys[:2] == [0.5, 0.9] and math.isnan(ys[2])
    assert math.isnan(run.series("loss/policy")[1][0])
    assert math.isnan(compare.final_value(run, "eval/accuracy"))  # ended on NaN: shown, not hidden
    assert compare.best_value(run, "eval/accuracy") == 0.9        # best ignores NaN
    assert compare.best_value(run, "loss/policy") == 0.3          # and inf
    assert compare.steps_to_reach(run, Threshold("eval/accuracy", 0.95)) is None
    g = compare.group_runs([run])
    s = compare.summarize_group(g[0], ["eval/accuracy"])
    assert math.isnan(s.metrics["eval/accuracy"].final.mean) and s.metrics["eval/accuracy"].best.mean == 0.9
    [row] = table_rows(compare.markdown_table([s], ["eval/accuracy"]))
    assert row[:2] == ["r", "1"] and math.isnan(float(row[2])) and float(row[3]) == 0.9


def test_nan_in_one_seed(tmp_path):
    dirs = [make_run(tmp_path, f"s{i}", acc_rows([0.1, 0.2, a]), seed=i) for i, a in enumerate([0.3, "nan", 0.5])]
    g = compare.group_runs([compare.load_run(d) for d in dirs])[0]
    s = compare.summarize_group(g, ["eval/accuracy"])
    final, best = s.metrics["eval/accuracy"].final, s.metrics["eval/accuracy"].best
    assert math.isnan(final.mean) and final.half_width is None and sum(map(math.isnan, final.values)) == 1
    assert best.mean == pytest.approx(1 / 3) and best.half_width == pytest.approx(T975_2 * 0.1527525 / math.sqrt(3))
    xs, mean, lo, hi = compare._group_curve(g, "eval/accuracy", "step")
    assert xs == [0.0, 1.0, 2.0] and math.isnan(mean[2]) and math.isnan(lo[2]) and mean[1] == pytest.approx(0.2)
    paths = compare.plot_metrics([g], ["eval/accuracy"], tmp_path / "plots")  # NaN gap, no RuntimeWarning
    assert len(paths) == 2 and all(p.stat().st_size > 0 for p in paths)


def test_only_nan_values_give_nan_best(tmp_path):
    run = compare.load_run(make_run(tmp_path, "r", [{"step": 1, "m": "nan"}, {"step": 2, "m": "nan"}]))
    assert math.isnan(compare.best_value(run, "m"))
    assert compare.best_value(run, "absent") is None and compare.final_value(run, "absent") is None


def test_row_without_step_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="row 2 has no integer 'step'"):
        compare.load_run(make_run(tmp_path, "r", [{"step": 0, "m": 1}, {"m": 2}]))


# ---------------------------------------------------------------------------------------- final / best / thresholds

def test_final_and_best_values(tmp_path):
    # eval/accuracy logged at steps 0..3; reward/mean only up to step 3; an extra step 4 with no eval row
    rows = acc_rows([0.1, 0.6, 0.4, 0.5]) + [{"step": 4, "reward/mean": 0.05, "loss/policy": 0.9}]
    run = compare.load_run(make_run(tmp_path, "r", rows))
    assert compare.final_value(run, "eval/accuracy") == 0.5     # last step where it is present (3), not step 4
    assert compare.best_value(run, "eval/accuracy") == 0.6
    assert compare.final_value(run, "reward/mean") == 0.05
    assert compare.best_value(run, "reward/mean") == 0.3
    # loss: lower is better -> best is the minimum (1/3 at step 3), not the maximum
    assert compare.higher_is_better("eval/accuracy") and not compare.higher_is_better("loss/policy")
    assert compare.best_value(run, "loss/policy") == pytest.approx(1 / 3)
    assert compare.final_value(run, "loss/policy") == 0.9


def test_thresholds_reached_and_never(tmp_path):
    run = compare.load_run(make_run(tmp_path, "r", acc_rows([0.1, 0.6, 0.4, 0.7])))
    assert compare.steps_to_reach(run, Threshold("eval/accuracy", 0.6)) == 1   # >= : equality reaches
    assert compare.steps_to_reach(run, Threshold("eval/accuracy", 0.65)) == 3
    assert compare.steps_to_reach(run, Threshold("eval/accuracy", 0.8)) is None
    assert compare.steps_to_reach(run, Threshold("eval/accuracy", 0.0)) == 0
    # loss metrics reach a threshold by falling to it: 1/s <= 0.5 first at s=2
    assert compare.steps_to_reach(run, Threshold("loss/policy", 0.5)) == 2
    assert compare.steps_to_reach(run, Threshold("absent", 0.5)) is None
    s = compare.summarize_group(compare.group_runs([run])[0], ["eval/accuracy"],
                                [Threshold("eval/accuracy", 0.65), Threshold("eval/accuracy", 0.8)])
    assert [t.format() for t in s.thresholds] == ["3", "—"]


def test_parse_threshold():
    assert compare.parse_threshold("eval/accuracy=0.5") == Threshold("eval/accuracy", 0.5)
    assert compare.parse_threshold(" reward/mean = 1e-1 ") == Threshold("reward/mean", 0.1)
    for bad in ("eval/accuracy", "=0.5", "eval/accuracy=high", "eval/accuracy=", "m=nan"):
        with pytest.raises(compare.CompareError, match="bad --threshold"):
            compare.parse_threshold(bad)


# ----------------------------------------------------------------------------------------------- grouping and CI

def three_seeds_and_maxpo(tmp_path):
    runs = [make_run(tmp_path, f"grpo-s{seed}", acc_rows([0.1, 0.3, a0, a]), seed=seed, log__run_dir=f"x/{seed}")
            for seed, a0, a in ((0, 0.5, 0.5), (1, 0.2, 0.6), (2, 0.1, 0.7))]
    runs.append(make_run(tmp_path, "maxpo-s0", acc_rows([0.1, 0.5, 0.8, 0.9]), algo__advantage="maxpo", algo__k=4))
    return runs


def test_group_three_seeds_plus_one_other_config(tmp_path):
    runs = [compare.load_run(d) for d in three_seeds_and_maxpo(tmp_path)]
    groups = compare.group_runs(runs)
    assert [g.n for g in groups] == [3, 1]
    assert [r.name for r in groups[0].runs] == ["grpo-s0", "grpo-s1", "grpo-s2"]
    assert compare.differing_keys(groups) == ["algo.advantage", "algo.k"]   # not seed, not log.run_dir
    assert [g.label for g in groups] == ["algo.advantage=grpo, algo.k=null", "algo.advantage=maxpo, algo.k=4"]
    compare.label_groups(groups, ["algo.advantage"])
    assert [g.label for g in groups] == ["algo.advantage=grpo", "algo.advantage=maxpo"]


def test_one_group_of_one_run_is_labelled_by_dir_name(tmp_path):
    run = compare.load_run(make_run(tmp_path, "my-run", acc_rows([0.1, 0.2])))
    assert compare.group_runs([run])[0].label == "my-run"


def test_mean_ci_matches_hand_computation():
    from scipy.stats import t

    assert t.ppf(0.975, 2) == pytest.approx(T975_2, rel=1e-12)
    mean, h = mean_ci([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6, abs=1e-15)
    assert h == pytest.approx(T975_2 * 0.1 / math.sqrt(3), rel=1e-12)
    assert h == pytest.approx(0.248414, abs=1e-6)
    assert mean_ci([0.4]) == (0.4, None)
    assert mean_ci([0.3, 0.3]) == (pytest.approx(0.3), 0.0)
    e = Estimate.over_seeds([0.5, 0.6, 0.7])                  # the same interval, as the one Estimate of rlvr
    assert (e.mean, e.half_width, e.values) == (pytest.approx(0.6), pytest.approx(h), (0.5, 0.6, 0.7))
    assert e.lo == pytest.approx(0.6 - h) and e.hi == pytest.approx(0.6 + h)
    assert Estimate.over_seeds([0.4]).half_width is None and math.isnan(Estimate.over_seeds([]).mean)


def test_format_cell_renders_mean_half_width_nan_and_missing_seeds():
    assert format_cell(Estimate.over_seeds([0.5, 0.6, 0.7]), 3) == "0.6 ± 0.2484"
    assert format_cell(Estimate.over_seeds([0.4]), 2) == "0.4 (1/2 seeds)"
    assert format_cell(Estimate.over_seeds([0.3, math.nan, 0.5]), 3) == "nan (1/3 seeds nan)"
    assert format_cell(Estimate.over_seeds([2.0, 2.0]), 2) == "2 ± 0"
    assert format_cell(Estimate.over_seeds([]), 2) == "n/a"


def test_table_cells_with_seeds(tmp_path):
    runs = [compare.load_run(d) for d in three_seeds_and_maxpo(tmp_path)]
    groups = compare.group_runs(runs)
    ths = [Threshold("eval/accuracy", 0.5), Threshold("eval/accuracy", 0.65)]
    s = compare.summarize_group(groups[0], ["eval/accuracy", "reward/mean"], ths)
    final = s.metrics["eval/accuracy"].final
    assert final.values == (0.5, 0.6, 0.7) and s.metrics["eval/accuracy"].n_runs == 3
    assert final.mean == pytest.approx(0.6) and final.half_width == pytest.approx(T975_2 * 0.1 / math.sqrt(3))
    # best per seed: max(0.3, 0.5, 0.5)=0.5, max(0.3, 0.2, 0.6)=0.6, max(0.3, 0.1, 0.7)=0.7
    assert s.metrics["eval/accuracy"].best.values == (0.5, 0.6, 0.7)
    # >= 0.5 at steps 2, 3, 3 -> mean 8/3, sd = 1/sqrt(3); >= 0.65 only seed 2 at step 3
    assert s.thresholds[0].steps == (2, 3, 3) and s.thresholds[1].steps == (None, None, 3)
    h = T975_2 * (1 / math.sqrt(3)) / math.sqrt(3)
    assert s.thresholds[0].estimate.mean == pytest.approx(8 / 3)
    assert s.thresholds[0].estimate.half_width == pytest.approx(h) and s.thresholds[0].reached == 3
    assert s.thresholds[1].estimate.values == (3.0,) and s.thresholds[1].reached == 1
    assert s.thresholds[0].format().endswith(" (reached 3/3)") and s.thresholds[1].format() == "3 (reached 1/3)"
    s1 = compare.summarize_group(groups[1], ["eval/accuracy"], ths)
    assert s1.metrics["eval/accuracy"].final.values == (0.9,)
    assert [t.steps for t in s1.thresholds] == [(1,), (2,)]  # 0.5 at step 1, 0.8 at step 2


def test_threshold_over_two_seeds_and_none(tmp_path):
    runs = [compare.load_run(make_run(tmp_path, f"s{i}", acc_rows(a), seed=i))
            for i, a in enumerate([[0.1, 0.2, 0.9, 0.9, 0.9], [0.1, 0.2, 0.3, 0.4, 0.9], [0.1, 0.1, 0.1, 0.1, 0.1]])]
    s = compare.summarize_group(compare.group_runs(runs)[0], [],
                                [Threshold("eval/accuracy", 0.8), Threshold("eval/accuracy", 0.95)])
    assert s.thresholds[0].steps == (2, 4, None)
    # mean 3, sd sqrt(2), n 2: h = t(0.975, 1) * sqrt(2) / sqrt(2)
    e = s.thresholds[0].estimate
    assert (e.mean, e.half_width, s.thresholds[0].reached) == (3.0, pytest.approx(T975_1), 2)
    assert cell_numbers(s.thresholds[0].format()) == (3.0, pytest.approx(T975_1, abs=0.005))
    assert s.thresholds[1].reached == 0 and s.thresholds[1].format() == "— (reached 0/3)"


def test_seed_missing_a_metric_is_left_out_and_said(tmp_path):
    a = make_run(tmp_path, "a", acc_rows([0.1, 0.4]), seed=0)
    b = make_run(tmp_path, "b", [{"step": 1, "reward/mean": 0.1}], seed=1)
    g = compare.group_runs([compare.load_run(a), compare.load_run(b)])[0]
    s = compare.summarize_group(g, ["eval/accuracy"])
    m = s.metrics["eval/accuracy"]
    assert m.final.values == (0.4,) and m.n_runs == 2


def test_markdown_table_and_report(tmp_path):
    runs = [compare.load_run(d) for d in three_seeds_and_maxpo(tmp_path)]
    groups = compare.group_runs(runs)
    metrics, ths = ["eval/accuracy", "loss/policy"], [Threshold("eval/accuracy", 0.5)]
    table = compare.markdown_table([compare.summarize_group(g, metrics, ths) for g in groups], metrics, ths)
    assert table.splitlines()[0] == ("| group | seeds | eval/accuracy final | eval/accuracy best (max) | steps to "
                                     "eval/accuracy ≥ 0.5 | loss/policy final | loss/policy best (min) |")
    grpo, maxpo = table_rows(table)
    h = T975_2 * 0.1 / math.sqrt(3)                                  # seeds 0.5, 0.6, 0.7
    assert grpo[:2] == ["algo.advantage=grpo, algo.k=null", "3"]
    assert maxpo[:2] == ["algo.advantage=maxpo, algo.k=4", "1"]
    def approx(m, h=None):                                           # cells have 4 significant digits
        return pytest.approx(m, rel=5e-4), None if h is None else pytest.approx(h, rel=5e-4, abs=1e-12)

    assert [cell_numbers(c) for c in grpo[2:]] == [approx(0.6, h), approx(0.6, h), approx(8 / 3, T975_2 / 3),
                                                   approx(1 / 3, 0), approx(1 / 3, 0)]   # loss: min over steps of 1/s
    assert grpo[4].endswith("(reached 3/3)")
    assert [cell_numbers(c) for c in maxpo[2:]] == [approx(0.9), approx(0.9), approx(1), approx(1 / 3), approx(1 / 3)]
    report = compare.render_markdown(groups, metrics, ths)
    assert table in report
    assert "the configs differ in: `algo.advantage`, `algo.k`" in report
    assert "- algo.advantage=grpo, algo.k=null: grpo-s0 (seed 0), grpo-s1 (seed 1), grpo-s2 (seed 2)" in report
    assert "- algo.advantage=maxpo, algo.k=4: maxpo-s0 (seed 0)" in report


# --------------------------------------------------------------------------------------------- samples and plots

def test_cumulative_samples_from_rollout_samples(tmp_path):
    rows = [{"step": 0, "eval/accuracy": 0.1},                       # eval-only step: no samples
            {"step": 1, "reward/mean": 0.1, "rollout/samples": 72},  # e.g. 64 policy + 8 reference samples
            {"step": 1, "eval/accuracy": 0.2},
            {"step": 2, "reward/mean": 0.2, "rollout/samples": 80},
            {"step": 3, "reward/mean": 0.3, "rollout/samples": "nan"}]
    run = compare.load_run(make_run(tmp_path, "r", rows))
    assert run.samples_source == "rollout/samples"
    assert run.samples == [0.0, 72.0, 152.0, 152.0]
    assert run.samples_at(2) == 152.0


def test_cumulative_samples_fallback_from_config(tmp_path):
    run = compare.load_run(make_run(tmp_path, "r", acc_rows([0.1, 0.2, 0.3]), rollout__prompts_per_step=3,
                                    rollout__group_size=5))
    assert run.samples_source == "config"
    assert run.samples == [0.0, 15.0, 30.0]  # step * 3 * 5


def test_plots_written(tmp_path):
    runs = [compare.load_run(d) for d in three_seeds_and_maxpo(tmp_path)]
    groups = compare.group_runs(runs)
    out = tmp_path / "plots"
    paths = compare.plot_metrics(groups, ["eval/accuracy", "reward/mean", "absent/metric"], out)
    assert sorted(p.name for p in paths) == ["eval_accuracy_vs_samples.png", "eval_accuracy_vs_step.png",
                                             "reward_mean_vs_samples.png", "reward_mean_vs_step.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    xs, mean, lo, hi = compare._group_curve(groups[0], "eval/accuracy", "samples")
    assert xs == [0.0, 8.0, 16.0, 24.0]                      # step * 4 * 2
    assert mean[3] == pytest.approx(0.6) and (lo[3], hi[3]) == (0.5, 0.7)


def test_group_curve_uses_steps_all_seeds_have(tmp_path):
    a = make_run(tmp_path, "a", [{"step": s, "m": s, "rollout/samples": 10} for s in (1, 2, 3)], seed=0)
    b = make_run(tmp_path, "b", [{"step": s, "m": 2 * s, "rollout/samples": 20} for s in (1, 2)], seed=1)
    g = compare.group_runs([compare.load_run(a), compare.load_run(b)])[0]
    assert compare._group_curve(g, "m", "step") == ([1.0, 2.0], [1.5, 3.0], [1.0, 2.0], [2.0, 4.0])
    assert compare._group_curve(g, "m", "samples")[0] == [15.0, 30.0]  # mean of the seeds' cumulative samples


# --------------------------------------------------------------------------------------------------------- CLI

def test_command_prints_markdown(tmp_path, capsys):
    dirs = three_seeds_and_maxpo(tmp_path)
    assert compare.command(args(dirs, threshold=["eval/accuracy=0.5"])) == 0
    out = capsys.readouterr().out
    grpo = table_rows(out)[0]
    assert grpo[:2] == ["algo.advantage=grpo, algo.k=null", "3"]
    assert cell_numbers(grpo[2]) == (pytest.approx(0.6), pytest.approx(T975_2 * 0.1 / math.sqrt(3), rel=5e-4))
    assert not list(tmp_path.glob("**/*.png")) and not list(tmp_path.glob("**/compare.md"))


def test_command_writes_out_dir(tmp_path, capsys):
    dirs = three_seeds_and_maxpo(tmp_path)
    out = tmp_path / "cmp"
    assert compare.command(args(dirs, metrics="eval/accuracy", out=out, label_keys="algo.advantage")) == 0
    printed = capsys.readouterr().out
    md = (out / "compare.md").read_text()
    assert printed.startswith(md)
    assert [r[:4] for r in table_rows(md)][1] == ["algo.advantage=maxpo", "1", "0.9", "0.9"]
    assert sorted(p.name for p in out.glob("*.png")) == ["eval_accuracy_vs_samples.png", "eval_accuracy_vs_step.png"]
    assert all(p.stat().st_size > 0 for p in out.glob("*.png"))


@pytest.mark.parametrize("case, message", [
    ("missing_dir", "no run directory at"),
    ("missing_metric", "metric 'eval/pass@8' is in no run's metrics.jsonl"),
    ("bad_threshold", "bad --threshold 'eval/accuracy'"),
    ("threshold_metric", "metric 'nope' is in no run's metrics.jsonl"),
    ("no_config", "no config.yaml in"),
    ("twice", "is given twice"),
    ("label_key", "--label-keys: 'algo.nope' is in no run's config.yaml"),
    ("label_key_mapping", "--label-keys: 'algo' is in no run's config.yaml (it is a mapping: name one of its "
                          "keys, algo.advantage"),
])
def test_command_errors(tmp_path, capsys, case, message):
    good = make_run(tmp_path, "good", acc_rows([0.1, 0.2]))
    kw = {}
    dirs = [good]
    if case == "missing_dir":
        dirs.append(tmp_path / "does-not-exist")
    elif case == "missing_metric":
        kw["metrics"] = "eval/accuracy,eval/pass@8"
    elif case == "bad_threshold":
        kw["threshold"] = "eval/accuracy"
    elif case == "threshold_metric":
        kw["threshold"] = "nope=1"
    elif case == "no_config":
        (good / "config.yaml").unlink()
    elif case == "twice":
        dirs.append(good)
    elif case == "label_key":
        kw["label_keys"] = "algo.nope"
    elif case == "label_key_mapping":
        kw["label_keys"] = "algo"
    assert compare.command(args(dirs, **kw)) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("rlvr compare: error: ") and message in captured.err
    assert captured.out == ""


def test_keys_a_run_predates_take_their_defaults(tmp_path):
    """A run written before a config field existed groups with a new run that leaves it at the default."""
    def run(name, cfg):
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        (d / "metrics.jsonl").write_text(json.dumps({"step": 1, "eval/accuracy": 0.5}) + "\n")
        return compare.load_run(d)

    old = run("old", {"steps": 4, "seed": 0})                                   # no critic section at all
    new = run("new", {"steps": 4, "seed": 1, "critic": {"lr": 0.001}})           # the default, written out
    other = run("other", {"steps": 4, "seed": 0, "critic": {"lr": 0.01}})
    groups = compare.group_runs([old, new, other])
    assert [len(g.runs) for g in groups] == [2, 1]
    assert compare.differing_keys(groups) == ["critic.lr"]


# ------------------------------------------------------------------------------------------------ flatten_config

def test_flatten_config_keeps_empty_mappings_and_lists_as_values():
    cfg = {"algo": {"advantage": "grpo", "advantage_kwargs": {}, "loss_kwargs": {"clip": {"low": 0.2}}},
           "rollout": {"stop": ["\n"]}, "seed": 0}
    assert compare.flatten_config(cfg) == {"algo.advantage": "grpo", "algo.advantage_kwargs": {},
                                           "algo.loss_kwargs.clip.low": 0.2, "rollout.stop": ["\n"], "seed": 0}
    assert compare.flatten_config({"a": {}}) != compare.flatten_config({})       # an empty mapping is not nothing


_names = st.text("abcxyz_", min_size=1, max_size=3)
_configs = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["a", "b"]),
                                  st.lists(st.integers(0, 2), max_size=2)),
                        lambda inner: st.dictionaries(_names, inner, max_size=3), max_leaves=8)


@given(a=st.dictionaries(_names, _configs, max_size=3), b=st.dictionaries(_names, _configs, max_size=3))
def test_flatten_config_is_lossless(a, b):
    """Two configs flatten to the same dict exactly when they are equal (keys without dots, as config keys are)."""
    assert (compare.flatten_config(a) == compare.flatten_config(b)) == (a == b)


def test_an_empty_and_a_filled_mapping_differ_in_both_keys(tmp_path):
    runs = [compare.load_run(make_run(tmp_path, "grpo", acc_rows([0.1, 0.2]))),
            compare.load_run(make_run(tmp_path, "gae", acc_rows([0.1, 0.2]), algo__advantage_kwargs={"lam": 0.9}))]
    groups = compare.group_runs(runs)
    assert compare.differing_keys(groups) == ["algo.advantage_kwargs", "algo.advantage_kwargs.lam"]
