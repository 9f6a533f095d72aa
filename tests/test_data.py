"""Value tests for rlvr.data: reasoning-gym tasks, the arith task and its worked solutions, JSONL/Parquet
files with their bad-row errors, the train/eval split and the problem-set hash.

Oracles: reasoning-gym itself (called directly with the derived seed), exact Fraction / Python
evaluation of arithmetic expressions, hashlib for the hash, and hand-written expected values.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
from fractions import Fraction

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlvr.data import (DataError, arith_problems, build_problems, problems_hash, split_problems,  # noqa: E402
                       verifier_for_answer, worked_solution)
from rlvr.data.tasks import exact_value, rg_seed  # noqa: E402
from rlvr.models import CHARS  # noqa: E402
from rlvr.types import Problem  # noqa: E402

INT_RE = re.compile(r"-?\d+")


def extract_final(completion: str) -> str | None:
    """Local stand-in for the rewards extraction: the text after the last '####', stripped."""
    if "####" not in completion:
        return None
    return completion.rsplit("####", 1)[1].strip()


# ----------------------------------------------------------------------------------------------
# reasoning-gym tasks
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["basic_arithmetic", "chain_sum", "gsm_symbolic"])
def test_rg_deterministic_in_seed(task):
    a = build_problems(f"rg:{task}", size=12, seed=3)
    b = build_problems(f"rg:{task}", size=12, seed=3)
    c = build_problems(f"rg:{task}", size=12, seed=4)
    assert a == b
    assert len(a) == 12 and len(c) == 12
    assert [p.prompt for p in a] != [p.prompt for p in c]


@pytest.mark.parametrize("task", ["chain_sum", "gsm_symbolic"])
def test_rg_matches_reasoning_gym_items(task):
    """prompt = question, answer = gold, id = <task>/<index>, with reasoning-gym called on the derived seed."""
    import reasoning_gym

    problems = build_problems(f"rg:{task}", size=8, seed=7)
    ds = reasoning_gym.create_dataset(task, size=8, seed=rg_seed(7, task))
    assert [p.id for p in problems] == [f"{task}/{i}" for i in range(8)]
    assert [p.prompt for p in problems] == [ds[i]["question"] for i in range(8)]
    assert [p.answer for p in problems] == [ds[i]["answer"] for i in range(8)]
    assert all(p.verifier == "int" for p in problems)


def test_rg_seeds_do_not_overlap():
    """reasoning-gym seeds item i with seed+i, so raw seeds 0 and 1 share items; derived seeds do not."""
    import reasoning_gym

    raw0 = reasoning_gym.create_dataset("chain_sum", size=30, seed=0)
    raw1 = reasoning_gym.create_dataset("chain_sum", size=30, seed=1)
    assert [raw1[i]["question"] for i in range(29)] == [raw0[i + 1]["question"] for i in range(29)]  # the reason
    a = build_problems("rg:chain_sum", size=30, seed=0, task_kwargs=dict(min_digits=3))
    b = build_problems("rg:chain_sum", size=30, seed=1, task_kwargs=dict(min_digits=3))
    assert len({p.prompt for p in a} & {p.prompt for p in b}) == 0
    assert rg_seed(0, "chain_sum") != rg_seed(1, "chain_sum")
    assert rg_seed(0, "chain_sum") == rg_seed(0, "chain_sum") < 2**32


def test_rg_gsm_symbolic_decimal_answer_gets_math_verifier():
    # Found by search: seed 3 puts a money problem with gold "8437.5" at index 39.
    problems = build_problems("rg:gsm_symbolic", size=40, seed=3)
    by_id = {p.id: p for p in problems}
    assert by_id["gsm_symbolic/39"].answer == "8437.5"
    assert by_id["gsm_symbolic/39"].verifier == "math"
    for p in problems:
        assert p.verifier == ("int" if INT_RE.fullmatch(p.answer) else "math"), p
    assert sum(p.verifier == "int" for p in problems) == 39


def test_rg_basic_arithmetic_golds_are_exact_and_wrong_ones_skipped():
    import reasoning_gym

    problems = build_problems("rg:basic_arithmetic", size=30, seed=1)
    assert len(problems) == 30
    indices = [int(p.id.split("/")[1]) for p in problems]
    assert indices == [i for i in range(31) if i != 19]  # item 19 has a floor-division gold
    skipped = reasoning_gym.create_dataset("basic_arithmetic", size=31, seed=rg_seed(1, "basic_arithmetic"))[19]
    assert exact_value(skipped["metadata"]["expression"]) != Fraction(skipped["answer"])
    for p in problems:
        expression = re.fullmatch(r"Calculate (.*)\.", p.prompt).group(1)
        assert exact_value(expression) == Fraction(p.answer), p
        assert p.verifier == "int"


def test_exact_value():
    assert exact_value("7 / 2") == Fraction(7, 2)
    assert exact_value("-( 3 - 5 ) * 2") == 4
    assert exact_value("2 - -1") == 3
    assert exact_value("2 ** 3") is None
    assert exact_value("1 / ( 2 - 2 )") is None
    assert exact_value("__import__('os')") is None
    assert exact_value("1.5 + 1") is None
    assert exact_value("1 +") is None


def test_rg_task_kwargs_and_other_tasks():
    problems = build_problems("rg:basic_arithmetic", size=20, seed=0, task_kwargs=dict(
        operators=["+"], min_terms=2, max_terms=2, min_digits=1, max_digits=1, allow_negation=False,
        allow_parentheses=False))
    for p in problems:
        a, b = map(int, re.fullmatch(r"Calculate (\d+) \+ (\d+)\.", p.prompt).groups())
        assert p.answer == str(a + b)
    gcd = build_problems("rg:gcd", size=5, seed=0)
    assert [p.id for p in gcd] == [f"gcd/{i}" for i in range(5)]
    assert all(p.verifier == "int" and INT_RE.fullmatch(p.answer) for p in gcd)


def test_rg_template_and_verifier_override():
    plain = build_problems("rg:chain_sum", size=3, seed=0)
    templated = build_problems("rg:chain_sum", size=3, seed=0, template="Q: {prompt}\nA:", verifier="math")
    assert [t.prompt for t in templated] == [f"Q: {p.prompt}\nA:" for p in plain]
    assert [t.verifier for t in templated] == ["math"] * 3
    assert [t.answer for t in templated] == [p.answer for p in plain]
    with pytest.raises(DataError, match="'question'"):
        build_problems("rg:chain_sum", size=3, template="{question}")


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "needs size="),
    (dict(size=0), "positive int"),
    (dict(size=3, task_kwargs={"seed": 1}), r"\['seed'\]"),
    (dict(size=3, prompt_field="question"), r"apply to sources with row fields \(a .jsonl or .parquet file, hf:<repo>\), "
                                            r"not to 'rg:chain_sum'"),
    (dict(size=3, verifier=""), "verifier"),
])
def test_rg_bad_options(kwargs, match):
    with pytest.raises(DataError, match=match):
        build_problems("rg:chain_sum", **kwargs)


def test_rg_unknown_task():
    with pytest.raises(DataError, match="no_such_task"):
        build_problems("rg:no_such_task", size=3)


def test_verifier_for_answer():
    assert [verifier_for_answer(a) for a in ["42", "-7", "0", "3.5", "1/2", "+4", "", "1,000"]] == \
        ["int", "int", "int", "math", "math", "math", "math", "math"]


# ----------------------------------------------------------------------------------------------
# arith
# ----------------------------------------------------------------------------------------------

def test_arith_worked_solution_hand_example():
    assert worked_solution(Problem("12+7+30=", "49", "int", "arith/0")) == "12+7=19\n19+30=49\n#### 49"
    assert worked_solution(Problem("5-12=", "-7", "int", "arith/1")) == "5-12=-7\n#### -7"
    assert worked_solution(Problem("Q 5-12+3=", "-4", "int", "x")) == "5-12=-7\n-7+3=-4\n#### -4"


def test_arith_problems_and_solutions_are_correct():
    problems = arith_problems(500, 0)
    assert [p.id for p in problems] == [f"arith/{i}" for i in range(500)]
    assert len({p.prompt for p in problems}) == 500
    for p in problems:
        assert re.fullmatch(r"\d{1,2}([+-]\d{1,2}){1,2}=", p.prompt), p
        assert p.verifier == "int"
        assert p.answer == str(eval(p.prompt[:-1]))  # digits and +- only, checked by the regex above
        solution = worked_solution(p)
        assert extract_final(solution) == p.answer
        assert len(solution) <= 40
        assert set(p.prompt + solution) <= set(CHARS)
        for line in solution.split("\n")[:-1]:  # every step is a true equation with a non-negative result
            left, right = line.split("=")
            assert eval(left) == int(right) >= 0
    assert {p.prompt.count("+") + p.prompt.count("-") + 1 for p in problems} == {2, 3}


def test_arith_deterministic_and_seeded():
    assert arith_problems(50, 3) == arith_problems(50, 3)
    assert [p.prompt for p in arith_problems(50, 3)] != [p.prompt for p in arith_problems(50, 4)]
    assert build_problems("arith", size=50, seed=3) == arith_problems(50, 3)


def test_arith_knobs():
    problems = arith_problems(200, 1, min_terms=4, max_terms=4, max_operand=9, operators="+")
    for p in problems:
        assert re.fullmatch(r"\d\+\d\+\d\+\d=", p.prompt)
        assert extract_final(worked_solution(p)) == p.answer == str(eval(p.prompt[:-1]))
    negative = arith_problems(200, 1, allow_negative=True, operators="-")
    assert any(int(p.answer) < 0 for p in negative)
    assert all(extract_final(worked_solution(p)) == p.answer == str(eval(p.prompt[:-1])) for p in negative)
    via_build = build_problems("arith", size=5, seed=2, task_kwargs={"max_operand": 9}, template="Q {prompt}")
    assert all(p.prompt.startswith("Q ") and extract_final(worked_solution(p)) == p.answer for p in via_build)


@pytest.mark.parametrize("knobs, match", [
    (dict(max_terms=1, min_terms=1), "min_terms"),
    (dict(operators="*"), "operators"),
    (dict(min_operand=5, max_operand=2), "max_operand"),
    (dict(digits=3), "unknown arith knob"),
])
def test_arith_bad_knobs(knobs, match):
    with pytest.raises(DataError, match=match):
        arith_problems(5, 0, **knobs)


def test_arith_too_few_distinct_problems():
    # max_operand=1, two terms, + only: 4 distinct prompts exist.
    assert len(arith_problems(4, 0, max_operand=1, max_terms=2, operators="+")) == 4
    with pytest.raises(DataError, match="only 4 distinct"):
        arith_problems(5, 0, max_operand=1, max_terms=2, operators="+")


def test_worked_solution_rejects_bad_problems():
    with pytest.raises(DataError, match="evaluates to 5"):
        worked_solution(Problem("2+3=", "6", "int", "arith/9"))
    with pytest.raises(DataError, match="not an arith prompt"):
        worked_solution(Problem("What is 2+3?", "5", "int", "x"))


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------

def write_jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_round_trip(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "1+2?", "answer": 3},
        "",
        {"prompt": "half?", "answer": 0.5, "unit": "kg"},
        "   ",
        {"prompt": "four?", "answer": 4.0},
        {"prompt": "x?", "answer": " \\frac{1}{2} "},
    ])
    problems = build_problems(str(path))
    assert problems == [
        Problem("1+2?", "3", "math", "d.jsonl:1"),
        Problem("half?", "0.5", "math", "d.jsonl:3"),
        Problem("four?", "4", "math", "d.jsonl:5"),
        Problem("x?", "\\frac{1}{2}", "math", "d.jsonl:6"),
    ]
    assert build_problems(path, size=2, verifier="int") == [
        Problem("1+2?", "3", "int", "d.jsonl:1"), Problem("half?", "0.5", "int", "d.jsonl:3")]


def test_jsonl_fields_and_template(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"question": "How heavy?", "gold": 12, "unit": "kg", "prompt": "ignored"},
        {"question": "How long?", "gold": "7", "unit": "m"},
    ])
    problems = build_problems(str(path), prompt_field="question", answer_field="gold",
                              template="{prompt} (in {unit}) {{boxed}}")
    assert [p.prompt for p in problems] == ["How heavy? (in kg) {boxed}", "How long? (in m) {boxed}"]
    assert [p.answer for p in problems] == ["12", "7"]
    with pytest.raises(DataError, match=r"'units'.*line 1 of .*q\.jsonl"):
        build_problems(str(path), prompt_field="question", answer_field="gold", template="{prompt} {units}")
    with pytest.raises(DataError, match="positional|named fields"):
        build_problems(str(path), prompt_field="question", answer_field="gold", template="{} {prompt}")


def test_jsonl_bad_rows_listed_together(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "ok", "answer": "1"},        # 1 good
        "{not json",                            # 2 invalid JSON
        {"prompt": "no answer"},                # 3 missing answer
        "",                                     # 4 blank: skipped, not bad
        {"prompt": "   ", "answer": "2"},       # 5 whitespace prompt
        [1, 2],                                 # 6 not an object
        {"prompt": "empty", "answer": ""},      # 7 empty answer
        {"prompt": "null", "answer": None},     # 8 null answer
        {"prompt": "bool", "answer": True},     # 9 bool answer
        {"answer": "3"},                        # 10 missing prompt
        {"prompt": 5, "answer": "3"},           # 11 prompt not a string
        {"prompt": "ok", "answer": "4"},        # 12 good
    ])
    with pytest.raises(DataError) as info:
        build_problems(str(path), size=1)
    msg = str(info.value)
    assert str(path) in msg and "9 bad row(s)" in msg
    expected = {2: "invalid JSON", 3: "missing field 'answer'", 5: "empty prompt", 6: "not a JSON object",
                7: "empty answer", 8: "missing field 'answer' (null)", 9: "answer is a bool",
                10: "missing field 'prompt'", 11: "is a int, not a string"}
    listed = dict(re.findall(r"^  line (\d+): (.*)$", msg, flags=re.M))
    assert sorted(map(int, listed)) == sorted(expected)
    for line, reason in expected.items():
        assert reason in listed[str(line)], (line, listed[str(line)])


def test_jsonl_bad_rows_capped(tmp_path):
    path = write_jsonl(tmp_path / "many.jsonl", [{"prompt": "p"}] * 25)
    msg = str(pytest.raises(DataError, build_problems, str(path)).value)
    assert "25 bad row(s)" in msg
    assert re.findall(r"^  line (\d+):", msg, flags=re.M) == [str(i) for i in range(1, 21)]
    assert msg.endswith("and 5 more")


def test_invalid_json_line_alone(tmp_path):
    path = write_jsonl(tmp_path / "j.jsonl", [{"prompt": "a", "answer": "1"}, '{"prompt": "b", "answer": 2,}'])
    with pytest.raises(DataError, match=r"j\.jsonl: 1 bad row\(s\).*\n  line 2: invalid JSON"):
        build_problems(str(path))


def test_parquet_round_trip_and_bad_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "g.parquet"
    pq.write_table(pa.table({"q": ["a?", "b?", "c?"], "ans": [1.0, 2.5, 7.0], "tag": ["x", "y", "z"]}), good)
    problems = build_problems(str(good), prompt_field="q", answer_field="ans", template="[{tag}] {prompt}")
    assert problems == [Problem("[x] a?", "1", "math", "g.parquet:0"), Problem("[y] b?", "2.5", "math", "g.parquet:1"),
                        Problem("[z] c?", "7", "math", "g.parquet:2")]
    ints = tmp_path / "i.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "answer": pa.array([10, -3], pa.int64())}), ints)
    assert [p.answer for p in build_problems(str(ints), size=1)] == ["10"]

    bad = tmp_path / "b.parquet"
    pq.write_table(pa.table({"prompt": ["a", "", "c", None], "answer": ["1", "2", None, "4"]}), bad)
    msg = str(pytest.raises(DataError, build_problems, str(bad)).value)
    assert str(bad) in msg and "3 bad row(s)" in msg and "0-based" in msg
    assert re.findall(r"^  row (\d+): (.*)$", msg, flags=re.M) == [
        ("1", "empty prompt (field 'prompt')"), ("2", "missing field 'answer' (null)"),
        ("3", "missing field 'prompt' (null)")]


def test_file_errors(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        build_problems(str(missing))
    csv = tmp_path / "d.csv"
    csv.write_text("prompt,answer\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(csv)) + ".*unknown file type '.csv'"):
        build_problems(str(csv))
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("hello", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(not_parquet))):
        build_problems(str(not_parquet))
    empty = write_jsonl(tmp_path / "e.jsonl", [""])
    with pytest.raises(DataError, match="no rows"):
        build_problems(str(empty))
    two = write_jsonl(tmp_path / "two.jsonl", [{"prompt": "a", "answer": 1}, {"prompt": "b", "answer": 2}])
    with pytest.raises(DataError, match="size=3.*only 2 rows"):
        build_problems(str(two), size=3)
    with pytest.raises(DataError, match="task_kwargs"):
        build_problems(str(two), task_kwargs={"x": 1})


# ----------------------------------------------------------------------------------------------
# split and hash
# ----------------------------------------------------------------------------------------------

def make_problems(n):
    return [Problem(f"p{i}", str(i), "int", f"t/{i}") for i in range(n)]


def test_split_deterministic_disjoint_covering():
    problems = make_problems(50)
    random.seed(1)
    train, held = split_problems(problems, eval_size=10, seed=5)
    random.seed(2)
    random.random()
    assert split_problems(problems, eval_size=10, seed=5) == (train, held)
    assert len(train) == 40 and len(held) == 10
    assert {p.id for p in train}.isdisjoint({p.id for p in held})
    assert sorted(train + held, key=lambda p: int(p.answer)) == problems
    assert train == [p for p in problems if p in train]  # input order kept
    assert held == [p for p in problems if p in held]
    assert split_problems(problems, eval_size=10, seed=6)[1] != held
    # oracle: the eval part is the eval_size smallest keys of Random(seed).random() draws
    rng = random.Random(5)
    keys = [rng.random() for _ in range(50)]
    assert {p.id for p in held} == {f"t/{i}" for i in sorted(range(50), key=keys.__getitem__)[:10]}


def test_split_sizes():
    problems = make_problems(5)
    assert split_problems(problems, eval_size=0, seed=0) == (problems, [])
    assert len(split_problems(problems, eval_size=4, seed=0)[0]) == 1
    for bad in (5, -1, 1.5, True):
        with pytest.raises(DataError, match=r"eval_size must be an int in \[0, 4\]"):
            split_problems(problems, eval_size=bad, seed=0)


def test_problems_hash():
    problems = make_problems(4)
    h = problems_hash(problems)
    oracle = hashlib.sha256("".join(
        json.dumps([p.id, p.prompt, p.answer, p.verifier]) + "\n" for p in problems).encode()).hexdigest()
    assert h == oracle and re.fullmatch(r"[0-9a-f]{64}", h)
    assert problems_hash(make_problems(4)) == h
    changed = list(problems)
    changed[2] = Problem("p2", "22", "int", "t/2")
    assert problems_hash(changed) != h
    assert problems_hash(problems[::-1]) != h
    assert problems_hash([Problem("ab", "c", "int", "x")]) != problems_hash([Problem("a", "bc", "int", "x")])
    assert problems_hash([Problem("a", "1", "int", "x")]) != problems_hash([Problem("a", "1", "math", "x")])


def test_split_never_puts_an_eval_prompt_in_training():
    from rlvr.data import unique_prompts

    probs = [Problem(prompt=f"q{i % 5}", answer=str(i % 5), verifier="int", id=f"t/{i}") for i in range(20)]
    assert [p.id for p in unique_prompts(probs)] == ["t/0", "t/1", "t/2", "t/3", "t/4"]
    train, held = split_problems(probs, eval_size=2, seed=0)
    assert len(train) == 3 and len(held) == 2
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    with pytest.raises(DataError, match="distinct prompts"):
        split_problems(probs, eval_size=5, seed=0)


# ----------------------------------------------------------------------------------------------
# champ (CHAMP competition problems, shipped in champ-dataset)
# ----------------------------------------------------------------------------------------------

def test_champ_has_270_problems_checked_by_math_verify():
    import champ_dataset

    problems = build_problems("champ")
    assert len(problems) == 270 and len({p.id for p in problems}) == 270
    assert all(p.verifier == "math" and p.prompt and p.answer for p in problems)
    raw = champ_dataset.load("v0").problems
    first = problems[0]
    item = raw[first.id.removeprefix("champ/")]
    assert (first.prompt, first.answer) == (item.text.strip(), item.answer.strip())
    from collections import Counter

    counts = Counter(raw[p.id.removeprefix("champ/")].category for p in problems)
    assert counts == {"Combinatorics": 40, "Inequality": 50, "Number-Theory": 80, "Polynomial": 50, "Sequence": 50}


def test_champ_size_category_template_and_errors():
    seq = build_problems("champ", task_kwargs={"category": "Sequence"})
    assert len(seq) == 50 and all("Sequence" in p.id for p in seq)
    first = build_problems("champ", size=3, template="{prompt}\nPut the answer in \\boxed{{}}.")
    assert len(first) == 3 and first[0].prompt.endswith("Put the answer in \\boxed{}.")
    assert [p.id for p in first] == [p.id for p in build_problems("champ")[:3]]
    with pytest.raises(DataError, match="no category 'Algebra'"):
        build_problems("champ", task_kwargs={"category": "Algebra"})
    with pytest.raises(DataError, match="asked for size=300"):
        build_problems("champ", size=300)
    with pytest.raises(DataError, match="only task_kwargs 'category'"):
        build_problems("champ", task_kwargs={"level": 3})
