"""Train/val/test assignment by a stable hash of (seed, scene id)."""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def split_of(seed: int, scene_id: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> str:
    """``"train" | "val" | "test"`` from blake2b(f"{seed}:{scene_id}"): stable across runs and machines."""
    digest = hashlib.blake2b(f"{seed}:{scene_id}".encode(), digest_size=8).digest()
    unit = int.from_bytes(digest, "big") / 2.0**64
    total = sum(fractions)
    edge = 0.0
    for name, fraction in zip(SPLITS, fractions, strict=True):
        edge += fraction / total
        if unit < edge:
            return name
    return SPLITS[-1]
