"""The hf:<repo> data source (rlvr.data.hub) on local stand-ins: save_to_disk folders (DatasetDict and Dataset), data
files, $RLVR_DATA_DIR, the datasets cache read offline; answer extractors and templates on rows; and every error
naming the repo, split, field or row before anything loads. Nothing here reaches the network."""
from __future__ import annotations

import json

import pytest

from rlvr.data import DataError, build_problems, gold
from rlvr.data.hub import parse
from tests.hub_fixtures import GSM8K, MATH500, MATH_TRAIN, cache_dataset, save_split


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No network and a private datasets cache, whatever the environment says."""
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")
    monkeypatch.delenv("RLVR_DATA_DIR", raising=False)


def test_spec_parsing():
    assert parse("openai/gsm8k:main@test") == parse("openai/gsm8k:main@test")
    hs = parse("openai/gsm8k:main@test")
    assert (hs.repo, hs.config, hs.split) == ("openai/gsm8k", "main", "test")
    assert (parse("HuggingFaceH4/MATH-500@test").config, parse("org/x").split) == (None, "train")
    for bad in ("@test", "org/x:@test", "org/x@", ":main"):
        with pytest.raises(DataError, match="hf:<repo>"):
            parse(bad)


def test_a_save_to_disk_folder_as_repo_and_as_data_path(tmp_path):
    saved = save_split(tmp_path / "m500", MATH500, "test")
    by_repo = build_problems(f"hf:{saved}@test", prompt_field="problem")
    assert [p.answer for p in by_repo] == [r["answer"] for r in MATH500]
    assert [p.prompt for p in by_repo] == [r["problem"] for r in MATH500]
    assert by_repo[0].id == f"{saved}@test:0" and {p.verifier for p in by_repo} == {"math"}   # hf's default
    by_path = build_problems("hf:HuggingFaceH4/MATH-500@test", prompt_field="problem", path=str(saved), size=2)
    assert [p.id for p in by_path] == ["HuggingFaceH4/MATH-500@test:0", "HuggingFaceH4/MATH-500@test:1"]
    one = save_split(tmp_path / "one", MATH500, "test", as_dict=False)          # a Dataset: it is the split
    assert len(build_problems("hf:org/x@test", prompt_field="problem", path=str(one))) == 6
    with pytest.raises(DataError, match=r"holds split 'test', not 'train'"):
        build_problems("hf:org/x", prompt_field="problem", path=str(one))


def test_answer_extractors_and_templates_on_rows(tmp_path):
    saved = save_split(tmp_path / "g", GSM8K, "test")
    problems = build_problems(f"hf:{saved}@test", prompt_field="question", answer_extract="hash",
                              template="Q: {question}\nA:", verifier="int")
    assert [p.answer for p in problems] == ["24", "1000"]                    # the thousands separator goes
    assert problems[0].prompt == f"Q: {GSM8K[0]['question']}\nA:"
    math = save_split(tmp_path / "m", MATH_TRAIN, "train")
    boxed = build_problems(f"hf:{math}", answer_field="solution", prompt_field="problem", answer_extract="boxed",
                           template="[{level}] {prompt}")
    assert [p.answer for p in boxed] == ["2", "10", "\\dfrac{3}{4}", "\\frac{1}{2}"]
    assert boxed[1].prompt == "[Level 3] Compute $\\binom{5}{2}$."
    named = build_problems(f"hf:{math}", prompt_field="problem", answer_field="solution", answer_extract="boxed",
                           template="boxed")
    assert named[0].prompt.endswith("\nPlease reason step by step, and put your final answer within \\boxed{}.")


def test_gold_extractors_by_hand():
    assert gold.boxed("so $\\boxed{\\dfrac{1}{2}}$.") == "\\dfrac{1}{2}"
    assert gold.boxed("\\boxed{1} then \\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"
    assert gold.boxed("no box") is None and gold.boxed("\\boxed{3") is None
    assert gold.after_hash("x\n#### 1,234,567\n") == "1234567" and gold.after_hash("#### -3.5") == "-3.5"
    assert gold.after_hash("none") is None and gold.after_hash("#### ") is None
    assert gold.extractor("boxed") is gold.boxed and gold.extractor("rlvr.data.gold:after_hash") is gold.after_hash
    with pytest.raises(DataError, match="unknown answer extractor 'last'.*boxed, hash"):
        gold.extractor("last")


def test_data_files_folders_and_a_single_file(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GSM8K))
    from_folder = build_problems("hf:org/gsm@test", prompt_field="question", answer_extract="hash",
                                 path=str(folder))
    assert [p.answer for p in from_folder] == ["24", "1000"]
    from_file = build_problems("hf:org/gsm", prompt_field="question", answer_extract="hash",
                               path=str(folder / "test.jsonl"))
    assert [p.prompt for p in from_file] == [r["question"] for r in GSM8K]


def test_rlvr_data_dir_holds_a_copy_per_repo(tmp_path, monkeypatch):
    save_split(tmp_path / "root" / "org" / "gsm", GSM8K, "test")
    monkeypatch.setenv("RLVR_DATA_DIR", str(tmp_path / "root"))
    assert len(build_problems("hf:org/gsm@test", prompt_field="question", answer_extract="hash")) == 2


def test_the_datasets_cache_of_an_earlier_download_loads_offline(tmp_path):
    cache_dataset("HuggingFaceH4/MATH-500", None, "test", MATH500)
    problems = build_problems("hf:HuggingFaceH4/MATH-500@test", prompt_field="problem")
    assert [p.answer for p in problems] == [r["answer"] for r in MATH500]
    cache_dataset("openai/gsm8k", "main", "test", GSM8K)
    assert [p.answer for p in build_problems("hf:openai/gsm8k:main@test", prompt_field="question",
                                             answer_extract="hash")] == ["24", "1000"]


def test_errors_name_the_repo_split_field_and_row(tmp_path):
    with pytest.raises(DataError, match=r"hf nobody/nothing \(config default, split test\): cannot load it: "
                                        r".*HF_HUB_OFFLINE=0 lets it download"):
        build_problems("hf:nobody/nothing@test", prompt_field="problem")
    saved = save_split(tmp_path / "m", MATH500, "test")
    with pytest.raises(DataError, match=r"split train\): the local copy .* has no split 'train' \(splits: test\)"):
        build_problems("hf:org/m500@train", prompt_field="problem", path=str(saved))
    with pytest.raises(DataError, match=r"split test\) from .*: no field 'question' \(fields: problem, solution, "
                                        r"answer, subject, level, unique_id\)"):
        build_problems("hf:org/m500@test", prompt_field="question", path=str(saved))
    import datasets

    empty = datasets.Dataset.from_dict({"prompt": [], "answer": []}, split=datasets.NamedSplit("test"))
    datasets.DatasetDict({"test": empty}).save_to_disk(str(tmp_path / "e"), num_shards={"test": 1})
    with pytest.raises(DataError, match=r"hf org/e \(config default, split test\) from .*/e: the split is empty"):
        build_problems("hf:org/e@test", path=str(tmp_path / "e"))
    with pytest.raises(DataError, match="local copy .*missing of org/m500 does not exist"):
        build_problems("hf:org/m500@test", path=str(tmp_path / "missing"))
    bad = save_split(tmp_path / "bad", [MATH_TRAIN[0], {**MATH_TRAIN[1], "solution": "no box here"},
                                        {**MATH_TRAIN[2], "problem": " "}], "train")
    with pytest.raises(DataError) as err:
        build_problems(f"hf:{bad}", prompt_field="problem", answer_field="solution", answer_extract="boxed")
    msg = str(err.value)
    assert "2 bad row(s) (0-based row indices)" in msg
    assert "row 1: answer extractor 'boxed' finds no answer in field 'solution' ('no box here')" in msg
    assert "row 2: empty prompt (field 'problem')" in msg


def test_options_the_source_does_not_take_are_refused():
    with pytest.raises(DataError, match="answer_extract applies to sources with row fields"):
        build_problems("champ", answer_extract="boxed")
    with pytest.raises(DataError, match=r"a local copy \(path\) applies to hub datasets"):
        build_problems("arith", size=3, path="/tmp")
    with pytest.raises(DataError, match="unknown prompt template 'fancy'; named templates: boxed, plain, "):
        build_problems("arith", size=3, template="fancy")
