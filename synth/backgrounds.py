"""Scene backgrounds: colour ramps, four-corner blends, noise, stripes, checks and photo crops.

Photographs are scikit-image's bundled sample images (read from the installed package's data
folder, loaded once per process; nothing is downloaded). If scikit-image is missing, photo
backgrounds fall back to noise.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from synth.textures import PATTERNS, pattern_field

BACKGROUND_KINDS = ("linear", "corners", "noise", "stripes", "checks", "photo")
BACKGROUND_WEIGHTS = (0.15, 0.15, 0.15, 0.1, 0.1, 0.35)  # over BACKGROUND_KINDS: today's "textured" mix
PHOTO_FILES = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "color.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "camera.png",
    "moon.png",
    "coins.png",
)
# Uniform slots per scene used here.
NUM_BACKGROUND_UNIFORMS = 20


def _skimage_data_dir() -> Path | None:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    return folder if folder.is_dir() else None


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """The bundled photographs as float32[h, w, 3] in [0, 1] (grey ones replicated to RGB)."""
    from PIL import Image

    folder = _skimage_data_dir()
    if folder is None:
        return ()
    photos = []
    for name in PHOTO_FILES:
        path = folder / name
        if not path.is_file():
            continue
        with Image.open(path) as img:
            photos.append(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)
    return tuple(photos)


@lru_cache(maxsize=8)
def photo_pyramid(size: int) -> tuple[np.ndarray, ...]:
    """Each photo resized so its short side is 1.25x, 2x and 3.5x ``size`` (float32[h, w, 3])."""
    from PIL import Image

    levels = []
    for photo in _photos():
        img = Image.fromarray((photo * 255).astype(np.uint8))
        short = min(img.size)
        for factor in (1.25, 2.0, 3.5):
            scale = factor * size / short
            new = (max(size, round(img.size[0] * scale)), max(size, round(img.size[1] * scale)))
            levels.append(np.asarray(img.resize(new, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0)
    return tuple(levels)


def render_backgrounds(
    u: np.ndarray, height: int, width: int, weights: tuple[float, ...] = BACKGROUND_WEIGHTS
) -> tuple[np.ndarray, np.ndarray]:
    """Backgrounds for B scenes from uniforms ``u`` float[B, NUM_BACKGROUND_UNIFORMS].

    ``weights`` is the mixture over ``BACKGROUND_KINDS`` (need not sum to 1).
    Returns ``(images float32[B, H, W, 3] in [0, 1], kind int[B])`` (kind indexes BACKGROUND_KINDS).
    """
    b = u.shape[0]
    cdf = np.cumsum(weights)
    kind = np.searchsorted(cdf, u[:, 0] * cdf[-1], side="right").clip(0, len(BACKGROUND_KINDS) - 1)
    photos = photo_pyramid(max(height, width)) if (kind == BACKGROUND_KINDS.index("photo")).any() else ()
    if not photos:
        kind = np.where(kind == BACKGROUND_KINDS.index("photo"), BACKGROUND_KINDS.index("noise"), kind)
    colours = u[:, 1:13].reshape(b, 4, 3).astype(np.float32)
    out = np.empty((b, height, width, 3), dtype=np.float32)
    ys = np.arange(height, dtype=np.float32)[None, :, None] - height / 2
    xs = np.arange(width, dtype=np.float32)[None, None, :] - width / 2

    pattern_of = {"linear": "linear", "noise": "noise", "stripes": "stripes", "checks": "checks"}
    pattern = np.array([PATTERNS.index(pattern_of.get(BACKGROUND_KINDS[k], "flat")) for k in kind])
    patterned = np.nonzero(np.isin(kind, [BACKGROUND_KINDS.index(k) for k in pattern_of]))[0]
    if len(patterned):
        rows = len(patterned)
        per_point = height * width
        dx = np.broadcast_to(xs, (rows, height, width)).reshape(-1)
        dy = np.broadcast_to(ys, (rows, height, width)).reshape(-1)
        scale = (0.3 + 1.2 * u[patterned, 14]) * max(height, width)
        field = pattern_field(
            np.repeat(np.arange(rows), per_point),
            dx,
            dy,
            pattern[patterned],
            u[patterned, 13] * 2 * np.pi,
            scale,
            u[patterned, 15:17],
        ).reshape(rows, height, width)
        c0, c1 = colours[patterned, 0], colours[patterned, 1]
        out[patterned] = c0[:, None, None, :] + (c1 - c0)[:, None, None, :] * field[..., None]

    corners = np.nonzero(kind == BACKGROUND_KINDS.index("corners"))[0]
    if len(corners):
        ty = (np.arange(height, dtype=np.float32) + 0.5) / height
        tx = (np.arange(width, dtype=np.float32) + 0.5) / width
        c = colours[corners][:, :, None, None, :]  # [R, 4, 1, 1, 3]
        top = c[:, 0] + (c[:, 1] - c[:, 0]) * tx[None, None, :, None]
        bottom = c[:, 2] + (c[:, 3] - c[:, 2]) * tx[None, None, :, None]
        out[corners] = top + (bottom - top) * ty[None, :, None, None]

    for row in np.nonzero(kind == BACKGROUND_KINDS.index("photo"))[0]:
        photo = photos[min(int(u[row, 17] * len(photos)), len(photos) - 1)]
        top = int(u[row, 18] * (photo.shape[0] - height + 1))
        left = int(u[row, 19] * (photo.shape[1] - width + 1))
        crop = photo[top : top + height, left : left + width]
        out[row] = crop[:, ::-1] if u[row, 13] < 0.5 else crop
    return out, kind
