"""Benchmark: COCO mask decoding. Columns: the former decoders (``legacy``: the module before
pycocotools, loaded from ``--legacy FILE`` or the embedded copy of its RLE parser), this module
(``synth.importers.masks``), and pycocotools after the same input checks (the alternative for RLE);
plus how often the two polygon rasterisers disagree.

    python pipelines/bench/masks.py [--n 300] [--seed 0]
    git show f8c3c06:synth/importers/masks.py > /tmp/masks_legacy.py
    python pipelines/bench/masks.py --legacy /tmp/masks_legacy.py   # the whole former module

Inputs are random: blob masks at COCO-like sizes (compressed and uncompressed RLE) and random
polygons of 8-40 vertices. Times are the best of 3 passes over the same inputs, per decode.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from synth.importers import masks


# ---- the former hand-written decoders (before pycocotools), kept here as the baseline ------------
def legacy_counts_from_string(text: str) -> np.ndarray:
    counts: list[int] = []
    pos, length = 0, len(text)
    while pos < length:
        value, shift, more = 0, 0, True
        while more:
            group = ord(text[pos]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            pos += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return np.asarray(counts, dtype=np.int64)


def legacy_decode_rle(rle: dict, height: int, width: int) -> np.ndarray:
    raw = rle["counts"]
    counts = legacy_counts_from_string(raw) if isinstance(raw, str) else np.asarray(raw, dtype=np.int64)
    values = np.repeat((np.arange(counts.size) % 2).astype(bool), counts)
    flat = np.zeros(height * width, dtype=bool)
    flat[: int(counts.sum())] = values
    return flat.reshape(width, height).T.copy()


def pycocotools_checked(rle: dict, height: int, width: int) -> np.ndarray:
    """The alternative for RLE: the module's checks (they need the parsed counts), then pycocotools."""
    from pycocotools import mask as mask_utils

    raw = rle["counts"]
    counts = masks.rle_counts_from_string(raw) if isinstance(raw, str) else np.asarray(raw, dtype=np.int64)
    if counts.size and counts.min() < 0 or int(counts.sum()) != height * width:
        raise ValueError("bad runs")
    if isinstance(raw, str):
        return mask_utils.decode({"size": [height, width], "counts": raw.encode("ascii")}).astype(bool)
    return mask_utils.decode(mask_utils.frPyObjects(rle, height, width)).astype(bool)


def legacy_polygons(polygons: list, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    for polygon in polygons:
        points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        mask |= masks.fill_polygon(points[:, 0], points[:, 1], height, width)
    return mask


# ---- inputs --------------------------------------------------------------------------------------
def random_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A few overlapping ellipses: object-like runs, as in real annotations."""
    rows, cols = np.indices((height, width))
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.random() * height, rng.random() * width
        ry, rx = (0.05 + 0.3 * rng.random()) * height, (0.05 + 0.3 * rng.random()) * width
        mask |= ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 < 1
    return mask


def random_polygon(rng: np.random.Generator, height: int, width: int) -> list[float]:
    n = int(rng.integers(8, 41))
    angles = np.sort(rng.random(n) * 2 * np.pi)
    radius = (0.1 + 0.3 * rng.random()) * min(height, width) * (0.6 + 0.4 * rng.random(n))
    cx, cy = rng.random() * width, rng.random() * height
    xs, ys = cx + radius * np.cos(angles), cy + radius * np.sin(angles)
    return np.round(np.stack([xs, ys], 1).reshape(-1), 2).tolist()


def best_of(fn, items, repeats: int = 3) -> float:
    """Best-of-``repeats`` seconds per item."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(*item)
        best = min(best, time.perf_counter() - start)
    return best / len(items)


def main(argv: list[str] | None = None) -> int:
    from pycocotools import mask as mask_utils

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="inputs per case (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--legacy", help="the former synth/importers/masks.py (its decode_rle is timed)")
    args = parser.parse_args(argv)
    legacy_rle = legacy_decode_rle
    if args.legacy:
        import importlib.util

        spec = importlib.util.spec_from_file_location("masks_legacy", args.legacy)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        legacy_rle = module.decode_rle
    rng = np.random.default_rng(args.seed)
    print("| case | size | legacy µs | this module µs | pycocotools (checked) µs | identical |")
    print("|---|---|---:|---:|---:|---|")
    for height, width in ((64, 64), (480, 640)):
        sample = [random_mask(rng, height, width) for _ in range(args.n)]
        compressed = [
            {
                "size": [height, width],
                "counts": mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode("ascii"),
            }
            for m in sample
        ]
        uncompressed = [masks.encode_rle(m) for m in sample]
        for name, rles in (("compressed RLE", compressed), ("uncompressed RLE", uncompressed)):
            items = [(r, height, width) for r in rles]
            same = all(
                np.array_equal(masks.decode_rle(r, height, width), m)
                and np.array_equal(legacy_rle(r, height, width), m)
                and np.array_equal(pycocotools_checked(r, height, width), m)
                for r, m in zip(rles, sample, strict=True)
            )
            times = [best_of(fn, items) for fn in (legacy_rle, masks.decode_rle, pycocotools_checked)]
            cells = " | ".join(f"{1e6 * t:.1f}" for t in times)
            print(f"| {name} | {height}x{width} | {cells} | {same} |")
        polygons = [[random_polygon(rng, height, width)] for _ in range(args.n)]
        items = [(p, height, width) for p in polygons]
        differ = [int((legacy_polygons(*item) != masks.rasterize_polygons(*item)).sum()) for item in items]
        area = sum(int(masks.rasterize_polygons(*item).sum()) for item in items)
        old, new = best_of(legacy_polygons, items), best_of(masks.rasterize_polygons, items)
        print(
            f"| polygons | {height}x{width} | {1e6 * old:.1f} | {1e6 * new:.1f} (pycocotools) | – | "
            f"legacy differs: {sum(d > 0 for d in differ)}/{len(differ)} polygons, "
            f"{sum(differ)} of {area} pixels |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
