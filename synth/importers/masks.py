"""COCO segmentations -> bool masks. Polygons are rasterised by ``pycocotools`` (the rasteriser that
defines the datasets' masks; the former numpy scanline fill differed on boundary pixels and was 30x
slower). RLE (compressed or not) is parsed, checked and expanded in numpy: proven identical to
pycocotools' decoder by property tests and as fast or faster (``pipelines/bench/masks.py``), since the
checks need the parsed counts anyway. A malformed annotation is a readable ``AnnotationError``.

Accepted forms of one segmentation (``height``/``width`` are the image's):

- polygons: ``[[x1, y1, x2, y2, ...], ...]`` or one flat ``[x1, y1, ...]`` (COCOA regions), in
  continuous pixel coordinates, rasterised by ``pycocotools`` (``frPyObjects``: a box from 0 to 10
  covers pixels 0..9, area 100); polygons with fewer than 3 points are ignored (COCO has a few such
  slivers);
- compressed RLE: ``{"size": [h, w], "counts": "<string>"}`` (pycocotools' LEB128-like string);
- uncompressed RLE: ``{"size": [h, w], "counts": [n0, n1, ...]}`` (runs of 0s and 1s alternating,
  starting with 0s, over the column-major (Fortran-order) pixel sequence);
- a list of RLE dicts (their union).

Runs that cover fewer pixels than the image leave the rest empty. ``fill_polygon`` (pixel-centre
scanline fill, numpy) is the former polygon decoder, kept as a reference: it differs from
``pycocotools`` on the boundary pixels of most non-rectangular polygons (``pipelines/bench/masks.py``
measures both and the difference).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class AnnotationError(ValueError):
    """A segmentation that cannot be decoded; the message says which part is wrong."""


LOOP_PARSE_MAX_CHARS = 200  # shorter strings parse faster in a Python loop than with numpy's overhead


def rle_counts_from_string(text: str) -> np.ndarray:
    """pycocotools' compressed RLE string -> int64[K] run lengths (a loop for short strings, numpy for
    long ones; both checked against pycocotools' encoder in ``tests/test_import_masks.py``).

    Each count is written in 5-bit groups, least significant first, as ``chr(48 + group)``; bit
    0x20 marks "more groups follow", bit 0x10 of the last group is the sign. From the fourth count
    on (index > 2) the value is stored as a difference to the count two places earlier.
    """
    if len(text) <= LOOP_PARSE_MAX_CHARS:
        return _counts_from_string_loop(text)
    return _counts_from_string_numpy(text)


def _counts_from_string_loop(text: str) -> np.ndarray:
    counts: list[int] = []
    pos, length = 0, len(text)
    while pos < length:
        value, shift, more = 0, 0, True
        while more:
            if pos >= length:
                raise AnnotationError("compressed RLE string ends in the middle of a count")
            group = ord(text[pos]) - 48
            if not 0 <= group < 64:
                raise AnnotationError(f"compressed RLE string holds an invalid character {text[pos]!r}")
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


def _counts_from_string_numpy(text: str) -> np.ndarray:
    """The same as the loop, vectorised (for long strings).

    Each count is written in 5-bit groups, least significant first, as ``chr(48 + group)``; bit
    0x20 marks "more groups follow", bit 0x10 of the last group is the sign. From the fourth count
    on (index > 2) the value is stored as a difference to the count two places earlier.
    """
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        bad = next(c for c in text if ord(c) > 127)
        raise AnnotationError(f"compressed RLE string holds an invalid character {bad!r}") from None
    if not raw:
        return np.zeros(0, dtype=np.int64)
    groups = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    invalid = (groups < 0) | (groups >= 64)
    if invalid.any():
        bad = chr(raw[int(np.argmax(invalid))])
        raise AnnotationError(f"compressed RLE string holds an invalid character {bad!r}")
    last = (groups & 0x20) == 0  # the last group of a count
    if not last[-1]:
        raise AnnotationError("compressed RLE string ends in the middle of a count")
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 12:  # 60 bits: far beyond any image
        raise AnnotationError("compressed RLE string holds a count too large for an image")
    shift = 5 * (np.arange(len(groups)) - np.repeat(starts, lengths))
    values = np.add.reduceat((groups & 0x1F) << shift, starts)
    negative = (groups[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    counts = values.copy()
    counts[1::2] = np.cumsum(values[1::2])  # index > 2: difference to the count two places earlier
    counts[2::2] = np.cumsum(values[2::2])
    return counts


def rle_counts_to_string(counts: np.ndarray) -> str:
    """Inverse of :func:`rle_counts_from_string` (used to write fixtures and by exporters)."""
    counts = [int(c) for c in counts]
    chars: list[str] = []
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            group = value & 0x1F
            value >>= 5
            more = value != -1 if group & 0x10 else value != 0
            if more:
                group |= 0x20
            chars.append(chr(group + 48))
    return "".join(chars)


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """bool[H, W] -> uncompressed COCO RLE ``{"size": [H, W], "counts": [...]}`` (column-major)."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs}


