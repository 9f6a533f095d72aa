"""Config: defaults, YAML files, dotted overrides, and errors that name the key."""
import dataclasses
import typing
from pathlib import Path

import pytest

from rlvr import advantages, losses
from rlvr.config import (RENAMED, ConfigError, RayConfig, TrainConfig, VLLMConfig, dump_config, field_docs, load_config,
                         parse_override, to_dict)

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


# ----------------------------------------------------------------------------------------------
# Every key documented; backend-only keys in their backend's section
# ----------------------------------------------------------------------------------------------

def _sections(cls: type = TrainConfig, prefix: str = ""):
    """(dotted prefix, dataclass) for every section of the config tree, nested ones included."""
    yield prefix, cls
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _sections(hints[f.name], f"{prefix}{f.name}.")


def test_every_config_key_has_an_attribute_docstring():
    sections = dict(_sections())
    assert {"", "model.", "data.", "rollout.", "rollout.vllm.", "rollout.ray.", "algo.", "log."} <= set(sections)
    undocumented = [prefix + f.name for prefix, cls in sections.items() for f in dataclasses.fields(cls)
                    if not field_docs(cls).get(f.name, "").strip()]
    assert undocumented == []


def test_field_docs_reads_the_string_under_each_field_only():
    @dataclasses.dataclass(frozen=True)
    class Toy:
        documented: int = 1
        """Counts things,
        in units of things."""
        bare: int = 2
        after: str = "x"
        """About after."""

    assert field_docs(Toy) == {"documented": "Counts things,\nin units of things.", "after": "About after."}
    assert field_docs(RayConfig)["address"].startswith("None starts a local Ray")


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_moved_keys_name_their_new_place(old, tmp_path):
    with pytest.raises(ConfigError, match=f"unknown config key '{old}' \\(moved to rollout\\.(ray|vllm)\\."):
        load_config(None, [f"{old}=1"])
    section, key = old.split(".")
    f = tmp_path / "old.yaml"
    f.write_text(f"{section}:\n  {key}: 1\n")
    with pytest.raises(ConfigError, match=f"'{old}' \\(moved to .*old.yaml"):
        load_config(f)


def test_backend_sections_take_dotted_overrides_and_yaml(tmp_path):
    cfg = load_config(None, ["rollout.ray.address=auto", "rollout.ray.threads_per_worker=2",
                             "rollout.vllm.engine_kwargs.seed=3", "rollout.vllm.enforce_eager=true"])
    assert cfg.rollout.ray == RayConfig(address="auto", cpus_per_worker=1.0, threads_per_worker=2)
    assert cfg.rollout.vllm == VLLMConfig(enforce_eager=True, engine_kwargs={"seed": 3})
    f = tmp_path / "r.yaml"
    f.write_text("rollout:\n  backend: ray\n  ray:\n    cpus_per_worker: 0.5\n")
    cfg = load_config(f, ["rollout.ray.address=host:6379"])
    assert (cfg.rollout.backend, cfg.rollout.ray.cpus_per_worker, cfg.rollout.ray.address) == ("ray", 0.5, "host:6379")
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    for override, fragment in [("rollout.ray.adress=x", "unknown config key 'rollout.ray.adress'; valid keys of "
                                                         "rollout.ray: address, cpus_per_worker, threads_per_worker"),
                               ("rollout.vllm.gpu_memory_utilization=1.5",
                                "rollout.vllm.gpu_memory_utilization must be in (0, 1], got 1.5"),
                               ("rollout.ray.cpus_per_worker=0", "rollout.ray.cpus_per_worker must be > 0"),
                               ("rollout.ray=3", "rollout.ray must be a mapping of RayConfig fields")]:
        with pytest.raises(ConfigError) as e:
            load_config(None, [override])
        assert fragment in str(e.value)


def test_vllm_section_defaults_are_the_samplers_own():
    import inspect

    from rlvr.rollout.vllm import VLLMSampler

    params = inspect.signature(VLLMSampler.__init__).parameters
    for f in dataclasses.fields(VLLMConfig):
        if f.name != "engine_kwargs":
            assert params[f.name].default == f.default, f.name
