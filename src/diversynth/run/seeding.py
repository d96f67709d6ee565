"""Seeds derived from (run seed, prompt id, image index, attempt).

A hash, not a counter: the same image gets the same seed whichever engine, worker or
shard order produced it.
"""

from __future__ import annotations

import hashlib


def derive_seed(run_seed: int, prompt_id: int | str, image_index: int, attempt: int = 0) -> int:
    key = f"diversynth:{run_seed}:{prompt_id}:{image_index}:{attempt}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") & (2**63 - 1)
