"""From layer masks to objects: connected components, visible masks, occlusion edges, the merge rule.

All masks are numpy ``bool [H,W]`` (or ``[L,H,W]`` for a stack of layers, front layer first).
Connectivity is 8-neighbour throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class SegmentedObject:
    """One object instance; ``bbox = (x0, y0, x1, y1)``, ``x1, y1`` exclusive; ``area`` = amodal pixels."""

    id: int
    layer: int
    score: float  # ensemble agreement: mean over the object's pixels of the fraction of members voting for it
    amodal_mask: np.ndarray  # bool [H,W]
    visible_mask: np.ndarray  # bool [H,W]: amodal minus all earlier layers
    bbox: tuple[int, int, int, int]
    area: int


def connected_components(mask: np.ndarray, min_area: int = 1) -> list[np.ndarray]:
    """Components of ``mask bool[H,W]`` with at least ``min_area`` pixels, as bool masks, in label order."""
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if count == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    return [labels == i for i in range(1, count + 1) if areas[i] >= min_area]


def touches(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` (bool [H,W]) overlap or are 8-adjacent."""
    return bool(np.logical_and(ndimage.binary_dilation(a, structure=EIGHT_CONNECTED), b).any())


def split_disconnected(
    layer_mask: np.ndarray, previous_layer_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The reference's merge rule: ``(stays, moves)`` where ``moves`` holds the components of
    ``layer_mask`` that do not touch ``previous_layer_mask`` (they cannot be occluded by that layer,
    so they belong to it) and ``stays`` the rest."""
    moves = np.zeros_like(layer_mask, dtype=bool)
    for component in connected_components(layer_mask):
        if not touches(component, previous_layer_mask):
            moves |= component
    return layer_mask & ~moves, moves


def bbox_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def extract_objects(layer_masks: np.ndarray, agreement: np.ndarray, min_area: int) -> list[SegmentedObject]:
    """Split each layer ``bool[L,H,W]`` into objects; ``agreement float[L,H,W]`` scores them."""
    objects: list[SegmentedObject] = []
    covered = np.zeros(layer_masks.shape[1:], dtype=bool)  # union of earlier layers = C_k
    for k, layer_mask in enumerate(layer_masks):
        for component in connected_components(layer_mask, min_area):
            objects.append(
                SegmentedObject(
                    id=len(objects),
                    layer=k,
                    score=float(agreement[k][component].mean()),
                    amodal_mask=component,
                    visible_mask=component & ~covered,
                    bbox=bbox_of(component),
                    area=int(component.sum()),
                )
            )
        covered |= layer_mask
    return objects


def occlusion_edges(objects: list[SegmentedObject]) -> list[tuple[int, int]]:
    """``(front_id, back_id)`` for every pair of overlapping objects in consecutive layers."""
    edges = []
    for front in objects:
        for back in objects:
            if back.layer == front.layer + 1 and np.logical_and(front.amodal_mask, back.amodal_mask).any():
                edges.append((front.id, back.id))
    return edges
