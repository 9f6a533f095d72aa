"""`rlvr eval MODEL --suite math` end to end on the CPU: tiny-arith on local stand-ins of the five benchmarks (their
real fields and gold formats, arithmetic problems the tiny model can sometimes solve), every number of suite.json and
suite.md recomputed from the per-problem records; the suite's default settings; `--data gsm8k` on a stand-in, and
(slow) SmolLM2 on it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlvr.cli import build_parser, main
from rlvr.config import TrainConfig
from rlvr.data import build_problems
from rlvr.eval import pass_at_k
from rlvr.eval.command import settings
from tests.hub_fixtures import GSM8K, write_data_dir

SUITE = ("math500", "aime24", "amc23", "minerva", "olympiadbench")
TITLES = ("MATH-500", "AIME24", "AMC23", "Minerva", "OlympiadBench")


def _arith_rows(name: str, seed: int) -> list[dict]:
    """Stand-in rows of preset ``name`` holding arithmetic problems, in that set's own fields and gold format."""
    rows = []
    for i, p in enumerate(build_problems("arith", size=8, seed=seed)):
        a = int(p.answer)
        rows.append({
            "math500": {"problem": p.prompt, "solution": f"$\\boxed{{{a}}}$", "answer": str(a), "subject": "Algebra",
                        "level": 1, "unique_id": f"test/algebra/{i}.json"},
            "aime24": {"id": i, "problem": p.prompt, "solution": "-", "answer": str(a), "url": "-", "year": "2024"},
            "amc23": {"id": i, "problem": p.prompt, "answer": float(a), "url": "-", "question": p.prompt},
            "minerva": {"problem": p.prompt, "solution": f"So the answer is $\\boxed{{{a}}}$.", "type": "x", "idx": i},
            "olympiadbench": {"id": i, "question": p.prompt, "answer": f"${a}$", "final_answer": [f"${a}$"]},
        }[name])
    return rows


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite")
    root = write_data_dir(tmp / "data", list(SUITE), {n: _arith_rows(n, seed) for seed, n in enumerate(SUITE)})
    mp = pytest.MonkeyPatch()
    mp.setenv("RLVR_DATA_DIR", str(root))
    try:
        assert main(["eval", "tiny-arith", "--suite", "math", "--n", "2", "--temperature", "1.0", "--top-p", "1.0",
                     "--max-new-tokens", "32", "--template", "plain", "--workers", "0", "--bootstrap", "200",
                     "--out", str(tmp / "out")]) == 0
    finally:
        mp.undo()
    return tmp / "out"


def _records(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / name / "problems.jsonl").read_text().splitlines()]


def test_suite_json_and_markdown_equal_the_numbers_recomputed_from_the_records(suite_run):
    rep = json.loads((suite_run / "suite.json").read_text())
    md = (suite_run / "suite.md").read_text()
    assert list(rep["benchmarks"]) == list(SUITE) and [b["title"] for b in rep["benchmarks"].values()] == list(TITLES)
    assert rep["n"] == 2 and rep["sampling"]["temperature"] == 1.0 and rep["sampling"]["max_new_tokens"] == 32
    assert list(rep["metrics"]) == ["avg@2", "pass@1", "pass@2"]
    assert "| metric | MATH-500 (8) | AIME24 (8) | AMC23 (8) | Minerva (8) | OlympiadBench (8) | Avg |" in md
    for label in rep["metrics"]:
        want = {}
        for name in SUITE:
            recs = _records(suite_run, name)
            assert len(recs) == 8 and all(len(r["samples"]) == 2 for r in recs)
            k = 2 if label == "avg@2" else int(label.split("@")[1])
            want[name] = (sum(r["correct"] for r in recs) / 16 if label == "avg@2"
                          else sum(pass_at_k(2, r["correct"], k) for r in recs) / 8)
            cell = rep["metrics"][label]["benchmarks"][name]
            assert cell["mean"] == pytest.approx(want[name], abs=1e-12)
            assert cell["lo"] <= cell["mean"] + 1e-12 <= cell["hi"] + 2e-12
        avg = sum(want.values()) / len(SUITE)
        assert rep["metrics"][label]["average"] == pytest.approx(avg, abs=1e-12)
        cells = [f"{100 * c['mean']:.1f} [{100 * c['lo']:.1f}, {100 * c['hi']:.1f}]"
                 for c in rep["metrics"][label]["benchmarks"].values()]
        assert f"| {label} | " + " | ".join(cells) + f" | {100 * avg:.1f} |" in md
    assert 0 < rep["metrics"]["avg@2"]["average"] < 1        # tiny-arith solves some of the arithmetic, not all


def test_each_benchmark_was_scored_with_its_verifier_on_its_extracted_gold(suite_run):
    from rlvr.rewards.verifiers import get_verifier

    for name in SUITE:
        recs = _records(suite_run, name)
        assert [r["id"] for r in recs] == [f"{name}:{i}" for i in range(8)]
        for r in recs:                      # golds: "144" from a box, a float 144.0, or "$144$", all as text
            assert r["answer"].strip("$").isdigit()
            for s in r["samples"]:
                assert s["score"] == get_verifier("math")(s["completion"], r["answer"]).score
        report = json.loads((suite_run / name / "eval.json").read_text())
        assert report["suite"] == "math" and report["system_prompt"] is None and report["problems"] == 8


