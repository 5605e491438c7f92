"""Vectorised scene renderer: blocks of scenes x objects per array operation.

A scene is defined by ``(seed, scene_id)`` alone: every random number comes from
``synth.counter_rng`` keyed by the scene id, and every array operation acts on each scene's rows
independently, so the result does not depend on how scenes are grouped into blocks or workers.

Per scene: 2..max_objects objects clustered around 1-3 centres (so overlaps are common), object
``k`` at depth ``k`` (0 = front). An object whose visible part is under ``min_visible`` of its
in-frame area (or under a few pixels), or that is occluded by an object with which it shares fewer
than ``min_edge_border`` px of visible border (an occlusion the picture cannot show: a sliver of
overlap, or a common border hidden by a third object), is re-drawn with a fresh stream; after a few
rounds the whole scene is re-drawn. Masks are exact at pixel centres; the image gets anti-aliased
edges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from synth.backgrounds import (
    BACKGROUND_KINDS,
    BACKGROUND_WEIGHTS,
    NUM_BACKGROUND_UNIFORMS,
    render_backgrounds,
)
from synth.counter_rng import stream_id, uniforms
from synth.schema import Scene, scene_from_masks
from synth.shapes import NUM_SHAPE_UNIFORMS, SHAPE_KINDS, SHAPE_WEIGHTS, sample_shapes, signed_distance
from synth.splits import DEFAULT_FRACTIONS, split_of
from synth.textures import PATTERNS, pattern_field

GENERATOR_VERSION = 1
_STREAM_SCENE, _STREAM_OBJECT = 1, 2
_OBJECT_ROUNDS = 6  # re-draws of a too-hidden object before the whole scene is re-drawn
_MAX_SCENE_ATTEMPTS = 64
# Object uniform layout: shape slots, then placement, then fill.
_P = NUM_SHAPE_UNIFORMS
_F = _P + 4
_NUM_OBJECT_UNIFORMS = _F + 16
_SCENE_BG = 10
_NUM_SCENE_UNIFORMS = _SCENE_BG + NUM_BACKGROUND_UNIFORMS
FILL_WEIGHTS = (0.3, 0.2, 0.1, 0.15, 0.1, 0.15)  # over textures.PATTERNS: today's "textured" mix


@dataclass(frozen=True)
class RenderConfig:
    """What a scene looks like. ``size`` is H = W in pixels (multiple of 16, 32..512)."""

    size: int = 64
    min_objects: int = 2
    max_objects: int = 8
    min_visible: float = 0.10
    # Every occlusion edge (front, back) shows at least this many px of visible border between the
    # two objects (back-side pixels 4-adjacent to the front's visible part), else the back object is
    # re-drawn. 0 = no check (the generator before this field: same seed, same bytes); manifests
    # written before it read as 0.
    min_edge_border: int = 3
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    fill_weights: tuple[float, ...] = FILL_WEIGHTS  # object fills, over textures.PATTERNS
    background_weights: tuple[float, ...] = BACKGROUND_WEIGHTS  # over backgrounds.BACKGROUND_KINDS
    shape_weights: tuple[float, ...] = SHAPE_WEIGHTS  # object shapes, over shapes.SHAPE_KINDS

    def validate(self) -> None:
        if not (32 <= self.size <= 512 and self.size % 16 == 0):
            raise ValueError(f"size must be a multiple of 16 between 32 and 512, got {self.size}")
        if not 1 <= self.min_objects <= self.max_objects <= 32:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= 32, got {self.min_objects}..{self.max_objects}"
            )
        if not 0.0 <= self.min_visible <= 0.9:
            raise ValueError(f"min_visible must be in [0, 0.9], got {self.min_visible}")
        if not 0 <= self.min_edge_border <= 16:
            raise ValueError(f"min_edge_border must be in 0..16 px, got {self.min_edge_border}")
        for name, weights, kinds in (
            ("fill_weights", self.fill_weights, PATTERNS),
            ("background_weights", self.background_weights, BACKGROUND_KINDS),
            ("shape_weights", self.shape_weights, SHAPE_KINDS),
        ):
            if len(weights) != len(kinds) or min(weights) < 0 or sum(weights) <= 0:
                raise ValueError(
                    f"{name} needs {len(kinds)} non-negative weights (over {', '.join(kinds)}) "
                    f"with a positive sum, got {list(weights)}"
                )

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "split_fractions": list(self.split_fractions),
            "fill_weights": list(self.fill_weights),
            "background_weights": list(self.background_weights),
            "shape_weights": list(self.shape_weights),
        }

    @classmethod
    def from_dict(cls, data: dict) -> RenderConfig:
        """Inverse of ``to_dict`` (manifests written before the mixture fields get today's mixes, and
        before ``min_edge_border`` the check they were made without: 0)."""
        tuples = ("split_fractions", "fill_weights", "background_weights", "shape_weights")
        data = {**LEGACY_RENDER_FIELDS, **data}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in data.items()})


# Fields added after datasets were written, with the value that reproduces those datasets.
LEGACY_RENDER_FIELDS = {"min_edge_border": 0}


@dataclass
class RenderedBlock:
    """Raw render output for B scenes: ``images`` uint8[B, H, W, 3]; ``amodal_masks[b]`` bool[N_b, H, W]
    with object k at depth k (0 = front)."""

    scene_ids: np.ndarray
    images: np.ndarray
    amodal_masks: list[np.ndarray]


def min_object_pixels(size: int) -> int:
    """Smallest visible area (px) an object may have: 16 px at 64x64, scaled with the area."""
    return max(4, (size * size) // 256)


def _object_geometry(ou: np.ndarray, su: np.ndarray, size: int):
    """Centres and radii (px) of O objects from object uniforms ``ou`` and their scenes' ``su``."""
    clusters = 1 + np.floor(su[:, 1] * 3).astype(np.int64)
    which = np.minimum(np.floor(ou[:, _P] * clusters), clusters - 1).astype(np.int64)
    centre = su[np.arange(len(su)), 2 + 2 * which], su[np.arange(len(su)), 3 + 2 * which]
    spread = (0.06 + 0.12 * su[:, 8]) * size
    # Box-Muller normal offsets around the cluster centre.
    mag = np.sqrt(-2.0 * np.log1p(-ou[:, _P + 1])) * spread
    ang = 2 * np.pi * ou[:, _P + 2]
    cx = (0.1 + 0.8 * centre[0]) * size + mag * np.cos(ang)
    cy = (0.1 + 0.8 * centre[1]) * size + mag * np.sin(ang)
    radius = size * np.exp(np.log(0.09) + (np.log(0.30) - np.log(0.09)) * ou[:, _P + 3])
    return cx, cy, radius


