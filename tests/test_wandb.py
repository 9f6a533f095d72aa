"""Weights & Biases logging (log.wandb, rlvr.metrics): the values RunLog hands to wandb (a stand-in module records
them), nothing imported when it is off, a clear error when it is missing, a real offline run written under the run
directory (WANDB_MODE=offline: no network), and a training run on a benchmark preset that logs to it."""
from __future__ import annotations

import importlib.machinery
import json
import sys
import types

import pytest
import torch

from rlvr import metrics
from rlvr.config import load_config
from rlvr.metrics import RunLog, WandbSettings


class _StubRun:
    def __init__(self, **kwargs):
        self.init, self.logged, self.finished = kwargs, [], False

    def log(self, values, step):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


@pytest.fixture
def stub_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.runs = []

    def init(**kwargs):
        module.runs.append(_StubRun(**kwargs))
        return module.runs[-1]
    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_runlog_hands_wandb_the_scalars_it_writes_to_metrics_jsonl(tmp_path, stub_wandb):
    with RunLog(tmp_path / "run", tensorboard=False, wandb=WandbSettings("proj", None, {"seed": 3})) as log:
        log.log(0, {"eval/accuracy": torch.tensor(0.25), "data/problems": 10, "flag": True, "bad": float("nan")})
        log.log(1, {"reward/mean": 0.5, "note": "text"})
    (run,) = stub_wandb.runs
    assert run.init["project"] == "proj" and run.init["name"] == "run" and run.init["config"] == {"seed": 3}
    assert run.init["dir"] == str(tmp_path / "run") and run.init["resume"] == "allow"
    assert run.init["id"].startswith("run-") and len(run.init["id"]) == len("run-") + 8
    assert run.logged == [(0, {"eval/accuracy": 0.25, "data/problems": 10}), (1, {"reward/mean": 0.5})]
    assert run.finished
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0] == {"step": 0, "eval/accuracy": 0.25, "data/problems": 10, "flag": True, "bad": "nan"}
    again = RunLog(tmp_path / "run", tensorboard=False, resume_step=1, wandb=WandbSettings("proj", "named"))
    again.close()
    assert stub_wandb.runs[1].init["id"] == run.init["id"] and stub_wandb.runs[1].init["name"] == "named"


def test_nothing_is_imported_when_it_is_off_and_a_missing_package_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)           # any `import wandb` now raises ImportError
    with RunLog(tmp_path / "run", tensorboard=False) as log:
        log.log(0, {"x": 1.0})
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"log.wandb=true needs the wandb package: pip install 'rlvr\[wandb\]'"):
        metrics.require_wandb()


def test_a_real_offline_run_is_written_under_the_run_dir(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):    # nothing written outside tmp_path
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    with RunLog(tmp_path / "run", tensorboard=False, wandb=WandbSettings("rlvr-test")) as log:
        log.log(0, {"x": 1.0})
        log.log(1, {"x": 2.0})
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    (record,) = offline.glob("run-*.wandb")
    assert record.stat().st_size > 0 and record.name.startswith("run-run-")


def test_training_on_a_preset_logs_to_wandb(tmp_path, monkeypatch, stub_wandb):
    from rlvr.trainer import train
    from tests.hub_fixtures import write_data_dir

    monkeypatch.setenv("RLVR_DATA_DIR", str(write_data_dir(tmp_path / "data", ["math_train"])))
    cfg = load_config(None, ["model.name=tiny-random", "model.lora=false", "data.source=math_train",
                             "data.task_kwargs={}", "data.verifier=null", "data.eval_size=1",
                             "data.template=plain", "rollout.prompts_per_step=2", "rollout.group_size=2",
                             "rollout.max_new_tokens=8", "reward.num_workers=0", "reward.format_weight=0.5",
                             "steps=1", "log.progress=false", "log.tensorboard=false", "log.wandb=true",
                             "log.wandb_project=math"])
    train(cfg, run_dir=tmp_path / "run")
    (run,) = stub_wandb.runs
    assert run.init["project"] == "math" and run.init["config"]["data"]["source"] == "math_train"
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    numeric = [(r["step"], {k: v for k, v in r.items() if k != "step" and isinstance(v, (int, float))
                            and not isinstance(v, bool)}) for r in rows]
    assert run.logged == numeric and run.finished
    assert any("reward/format" in values for _, values in run.logged)
    assert [r for r in rows if "data/train_problems" in r][0]["data/train_problems"] == 3
