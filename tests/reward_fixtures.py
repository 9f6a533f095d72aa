"""Test-only verifiers for RewardPool, imported by workers through "reward_fixtures:<name>" paths
(pytest puts tests/ on sys.path; the workers inherit the parent's sys.path)."""
from __future__ import annotations

import os
import signal
import time

from rlvr.rewards import VerifyResult, verify_int


def sleep_forever(completion: str, gold: str) -> VerifyResult:
    """Hangs (as a verifier stuck in C code would), except on completions that say "fast"."""
    if "fast" in completion:
        return verify_int(completion, gold)
    while True:
        time.sleep(60)


def exit_hard(completion: str, gold: str) -> VerifyResult:
    """Kills its worker process with os._exit(1) on completions that say "die"."""
    if "die" in completion:
        os._exit(1)
    return verify_int(completion, gold)


def segfault(completion: str, gold: str) -> VerifyResult:
    """Kills its worker process with SIGSEGV, as a crash in a C extension would."""
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(60)
    raise AssertionError("unreachable")


def raises(completion: str, gold: str) -> VerifyResult:
    """A broken verifier: raises instead of returning a result."""
    raise KeyError(f"no such thing: {gold}")


def returns_float(completion: str, gold: str) -> float:
    """Breaks the verifier contract by returning a bare float."""
    return 1.0


def pid(completion: str, gold: str) -> VerifyResult:
    """Reports the worker's process id as the reason (to check which process ran an item)."""
    return VerifyResult(0.0, None, str(os.getpid()))
