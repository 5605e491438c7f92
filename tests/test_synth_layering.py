"""The one layering function on hand-built scenes: chains, diamonds, shared layers, touching objects."""

from __future__ import annotations

import numpy as np
import pytest

from synth.layering import compute_layers


def _boxes(size: int, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """bool[N, size, size] with box (top, left, bottom, right) filled per object (exclusive ends)."""
    masks = np.zeros((len(boxes), size, size), dtype=bool)
    for k, (t, l, b, r) in enumerate(boxes):
        masks[k, t:b, l:r] = True
    return masks


def _edges(info) -> set[tuple[int, int]]:
    return {tuple(e) for e in info.occlusion_edges.tolist()}


def test_chain_gives_one_layer_per_object_and_cumulative_masks():
    masks = _boxes(10, [(0, 0, 4, 4), (2, 2, 6, 6), (4, 4, 8, 8)])
    info = compute_layers(masks, np.array([0, 1, 2]))
    assert _edges(info) == {(0, 1), (1, 2)}  # 0 and 2 touch only at a corner, no overlap
    assert info.object_layer.tolist() == [0, 1, 2]
    assert info.num_layers == 3
    assert not info.cumulative_masks[0].any()
    np.testing.assert_array_equal(info.cumulative_masks[3], masks.any(axis=0))
    np.testing.assert_array_equal(info.layer_masks[1], masks[1])
    np.testing.assert_array_equal(info.visible_masks[1], masks[1] & ~masks[0])
    np.testing.assert_array_equal(info.visible_masks[2], masks[2] & ~masks[1] & ~masks[0])


def test_diamond_takes_the_longest_path():
    # 0 in front of 1 and 2, both in front of 3; 0 also directly overlaps 3.
    masks = _boxes(12, [(0, 0, 12, 3), (0, 2, 6, 8), (6, 2, 12, 8), (0, 1, 12, 12)])
    info = compute_layers(masks, np.array([0, 1, 2, 3]))
    assert {(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)} == _edges(info)
    assert info.object_layer.tolist() == [0, 1, 1, 2]
    np.testing.assert_array_equal(info.layer_masks[1], masks[1] | masks[2])


def test_side_by_side_objects_share_a_layer():
    masks = _boxes(10, [(0, 0, 5, 10), (3, 0, 10, 4), (3, 6, 10, 10)])
    info = compute_layers(masks, np.array([0, 1, 2]))
    assert _edges(info) == {(0, 1), (0, 2)}
    assert info.object_layer.tolist() == [0, 1, 1]
    assert info.num_layers == 2
    np.testing.assert_array_equal(info.cumulative_masks[1], masks[0])


def test_touching_without_overlap_is_not_occlusion():
    masks = _boxes(8, [(0, 0, 8, 4), (0, 4, 8, 8)])
    info = compute_layers(masks, np.array([1, 0]))
    assert info.occlusion_edges.shape == (0, 2)
    assert info.object_layer.tolist() == [0, 0]
    assert info.num_layers == 1
    np.testing.assert_array_equal(info.visible_masks, masks)


def test_depth_order_not_index_order_decides_the_occluder():
    masks = _boxes(8, [(0, 0, 6, 6), (2, 2, 8, 8)])
    info = compute_layers(masks, np.array([5, 2]))  # object 1 is in front
    assert _edges(info) == {(1, 0)}
    assert info.object_layer.tolist() == [1, 0]
    assert not (info.visible_masks[0] & masks[1]).any()


def test_empty_scene_has_only_the_terminal_cumulative_mask():
    info = compute_layers(np.zeros((0, 4, 4), dtype=bool), np.zeros(0, dtype=np.int64))
    assert info.num_layers == 0
    assert info.cumulative_masks.shape == (1, 4, 4)


def test_odd_sized_masks_work():
    masks = _boxes(7, [(0, 0, 4, 4), (3, 3, 7, 7)])[:, :, :5]
    info = compute_layers(masks, np.array([0, 1]))
    assert info.object_layer.tolist() == [0, 1]


def test_duplicate_depths_are_rejected():
    with pytest.raises(AssertionError):
        compute_layers(np.zeros((2, 4, 4), dtype=bool), np.array([1, 1]))
