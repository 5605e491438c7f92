"""Counter-based random numbers: a uniform depends only on (seed, scene id, stream, slot).

Scenes are rendered in vectorised blocks, and a block may hold any subset of scene ids, so the
numbers for one scene must not depend on which other scenes share its block. Each value is a
SplitMix64 hash of its key, computed for whole arrays of keys at once.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 1.0 / float(1 << 53)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def stream_key(seed: int, scene_ids: np.ndarray, stream: np.ndarray | int) -> np.ndarray:
    """uint64[R] key for rows ``(seed, scene_ids[r], stream[r])``; ``stream`` broadcasts."""
    ids = np.asarray(scene_ids, dtype=np.int64).astype(np.uint64)
    streams = np.broadcast_to(np.asarray(stream, dtype=np.int64), ids.shape).astype(np.uint64)
    base = _splitmix64(np.full(ids.shape, np.uint64(seed & 0xFFFFFFFFFFFFFFFF)))
    return _splitmix64(_splitmix64(base ^ ids) ^ streams)


def uniforms(seed: int, scene_ids: np.ndarray, stream: np.ndarray | int, n: int) -> np.ndarray:
    """float64[R, n] uniforms in [0, 1): row r depends only on (seed, scene_ids[r], stream[r])."""
    key = stream_key(seed, scene_ids, stream)
    slots = np.arange(n, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)
    with np.errstate(over="ignore"):
        bits = _splitmix64(key[:, None] + slots[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * _TO_UNIT


def stream_id(*parts: int) -> np.ndarray | int:
    """Combine small non-negative integers (purpose, attempt, slot, ...) into one stream number."""
    value = 0
    for part in parts:
        value = value * 1009 + part
    return value
