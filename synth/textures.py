"""Scalar pattern fields t in [0, 1] shared by object fills and backgrounds.

A colour is laid over a region as ``c0 + (c1 - c0) * t``; t is flat, a linear or radial ramp,
anti-aliased stripes or checks, or smooth periodic noise. Every function works on a batch of R
rows (objects or scenes) at once: coordinates are float32[R, H, W] (or broadcastable) and
parameters float32[R].
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

PATTERNS = ("flat", "linear", "radial", "stripes", "checks", "noise")
NOISE_SIZE = 256


@lru_cache(maxsize=1)
def noise_texture() -> np.ndarray:
    """float32[NOISE_SIZE, NOISE_SIZE] periodic smooth noise in [0, 1], identical in every process."""
    rng = np.random.default_rng(20241124)
    white = rng.standard_normal((NOISE_SIZE, NOISE_SIZE))
    freq = np.fft.fftfreq(NOISE_SIZE)
    radius = np.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2)
    spectrum = np.fft.fft2(white) / np.maximum(radius, 1.0 / NOISE_SIZE) ** 1.6
    spectrum *= np.exp(-((radius / 0.12) ** 2))
    field = np.real(np.fft.ifft2(spectrum))
    field = (field - field.min()) / (field.max() - field.min())
    return field.astype(np.float32)


def _square_wave(x: np.ndarray, sharpness: np.ndarray) -> np.ndarray:
    """Anti-aliased 0/1 square wave of period 1 in ``x``; ``sharpness`` = period in pixels."""
    tri = np.abs(2.0 * (x - np.floor(x)) - 1.0)  # triangle wave in [0, 1]
    return np.clip((tri - 0.5) * sharpness + 0.5, 0.0, 1.0)


def pattern_field(
    row: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    pattern: np.ndarray,
    angle: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
) -> np.ndarray:
    """float32[P] pattern values at P points (any pixels of any objects or scenes).

    Args:
        row: int[P], the row (object or scene) each point belongs to.
        dx, dy: float32[P] pixel coordinates relative to the row's origin.
        pattern: int[R], index into PATTERNS, per row.
        angle: float[R] orientation (radians) of ramps, stripes and checks.
        scale: float[R] ramp length / stripe period / noise feature size, in pixels (>= 1).
        offset: float[R, 2] in [0, 1): phase of stripes, position in the noise texture.
    """
    f32 = np.float32
    out = np.zeros(dx.shape, dtype=f32)
    cos_r = np.cos(angle).astype(f32)
    sin_r = np.sin(angle).astype(f32)
    scale_r = np.maximum(np.asarray(scale, dtype=f32), f32(1.0))
    offset_r = np.asarray(offset, dtype=f32)
    point_pattern = pattern[row]

    def select(name: str) -> tuple[np.ndarray, np.ndarray]:
        idx = np.nonzero(point_pattern == PATTERNS.index(name))[0]
        return idx, row[idx]

    idx, r = select("linear")
    if len(idx):
        along = dx[idx] * cos_r[r] + dy[idx] * sin_r[r]
        out[idx] = np.clip(f32(0.5) + along / scale_r[r], 0.0, 1.0)
    idx, r = select("radial")
    if len(idx):
        x, y = dx[idx], dy[idx]
        out[idx] = np.clip(np.sqrt(x * x + y * y) / scale_r[r], 0.0, 1.0)
    for name in ("stripes", "checks"):
        idx, r = select(name)
        if not len(idx):
            continue
        x, y, cos, sin = dx[idx], dy[idx], cos_r[r], sin_r[r]
        period = scale_r[r] * f32(0.25) + f32(2.0)
        wave = _square_wave((x * cos + y * sin) / period + offset_r[r, 0], period)
        if name == "checks":
            other = _square_wave((y * cos - x * sin) / period + offset_r[r, 1], period)
            wave = wave + other - f32(2.0) * wave * other
        out[idx] = wave
    idx, r = select("noise")
    if len(idx):
        tex = noise_texture()
        zoom = f32(NOISE_SIZE / 4.0) / scale_r  # texture px per image px, per row
        shift = offset_r * f32(NOISE_SIZE)
        tx = (dx[idx] * zoom[r] + shift[r, 0]).astype(np.int64) % NOISE_SIZE
        ty = (dy[idx] * zoom[r] + shift[r, 1]).astype(np.int64) % NOISE_SIZE
        out[idx] = tex[ty, tx]
    return out
