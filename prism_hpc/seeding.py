"""Every random choice is seeded from (run seed, stage, index...), never from global state.

Seeds are hashes, so neighbouring indices get unrelated streams and the result of an item does
not depend on which rank, array task or restart computes it.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(run_seed: int, stage: str, *index: int | str) -> int:
    text = ":".join([str(run_seed), stage, *map(str, index)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def generator(run_seed: int, stage: str, *index: int | str, device: str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(run_seed, stage, *index))
    return g
