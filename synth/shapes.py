"""Class-agnostic object shapes, evaluated for many objects per array operation.

Every shape is star-shaped about its centre, so one polar boundary table ``R[o, bin]`` (pixels,
indexed by the absolute angle of a pixel around the object centre) describes it: the object
covers the pixels with ``rho <= R(phi)``. Rings additionally need ``rho >= f * R(phi)`` and
crescents lie outside a second, offset disk. The signed radial distance
``d = R(phi) - rho`` (pixels, positive inside) gives the exact binary mask (``d >= 0`` at pixel
centres) and an anti-aliasing coverage ``clip(d + 0.5, 0, 1)`` for the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPE_KINDS = (
    "ellipse",
    "rectangle",
    "convex_polygon",
    "polygon",
    "star",
    "superellipse",
    "blob",
    "ring",
    "crescent",
)
# Relative frequency of each kind (rings and crescents are thin, hence rarer).
SHAPE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.2, 0.6, 0.6)
_MAX_VERTICES = 12
_HARMONICS = 5
# Uniform slots per object used by sample_shapes.
SLOT_KIND, SLOT_ROT, SLOT_ASPECT, SLOT_PARAM, SLOT_R2, SLOT_OFFSET, SLOT_COUNT = range(7)
_SLOT_ANGLES = 7
_SLOT_RADII = _SLOT_ANGLES + _MAX_VERTICES
_SLOT_FOURIER = _SLOT_RADII + _MAX_VERTICES
NUM_SHAPE_UNIFORMS = _SLOT_FOURIER + 2 * _HARMONICS


@dataclass
class ShapeBatch:
    """O objects' geometry in pixels.

    ``kind`` int[O] (index into SHAPE_KINDS), ``cx, cy`` float32[O] centre (pixel units, pixel
    (i, j) has its centre at (j + 0.5, i + 0.5)), ``boundary`` float32[O, B] polar radius table,
    ``ring_inner`` float32[O] (fraction of R; 0 = solid), ``hole`` float32[O, 3] offset disk
    ``(dx, dy, radius)`` cut out of crescents (radius 0 = none).
    """

    kind: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    boundary: np.ndarray
    ring_inner: np.ndarray
    hole: np.ndarray

    def __len__(self) -> int:
        return int(self.kind.shape[0])


def _polygon_radius(
    vertex_angle: np.ndarray, vertex_radius: np.ndarray, count: np.ndarray, psi: np.ndarray
) -> np.ndarray:
    """Polar radius of star-shaped polygons at angles ``psi`` float[O, B] in [0, 2 pi).

    ``vertex_angle`` float[O, V] increasing from 0, ``vertex_radius`` float[O, V]; only the first
    ``count[o]`` vertices are used.
    """
    v = vertex_angle.shape[1]
    used = np.arange(v)[None, :] < count[:, None]
    angle = np.where(used, vertex_angle, 10.0)
    seg = np.full(psi.shape, -1, dtype=np.int64)
    for k in range(v):
        seg += angle[:, k, None] <= psi
    nxt = np.where(seg + 1 >= count[:, None], 0, seg + 1)
    t0 = np.take_along_axis(angle, seg, axis=1)
    t1 = np.take_along_axis(angle, nxt, axis=1)
    t1 = np.where(nxt == 0, 2 * np.pi, t1)
    r0 = np.take_along_axis(vertex_radius, seg, axis=1)
    r1 = np.take_along_axis(vertex_radius, nxt, axis=1)
    denom = r0 * np.sin(psi - t0) + r1 * np.sin(t1 - psi)
    return r0 * r1 * np.sin(t1 - t0) / np.maximum(denom, 1e-9)


def _ellipse_radius(a: np.ndarray, b: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """Polar radius float[O, B] of axis-aligned ellipses with semi-axes ``a, b`` float[O, 1]."""
    return a * b / np.sqrt((b * np.cos(psi)) ** 2 + (a * np.sin(psi)) ** 2)


def kind_weights_for(
    kinds: tuple[str, ...] | None = None, without: tuple[str, ...] = ()
) -> tuple[float, ...]:
    """Weights over ``SHAPE_KINDS``: the default mix restricted to ``kinds`` (all if None), minus
    ``without``; one-line ``ValueError`` for an unknown kind or an empty mix."""
    for name in (*(kinds or ()), *without):
        if name not in SHAPE_KINDS:
            raise ValueError(f"unknown shape kind {name!r}; choose from {', '.join(SHAPE_KINDS)}")
    weights = tuple(
        w if (kinds is None or k in kinds) and k not in without else 0.0
        for k, w in zip(SHAPE_KINDS, SHAPE_WEIGHTS, strict=True)
    )
    if not sum(weights):
        raise ValueError("the shape mix is empty: keep at least one kind")
    return weights


def sample_shapes(
    u: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
    num_bins: int,
    kind_weights: tuple[float, ...] = SHAPE_WEIGHTS,
) -> ShapeBatch:
    """Shapes from uniforms ``u`` float[O, NUM_SHAPE_UNIFORMS]; ``radius`` float[O] is the size (px);
    ``kind_weights`` (over ``SHAPE_KINDS``) is the mix of kinds."""
    o = u.shape[0]
    weights = np.asarray(kind_weights, dtype=np.float64)
    cdf = np.cumsum(weights) / weights.sum()
    kind = np.searchsorted(cdf, u[:, SLOT_KIND], side="right").clip(0, len(SHAPE_KINDS) - 1)
    rot = u[:, SLOT_ROT] * 2 * np.pi
    phi = -np.pi + (np.arange(num_bins) + 0.5) * (2 * np.pi / num_bins)
    psi = np.mod(phi[None, :] - rot[:, None], 2 * np.pi)
    r = radius[:, None].astype(np.float64)
    aspect = (0.35 + 0.65 * u[:, SLOT_ASPECT])[:, None]
    param = u[:, SLOT_PARAM][:, None]
    boundary = np.empty((o, num_bins))
    ring_inner = np.zeros(o)
    hole = np.zeros((o, 3))

    def pick(name: str) -> np.ndarray:
        return np.nonzero(kind == SHAPE_KINDS.index(name))[0]

    for name in ("ellipse", "ring", "crescent"):
        idx = pick(name)
        asp = aspect[idx] if name == "ellipse" else 0.75 + 0.25 * aspect[idx]
        if name == "crescent":
            asp = np.ones_like(asp)
        boundary[idx] = _ellipse_radius(r[idx], r[idx] * asp, psi[idx])
    idx = pick("ring")
    ring_inner[idx] = 0.45 + 0.25 * param[idx, 0]
    idx = pick("crescent")
    hole_radius = r[idx, 0] * (0.7 + 0.25 * u[idx, SLOT_R2])
    offset = r[idx, 0] * (0.3 + 0.35 * u[idx, SLOT_OFFSET])
    hole[idx] = np.stack([offset * np.cos(rot[idx]), offset * np.sin(rot[idx]), hole_radius], axis=1)

    idx = pick("rectangle")
    a, b = 0.8 * r[idx], 0.8 * r[idx] * aspect[idx]
    c, s = np.abs(np.cos(psi[idx])), np.abs(np.sin(psi[idx]))
    boundary[idx] = np.minimum(a / np.maximum(c, 1e-9), b / np.maximum(s, 1e-9))

    idx = pick("superellipse")
    p = np.where(param[idx] < 0.4, 0.6 + param[idx], 2.5 + 4.0 * (param[idx] - 0.4))
    a, b = 0.9 * r[idx], 0.9 * r[idx] * np.maximum(aspect[idx], 0.5)
    c, s = np.abs(np.cos(psi[idx])) / a, np.abs(np.sin(psi[idx])) / b
    boundary[idx] = (c**p + s**p + 1e-12) ** (-1.0 / p)

    idx = pick("blob")
    k = np.arange(2, 2 + _HARMONICS)
    amp = (u[idx, _SLOT_FOURIER : _SLOT_FOURIER + _HARMONICS] - 0.5) * (0.7 / k)
    phase = u[idx, _SLOT_FOURIER + _HARMONICS : _SLOT_FOURIER + 2 * _HARMONICS] * 2 * np.pi
    wave = np.cos(k[None, :, None] * psi[idx][:, None, :] + phase[:, :, None])
    boundary[idx] = r[idx] * np.maximum(1.0 + (amp[:, :, None] * wave).sum(axis=1), 0.3)

    poly = np.nonzero(np.isin(kind, [SHAPE_KINDS.index(n) for n in ("convex_polygon", "polygon", "star")]))[0]
    if len(poly):
        _polygon_boundaries(u[poly], kind[poly], r[poly], aspect[poly], psi[poly], boundary, poly)
    return ShapeBatch(
        kind=kind.astype(np.int64),
        cx=np.asarray(cx, dtype=np.float32),
        cy=np.asarray(cy, dtype=np.float32),
        boundary=boundary.astype(np.float32),
        ring_inner=ring_inner.astype(np.float32),
        hole=hole.astype(np.float32),
    )


def _polygon_boundaries(
    u: np.ndarray,
    kind: np.ndarray,
    r: np.ndarray,
    aspect: np.ndarray,
    psi: np.ndarray,
    boundary: np.ndarray,
    rows: np.ndarray,
) -> None:
    """Fill ``boundary[rows]`` for convex polygons, non-convex polygons and stars."""
    v = _MAX_VERTICES
    is_star = kind == SHAPE_KINDS.index("star")
    is_convex = kind == SHAPE_KINDS.index("convex_polygon")
    count_u = u[:, SLOT_COUNT]
    points = 4 + np.floor(count_u * 3).astype(np.int64)  # stars: 4..6 points
    count = np.where(
        is_star, 2 * points, np.where(is_convex, 3 + np.floor(count_u * 5), 5 + np.floor(count_u * 6))
    ).astype(np.int64)
    slot = np.arange(v)[None, :]
    jitter = np.where(is_star[:, None], 0.0, (u[:, _SLOT_ANGLES : _SLOT_ANGLES + v] - 0.5) * 0.4)
    jitter[:, 0] = 0.0
    angle = (slot + jitter) * (2 * np.pi / count[:, None])
    radius_scale = np.where(
        is_star[:, None],
        np.where(slot % 2 == 0, 1.0, 0.35 + 0.3 * u[:, SLOT_PARAM][:, None]),
        np.where(is_convex[:, None], 1.0, 0.4 + 0.6 * u[:, _SLOT_RADII : _SLOT_RADII + v]),
    )
    # Vertices on an ellipse (affine image of a circle), so convex polygons stay convex.
    ellipse = _ellipse_radius(r, r * np.maximum(aspect, 0.5), angle)
    radius = np.where(is_star[:, None], r, ellipse) * radius_scale
    boundary[rows] = _polygon_radius(angle, radius, count, psi)


def signed_distance(shapes: ShapeBatch, height: int, width: int) -> np.ndarray:
    """float32[O, H, W] radial signed distance (px, > 0 inside) of every object at every pixel."""
    o = len(shapes)
    num_bins = shapes.boundary.shape[1]
    xs = np.arange(width, dtype=np.float32) + np.float32(0.5)
    ys = np.arange(height, dtype=np.float32) + np.float32(0.5)
    dx = xs[None, None, :] - shapes.cx[:, None, None]
    dy = ys[None, :, None] - shapes.cy[:, None, None]
    dx, dy = np.broadcast_arrays(dx, dy)
    rho = np.sqrt(dx * dx + dy * dy)
    phi = np.arctan2(dy, dx)
    bins = ((phi + np.float32(np.pi)) * np.float32(num_bins / (2 * np.pi))).astype(np.int64)
    np.clip(bins, 0, num_bins - 1, out=bins)
    bins += (np.arange(o, dtype=np.int64) * num_bins)[:, None, None]
    boundary = np.take(shapes.boundary, bins)
    distance = boundary - rho
    ring = np.nonzero(shapes.ring_inner > 0)[0]
    if len(ring):
        inner = rho[ring] - shapes.ring_inner[ring, None, None] * boundary[ring]
        distance[ring] = np.minimum(distance[ring], inner)
    holed = np.nonzero(shapes.hole[:, 2] > 0)[0]
    if len(holed):
        hx = dx[holed] - shapes.hole[holed, 0, None, None]
        hy = dy[holed] - shapes.hole[holed, 1, None, None]
        outside_hole = np.sqrt(hx * hx + hy * hy) - shapes.hole[holed, 2, None, None]
        distance[holed] = np.minimum(distance[holed], outside_hole)
    return distance
