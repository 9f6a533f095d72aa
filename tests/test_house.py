"""The house rules that a reader of the code relies on, checked on the source tree.

- No function in ``src/rlvr`` is longer than 60 lines; the policy update step (``step.update_policy``) is at most
  45 (docs: ../shared STYLE.md, issue 15).
- ``src/rlvr`` imports nothing from outside the package: the research tooling (``benchmarks/``, ``studies/``)
  and the tests reach the library, never the other way round.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rlvr"


def _functions():
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(SRC.parent), node


def test_no_function_is_longer_than_60_lines_and_the_update_step_is_at_most_45():
    lengths = {(str(path), node.name): node.end_lineno - node.lineno + 1 for path, node in _functions()}
    assert len(lengths) > 500                                             # the walk found the package
    too_long = {k: n for k, n in lengths.items() if n > 60}
    assert not too_long, too_long
    assert lengths[("rlvr/trainer/step.py", "update_policy")] <= 45


def test_the_library_imports_nothing_from_the_tooling_or_the_tests():
    outside = ("benchmarks", "studies", "tests", "scripts")
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            found += [(str(path), n) for n in names if n.split(".")[0] in outside]
    assert not found, found
