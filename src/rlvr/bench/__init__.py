"""Benchmarks: timing and exactness checks of the library's algorithms against slow reference constructions."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


def config_path(path: str) -> Path:
    """A config named relative to the current directory if it is there, else relative to the repository root (so
    the benchmarks find ``configs/...`` from any directory)."""
    p = Path(path)
    return p if p.is_file() or p.is_absolute() else REPO_ROOT / p
