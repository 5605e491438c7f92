"""Contact sheet of a dataset: per scene, the image, visible masks, amodal masks by layer, C_k.

    python synth/preview.py PATH --n 16 --out sheet.png [--split val] [--s3-endpoint URL]
    python synth/preview.py --family flat --n 8 --out flat.png     # a family, rendered on the spot

One row per scene: the RGB image; visible masks coloured per object; amodal masks coloured by
layer (front layer drawn last, so it is on top); then the cumulative masks C_0 .. C_L.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from itertools import islice

import numpy as np

from synth.cli import one_line
from synth.families import family_config
from synth.reader import DatasetError, iter_scenes, load_manifest
from synth.render import render_scenes
from synth.schema import Scene

_PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
        [170, 110, 40],
    ],
    dtype=np.uint8,
)
_LAYER_COLOURS = np.array(
    [
        [230, 25, 75],
        [255, 160, 20],
        [240, 230, 40],
        [60, 200, 75],
        [40, 170, 240],
        [70, 70, 230],
        [160, 60, 220],
        [240, 80, 200],
        [140, 140, 140],
    ],
    dtype=np.uint8,
)
_GAP = 2


def _paint(masks: np.ndarray, colours: np.ndarray, order: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8[H, W, 3]: masks bool[K, H, W] painted in ``order`` (later on top) on dark grey."""
    canvas = np.full(size + (3,), 40, dtype=np.uint8)
    for k in order:
        canvas[masks[k]] = colours[k]
    return canvas


def scene_row(scene: Scene, max_layers: int) -> np.ndarray:
    """uint8[H, (3 + max_layers + 1) * (W + gap), 3]: one contact-sheet row for a scene."""
    h, w = scene.height, scene.width
    n = scene.num_objects
    visible = _paint(scene.visible_masks, _PALETTE[np.arange(n) % len(_PALETTE)], np.arange(n), (h, w))
    layer_colour = _LAYER_COLOURS[np.minimum(scene.object_layer, len(_LAYER_COLOURS) - 1)]
    back_to_front = np.argsort(-scene.object_depth, kind="stable")
    amodal = _paint(scene.amodal_masks, layer_colour, back_to_front, (h, w))
    tiles = [scene.image, visible, amodal]
    for k in range(max_layers + 1):
        if k < scene.cumulative_masks.shape[0]:
            tile = np.where(scene.cumulative_masks[k][..., None], 255, 30).astype(np.uint8)
            tile = np.broadcast_to(tile, (h, w, 3)).copy()
        else:
            tile = np.full((h, w, 3), 15, dtype=np.uint8)
        tiles.append(tile)
    gap = np.full((h, _GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([part for tile in tiles for part in (tile, gap)], axis=1)


def contact_sheet(scenes: list[Scene], scale: int = 2) -> np.ndarray:
    """uint8[rows, cols, 3] contact sheet for ``scenes`` (all the same size), upscaled by ``scale``."""
    if not scenes:
        raise ValueError("no scenes to draw")
    max_layers = max(s.num_layers for s in scenes)
    rows = [scene_row(s, max_layers) for s in scenes]
    width = max(r.shape[1] for r in rows)
    gap = np.full((_GAP, width, 3), 255, dtype=np.uint8)
    sheet = np.concatenate([part for r in rows for part in (r, gap)], axis=0)
    return np.repeat(np.repeat(sheet, scale, axis=0), scale, axis=1)


def save_contact_sheet(
    path: str,
    out: str,
    n: int = 16,
    split: str | None = None,
    endpoint_url: str | None = None,
    scale: int = 2,
) -> str:
    """Draw the first ``n`` scenes of the dataset at ``path`` into the PNG ``out``; returns ``out``."""
    from PIL import Image

    scenes = list(islice(iter_scenes(path, split=split, endpoint_url=endpoint_url), n))
    Image.fromarray(contact_sheet(scenes, scale=scale)).save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="synth/preview.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", help="dataset folder or s3://bucket/prefix")
    parser.add_argument(
        "--family", default=None, help="render this scene family instead of reading a dataset"
    )
    parser.add_argument("--seed", type=int, default=0, help="with --family: the render seed")
    parser.add_argument("--n", type=int, default=16, help="number of scenes (rows)")
    parser.add_argument("--out", default="sheet.png")
    parser.add_argument("--split", default=None, choices=["train", "val", "test"])
    parser.add_argument("--scale", type=int, default=2, help="pixel upscaling of the sheet")
    parser.add_argument("--s3-endpoint", default=None)
    args = parser.parse_args(argv)
    try:
        if args.n < 1:
            raise ValueError(f"--n must be >= 1, got {args.n}")
        if (args.path is None) == (args.family is None):
            raise ValueError("give a dataset PATH or --family NAME (one of them)")
        if args.family is not None:
            out, about = _family_sheet(args.family, args.n, args.out, args.seed, args.scale)
        else:
            out = save_contact_sheet(args.path, args.out, args.n, args.split, args.s3_endpoint, args.scale)
            about = _dataset_summary(args.path, args.s3_endpoint)
    except (DatasetError, ValueError, OSError) as exc:
        print(f"error: {one_line(exc, limit=None)}", file=sys.stderr)
        return 2
    print(f"[preview] wrote {out}{about}")
    return 0


def _family_sheet(family: str, n: int, out: str, seed: int, scale: int) -> tuple[str, str]:
    """Render ``n`` scenes of ``family`` into ``out``; also the layer histogram of 512 scenes."""
    from PIL import Image

    cfg = family_config(family)
    Image.fromarray(contact_sheet(render_scenes(seed, 0, n, cfg), scale=scale)).save(out)
    counts = Counter(s.num_layers for s in render_scenes(seed, 0, 512, cfg))
    histogram = ", ".join(f"{k}: {counts[k] / 512:.0%}" for k in sorted(counts))
    return out, f" (family {family}; layers per scene over 512 scenes: {histogram})"


def _dataset_summary(path: str, endpoint_url: str | None) -> str:
    try:
        manifest = load_manifest(path, endpoint_url)
    except DatasetError:
        return ""
    return f" (family {manifest.family}; layers per scene: {manifest.num_layers_histogram})"


if __name__ == "__main__":
    raise SystemExit(main())
