"""`rlvr sweep`: expansion and validation of sweep files; the runner (resuming, --jobs, failed runs, sweep.json, the
report) in the default tier with a stand-in for `rlvr train` that writes a run's files in milliseconds; and real
sweeps of tiny-random runs (2 steps each) through the CLI, marked e2e."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from rlvr import sweep as sweep_module
from rlvr.cli import main
from rlvr.config import load_config
from rlvr.metrics import read_metrics
from rlvr.sweep import SweepError, expand, load_sweep, read_plan, run_name

# The tiny run of tests/test_train_e2e.py, 2 steps, no evaluation at the start.
TINY = {"steps": 2, "model": {"name": "tiny-random"},
        "data": {"source": "arith", "task_kwargs": {}, "verifier": "int", "size": 120, "eval_size": 8},
        "rollout": {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 12},
        "reward": {"num_workers": 0, "overlong_buffer": 12}, "algo": {"micro_batch_size": 4},
        "optim": {"lr": 0.01}, "eval": {"at_start": False},
        "log": {"progress": False, "tensorboard": False, "completions_every": 0}}


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def sweep_dir(tmp_path, monkeypatch):
    """tmp_path as the current directory, with the tiny base config beside the sweep files in sweeps/."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "sweeps" / "tiny.yaml", TINY)
    return tmp_path / "sweeps"


# ------------------------------------------------------------------------------------------------- expansion

def test_expansion_counts_names_and_override_order(sweep_dir):
    path = _write(sweep_dir / "study.yaml", """
base: tiny.yaml            # not in the current directory: found beside the sweep file
overrides: [optim.lr=0.02, eval.every=1]
seeds: [0, 1]
grid:
  rollout.max_new_tokens: [10, 12]
  algo.kl_coef: [0.0, 0.1]
variants:
  a: [eval.every=2, rollout.max_new_tokens=14]
  b: []
""")
    sweep = load_sweep(path, ["optim.lr=0.03"])
    assert sweep.base == str(sweep_dir / "tiny.yaml") and sweep.out == Path("runs/sweeps/study")
    specs = expand(sweep)
    assert len(specs) == 2 * 2 * 2 * 2
    assert [s.name for s in specs[:5]] == [
        "a__rollout.max_new_tokens=10__algo.kl_coef=0.0__seed=0",
        "a__rollout.max_new_tokens=10__algo.kl_coef=0.0__seed=1",
        "a__rollout.max_new_tokens=10__algo.kl_coef=0.1__seed=0",
        "a__rollout.max_new_tokens=10__algo.kl_coef=0.1__seed=1",
        "a__rollout.max_new_tokens=12__algo.kl_coef=0.0__seed=0"]
    assert specs[-1].name == "b__rollout.max_new_tokens=12__algo.kl_coef=0.1__seed=1"
    assert [s.name for s in expand(load_sweep(path, ["optim.lr=0.03"]))] == [s.name for s in specs]  # deterministic
    assert len({s.name for s in specs}) == len(specs)
    a = specs[2]
    # base < overrides < variant < grid < seed < command line
    assert a.overrides == ["optim.lr=0.02", "eval.every=1", "eval.every=2", "rollout.max_new_tokens=14",
                           "rollout.max_new_tokens=10", "algo.kl_coef=0.1", "seed=0", "optim.lr=0.03"]
    cfg = a.config
    assert cfg.optim.lr == 0.03                     # command line over file overrides over base (0.01)
    assert cfg.eval.every == 2                      # variant over file overrides
    assert cfg.rollout.max_new_tokens == 10         # grid over variant
    assert (cfg.algo.kl_coef, cfg.seed, cfg.steps, cfg.model.name) == (0.1, 0, 2, "tiny-random")
    b = specs[-1].config
    assert (b.eval.every, b.rollout.max_new_tokens, b.seed) == (1, 12, 1)
    assert specs[0].run_dir == Path("runs/sweeps/study") / specs[0].name
    assert load_sweep(path, out="elsewhere").out == Path("elsewhere")


