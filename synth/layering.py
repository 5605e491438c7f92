"""The one layering function: depth order + amodal masks -> occlusion DAG, layers, M_k and C_k.

Object ``i`` occludes ``j`` when ``i`` is in front (smaller depth) and their amodal masks share at
least one pixel. The layer of an object is 0 when nothing occludes it, else one more than the
largest layer among its occluders (the longest path in the DAG). Every producer of scenes
(generator, importers) and every metric calls :func:`compute_layers`; nothing re-derives layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LayerInfo:
    """Result of :func:`compute_layers` for one scene with N objects and L layers.

    - ``occlusion_edges``: int64[E, 2], rows ``(front, back)``, sorted lexicographically.
    - ``object_layer``: int64[N], layer of each object (0 = unoccluded).
    - ``visible_masks``: bool[N, H, W], amodal minus the union of everything in front.
    - ``layer_masks``: bool[L, H, W], ``M_k`` = union of amodal masks of layer-k objects.
    - ``cumulative_masks``: bool[L + 1, H, W], ``C_k`` = union of layers < k (``C_0`` empty,
      ``C_L`` = all objects).
    - ``num_layers``: L (0 when the scene has no objects).
    """

    occlusion_edges: np.ndarray
    object_layer: np.ndarray
    visible_masks: np.ndarray
    layer_masks: np.ndarray
    cumulative_masks: np.ndarray
    num_layers: int


def overlap_matrix(amodal_masks: np.ndarray) -> np.ndarray:
    """bool[N, N]: ``True`` where two amodal masks (bool[N, H, W]) share a pixel (diagonal included)."""
    n = amodal_masks.shape[0]
    if n == 0:
        return np.zeros((0, 0), dtype=bool)
    packed = np.packbits(amodal_masks.reshape(n, -1), axis=1)
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    words = packed.view(np.uint64)
    return (words[:, None, :] & words[None, :, :]).any(axis=2)


def _as_words(masks: np.ndarray) -> np.ndarray:
    """A contiguous copy of bool[N, H, W] viewed as uint64[N, H*W/8] (uint8[N, H*W] if H*W % 8)."""
    flat = np.ascontiguousarray(masks.reshape(masks.shape[0], -1)).view(np.uint8)
    return flat.view(np.uint64) if flat.shape[1] % 8 == 0 else flat.copy()


def compute_layers(amodal_masks: np.ndarray, depth: np.ndarray) -> LayerInfo:
    """Occlusion DAG, layers, visible masks, ``M_k`` and ``C_k`` for one scene.

    Args:
        amodal_masks: bool[N, H, W] full (amodal) object masks, clipped to the frame.
        depth: int[N], distinct; 0 (or the smallest value) is the frontmost object.
    """
    amodal = np.asarray(amodal_masks, dtype=bool)
    depth = np.asarray(depth).reshape(-1)
    assert amodal.ndim == 3 and amodal.shape[0] == depth.shape[0], (amodal.shape, depth.shape)
    assert len(np.unique(depth)) == len(depth), "object depths must be distinct"
    n, height, width = amodal.shape
    if n == 0:
        empty = np.zeros((0, height, width), dtype=bool)
        return LayerInfo(
            occlusion_edges=np.zeros((0, 2), dtype=np.int64),
            object_layer=np.zeros(0, dtype=np.int64),
            visible_masks=empty,
            layer_masks=empty,
            cumulative_masks=np.zeros((1, height, width), dtype=bool),
            num_layers=0,
        )

    in_front = depth[:, None] < depth[None, :]
    occludes = overlap_matrix(amodal) & in_front  # occludes[i, j]: i occludes j
    front, back = np.nonzero(occludes)
    occlusion_edges = np.stack([front, back], axis=1).astype(np.int64)

    order = np.argsort(depth, kind="stable")  # front to back
    object_layer = np.zeros(n, dtype=np.int64)
    for j in order:
        occluders = occludes[:, j]
        if occluders.any():
            object_layer[j] = object_layer[occluders].max() + 1

    # Mask algebra on machine words: a bool byte is 0/1, so OR/AND-NOT of the uint64 (or uint8)
    # view of packed bool bytes is the elementwise OR/AND-NOT of the masks.
    words = _as_words(amodal)
    covered = np.zeros_like(words[0])
    visible_words = np.empty_like(words)
    for j in order:
        np.bitwise_and(words[j], ~covered, out=visible_words[j])
        covered |= words[j]
    visible_masks = visible_words.view(bool).reshape(n, height, width)

    num_layers = int(object_layer.max()) + 1
    layer_words = np.zeros((num_layers, words.shape[1]), dtype=words.dtype)
    for j in range(n):
        layer_words[object_layer[j]] |= words[j]
    cumulative_words = np.zeros((num_layers + 1, words.shape[1]), dtype=words.dtype)
    for k in range(num_layers):
        np.bitwise_or(cumulative_words[k], layer_words[k], out=cumulative_words[k + 1])
    layer_masks = layer_words.view(bool).reshape(num_layers, height, width)
    cumulative_masks = cumulative_words.view(bool).reshape(num_layers + 1, height, width)
    return LayerInfo(
        occlusion_edges=occlusion_edges,
        object_layer=object_layer,
        visible_masks=visible_masks,
        layer_masks=layer_masks,
        cumulative_masks=cumulative_masks,
        num_layers=num_layers,
    )


@dataclass(frozen=True)
class OcclusionMaps:
    """Per-pixel occlusion facts of one scene (int8[H, W] each), from :func:`occlusion_maps`.

    - ``visible_id``: 1 + index of the object visible at the pixel, 0 on the background.
    - ``visible_layer``: layer of that object, -1 on the background.
    - ``occluder_layer``: at a visible pixel of object ``j`` that touches (4-neighbourhood) a pixel
      where another object ``i`` is visible and hides ``j`` (``j``'s amodal mask covers that pixel),
      the largest layer of such an ``i``; -1 elsewhere. These are the boundary pixels on the
      *occluded side* of an occlusion boundary ("border ownership": the other side owns the border).

    For layer step ``k`` (given ``C_k``): the occluded-side boundary pixels whose occluder is not yet
    in ``C_k`` are ``occluder_layer >= k``; the visible pixels of objects that are still hidden by
    something outside ``C_k`` are ``visible_layer > k``; those of layer ``k`` are ``visible_layer == k``.
    """

    visible_id: np.ndarray
    visible_layer: np.ndarray
    occluder_layer: np.ndarray

    def stacked(self) -> np.ndarray:
        """int8[3, H, W]: ``visible_id``, ``visible_layer``, ``occluder_layer``."""
        return np.stack([self.visible_id, self.visible_layer, self.occluder_layer])


_NEIGHBOURS = ((0, 1), (0, -1), (1, 0), (-1, 0))


def occlusion_maps(
    amodal_masks: np.ndarray, visible_masks: np.ndarray, object_layer: np.ndarray
) -> OcclusionMaps:
    """Visible ids, visible layers and occluded-side boundary pixels (see :class:`OcclusionMaps`).

    Args: ``amodal_masks``/``visible_masks`` bool[N, H, W], ``object_layer`` int[N] (as computed by
    :func:`compute_layers`; visible masks are disjoint). At most 126 objects.
    """
    amodal = np.asarray(amodal_masks, dtype=bool)
    visible = np.asarray(visible_masks, dtype=bool)
    layer = np.asarray(object_layer, dtype=np.int64).reshape(-1)
    n, height, width = amodal.shape
    if n > 126:
        raise ValueError(f"occlusion_maps handles at most 126 objects, got {n}")
    ids = np.zeros((height, width), dtype=np.int64)
    for j in range(n):
        ids[visible[j]] = j + 1
    layer_of = np.concatenate([[-1], layer])  # by id
    occluder = np.full((height, width), -1, dtype=np.int64)
    if n:
        ys, xs = np.nonzero(ids)
        own = ids[ys, xs] - 1
        for dy, dx in _NEIGHBOURS:
            qy, qx = ys + dy, xs + dx
            inside = (qy >= 0) & (qy < height) & (qx >= 0) & (qx < width)
            qy, qx = np.where(inside, qy, 0), np.where(inside, qx, 0)
            other = ids[qy, qx] - 1
            hides = inside & (other >= 0) & (other != own) & amodal[own, qy, qx]
            value = np.where(hides, layer_of[other + 1], -1)
            occluder[ys, xs] = np.maximum(occluder[ys, xs], value)
    return OcclusionMaps(
        visible_id=ids.astype(np.int8),
        visible_layer=layer_of[ids].astype(np.int8),
        occluder_layer=occluder.astype(np.int8),
    )
