"""reasoning-gym tasks as Problems, generated offline and deterministically.

An item of ``reasoning_gym.create_dataset(task, size=, seed=, **task_kwargs)`` is a dict with
``question`` (the prompt), ``answer`` (gold, a string) and ``metadata``. Two deviations from calling
reasoning-gym directly, both for correctness of the reward:

1. Seeds. reasoning-gym seeds item ``i`` with ``Random(seed + i)``, so the sets for seeds s and s+1
   share all but one item. We pass reasoning-gym a seed derived from ours by sha256, so sets built
   with different seeds (say train seed 0, eval seed 1) are effectively disjoint.
2. Wrong golds. basic_arithmetic computes its gold with floor division (``//``) although the question
   shows ``/``; about 0.7 % of default items have a gold that differs from the exact value of the
   question's expression (and with ``allow_parentheses=False`` it ignores operator precedence, so most
   golds are wrong). Such items are skipped (ids keep reasoning-gym's index, so a skip leaves a gap).
"""
from __future__ import annotations

import ast
import hashlib
import operator
from fractions import Fraction
from typing import Any, Callable

from rlvr.data import sources
from rlvr.data.base import DataError, verifier_for_answer
from rlvr.types import Problem

_BINOPS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
}


def rg_seed(seed: int, task: str) -> int:
    """The seed handed to reasoning-gym: 32 bits of sha256("<task>:<seed>") (see the module docstring)."""
    return int.from_bytes(hashlib.sha256(f"rlvr-rg:{task}:{seed}".encode()).digest()[:4], "big")


def exact_value(expression: str) -> Fraction | None:
    """Exact value of an arithmetic expression of integers, + - * /, unary minus and parentheses.

    None when it is not such an expression or divides by zero. Parsed with ``ast``, never ``eval``.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
        return _value(tree)
    except (SyntaxError, ZeroDivisionError, _NotArithmetic):
        return None


class _NotArithmetic(Exception):
    pass


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _value(node.operand)
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_value(node.left), _value(node.right))
    raise _NotArithmetic(ast.dump(node))


def _expression_gold_ok(item: dict[str, Any]) -> bool:
    """True when the item's gold equals the exact value of ``metadata["expression"]``."""
    value = exact_value(str(item.get("metadata", {}).get("expression", "")))
    try:
        return value is not None and value == Fraction(item["answer"])
    except ValueError:  # a gold that is not a number
        return False


# Tasks whose golds are checked item by item, and how. Their items depend only on (seed, index), so
# generating past ``size`` to replace skipped items does not change the earlier ones.
_GOLD_CHECKS: dict[str, Callable[[dict[str, Any]], bool]] = {"basic_arithmetic": _expression_gold_ok}


@sources.register("rg", argument="task", generated=True, default_size=sources.GENERATED_SIZE, takes_task_kwargs=True)
def rg_problems(task: str, *, size: int, seed: int, task_kwargs: dict[str, Any] | None = None) -> list[Problem]:
    """``size`` reasoning-gym problems of ``task``: prompt = question, answer = gold, id ``"<task>/<index>"``.

    The verifier is chosen per problem from its gold (``verifier_for_answer``).
    """
    import reasoning_gym  # imported here: it takes a second and most runs do not need it

    kwargs = dict(task_kwargs or {})
    clash = sorted({"size", "seed"} & set(kwargs))
    if clash:
        raise DataError(f"task_kwargs for rg:{task} must not set {clash}; use build_problems' size=/seed=")
    check = _GOLD_CHECKS.get(task)
    problems: list[Problem] = []
    examined = 0
    while len(problems) < size:
        want = size if check is None else 2 * size + examined  # room for skipped items
        dataset = _create(reasoning_gym, task, want, rg_seed(seed, task), kwargs)
        for index in range(examined, want):
            item = dataset[index]
            examined += 1
            if check is not None and not check(item):
                continue
            problems.append(_problem(task, index, item))
            if len(problems) == size:
                break
        if check is not None and examined >= 20 * size + 100 and len(problems) < size:
            raise DataError(f"rg:{task} with {kwargs} gives too many items with a wrong gold "
                            f"({examined - len(problems)} of {examined}); change its task_kwargs")
    return problems


def _create(reasoning_gym: Any, task: str, size: int, seed: int, kwargs: dict[str, Any]) -> Any:
    try:
        return reasoning_gym.create_dataset(task, size=size, seed=seed, **kwargs)
    except (ValueError, TypeError, AssertionError) as err:
        raise DataError(f"reasoning-gym cannot create {task!r} with {kwargs}: {err}") from err


def _problem(task: str, index: int, item: dict[str, Any]) -> Problem:
    question, answer = item.get("question"), item.get("answer")
    if not isinstance(question, str) or not question.strip() or answer is None or not str(answer).strip():
        raise DataError(f"reasoning-gym task {task!r} item {index} has no usable question/answer: "
                        f"question={question!r}, answer={answer!r}")
    answer = str(answer).strip()
    return Problem(prompt=question, answer=answer, verifier=verifier_for_answer(answer), id=f"{task}/{index}")
