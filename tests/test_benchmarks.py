r"""The benchmark presets (rlvr.data.benchmarks) on local stand-ins with the real sets' schema (tests/hub_fixtures.py):
each loads through the data-source registry with its facts (fields, gold extraction, verifier, template), its golds
are checked end to end by the verifier it names (math-verify for LaTeX: fractions, \dfrac, intervals, tuples,
degrees, text), the trainer refuses a verifier that cannot check them before any model loads, and the presets
table of docs/data.md says what the code says."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlvr.config import load_config
from rlvr.data import DataError, build_problems, sources
from rlvr.data.benchmarks import BENCHMARKS, SUITES
from rlvr.rewards import RewardPool
from rlvr.trainer import build
from tests.hub_fixtures import FIXTURES, GSM8K, MATH500, cache_dataset, write_data_dir

STEP = "\nPlease reason step by step, and put your final answer within \\boxed{}."

# preset -> (golds after extraction, a right completion per problem, a wrong one per problem)
GOLDS = {
    "math500": ([r"\frac{14}{3}", r"(-\infty,-2)\cup(3,\infty)", r"\left( 3, \frac{\pi}{2} \right)", r"30^\circ",
                 r"\text{Evelyn}", r"\dfrac{3}{4}"],
                [r"\boxed{4\frac{2}{3}}", r"\boxed{(-\infty,-2)\cup(3,\infty)}", r"so \boxed{(3, \frac{\pi}{2})}",
                 r"\boxed{30}", r"\boxed{Evelyn}", r"\boxed{0.75}"],
                [r"\boxed{\frac{14}{5}}", r"\boxed{(-2,3)}", r"\boxed{(3, \pi)}", r"\boxed{31}", r"\boxed{\text{Bob}}",
                 r"\boxed{\frac{4}{3}}"]),
    "aime24": (["24", "033"], [r"\boxed{24}", r"\boxed{33}"], [r"\boxed{25}", r"\boxed{34}"]),
    "amc23": (["27", "0.5"], [r"\boxed{27}", r"\boxed{\frac{1}{2}}"], [r"\boxed{9}", r"\boxed{\frac{1}{4}}"]),
    "minerva": ([r"7.3 \times 10^{-3}", r"\frac{1}{2}"], [r"\boxed{7.3 \times 10^{-3}}", r"\boxed{0.5}"],
                [r"\boxed{7.3 \times 10^{-2}}", r"\boxed{2}"]),
    "olympiadbench": ([r"$\frac{1}{2}$", r"2 \sqrt{5}"], [r"\boxed{0.5}", r"\boxed{\sqrt{20}}"],
                      [r"\boxed{2}", r"\boxed{\sqrt{5}}"]),
    "gsm8k": (["24", "1000"], ["#### 24", r"\boxed{1,000}"], ["#### 23", r"\boxed{100}"]),
    "math_train": (["2", "10", r"\dfrac{3}{4}", r"\frac{1}{2}"], [r"\boxed{2}", r"\boxed{10}", r"\boxed{6/8}",
                                                                 r"\boxed{0.5}"],
                   [r"\boxed{3}", r"\boxed{20}", r"\boxed{\frac{4}{3}}", r"\boxed{2}"]),
}


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")
    monkeypatch.delenv("RLVR_DATA_DIR", raising=False)


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    root = write_data_dir(tmp_path / "data")
    monkeypatch.setenv("RLVR_DATA_DIR", str(root))
    return root


@pytest.mark.parametrize("name", sorted(GOLDS))
def test_each_preset_loads_its_fields_gold_template_and_verifier(name, data_dir):
    rows, _ = FIXTURES[name]
    b = BENCHMARKS[name]
    problems = build_problems(name)
    golds = GOLDS[name][0]
    assert [p.answer for p in problems] == golds
    assert [p.prompt for p in problems] == [r[b.prompt_field] + STEP for r in rows]        # the boxed template
    assert [p.id for p in problems] == [f"{name}:{i}" for i in range(len(rows))]
    want = ["int" if re.fullmatch(r"-?\d+", g) else "math" for g in golds] if b.verifier is None else ["math"] * len(golds)
    assert [p.verifier for p in problems] == want
    assert [p.prompt for p in build_problems(name, template="plain", size=1)] == [rows[0][b.prompt_field]]


@pytest.mark.parametrize("name", sorted(GOLDS))
def test_golds_are_scored_end_to_end_by_the_presets_verifier(name, data_dir):
    problems = build_problems(name)
    golds, right, wrong = GOLDS[name]
    with RewardPool(num_workers=0) as pool:
        good = pool.score([p.verifier for p in problems], right, [p.answer for p in problems])
        bad = pool.score([p.verifier for p in problems], wrong, [p.answer for p in problems])
    assert [r.score for r in good] == [1.0] * len(golds), [(r.extracted, r.reason) for r in good]
    assert [r.score for r in bad] == [0.0] * len(golds), [(r.extracted, r.reason) for r in bad]


def test_level_filter_keeps_the_original_row_numbers(data_dir):
    problems = build_problems("math_l35")
    assert [p.id for p in problems] == ["math_l35:1", "math_l35:2", "math_l35:3"]
    assert [p.answer for p in problems] == ["10", r"\dfrac{3}{4}", r"\frac{1}{2}"]


def test_a_preset_reads_the_datasets_cache_offline_and_data_path_wins(tmp_path):
    cache_dataset("HuggingFaceH4/MATH-500", None, "test", MATH500[:2])
    cache_dataset("openai/gsm8k", "main", "test", GSM8K)
    assert [p.answer for p in build_problems("math500")] == GOLDS["math500"][0][:2]
    assert [p.answer for p in build_problems("gsm8k")] == ["24", "1000"]
    local = write_data_dir(tmp_path / "local", ["math500"])
    assert len(build_problems("math500", path=str(local / "math500"))) == 6        # the local copy, not the cache


def test_preset_facts_and_refusals():
    for name, b in BENCHMARKS.items():
        entry, arg = sources.source(name)
        assert arg is None and entry.local_copy and not entry.row_fields and entry.default_template == "boxed"
        assert entry.default_verifier == b.verifier
    assert BENCHMARKS["gsm8k"].verifier is None and BENCHMARKS["minerva"].answer_extract == "boxed"
    with pytest.raises(DataError, match="prompt_field/answer_field apply to sources with row fields"):
        build_problems("math500", prompt_field="question")
    with pytest.raises(DataError, match=r"answer_extract applies .* \(a preset extracts its own gold\)"):
        build_problems("gsm8k", answer_extract="boxed")
    with pytest.raises(DataError, match=r"hf HuggingFaceH4/MATH-500 \(config default, split test\): cannot load it"):
        build_problems("math500")                                            # no copy, no cache, offline
    assert SUITES["math"].datasets == ("math500", "aime24", "amc23", "minerva", "olympiadbench")
    assert (SUITES["math"].n, SUITES["math"].temperature, SUITES["math"].top_p, SUITES["math"].max_new_tokens) == \
        (1, 0.6, 0.95, 32768)


def test_the_trainer_refuses_a_verifier_that_cannot_check_the_golds_before_loading(data_dir):
    with pytest.raises(DataError, match=r"'math500' takes none \(data.task_kwargs=\{\} clears the main job's"):
        build.build_problems(load_config(None, ["data.source=math500"]))   # the main job's reasoning-gym options
    cfg = load_config(None, ["data.source=math500", "data.eval_size=2", "data.task_kwargs={}"])  # verifier int_last
    with pytest.raises(ValueError, match=r"data.source=math500 with data.verifier=int_last: verifier 'int_last' "
                                         r"cannot check the gold '\\\\frac\{14\}\{3\}' of problem math500:0: .*"
                                         r"data.verifier=null uses the source's own verifier"):
        build.build_problems(cfg)
    train, held_out = build.build_problems(load_config(None, ["data.source=math500", "data.eval_size=2",
                                                              "data.task_kwargs={}", "data.verifier=null"]))
    assert len(train) == 4 and len(held_out) == 2 and {p.verifier for p in train + held_out} == {"math"}
    gsm = build.build_problems(load_config(None, ["data.source=gsm8k", "data.eval_size=1", "data.task_kwargs={}"]))
    assert {p.verifier for p in gsm[0] + gsm[1]} == {"int_last"}


def test_the_docs_presets_table_says_what_the_code_says():
    text = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", text, re.M)}
    assert set(rows) >= set(BENCHMARKS)
    for name, b in BENCHMARKS.items():
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        assert cells[1] == f"{b.repo}" + (f" ({b.config})" if b.config else ""), cells
        assert cells[2] == f"`{b.split}`" and cells[3] == f"`{b.prompt_field}` / `{b.answer_field}`", cells
        assert cells[4] == (f"`{b.answer_extract}`" if b.answer_extract else "the field"), cells
        assert cells[5] == (f"`{b.verifier}`" if b.verifier else "`int` (integer golds)"), cells
