r"""Local stand-ins for the hub datasets the presets load: a few rows each, written here, with the real sets'
field names, column types and answer formats (fractions, ``\dfrac``, intervals, tuples, degrees, text answers,
GSM8K's ``#### N`` solutions, MATH's boxed solutions, AMC's float answers). The problems are ours; the schema is
the sets' (rlvr.data.benchmarks says where each fact comes from).

Three ways to put them where rlvr looks (rlvr.data.hub):
- ``save_split``: a folder written by ``datasets.save_to_disk`` (a local copy: data.path or $RLVR_DATA_DIR/<name>);
- ``write_data_dir``: one such folder per preset under a root, for RLVR_DATA_DIR;
- ``cache_dataset``: the datasets cache of an earlier download (HF_DATASETS_CACHE), which ``load_dataset(repo)``
  reads offline, built with the datasets library's own Parquet builder and its cache layout.
"""
from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path
from typing import Any

MATH500 = [
    {"problem": "What is $\\frac{7}{3} + \\frac{7}{3}$?", "solution": "Add: $\\boxed{\\frac{14}{3}}$.",
     "answer": "\\frac{14}{3}", "subject": "Prealgebra", "level": 2, "unique_id": "test/prealgebra/1.json"},
    {"problem": "For which $x$ is $x^2 - x - 6 > 0$? Give an interval.", "solution": "Factor. $\\boxed{(-\\infty,-2)"
     "\\cup(3,\\infty)}$", "answer": "(-\\infty,-2)\\cup(3,\\infty)", "subject": "Algebra", "level": 4,
     "unique_id": "test/algebra/2.json"},
    {"problem": "Write $(0,3)$ in polar coordinates $(r,\\theta)$.", "solution": "So $\\boxed{\\left( 3, \\frac{\\pi}"
     "{2} \\right)}$.", "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus", "level": 2,
     "unique_id": "test/precalculus/3.json"},
    {"problem": "An angle of a right triangle is $60^\\circ$. What is the other acute angle?",
     "solution": "$\\boxed{30^\\circ}$", "answer": "30^\\circ", "subject": "Geometry", "level": 1,
     "unique_id": "test/geometry/4.json"},
    {"problem": "Evelyn ran 5 km and Bob 3 km. Who ran further?", "solution": "$\\boxed{\\text{Evelyn}}$",
     "answer": "\\text{Evelyn}", "subject": "Algebra", "level": 1, "unique_id": "test/algebra/5.json"},
    {"problem": "What fraction of 8 is 6?", "solution": "$\\boxed{\\dfrac{3}{4}}$", "answer": "\\dfrac{3}{4}",
     "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/6.json"},
]
AIME24 = [
    {"id": 60, "problem": "Find the remainder when $2^{10}$ is divided by $1000$.", "solution": "$1024 - 1000 = 24$.",
     "answer": "24", "url": "https://example.org/aime/2024/I/1", "year": "2024"},
    {"id": 61, "problem": "Find $33 \\cdot 1$.", "solution": "Trivial.", "answer": "033",
     "url": "https://example.org/aime/2024/I/2", "year": "2024"},
]
AMC23 = [
    {"id": 0, "problem": "What is $3^3$?", "answer": 27.0, "url": "https://example.org/amc/2023/1",
     "question": "What is $3^3$?"},
    {"id": 1, "problem": "What is $\\frac{1}{4} + \\frac{1}{4}$?", "answer": 0.5, "url": "https://example.org/amc/2023/2",
     "question": "What is $\\frac{1}{4} + \\frac{1}{4}$?"},
]
MINERVA = [
    {"problem": "A cell has $7.3 \\times 10^{-3}$ moles. How many moles is that? Give the answer as written.",
     "solution": "It is given: the answer is $\\boxed{7.3 \\times 10^{-3}}$.", "type": "Chemistry (3.091)", "idx": 0},
    {"problem": "What is half of one?", "solution": "Half of 1 is \\boxed{\\frac{1}{2}}. Final answer: 0.5",
     "type": "Physics (8.01)", "idx": 1},
]
OLYMPIADBENCH = [
    {"id": 1606, "question": "Find all real $x$ with $2x = 1$.", "solution": ["So $x = \\frac{1}{2}$."],
     "final_answer": ["$\\frac{1}{2}$"], "context": None, "unit": None, "answer_type": "Numerical",
     "error": None, "is_multiple_answer": False, "subfield": "Algebra", "answer": "$\\frac{1}{2}$"},
    {"id": 1607, "question": "Compute $\\sqrt{20}$ in simplest form.", "solution": ["$2\\sqrt{5}$."],
     "final_answer": ["$2 \\sqrt{5}$"], "context": None, "unit": None, "answer_type": "Numerical",
     "error": None, "is_multiple_answer": False, "subfield": "Algebra", "answer": "2 \\sqrt{5}"},
]
GSM8K = [
    {"question": "Ann has 48 clips and sells half. How many does she have left?",
     "answer": "She sells 48/2 = <<48/2=24>>24 clips.\nShe has 48-24 = <<48-24=24>>24 left.\n#### 24"},
    {"question": "A shop sells 250 pens a day for 4 days. How many pens is that?",
     "answer": "250*4 = <<250*4=1000>>1,000 pens.\n#### 1,000"},
]
MATH_TRAIN = [
    {"problem": "Compute $1+1$.", "level": "Level 1", "solution": "$1+1=\\boxed{2}$.", "type": "Prealgebra"},
    {"problem": "Compute $\\binom{5}{2}$.", "level": "Level 3",
     "solution": "$\\binom{5}{2} = \\frac{5 \\cdot 4}{2} = \\boxed{10}$.", "type": "Counting & Probability"},
    {"problem": "Simplify $\\frac{6}{8}$.", "level": "Level 5", "solution": "$\\boxed{\\dfrac{3}{4}}$",
     "type": "Number Theory"},
    {"problem": "What is $2^{-1}$?", "level": "Level 4", "solution": "It is $\\boxed{\\frac{1}{2}}$.",
     "type": "Algebra"},
]