def _shape_distance(ou: np.ndarray, su: np.ndarray, cfg: RenderConfig) -> np.ndarray:
    """float32[O, size, size] signed radial distance (px) for objects with uniforms ``ou``."""
    size = cfg.size
    cx, cy, radius = _object_geometry(ou, su, size)
    shapes = sample_shapes(ou[:, :_P], cx, cy, radius, num_bins=4 * size, kind_weights=cfg.shape_weights)
    return signed_distance(shapes, size, size), (cx, cy, radius)


def _count_pixels(masks: np.ndarray) -> np.ndarray:
    """int64[O] number of True pixels of bool[O, H, W] (popcount of the 0/1 bytes, 8 at a time)."""
    if not hasattr(np, "bitwise_count"):  # numpy < 2.0
        return np.count_nonzero(masks.reshape(len(masks), -1), axis=1).astype(np.int64)
    words = np.ascontiguousarray(masks).reshape(len(masks), -1).view(np.uint64)
    return np.bitwise_count(words).sum(axis=1, dtype=np.int64)


def _visible_pixels(masks: np.ndarray, scene_of: np.ndarray, slot: np.ndarray, num_scenes: int) -> np.ndarray:
    """int64[O] visible pixel count of each object (front-to-back by slot within its scene)."""
    return _count_pixels(_visible_masks(masks, scene_of, slot, num_scenes))


def _visible_masks(masks: np.ndarray, scene_of: np.ndarray, slot: np.ndarray, num_scenes: int) -> np.ndarray:
    """bool[O, H, W] visible part of each object (objects in front: smaller slot, same scene)."""
    covered = np.zeros((num_scenes,) + masks.shape[1:], dtype=bool)
    visible = np.empty_like(masks)
    for s in range(int(slot.max()) + 1 if len(slot) else 0):
        rows = np.nonzero(slot == s)[0]
        scenes = scene_of[rows]
        visible[rows] = masks[rows] & ~covered[scenes]
        covered[scenes] |= masks[rows]
    return visible


