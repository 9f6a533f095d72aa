"""Seeds as pure functions of what they are for, so a resumed or re-batched run draws the same numbers."""
from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (e.g. run seed, "rollout", step, round)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
