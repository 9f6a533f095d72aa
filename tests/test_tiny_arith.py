"""The tiny-arith preset: the pretraining script's pieces (hand-worked values) and the shipped folder
(loads, size, tokenizer, well-formed completions; its metadata.json checked against the script, the shipped config,
and the final evaluation recomputed from the shipped weights)."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlvr.data import arith_problems  # noqa: E402
from rlvr.models import TINY_ARITH_DIR, char_tokenizer, encode_prompt, load_model  # noqa: E402
from rlvr.types import Problem  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_tiny_arith.py"
MAX_BYTES = 20 * 1024 * 1024


def _load_script():
    spec = importlib.util.spec_from_file_location("pretrain_tiny_arith", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pt = _load_script()


@pytest.fixture(scope="module")
def metadata() -> dict:
    return json.loads((TINY_ARITH_DIR / "metadata.json").read_text())


@pytest.fixture(scope="module")
def shipped():
    return load_model("tiny-arith")


def _problem(prompt: str, answer: str) -> Problem:
    return Problem(prompt=prompt, answer=answer, verifier="int", id="t/0")


# ----------------------------------------------------------------------------------------------
# Script pieces
# ----------------------------------------------------------------------------------------------

def test_lr_schedule_hand_values():
    # warmup 2: 1/2, 2/2; cosine over the remaining 3 steps at progress 1/3, 2/3, 1:
    # (1 + cos(pi/3))/2 = 0.75, (1 + cos(2pi/3))/2 = 0.25, 0.
    got = [pt.lr_at(s, peak=1.0, warmup=2, total=5, min_ratio=0.0) for s in range(5)]
    assert got == pytest.approx([0.5, 1.0, 0.75, 0.25, 0.0])
    # min_ratio 0.1 lifts the floor: 0.1 + 0.9 * 0.75 = 0.775 at step 2; never below 0.1 (also past total).
    assert pt.lr_at(2, peak=1.0, warmup=2, total=5, min_ratio=0.1) == pytest.approx(0.775)
    assert pt.lr_at(9, peak=2.0, warmup=2, total=5, min_ratio=0.1) == pytest.approx(0.2)


def test_encode_example_layout():
    tok = char_tokenizer()
    ids, n_prompt = pt.encode_example(tok, _problem("1+2=", "3"))
    chars = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    assert n_prompt == 5
    assert ids == [tok.bos_token_id] + chars("1+2=") + chars("1+2=3\n#### 3") + [tok.eos_token_id]
    assert ids[:n_prompt] == encode_prompt(tok, "1+2=")  # exactly the prompt RL will feed


def test_collate_pads_right_and_masks_prompts():
    input_ids, labels = pt.collate([([1, 10, 11, 2], 2), ([1, 12, 13, 14, 15, 2], 3)], pad_id=0)
    assert input_ids.tolist() == [[1, 10, 11, 2, 0, 0], [1, 12, 13, 14, 15, 2]]
    assert labels.tolist() == [[-100, -100, 11, 2, -100, -100], [-100, -100, -100, 14, 15, 2]]
    with pytest.raises(ValueError, match="example 0"):
        pt.collate([([1, 2], 2)], pad_id=0)


def test_train_problems_are_deterministic_and_skip_held_out():
    first = pt.train_problems(3, seed=0, batch_size=16, held_out=set(), knobs={})
    assert [p.prompt for p in first] == [p.prompt for p in pt.train_problems(3, seed=0, batch_size=16,
                                                                               held_out=set(), knobs={})]
    drawn = [p.prompt for p in arith_problems(16 + 8, seed=pt.batch_seed(0, 3))]
    assert [p.prompt for p in first] == drawn[:16]
    held = {drawn[0], drawn[5]}
    kept = pt.train_problems(3, seed=0, batch_size=16, held_out=held, knobs={})
    assert [p.prompt for p in kept] == drawn[1:5] + drawn[6:18]  # the two held-out ones replaced by the spares
    other_step = pt.train_problems(4, seed=0, batch_size=16, held_out=set(), knobs={})
    assert [p.prompt for p in other_step] != [p.prompt for p in first]
    assert pt.batch_seed(0, 0) != pt.batch_seed(0, 1) != pt.batch_seed(1, 0)


def test_should_stop_and_argument_checks():
    assert not pt.should_stop(50, 0.30, min_steps=100, target=(0.25, 0.45))   # too early
    assert not pt.should_stop(150, 0.20, min_steps=100, target=(0.25, 0.45))  # below the window
    assert pt.should_stop(150, 0.25, min_steps=100, target=(0.25, 0.45))      # in it
    assert pt.should_stop(150, 0.60, min_steps=100, target=(0.25, 0.45))      # overshot: stop anyway
    with pytest.raises(ValueError, match="--target"):
        pt.parse_args(["--target", "0.5", "0.2"])
    with pytest.raises(ValueError, match="--batch-size"):
        pt.parse_args(["--batch-size", "0"])


def test_script_end_to_end_on_a_micro_model(tmp_path):
    """A 2-step run of a micro model writes a loadable folder with metadata; a rerun gives the same weights."""
    argv = ["--hidden-size", "32", "--num-layers", "1", "--num-heads", "2", "--num-kv-heads", "1",
            "--intermediate-size", "64", "--max-steps", "2", "--eval-every", "1", "--eval-size", "8",
            "--batch-size", "8", "--max-new-tokens", "4", "--threads", "1", "--min-steps", "5"]
    meta = pt.main(argv + ["--out", str(tmp_path / "a")])
    pt.main(argv + ["--out", str(tmp_path / "b")])
    assert meta["steps"] == 2 and [h["step"] for h in meta["history"]] == [1, 2]
    saved = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert saved["parameters"] == meta["parameters"] and saved["final_eval"]["problems"] == 8
    model_a, _ = load_model(str(tmp_path / "a"))
    model_b, _ = load_model(str(tmp_path / "b"))
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), name
    assert not list(tmp_path.glob(".a-*"))  # the temporary folder is gone


# ----------------------------------------------------------------------------------------------
# The shipped folder
# ----------------------------------------------------------------------------------------------

def test_folder_exists_and_is_small():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metadata.json", "README.md"):
        assert (TINY_ARITH_DIR / name).is_file(), name
    total = sum(f.stat().st_size for f in TINY_ARITH_DIR.rglob("*") if f.is_file())
    assert total <= MAX_BYTES


def test_loads_with_transformers_and_the_preset(shipped, metadata):
    from transformers import AutoModelForCausalLM
    plain = AutoModelForCausalLM.from_pretrained(TINY_ARITH_DIR)
    model, _ = shipped
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n <= 5_000_000
    assert n == metadata["parameters"] == sum(p.numel() for p in plain.parameters())
    assert type(model).__name__ == "Qwen2ForCausalLM" and not model.training
    for (name, a), (_, b) in zip(model.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name


def _assert_is_char_tokenizer(tok) -> None:
    ref = char_tokenizer()
    text = "Q: 77+97-98=77+97=174\n174-98=76\n#### 76"  # every kind of character: digits, ops, space, newline
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == ref.encode(text, add_special_tokens=False) and len(ids) == len(text)
    assert tok.decode(ids) == text
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.get_vocab() == ref.get_vocab() and len(tok) == len(ref) == 99
    assert encode_prompt(tok, "12+7=") == [1] + ref.encode("12+7=", add_special_tokens=False)


def test_saved_tokenizer_files_are_the_char_tokenizer():
    from transformers import PreTrainedTokenizerFast
    _assert_is_char_tokenizer(PreTrainedTokenizerFast.from_pretrained(TINY_ARITH_DIR))


def test_preset_tokenizer_is_the_char_tokenizer(shipped):
    """load_model("tiny-arith") must give back the char tokenizer. (AutoTokenizer alone does not: transformers
    5.17 lists qwen2 among MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS and forces Qwen2Tokenizer on any folder
    whose config is qwen2, which re-splits text with its own regex and drops spaces and newlines.)"""
    _assert_is_char_tokenizer(shipped[1])


def test_metadata_describes_the_shipped_model_and_the_run_its_command_makes(shipped, metadata):
    """metadata.json against what it describes: its command, re-parsed by the script, gives its recorded arguments
    (rerunning the command rebuilds this model); the architecture arguments are the shipped config's; every history
    row is an evaluation at a multiple of eval_every with the lr the script's schedule gives that step; the run
    stopped at the first evaluation the script's stop rule accepts; stopped_in_target is the final pass@1 against
    the target window; the README is the script's rendering of this metadata."""
    args = metadata["arguments"]
    argv = shlex.split(metadata["command"])
    assert argv[:3] == ["HF_HUB_OFFLINE=1", "python", "scripts/pretrain_tiny_arith.py"]
    parsed = {k: v for k, v in vars(pt.parse_args(argv[3:])).items() if k != "out"}
    assert json.loads(json.dumps(parsed)) == args
    config = shipped[0].config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size, config.max_position_embeddings) == (
        args["hidden_size"], args["num_layers"], args["num_heads"], args["num_kv_heads"], args["intermediate_size"],
        args["max_positions"])
    history, steps = metadata["history"], metadata["steps"]
    assert [h["step"] for h in history] == list(range(args["eval_every"], steps + 1, args["eval_every"]))
    for h in history:  # the lr of the step's optimiser step (0-based step - 1)
        assert h["lr"] == pytest.approx(pt.lr_at(h["step"] - 1, peak=args["lr"], warmup=args["warmup_steps"],
                                                 total=args["max_steps"], min_ratio=args["min_lr_ratio"]), rel=1e-12)
    stops = [pt.should_stop(h["step"], h["pass@1"], min_steps=args["min_steps"], target=args["target"])
             for h in history]
    assert stops == [False] * (len(history) - 1) + [True] and steps < args["max_steps"]
    low, high = args["target"]
    assert metadata["stopped_in_target"] == (low <= metadata["final_eval"]["pass@1"] <= high)
    assert 0.2 <= metadata["final_eval"]["pass@1"] <= 0.5  # "roughly 20-50 %" (issue)
    assert (TINY_ARITH_DIR / "README.md").read_text() == pt.readme_text(metadata)