def test_names_are_sanitised_and_deterministic():
    assert run_name("my variant", {"rollout.stop": ["a", "b"], "model.name": "org/model"}, 3) == \
        "my_variant__rollout.stop=_a__b___model.name=org_model__seed=3"
    assert run_name(None, {}, 0) == "seed=0"
    long = run_name("v" * 300, {}, 0)
    assert len(long) <= 180 and long == run_name("v" * 300, {}, 0)


def test_no_grid_no_variants_is_one_run_per_seed(sweep_dir):
    specs = expand(load_sweep(_write(sweep_dir / "s.yaml", "base: tiny.yaml\nseeds: [3, 4]\n")))
    assert [s.name for s in specs] == ["seed=3", "seed=4"] and [s.config.seed for s in specs] == [3, 4]
    assert [s.name for s in expand(load_sweep(_write(sweep_dir / "d.yaml", "base: tiny.yaml\n")))] == ["seed=0"]


@pytest.mark.parametrize("text, key, words", [
    ("seed: [0]\n", "seed", "unknown key"),
    ("grid:\n  algo.nope: [1, 2]\n", "grid.algo.nope", "not a config key"),
    ("grid:\n  rollout.group_size: 4\n", "grid.rollout.group_size", "must be a list"),
    ("grid:\n  rollout.group_size: []\n", "grid.rollout.group_size", "empty"),
    ("grid:\n  seed: [0, 1]\n", "grid.seed", "seeds"),
    ("grid:\n  algo: [1]\n", "grid.algo", "section"),
    ("variants:\n  a: [algo.lss=reinforce]\n", "variants.a", "algo.lss"),
    ("variants:\n  a: [seed=1]\n", "variants.a", "seeds"),
    ("overrides: [steps]\n", "overrides", "key=value"),
    ("seeds: [0, 0]\n", "seeds", "repeats"),
    ("base: nowhere.yaml\n", "base", "no config file"),
    ("compare:\n  metric: [eval/accuracy]\n", "compare.metric", "unknown key"),
    ("compare:\n  thresholds: [eval/accuracy]\n", "compare.thresholds", "METRIC=VALUE"),
    ("compare:\n  label_keys: [algo.nope]\n", "compare.label_keys", "not a config key"),
])
def test_structural_errors_name_the_file_and_key(sweep_dir, text, key, words):
    path = _write(sweep_dir / "bad.yaml", "base: tiny.yaml\n" + text if not text.startswith("base") else text)
    with pytest.raises(SweepError) as err:
        expand(load_sweep(path))
    assert str(path) in str(err.value) and key in str(err.value) and words in str(err.value)


def test_duplicates_are_errors(sweep_dir):
    path = _write(sweep_dir / "dup.yaml", "base: tiny.yaml\nvariants:\n  a b: []\n  a_b: [optim.lr=0.02]\n")
    with pytest.raises(SweepError, match=r"dup\.yaml: duplicate run name 'a_b__seed=0'"):
        expand(load_sweep(path))
    path = _write(sweep_dir / "dupkey.yaml", "variants:\n  a: []\n  a: [optim.lr=0.02]\n")
    with pytest.raises(SweepError, match=r"dupkey\.yaml.*duplicate key 'a'"):
        load_sweep(path)
    path = _write(sweep_dir / "same.yaml", "base: tiny.yaml\ngrid:\n  optim.lr: [0.01, 0.02]\n")
    with pytest.raises(SweepError, match="same config"):  # a command-line override flattens the grid
        expand(load_sweep(path, ["optim.lr=0.05"]))
    with pytest.raises(SweepError, match="command-line overrides.*seeds"):
        load_sweep(path, ["seed=3"])