FIXTURES: dict[str, tuple[list[dict[str, Any]], str]] = {
    "math500": (MATH500, "test"), "aime24": (AIME24, "train"), "amc23": (AMC23, "train"),
    "minerva": (MINERVA, "train"), "olympiadbench": (OLYMPIADBENCH, "train"), "gsm8k": (GSM8K, "test"),
    "gsm8k_train": (GSM8K, "train"), "math_train": (MATH_TRAIN, "train"), "math_l35": (MATH_TRAIN, "train"),
}
"""Rows and split of each preset's stand-in."""


def save_split(path: Path, rows: list[dict[str, Any]], split: str, *, as_dict: bool = True) -> Path:
    """``rows`` saved by ``save_to_disk`` at ``path``: as a DatasetDict {split: rows}, or as one Dataset."""
    import datasets

    ds = datasets.Dataset.from_list(rows, split=datasets.NamedSplit(split))
    (datasets.DatasetDict({split: ds}) if as_dict else ds).save_to_disk(str(path))
    return path


def write_data_dir(root: Path, names: list[str] | None = None,
                   rows: dict[str, list[dict[str, Any]]] | None = None) -> Path:
    """A $RLVR_DATA_DIR: one save_to_disk folder per preset (the stand-in rows, or ``rows[name]``)."""
    for name in names or list(FIXTURES):
        data, split = FIXTURES[name]
        save_split(root / name, (rows or {}).get(name, data), split)
    return root


def cache_dataset(repo: str, config: str | None, split: str, rows: list[dict[str, Any]]) -> Path:
    """``rows`` as the datasets cache holds a downloaded ``repo`` (config, split), under the current
    ``datasets.config.HF_DATASETS_CACHE``; ``load_dataset(repo, config, split=split)`` then reads it offline."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.data_files import DataFilesDict
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.parquet.parquet import Parquet

    namespace, name = repo.split("/")
    snake = camelcase_to_snakecase(name)
    src = Path(datasets.config.HF_DATASETS_CACHE).parent / "rlvr-fixture-sources" / repo / split
    src.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), src / "data.parquet")
    files = DataFilesDict.from_patterns({split: [str(src / "data.parquet")]})
    builder = Parquet(dataset_name="rlvr_fixture", config_name=config or "default", config_id=config or "default",
                      data_files=files, hash="rlvrfixture")
    builder.download_and_prepare()
    built = Path(builder.cache_dir)
    final = Path(datasets.config.HF_DATASETS_CACHE) / f"{namespace}___{snake}" / built.relative_to(
        built.parents[2])                                   # <namespace>___<snake name>/<config>/<version>/<hash>
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(built), str(final))
    for f in glob.glob(os.path.join(final, "rlvr_fixture-*.arrow")):
        os.rename(f, f.replace("rlvr_fixture-", f"{snake}-"))         # the file name a hub download gets
    return final