def test_final_evaluation_recomputes_exactly_from_the_shipped_weights(shipped, metadata):
    """The recorded final evaluation (sampled pass@1 at temperature 1 with the run's seed, and greedy accuracy, over
    all held-out problems the arguments name), recomputed with the shipped weights and tokenizer by the script's own
    evaluate: the same counts exactly (reproduced at 1, 2 and 3 torch threads), and it is the last history row."""
    model, tok = shipped
    args, final = metadata["arguments"], metadata["final_eval"]
    held = arith_problems(args["eval_size"], seed=args["eval_seed"], **args["knobs"])
    got = pt.evaluate(model, tok, held, seed=args["seed"], max_new_tokens=args["max_new_tokens"])
    assert (final["problems"], final["temperature"], final["sampler_seed"]) == (len(held), 1.0, args["seed"])
    assert got == {"pass@1": final["pass@1"], "greedy": final["greedy"]}
    assert got == {k: metadata["history"][-1][k] for k in ("pass@1", "greedy")}


def _held_out(metadata: dict, count: int) -> list[Problem]:
    return arith_problems(metadata["final_eval"]["problems"], seed=metadata["eval_seed"],
                          **metadata["knobs"])[:count]


def test_greedy_completions_are_well_formed(shipped, metadata):
    model, tok = shipped
    problems = _held_out(metadata, 8)
    _, texts = pt.accuracy(model, tok, problems, temperature=0.0, seed=0, max_new_tokens=metadata["max_new_tokens"])
    line = r"\d+[+-]\d+=\d+\n"
    for problem, text in zip(problems, texts):
        # one "a<op>b=c" line per operation of the prompt, then the answer, as worked_solution writes them
        n_ops = sum(problem.prompt.count(op) for op in "+-")
        assert re.fullmatch(line * n_ops + r"#### \d+", text), (problem.prompt, text)
        assert text.startswith(re.match(r"\d+[+-]\d+", problem.prompt).group(0) + "="), (problem.prompt, text)