def test_bad_config_of_a_later_run_fails_before_anything_runs(sweep_dir, capsys):
    path = _write(sweep_dir / "typo.yaml", """
base: tiny.yaml
grid:
  rollout.group_size: [4, many]
variants:
  a: []
  b: [algo.advantage=maxpo, algo.k=2]
""")
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "rollout.group_size" in err and "a__rollout.group_size=many__seed=0" in err
    assert not Path("runs").exists()
    # rlvr train's algorithm check also runs up front (maxpo takes k)
    _write(path, "base: tiny.yaml\nvariants:\n  a: []\n  b: [algo.advantage=maxpo]\n")
    assert main(["sweep", str(path), "--out", "o"]) == 2
    assert "b__seed=0" in capsys.readouterr().err and not Path("o").exists()


def test_existing_run_with_another_config_is_refused(sweep_dir, capsys):
    path = _write(sweep_dir / "s.yaml", "base: tiny.yaml\nout: o\n")
    run = Path("o/seed=0")
    _write(run / "checkpoints" / "step_000001" / "state.json", json.dumps({"step": 1}))
    _write(run / "config.yaml", {**TINY, "optim": {"lr": 0.5}})
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "another config" in err and "optim.lr: 0.5 there, 0.01 in the plan" in err


def test_dry_run_prints_the_plan_and_runs_nothing(sweep_dir, capsys):
    path = _write(sweep_dir / "s.yaml", "base: tiny.yaml\nseeds: [0, 1]\nvariants:\n  a: [optim.lr=0.02]\n  b: []\n")
    assert main(["sweep", str(path), "steps=5", "--dry-run", "--only", "a__"]) == 0
    out = capsys.readouterr().out
    assert "start   a__seed=0" in out and "start   a__seed=1" in out and "exclude b__seed=0" in out
    assert "optim.lr=0.02 seed=1 steps=5" in out and "2 to start, 2 to exclude" in out
    assert not Path("runs").exists()


def test_only_glob_matches_whole_names_and_plain_patterns_substrings(sweep_dir, capsys):
    path = _write(sweep_dir / "s.yaml", "base: tiny.yaml\nseeds: [0, 1]\nvariants:\n  grpo: []\n  dr_grpo: [optim.lr=0.02]\n")
    assert main(["sweep", str(path), "--dry-run", "--only", "grpo__*"]) == 0
    out = capsys.readouterr().out
    assert "start   grpo__seed=0" in out and "start   grpo__seed=1" in out
    assert "exclude dr_grpo__seed=0" in out and "exclude dr_grpo__seed=1" in out
    assert main(["sweep", str(path), "--dry-run", "--only", "grpo__seed=0"]) == 0  # a substring: both variants
    out = capsys.readouterr().out
    assert "start   grpo__seed=0" in out and "start   dr_grpo__seed=0" in out and "exclude grpo__seed=1" in out
    assert main(["sweep", str(path), "--dry-run", "--only", "grpo__seed=[01]", "--only", "dr_*=1"]) == 0
    out = capsys.readouterr().out
    assert "exclude dr_grpo__seed=0" in out and "start   dr_grpo__seed=1" in out and "start   grpo__seed=1" in out
    assert main(["sweep", str(path), "--dry-run", "--only", "grpo*x"]) == 2
    assert "--only grpo*x: matches no run" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ end to end

E2E = """
base: tiny.yaml
overrides: [log.checkpoint_every=1]
grid:
  optim.lr: [0.01, 0.001]
variants:
  reinforce: [algo.loss=reinforce, algo.aggregation=token_mean]
  ppo: [algo.loss=ppo_clip]
out: out
compare:
  metrics: [eval/accuracy, reward/mean]
  thresholds: [reward/mean=-2]
  label_keys: [algo.loss, optim.lr]
"""
NAMES = ["reinforce__optim.lr=0.01__seed=0", "reinforce__optim.lr=0.001__seed=0", "ppo__optim.lr=0.01__seed=0",
         "ppo__optim.lr=0.001__seed=0"]


def _table_rows(md: str) -> list[list[str]]:
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in md.splitlines() if ln.startswith("| ")]
    return rows[1:]  # without the header (the |---| line does not start with "| ")


# ----------------------------------------------------------------------------- the runner, with a stand-in trainer

