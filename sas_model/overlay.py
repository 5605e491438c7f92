"""Pictures of a segmentation: layers tinted over the image, uncertainty as a heat map, sheets of
panels. ``LAYER_COLOURS`` colours the layers of every prediction overlay (validation during training,
evaluation, ``predict.py``, the served model, the demo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sas_model.codec import encode_png

LAYER_COLOURS = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
    ],
    dtype=np.float32,
)


def tint_layers(image: np.ndarray, layer_masks: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """``image uint8[H,W,3]`` with each layer of ``bool[L,H,W]`` tinted (front layer drawn last, on top)."""
    out = image.astype(np.float32)
    for k in range(layer_masks.shape[0] - 1, -1, -1):
        mask = layer_masks[k].astype(bool)
        out[mask] = (1 - alpha) * out[mask] + alpha * LAYER_COLOURS[k % len(LAYER_COLOURS)]
    return out.clip(0, 255).astype(np.uint8)


def overlay_sheet(rows: list[list[np.ndarray]], pad: int = 2, scale: int = 1) -> np.ndarray:
    """Tile rows of equally sized uint8[H,W,3] panels (each enlarged ``scale``x) with white gaps."""
    if scale > 1:
        rows = [[panel.repeat(scale, axis=0).repeat(scale, axis=1) for panel in row] for row in rows]
    height, width = rows[0][0].shape[:2]
    ncols = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (height + pad) + pad, ncols * (width + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            y, x = pad + i * (height + pad), pad + j * (width + pad)
            sheet[y : y + height, x : x + width] = panel[:height, :width, :3]
    return sheet


def heat_map(values: np.ndarray) -> np.ndarray:
    """``float[H,W]`` in [0, 1] → ``uint8[H,W,3]``, black → red → yellow → white."""
    v = np.clip(values, 0, 1)[..., None]
    ramp = np.concatenate([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    return (255 * ramp).astype(np.uint8)


def overlay_panels(
    image: np.ndarray,
    layer_masks: np.ndarray,
    uncertainty: np.ndarray,
    outlines: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Two ``uint8 [H, W, 3]`` panels: the layers tinted over the image (object outlines in white), and
    the per-pixel ensemble variance (max over layers, scaled so 0.25 = white) over a dimmed greyscale
    image."""
    h, w = image.shape[:2]
    left = tint_layers(image, layer_masks)
    for mask in outlines or []:
        edge = mask & ~_erode(mask)
        left[edge] = 255
    grey = image.astype(np.float32).mean(-1, keepdims=True) * 0.35
    unc = uncertainty.max(0) / 0.25 if len(uncertainty) else np.zeros((h, w), np.float32)
    heat = heat_map(unc).astype(np.float32)
    right = np.where(unc[..., None] > 0, 0.3 * grey + 0.7 * heat, grey).clip(0, 255).astype(np.uint8)
    return left, right


def render_overlay(
    image: np.ndarray,
    layer_masks: np.ndarray,
    uncertainty: np.ndarray,
    outlines: list[np.ndarray] | None = None,
    gap: int = 2,
) -> np.ndarray:
    """Side-by-side ``uint8 [H, 2W + gap, 3]``: the two :func:`overlay_panels` with a white gap."""
    h, w = image.shape[:2]
    left, right = overlay_panels(image, layer_masks, uncertainty, outlines)
    canvas = np.full((h, 2 * w + gap, 3), 255, dtype=np.uint8)
    canvas[:, :w], canvas[:, w + gap :] = left, right
    return canvas


def _erode(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    out = np.ones_like(mask)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out &= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
    return out


def save_png(path: str | Path, picture: np.ndarray) -> Path:
    path = Path(path)
    path.write_bytes(encode_png(picture))
    return path