def scene_pairs(scene_of: np.ndarray, slot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(front, back)`` of every object pair of the same scene, front at a smaller slot."""
    same = (scene_of[:, None] == scene_of[None, :]) & (slot[:, None] < slot[None, :])
    front, back = np.nonzero(same)
    return front, back


def border_pixels(front_visible: np.ndarray, back_visible: np.ndarray) -> np.ndarray:
    """int64[P]: pixels of each ``back_visible[p]`` 4-adjacent to ``front_visible[p]`` (bool[P, H, W])."""
    near = np.zeros_like(front_visible)
    near[:, 1:] |= front_visible[:, :-1]
    near[:, :-1] |= front_visible[:, 1:]
    near[:, :, 1:] |= front_visible[:, :, :-1]
    near[:, :, :-1] |= front_visible[:, :, 1:]
    return _count_pixels(near & back_visible)


def _hidden_edges(
    masks: np.ndarray, scene_of: np.ndarray, slot: np.ndarray, num_scenes: int, min_border: int
) -> np.ndarray:
    """bool[O]: objects occluded (amodal overlap) by an object of their scene with which they share
    fewer than ``min_border`` px of visible border."""
    front, back = scene_pairs(scene_of, slot)
    out = np.zeros(len(masks), dtype=bool)
    if not len(front):
        return out
    overlap = _count_pixels(masks[front] & masks[back]) > 0
    front, back = front[overlap], back[overlap]
    if not len(front):
        return out
    visible = _visible_masks(masks, scene_of, slot, num_scenes)
    weak = border_pixels(visible[front], visible[back]) < min_border
    out[back[weak]] = True
    return out


def _render_attempt(seed: int, ids: np.ndarray, attempt: int, cfg: RenderConfig):
    """One try at scenes ``ids``; returns ``(ok bool[B], images, masks per ok scene)``."""
    size = cfg.size
    b = len(ids)
    su = uniforms(seed, ids, stream_id(_STREAM_SCENE, attempt), _NUM_SCENE_UNIFORMS)
    span = cfg.max_objects - cfg.min_objects + 1
    count = cfg.min_objects + np.minimum(np.floor(su[:, 0] * span), span - 1).astype(np.int64)
    if attempt >= 8:  # crowded scenes keep failing: thin them out
        count = np.maximum(cfg.min_objects, count - (attempt - 7))
    scene_of = np.repeat(np.arange(b), count)
    slot = np.arange(len(scene_of)) - np.repeat(np.cumsum(count) - count, count)
    obj_ids = ids[scene_of]

    def object_uniforms(rows: np.ndarray, round_: int) -> np.ndarray:
        return uniforms(
            seed, obj_ids[rows], stream_id(_STREAM_OBJECT, attempt, slot[rows], round_), _NUM_OBJECT_UNIFORMS
        )

    all_rows = np.arange(len(scene_of))
    ou = object_uniforms(all_rows, 0)
    distance, geometry = _shape_distance(ou, su[scene_of], cfg)
    min_px = min_object_pixels(size)
    bad = np.zeros(len(scene_of), dtype=bool)
    for round_ in range(_OBJECT_ROUNDS + 1):
        masks = distance >= 0
        amodal_px = _count_pixels(masks)
        visible_px = _visible_pixels(masks, scene_of, slot, b)
        bad = (amodal_px < min_px) | (visible_px < np.maximum(cfg.min_visible * amodal_px, min_px))
        if cfg.min_edge_border:
            bad |= _hidden_edges(masks, scene_of, slot, b, cfg.min_edge_border)
        if not bad.any() or round_ == _OBJECT_ROUNDS:
            break
        rows = np.nonzero(bad)[0]
        ou[rows] = object_uniforms(rows, round_ + 1)
        distance[rows], _ = _shape_distance(ou[rows], su[scene_of[rows]], cfg)
    ok = np.ones(b, dtype=bool)
    ok[scene_of[bad]] = False
    keep_obj = ok[scene_of]
    scene_rows = np.nonzero(ok)[0]
    if not len(scene_rows):
        return ok, np.zeros((0, size, size, 3), dtype=np.uint8), []
    images = _composite(
        su[scene_rows],
        ou[keep_obj],
        distance[keep_obj],
        np.searchsorted(scene_rows, scene_of[keep_obj]),
        slot[keep_obj],
        _object_geometry(ou[keep_obj], su[scene_of[keep_obj]], size),
        cfg,
    )
    masks = masks[keep_obj]
    bounds = np.cumsum(count[ok])[:-1]
    return ok, images, np.split(masks, bounds)


def _composite(su, ou, distance, scene_of, slot, geometry, cfg: RenderConfig) -> np.ndarray:
    """uint8[B, H, W, 3]: backgrounds, then objects painted back to front with anti-aliased edges.

    Colours are computed only at the P pixels an object touches (coverage > 0), a small part of
    the O x H x W grid.
    """
    f32 = np.float32
    size = cfg.size
    image, _ = render_backgrounds(su[:, _SCENE_BG:], size, size, cfg.background_weights)
    if len(ou) == 0:
        return (image * 255 + 0.5).astype(np.uint8)
    cx, cy, radius = geometry
    pixels = size * size
    touched = np.flatnonzero(distance.reshape(-1) > -0.5)  # sorted by object, then pixel
    d = distance.reshape(-1)[touched]
    obj, pix = np.divmod(touched, pixels)
    py, px = np.divmod(pix, size)
    fill_cdf = np.cumsum(cfg.fill_weights)
    pattern = np.searchsorted(fill_cdf, ou[:, _F] * fill_cdf[-1], side="right").clip(0, len(PATTERNS) - 1)
    field = pattern_field(
        obj,
        (px.astype(f32) + f32(0.5)) - cx.astype(f32)[obj],
        (py.astype(f32) + f32(0.5)) - cy.astype(f32)[obj],
        pattern,
        ou[:, _F + 1] * 2 * np.pi,
        radius * (0.8 + 1.2 * ou[:, _F + 2]),
        ou[:, _F + 3 : _F + 5],
    )
    c0 = ou[:, _F + 5 : _F + 8].astype(f32)
    c1 = ou[:, _F + 8 : _F + 11].astype(f32)
    colour = c0[obj] + (c1 - c0)[obj] * field[:, None]
    outlined = ou[:, _F + 11] < 0.3
    on_line = np.nonzero(outlined[obj])[0]
    if len(on_line):
        width = f32(size / 64) * (1.0 + 1.5 * ou[:, _F + 12]).astype(f32)
        edge = np.clip(width[obj[on_line]] - d[on_line] + f32(0.5), 0.0, 1.0)[:, None]
        line = ou[:, _F + 13 : _F + 16].astype(f32)[obj[on_line]]
        colour[on_line] += edge * (line - colour[on_line])
    alpha = np.clip(d + f32(0.5), 0.0, 1.0)[:, None]
    flat = image.reshape(-1, 3)
    target = scene_of[obj] * pixels + pix
    back_to_front = (slot.max() - slot).astype(np.int8 if slot.max() < 127 else np.int64)
    order = np.argsort(back_to_front[obj], kind="stable")  # radix sort on small ints
    bounds = np.flatnonzero(np.diff(back_to_front[obj][order])) + 1
    for part in np.split(order, bounds):
        # within one slot every point of a scene belongs to one object: no repeated targets
        t = target[part]
        flat[t] += alpha[part] * (colour[part] - flat[t])
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def chunk_scenes(size: int) -> int:
    """Scenes per vectorised chunk: ~64 at 64x64, fewer for larger images (bounded memory)."""
    return max(1, (64 * 64 * 64) // (size * size))


def render_block(seed: int, scene_ids: np.ndarray, cfg: RenderConfig) -> RenderedBlock:
    """Render scenes ``scene_ids`` int[B] (any ids, any order) with a fixed memory footprint."""
    ids = np.asarray(scene_ids, dtype=np.int64)
    size = cfg.size
    images = np.empty((len(ids), size, size, 3), dtype=np.uint8)
    masks: list[np.ndarray | None] = [None] * len(ids)
    step = chunk_scenes(size)
    for start in range(0, len(ids), step):
        pending = np.arange(start, min(start + step, len(ids)))
        attempt = 0
        while len(pending):
            if attempt >= _MAX_SCENE_ATTEMPTS:
                raise RuntimeError(f"could not place objects with min_visible={cfg.min_visible}")
            ok, imgs, scene_masks = _render_attempt(seed, ids[pending], attempt, cfg)
            done = pending[ok]
            images[done] = imgs
            for index, m in zip(done, scene_masks, strict=True):
                masks[index] = m
            pending = pending[~ok]
            attempt += 1
    return RenderedBlock(scene_ids=ids, images=images, amodal_masks=masks)  # type: ignore[arg-type]


def render_scenes(seed: int, start: int, count: int, config: RenderConfig | None = None) -> list[Scene]:
    """Scenes ``start .. start + count - 1`` as :class:`synth.schema.Scene` (layers via compute_layers)."""
    cfg = config or RenderConfig()
    cfg.validate()
    block = render_block(seed, np.arange(start, start + count), cfg)
    return [
        scene_from_masks(
            int(scene_id),
            split_of(seed, int(scene_id), cfg.split_fractions),
            block.images[i],
            block.amodal_masks[i],
            np.arange(len(block.amodal_masks[i])),
        )
        for i, scene_id in enumerate(block.scene_ids)
    ]