FAKE_TRAIN = r'''
"""Stands in for `rlvr train [BASE] OVERRIDES --run-dir DIR` / `OVERRIDES --resume DIR`: writes config.yaml, one
metrics row and one checkpoint per step (resuming after the latest), without a model."""
import json, sys
from pathlib import Path
from rlvr.config import dump_config, load_config

argv = sys.argv[1:]
flag = "--resume" if "--resume" in argv else "--run-dir"
run, rest = Path(argv[argv.index(flag) + 1]), argv[:argv.index(flag)]
if flag == "--resume":
    cfg, start = load_config(run / "config.yaml", rest), int((run / "checkpoints" / "latest").read_text()[5:])
else:
    base = rest.pop(0) if rest and "=" not in rest[0] else None
    cfg, start = load_config(base, rest), 0
if cfg.data.source.startswith("/nonexistent"):
    sys.exit(print("rlvr train: error: no data file " + cfg.data.source) or 2)
run.mkdir(parents=True, exist_ok=True)
dump_config(cfg, run / "config.yaml")
with open(run / "metrics.jsonl", "a") as f:
    for step in range(start + 1, cfg.steps + 1):
        f.write(json.dumps({"step": step, "reward/mean": cfg.optim.lr * step, "eval/accuracy": cfg.seed / 10}) + "\n")
        ckpt = run / "checkpoints" / f"step_{step:06d}"
        ckpt.mkdir(parents=True)
        (ckpt / "state.json").write_text(json.dumps({"step": step}))
        (run / "checkpoints" / "latest").write_text(ckpt.name + "\n")
'''


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    """Every run of a sweep is FAKE_TRAIN with the arguments `rlvr train` would get."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    real = sweep_module.train_command
    sw = sweep_module.Sweep(Path("s.yaml"), None, [], [0], {}, None, Path("o"), sweep_module.CompareSettings())
    spec = sweep_module.RunSpec("seed=0", None, {}, 0, ["seed=0"], None, Path("o/seed=0"))
    assert real(sw, spec, False) == [sys.executable, "-m", "rlvr", "train", "seed=0", "--run-dir", "o/seed=0"]
    monkeypatch.setattr(sweep_module, "train_command",
                        lambda sweep, spec, resume: [sys.executable, str(script), *real(sweep, spec, resume)[4:]])
    return script


FAST = """
base: tiny.yaml
seeds: [0, 1]
variants:
  a: [optim.lr=0.01]
  b: [optim.lr=0.02]
  broken: [data.source=/nonexistent/problems.jsonl]
out: out
compare:
  metrics: [reward/mean, eval/accuracy]
  label_keys: [optim.lr]
