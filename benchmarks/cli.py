"""What every benchmark's command line shares: argument types and the machine description."""
from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["available_cores", "int_list", "machine_info", "positive_int"]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated integers (``"2,4,8"``), at least one."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                                          # not Linux
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo where available), cores, torch version and threads, Python."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": available_cores(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}