def decode_rle(rle: dict[str, Any], height: int, width: int) -> np.ndarray:
    """COCO RLE dict (compressed or uncompressed counts) -> bool[height, width].

    The counts are parsed and checked (pycocotools' C decoder trusts its input: runs past the image
    overflow its buffer, runs short of it leave memory uninitialised), then expanded in numpy.
    """
    size = rle.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        raise AnnotationError("RLE needs a 'size': [height, width]")
    if [int(size[0]), int(size[1])] != [height, width]:
        raise AnnotationError(f"RLE size {list(size)} does not match the image's {[height, width]}")
    raw = rle.get("counts")
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("ascii", errors="replace")
    if isinstance(raw, str):
        counts = rle_counts_from_string(raw)
    elif isinstance(raw, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in raw):
        counts = np.asarray(raw, dtype=np.int64)
    else:
        raise AnnotationError("RLE 'counts' must be a string or a list of whole numbers")
    if counts.size and counts.min() < 0:
        raise AnnotationError("RLE holds a negative run length")
    total, pixels = int(counts.sum()), height * width
    if total > pixels:
        raise AnnotationError(f"RLE runs cover {total} pixels, the image has {pixels}")
    if pixels == 0:
        return np.zeros((height, width), dtype=bool)
    # The runs expand in numpy: identical to pycocotools' decoder (property test) and as fast or
    # faster once the counts are parsed, which the checks above need anyway (pipelines/bench/masks.py).
    values = np.repeat((np.arange(counts.size) % 2).astype(bool), counts)
    flat = np.zeros(pixels, dtype=bool)
    flat[:total] = values
    return flat.reshape(width, height).T.copy()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fill_polygon(xs: np.ndarray, ys: np.ndarray, height: int, width: int) -> np.ndarray:
    """One closed polygon (float[P] vertex coordinates) -> bool[height, width], even-odd rule.

    Pixel ``(r, c)`` is inside when its centre ``(c + 0.5, r + 0.5)`` is: coordinates are
    continuous with pixel ``c`` covering ``[c, c + 1)``, as in COCO (a box polygon from 0 to 10
    covers pixels 0..9, area 100).
    """
    mask = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = xs, ys, np.roll(xs, -1), np.roll(ys, -1)
    low, high = np.minimum(y0, y1), np.maximum(y0, y1)
    first = max(0, int(np.floor(low.min() - 0.5)))
    last = min(height - 1, int(np.ceil(high.max() - 0.5)))
    centres = np.arange(width) + 0.5
    for row in range(first, last + 1):
        y = row + 0.5
        crossing = (low <= y) & (y < high)  # half-open: a vertex on the scanline counts once
        if not crossing.any():
            continue
        t = (y - y0[crossing]) / (y1[crossing] - y0[crossing])
        xs_at_row = np.sort(x0[crossing] + t * (x1[crossing] - x0[crossing]))
        mask[row] = np.searchsorted(xs_at_row, centres, side="right") % 2 == 1
    return mask


def rasterize_polygons(polygons: list, height: int, width: int) -> np.ndarray:
    """Polygons ``[[x1, y1, ...], ...]`` (pixel coordinates) -> bool[height, width], their union.

    Rasterised by ``pycocotools`` (``frPyObjects`` + ``merge``); polygons of fewer than 3 points are
    skipped.
    """
    from pycocotools import mask as mask_utils

    kept = []
    for polygon in polygons:
        if not (isinstance(polygon, list) and all(_is_number(v) for v in polygon)):
            raise AnnotationError("a polygon must be a list of numbers [x1, y1, x2, y2, ...]")
        if len(polygon) % 2:
            raise AnnotationError(f"a polygon has an odd number of coordinates ({len(polygon)})")
        if len(polygon) < 6:
            continue  # fewer than 3 points: no area
        points = np.asarray(polygon, dtype=np.float64)
        if not np.isfinite(points).all():
            raise AnnotationError("a polygon holds a non-finite coordinate")
        kept.append(points.tolist())
    if not kept or height * width == 0:
        return np.zeros((height, width), dtype=bool)
    rle = mask_utils.merge(mask_utils.frPyObjects(kept, height, width))
    return mask_utils.decode(rle).astype(bool)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Any accepted segmentation form (see module docstring) -> bool[height, width]."""
    if isinstance(segmentation, dict):
        return decode_rle(segmentation, height, width)
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), dtype=bool)
        if all(_is_number(v) for v in segmentation):
            return rasterize_polygons([segmentation], height, width)
        if all(isinstance(p, dict) for p in segmentation):
            mask = np.zeros((height, width), dtype=bool)
            for rle in segmentation:
                mask |= decode_rle(rle, height, width)
            return mask
        if all(isinstance(p, list) for p in segmentation):
            return rasterize_polygons(segmentation, height, width)
    raise AnnotationError("a segmentation must be polygons (lists of numbers) or an RLE dict")