"""


def test_runner_runs_resumes_restarts_records_failures_and_reports(sweep_dir, fake_train, capsys):
    path = _write(sweep_dir / "fast.yaml", FAST)
    assert main(["sweep", str(path), "--jobs", "2"]) == 1                     # the broken variant fails
    out = Path("out")
    runs = {r["name"]: r for r in read_plan(out)}
    assert list(runs) == ["a__seed=0", "a__seed=1", "b__seed=0", "b__seed=1", "broken__seed=0", "broken__seed=1"]
    assert {n: r["status"] for n, r in runs.items()} == {"a__seed=0": "started", "a__seed=1": "started",
                                                         "b__seed=0": "started", "b__seed=1": "started",
                                                         "broken__seed=0": "failed", "broken__seed=1": "failed"}
    assert runs["broken__seed=0"]["returncode"] == 2 and runs["broken__seed=0"]["note"] == "exit status 2"
    assert all(r["seconds"] > 0 and r["returncode"] in (0, 2) for r in runs.values())
    assert "no data file" in (out / "logs" / "broken__seed=0.log").read_text()
    err = capsys.readouterr().err
    assert "2 run(s) failed" in err and "broken__seed=1 (exit status 2)" in err
    report = _table_rows((out / "report" / "compare.md").read_text())       # the four complete runs, two groups
    assert [(r[0], r[1]) for r in report] == [("optim.lr=0.01", "2"), ("optim.lr=0.02", "2")]
    assert [float(r[2].split(" ")[0]) for r in report] == [pytest.approx(0.02), pytest.approx(0.04)]  # lr · step 2

    shutil.rmtree(out / "a__seed=1" / "checkpoints" / "step_000002")           # as if killed during step 2
    (out / "a__seed=1" / "checkpoints" / "latest").write_text("step_000001\n")
    (out / "a__seed=1" / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/mean": 0.01,
                                                                 "eval/accuracy": 0.1}) + "\n")
    shutil.rmtree(out / "b__seed=0" / "checkpoints")                           # as if killed before its first one
    assert main(["sweep", str(path), "--only", "a__", "--only", "b__"]) == 0
    runs = {r["name"]: r for r in read_plan(out)}
    assert [runs[n]["status"] for n in runs] == ["done", "resumed", "started", "done", "excluded", "excluded"]
    assert runs["b__seed=0"]["moved_aside"].endswith("b__seed=0.failed-1")
    assert [r["step"] for r in read_metrics(out / "a__seed=1")] == [1, 2]       # continued, not restarted
    assert "--resume out/a__seed=1" in (out / "logs" / "a__seed=1.log").read_text()
    assert runs["a__seed=0"]["seconds"] > 0                                   # kept from the first invocation


def test_interrupting_a_sweep_stops_its_runs_and_records_them(sweep_dir, fake_train, monkeypatch, capsys):
    path = _write(sweep_dir / "fast.yaml", FAST)

    def interrupted(fs):                                          # Ctrl-C while the first runs are going
        raise KeyboardInterrupt
    monkeypatch.setattr(sweep_module, "as_completed", interrupted)
    assert main(["sweep", str(path), "--jobs", "2", "--only", "a__"]) == 130
    runs = read_plan("out")
    assert {r["status"] for r in runs} <= {"pending", "failed", "excluded"}
    assert all(r["note"] == "interrupted" for r in runs if r["status"] == "failed")
    assert "interrupted; run the same command again" in capsys.readouterr().err


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """One real sweep: 2 variants × 2 learning rates × 1 seed = 4 runs of 2 steps, two at a time."""
    root = tmp_path_factory.mktemp("sweep")
    _write(root / "tiny.yaml", TINY)
    path = _write(root / "e2e.yaml", E2E)
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    try:
        import io
        from contextlib import redirect_stdout
        buf = io.StringIO()
        with redirect_stdout(buf):
            rc = main(["sweep", str(path), "--jobs", "2"])
    finally:
        mp.undo()
    return root, path, rc, buf.getvalue()


@pytest.mark.e2e
def test_sweep_runs_every_run_and_writes_the_report(e2e):
    root, _, rc, out = e2e
    assert rc == 0, out
    plan = json.loads((root / "out" / "sweep.json").read_text())
    assert [r["name"] for r in plan["runs"]] == NAMES
    assert {r["status"] for r in plan["runs"]} == {"started"} and all(r["seconds"] > 0 for r in plan["runs"])
    for name in NAMES:
        run = root / "out" / name
        rows = [r for r in read_metrics(run) if "loss/policy" in r]
        assert [r["step"] for r in rows] == [1, 2]
        cfg = load_config(run / "config.yaml")
        assert cfg.algo.loss == {"reinforce": "reinforce", "ppo": "ppo_clip"}[name.split("__")[0]]
        assert cfg.optim.lr == float(name.split("=")[1].split("__")[0]) and cfg.seed == 0 and cfg.steps == 2
        assert cfg.model.name == "tiny-random"
        assert (root / "out" / "logs" / f"{name}.log").read_text().startswith("# rlvr sweep")
    md = (root / "out" / "report" / "compare.md").read_text()
    rows = _table_rows(md)
    assert len(rows) == 4 and "algo.loss=reinforce, optim.lr=0.01" in rows[0][0]
    assert "steps to reward/mean ≥ -2" in md and md.strip() in out.replace("\r", "")
    assert (root / "out" / "report" / "eval_accuracy_vs_step.png").is_file()


@pytest.mark.e2e
def test_resume_skips_done_runs_continues_interrupted_and_restarts_crashed(e2e, tmp_path, monkeypatch, capsys):
    root, path, rc, _ = e2e
    assert rc == 0
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    monkeypatch.chdir(root)
    interrupted, crashed = out / NAMES[1], out / NAMES[2]
    shutil.rmtree(interrupted / "checkpoints" / "step_000002")          # as if killed during step 2
    (interrupted / "checkpoints" / "latest").write_text("step_000001\n")
    shutil.rmtree(crashed / "checkpoints")                              # as if killed before its first checkpoint
    done = {n: (out / n / "metrics.jsonl").stat().st_mtime_ns for n in (NAMES[0], NAMES[3])}

    assert main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert f"resume  {NAMES[1]} (checkpoint at step 1 of 2)" in plan and f"restart {NAMES[2]}" in plan
    assert f"skip    {NAMES[0]}" in plan and "1 to restart, 1 to resume, 2 done" in plan
    assert not (out / f"{NAMES[2]}.failed-1").exists()

    assert main(["sweep", str(path), "--out", str(out), "--jobs", "2"]) == 0
    status = {r["name"]: r["status"] for r in json.loads((out / "sweep.json").read_text())["runs"]}
    assert status == {NAMES[0]: "done", NAMES[1]: "resumed", NAMES[2]: "started", NAMES[3]: "done"}
    assert {n: (out / n / "metrics.jsonl").stat().st_mtime_ns for n in done} == done   # not re-run
    assert (out / f"{NAMES[2]}.failed-1" / "metrics.jsonl").is_file()                   # moved aside
    for name in NAMES[1:3]:
        assert [r["step"] for r in read_metrics(out / name) if "loss/policy" in r] == [1, 2]
    assert (out / "logs" / f"{NAMES[1]}.log").read_text().count("# rlvr sweep") == 2
    assert f"--resume {out / NAMES[1]}" in (out / "logs" / f"{NAMES[1]}.log").read_text()
    assert len(_table_rows((out / "report" / "compare.md").read_text())) == 4

    # nothing left: the report only, every run done
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    assert {r["status"] for r in json.loads((out / "sweep.json").read_text())["runs"]} == {"done"}
    assert "# rlvr compare" in capsys.readouterr().out


@pytest.mark.e2e
def test_a_failing_run_is_reported_and_the_others_still_run(sweep_dir, capsys):
    path = _write(sweep_dir / "fail.yaml", """