def test_suite_defaults_are_the_papers_settings_and_flags_override_them():
    parser = build_parser()
    s = settings(parser.parse_args(["eval", "m", "--suite", "math"]), TrainConfig())
    assert s.specs == SUITE and s.n == 1 and s.ks is None
    assert (s.params.temperature, s.params.top_p, s.params.max_new_tokens) == (0.6, 0.95, 32768)
    s = settings(parser.parse_args(["eval", "m", "--suite", "math", "--data", "gsm8k", "--n", "16", "--top-p", "1",
                                    "--max-new-tokens", "4096"]), TrainConfig())
    assert s.specs == ("gsm8k", *SUITE) and s.n == 16
    assert (s.params.temperature, s.params.top_p, s.params.max_new_tokens) == (0.6, 1.0, 4096)
    plain = settings(parser.parse_args(["eval", "m"]), TrainConfig())
    assert plain.specs == ("heldout",) and plain.n == 1 and plain.params.temperature == 0.0
    assert plain.params.top_p == 1.0 and plain.params.max_new_tokens == TrainConfig().rollout.max_new_tokens
    with pytest.raises(ValueError, match="unknown eval suite 'physics'; suites: math"):
        settings(parser.parse_args(["eval", "m", "--suite", "physics"]), TrainConfig())


def test_gsm8k_on_a_stand_in_with_tiny_arith(tmp_path, monkeypatch):
    rows = [{"question": p.prompt, "answer": f"{p.prompt}{p.answer}\n#### {p.answer}"}
            for p in build_problems("arith", size=6, seed=3)]
    monkeypatch.setenv("RLVR_DATA_DIR", str(write_data_dir(tmp_path / "data", ["gsm8k"], {"gsm8k": rows})))
    assert main(["eval", "tiny-arith", "--data", "gsm8k", "--template", "plain", "--workers", "0",
                 "--out", str(tmp_path / "out")]) == 0
    recs = _records(tmp_path / "out", "gsm8k")
    assert [r["answer"] for r in recs] == [r["answer"].rsplit("#### ", 1)[1] for r in rows]
    report = json.loads((tmp_path / "out" / "gsm8k" / "eval.json").read_text())
    from rlvr.rewards.verifiers import get_verifier
    assert report["metrics"]["pass@1"]["mean"] == sum(
        get_verifier("int")(r["samples"][0]["completion"], r["answer"]).score for r in recs) / 6


def test_a_missing_dataset_is_an_error_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.delenv("RLVR_DATA_DIR", raising=False)
    assert main(["eval", "no-such-model", "--suite", "math", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "hf HuggingFaceH4/MATH-500 (config default, split test): cannot load it" in err   # not the model's error


@pytest.mark.slow
def test_smollm2_on_gsm8k_end_to_end(tmp_path, monkeypatch):
    """The issue's check: `rlvr eval smollm2-135m-instruct --data gsm8k` against a local GSM8K stand-in on the CPU
    (the preset's boxed template through SmolLM2's chat template, int verifier on the #### golds)."""
    monkeypatch.setenv("RLVR_DATA_DIR", str(write_data_dir(tmp_path / "data", ["gsm8k"])))
    assert main(["eval", "smollm2-135m-instruct", "--data", "gsm8k", "--max-new-tokens", "64", "--workers", "0",
                 "--out", str(tmp_path / "out")]) == 0
    recs = _records(tmp_path / "out", "gsm8k")
    assert [r["answer"] for r in recs] == ["24", "1000"] and [r["prompt"] for r in recs] == [
        row["question"] + "\nPlease reason step by step, and put your final answer within \\boxed{}." for row in GSM8K]
    report = json.loads((tmp_path / "out" / "gsm8k" / "eval.json").read_text())
    assert report["metrics"]["pass@1"]["mean"] == sum(r["correct"] for r in recs) / 2
    assert all(len(r["samples"][0]["completion"]) > 0 for r in recs)


def test_a_runs_own_template_is_the_default_for_every_dataset():
    from rlvr.config import load_config
    from rlvr.data import templates
    from rlvr.eval.command import Target, dataset_problems, dataset_system

    parser = build_parser()
    run = Target("run", load_config(None, ["data.template='Q: {prompt}'"]), None)
    args = parser.parse_args(["eval", "run", "--data", "arith", "--size", "2"])
    assert [p.prompt for p in dataset_problems("arith", run, args)] == \
        ["Q: " + p.prompt for p in build_problems("arith", size=2, seed=0)]
    flagged = parser.parse_args(["eval", "run", "--data", "arith", "--size", "2", "--template", "plain"])
    assert [p.prompt for p in dataset_problems("arith", run, flagged)] == \
        [p.prompt for p in build_problems("arith", size=2, seed=0)]                  # the flag wins
    qwen = Target("run", load_config(None, ["data.template=qwen_math"]), None)
    assert dataset_system("math500", qwen, args) == templates.STEP_BY_STEP
    bare = Target("m", TrainConfig(), None)
    assert dataset_system("math500", bare, args) is None                            # math500's default: boxed
