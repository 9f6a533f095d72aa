"""Config: defaults, YAML files, dotted overrides, and errors that name the key."""
from pathlib import Path

import pytest

from rlvr import advantages, losses
from rlvr.config import ConfigError, TrainConfig, dump_config, load_config, parse_override, to_dict

CONFIGS = sorted(p for p in Path(__file__).resolve().parents[1].joinpath("configs").glob("*/*.yaml")
                 if p.parent.name != "sweeps")  # sweep files are rlvr sweep's (tests/test_sweep.py checks them)


def test_defaults_are_the_embedded_main_job():
    cfg = load_config()
    assert cfg == TrainConfig()
    assert (cfg.model.name, cfg.model.lora, cfg.model.device) == ("smollm2-135m-instruct", True, "cpu")
    assert (cfg.algo.advantage, cfg.data.source) == ("grpo", "rg:basic_arithmetic")


def test_yaml_then_overrides_in_order(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("steps: 7\nalgo:\n  advantage: pkpo\n  k: 2\nrollout:\n  stop: [\"\\n\\n\"]\n")
    cfg = load_config(f, ["algo.k=4", "optim.lr=1e-3", "algo.advantage_kwargs.baseline=loo", "model.lora=false"])
    assert cfg.steps == 7 and cfg.algo.advantage == "pkpo" and cfg.algo.k == 4
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.algo.advantage_kwargs == {"baseline": "loo"}
    assert cfg.rollout.stop == ("\n\n",) and cfg.model.lora is False
    assert cfg.rollout.group_size == TrainConfig().rollout.group_size  # untouched keys keep defaults


def test_int_is_accepted_for_float_and_null_for_optional():
    cfg = load_config(None, ["optim.lr=1", "algo.aggregation=null", "data.size=null"])
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float
    assert cfg.algo.aggregation is None and cfg.data.size is None


@pytest.mark.parametrize("override, fragment", [
    ("algo.kk=1", "unknown config key 'algo.kk'"),
    ("foo.bar=1", "unknown config key 'foo'"),
    ("algo.k=x", "algo.k must be an integer"),
    ("steps=1.5", "steps must be an integer"),
    ("model.lora=yes please", "model.lora must be a bool"),
    ("optim.lr=fast", "optim.lr must be a number"),
    ("model.device=tpu", "model.device must be one of cpu, cuda, auto"),
    ("algo=3", "algo must be a mapping"),
    ("steps", "not of the form key=value"),
    ("rollout.group_size=0", "rollout.group_size must be > 0"),
    ("optim.betas=[0.9]", "optim.betas must have 2 items"),
    ("rollout.stop=stop", "rollout.stop must be a list"),
    ("data.size=50", "data.size (50) must exceed data.eval_size (100)"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert fragment in str(e.value)


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(f)
    f.write_text("algo:\n  advantag: grpo\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'algo.advantag'.*list.yaml"):
        load_config(f)


def test_parse_override_types():
    assert parse_override("a.b=4") == (["a", "b"], 4)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=x=y") == (["a"], "x=y")


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, ["algo.advantage=maxpo", "algo.k=4", "rollout.stop=['a']"])
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert to_dict(cfg)["rollout"]["stop"] == ["a"]


def test_config_is_frozen():
    cfg = TrainConfig()
    with pytest.raises(Exception):
        cfg.steps = 3  # type: ignore[misc]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_preset_loads_and_names_registered_algorithms(path):
    cfg = load_config(path)
    spec = advantages.spec(cfg.algo.advantage)
    losses.spec(cfg.algo.loss)
    assert cfg.algo.aggregation in losses.AGGREGATIONS
    assert (cfg.algo.k is not None) == spec.takes_k
    assert cfg.model.name in ("smollm2-135m-instruct", "tiny-arith")


def test_presets_cover_both_models_and_seven_algorithms():
    names = {(p.parent.name, p.stem) for p in CONFIGS}
    algos = {"grpo", "dr_grpo", "dapo", "gpg", "aapo", "pkpo", "maxpo"}
    assert names >= {(m, a) for m in ("smollm2", "tiny_arith") for a in algos}


def test_files_replace_mappings_and_dotted_overrides_merge_into_them(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("data:\n  source: arith\n  task_kwargs: {}\n")
    assert load_config(f).data.task_kwargs == {}
    assert load_config(f).data.eval_size == TrainConfig().data.eval_size  # other data keys keep defaults
    cfg = load_config(None, ["data.task_kwargs.max_digits=2"])
    assert cfg.data.task_kwargs == {**TrainConfig().data.task_kwargs, "max_digits": 2}


def test_a_dotted_override_replaces_a_whole_mapping_when_given_one():
    assert load_config(None, ["data.task_kwargs={}"]).data.task_kwargs == {}
    assert load_config(None, ["algo.loss_kwargs={clip_eps_high: 0.28}"]).algo.loss_kwargs == {"clip_eps_high": 0.28}