base: tiny.yaml
variants:
  broken: [data.source=/nonexistent/problems.jsonl]   # passes load_config, fails in rlvr train
  ok: []
compare:
  metrics: [reward/mean]
""")
    assert main(["sweep", str(path)]) == 1
    captured = capsys.readouterr()
    log = Path("runs/sweeps/fail/logs/broken__seed=0.log")
    assert "broken__seed=0 (exit status 2)" in captured.err and str(log) in captured.err
    assert "rlvr train: error" in log.read_text()
    runs = {r["name"]: r for r in json.loads(Path("runs/sweeps/fail/sweep.json").read_text())["runs"]}
    assert runs["broken__seed=0"]["status"] == "failed" and runs["broken__seed=0"]["returncode"] == 2
    assert runs["ok__seed=0"]["status"] == "started"
    assert len(_table_rows(Path("runs/sweeps/fail/report/compare.md").read_text())) == 1


def test_example_sweeps_validate_and_reproduce_their_presets(monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    specs = expand(load_sweep("configs/sweeps/async_staleness.yaml"))
    assert len(specs) == 5 * 4 * 5
    for s in specs:  # each variant is its async preset at the grid's staleness bound
        preset = load_config(f"configs/tiny_arith/async_{s.variant}.yaml",
                             [f"rollout.max_staleness={s.grid['rollout.max_staleness']}", "eval.every=20",
                              "steps=40", "rollout.prompts_per_step=16", f"seed={s.seed}"])
        assert s.config == preset, s.name
    specs = expand(load_sweep("configs/sweeps/aapo.yaml"))
    assert len(specs) == 4 * 5
    as_run = {"aapo": ["algo.advantage_kwargs={}", "algo.aggregation=token_mean"]}  # before the 1.5B recipe
    for s in specs:
        assert s.config == load_config(f"configs/tiny_arith/{s.variant}.yaml", ["eval.every=10", f"seed={s.seed}",
                                                                              *as_run.get(s.variant, [])]), s.name
    specs = expand(load_sweep("configs/sweeps/maxpo.yaml"))
    assert len(specs) == 13 * 5
    budget = ["steps=60", "rollout.prompts_per_step=16", "rollout.group_size=16", "eval.n=8", "eval.temperature=1.0",
              "eval.at_start=false"]
    assert {(s.config.steps, s.config.rollout.prompts_per_step, s.config.rollout.group_size) for s in specs} == \
        {(60, 16, 16)}  # an equal budget for every estimator
    for s in specs:  # the MaxPO and PKPO loo-1 variants are their presets at the sweep's budget and k
        preset = {"maxpo": "maxpo", "pkpo_sloo1": "pkpo"}.get(s.variant.rpartition("_k")[0])
        if preset is not None:
            k = s.variant.rpartition("_k")[2]
            assert s.config == load_config(f"configs/tiny_arith/{preset}.yaml", [
                *budget, f"algo.k={k}", f"seed={s.seed}", "algo.aggregation=seq_mean_token_mean"]), s.name  # as run


def test_smollm2_study_sweeps_are_the_presets_at_one_budget(monkeypatch):
    """configs/sweeps/smollm2_*.yaml (docs/results.md, issue 19): every arm is its SmolLM2 preset at the study's
    budget, and every arm of a study runs the same steps, prompts and samples per prompt."""
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    specs = expand(load_sweep("configs/sweeps/smollm2_aapo.yaml"))
    assert len(specs) == 4 * 5
    for s in specs:
        assert s.config == load_config(f"configs/smollm2/{s.variant}.yaml",
                                       ["steps=16", "optim.lr=2e-4", "eval.every=4", f"seed={s.seed}"]), s.name
    specs = expand(load_sweep("configs/sweeps/smollm2_maxpo.yaml"))
    assert len(specs) == 5 * 5
    budget = ["steps=16", "optim.lr=2e-4", "eval.n=8", "eval.temperature=0.7", "eval.at_start=false"]
    for s in specs:
        name, _, k = s.variant.rpartition("_k")
        preset = {"maxpo": ("maxpo", []), "pkpo_sloo1": ("pkpo", []),
                  "pkpo_sloo": ("pkpo", ["algo.advantage_kwargs.baseline=loo"]),
                  "passk_training": ("grpo", ["algo.advantage=passk_training", f"algo.k={k}"])}.get(
            name, ("grpo", ["eval.at_start=true"]))
        assert s.config == load_config(f"configs/smollm2/{preset[0]}.yaml", [*budget, *preset[1], f"seed={s.seed}"]), \
            s.name
    specs = expand(load_sweep("configs/sweeps/smollm2_async.yaml"))
    assert len(specs) == 5 * 2 * 5
    for s in specs:
        eta = s.grid["rollout.max_staleness"]
        c = s.config
        assert (c.trainer, c.steps, c.optim.lr, c.rollout.max_staleness) == ("async", 16, 2e-4, eta)
        assert s.config.model == load_config("configs/smollm2/grpo.yaml").model
        assert s.config.rollout.prompts_per_step == 8 and s.config.rollout.group_size == 8
    losses = {(s.config.algo.loss, s.config.algo.old_logprobs, s.config.algo.aggregation) for s in specs}
    assert losses == {("asympo", "recompute", "seq_mean_token_mean"), ("spo", "recompute", "seq_mean_token_mean"),
                      ("current_policy", "recompute", "seq_mean_token_mean"),
                      ("decoupled_ppo", "recompute", "token_mean"), ("ppo_clip", "behavior", "seq_mean_token_mean")}
