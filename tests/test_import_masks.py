"""COCO mask codecs (RLE both ways, polygons) and the depth-order graph, without files."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synth.importers.masks import (
    AnnotationError,
    decode_rle,
    decode_segmentation,
    encode_rle,
    rle_counts_from_string,
    rle_counts_to_string,
)
from synth.importers.occlusion_order import (
    depth_order,
    front_of_graph,
    unordered_overlaps,
    visible_evidence,
)


def test_compressed_rle_strings_decode_to_known_counts():
    # small counts are one character chr(48 + n); from the 4th count on, deltas to count i-2
    assert rle_counts_from_string("231").tolist() == [2, 3, 1]
    assert rle_counts_from_string("1112").tolist() == [1, 1, 1, 3]
    # 40 = 0b01000_01000 -> groups 8 | 0x20 (more) then 1: chr(48 + 40), chr(49)
    assert rle_counts_from_string(chr(88) + "1").tolist() == [40]


def test_uncompressed_rle_is_column_major_starting_with_zeros():
    mask = decode_rle({"size": [2, 3], "counts": [1, 2, 3]}, 2, 3)
    # column-major sequence: (0,0)=0, (1,0)=1, (0,1)=1, then zeros
    assert mask.tolist() == [[False, True, False], [True, False, False]]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.data())
def test_rle_encode_decode_round_trips_through_both_count_forms(height, width, data):
    bits = data.draw(st.lists(st.booleans(), min_size=height * width, max_size=height * width))
    mask = np.array(bits, dtype=bool).reshape(height, width)
    rle = encode_rle(mask)
    assert np.array_equal(decode_rle(rle, height, width), mask)
    compressed = {"size": rle["size"], "counts": rle_counts_to_string(np.array(rle["counts"]))}
    assert np.array_equal(decode_rle(compressed, height, width), mask)


def test_large_counts_and_negative_deltas_survive_the_string_form():
    counts = np.array([5000, 3, 40000, 1, 7, 123456, 2])
    assert rle_counts_from_string(rle_counts_to_string(counts)).tolist() == counts.tolist()


def test_polygons_fill_pixel_centres_and_accept_the_flat_cocoa_form():
    # continuous coordinates, pixel c covers [c, c + 1): the box x 2..6, y 1..4 covers columns 2..5
    # and rows 1..3, area 12 (COCO's own area for that box)
    box = [2, 1, 6, 1, 6, 4, 2, 4]
    expected = np.zeros((6, 8), dtype=bool)
    expected[1:4, 2:6] = True
    assert np.array_equal(decode_segmentation([box], 6, 8), expected)
    assert np.array_equal(decode_segmentation(box, 6, 8), expected)
    assert not decode_segmentation([[1, 1, 2, 2]], 6, 8).any()  # fewer than 3 points: no area
    # a triangle: pixels whose centres lie inside x + y < 10 (centres on the edge are outside)
    triangle = decode_segmentation([[0, 0, 10, 0, 0, 10]], 12, 12)
    rows, cols = np.indices((12, 12))
    assert np.array_equal(triangle, (rows + cols + 1 < 10))
    # two polygons: their union; a polygon reaching outside the image is clipped
    both = decode_segmentation([[0, 0, 2, 0, 2, 2, 0, 2], [-5, 4, 20, 4, 20, 5, -5, 5]], 6, 8)
    assert both.sum() == 4 + 8 and both[4].all()


@pytest.mark.parametrize(
    "segmentation,needle",
    [
        ({"size": [4, 4], "counts": [3, 20]}, "cover"),
        ({"size": [5, 4], "counts": [1]}, "does not match"),
        ({"counts": [1]}, "size"),
        ({"size": [4, 4], "counts": "1\x7f"}, "invalid character"),
        ([[1, 2, 3]], "odd"),
        ("not a mask", "polygons"),
    ],
)
def test_bad_segmentations_raise_a_readable_error(segmentation, needle):
    with pytest.raises(AnnotationError, match=needle):
        decode_segmentation(segmentation, 4, 4)


def _rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_visible_overlap_orders_a_chain_and_majority_absorbs_boundary_noise():
    a, b = _rect(10, 10, 0, 6, 0, 6), _rect(10, 10, 3, 10, 3, 10)
    amodal = np.stack([a, b])
    visible = np.stack([a, b & ~a])
    visible[1, 3, 3] = True  # one noisy pixel of b drawn over a
    evidence = visible_evidence(amodal, visible)
    assert evidence[0, 1] == 9 and evidence[1, 0] == 1
    graph = front_of_graph(np.ones((2, 2), bool), evidence=evidence)
    assert graph.tolist() == [[False, True], [False, False]]
    assert depth_order(graph).depth.tolist() == [0, 1]


def test_constraints_beat_ranks_which_beat_visible_evidence():
    overlaps = np.ones((3, 3), dtype=bool)
    evidence = np.array([[0, 0, 5], [9, 0, 0], [0, 0, 0]])  # says 1 > 0 and 0 > 2
    ranks = np.array([0.0, 1.0, np.nan])  # says 0 > 1
    graph = front_of_graph(overlaps, constraints=[(2, 0)], ranks=ranks, evidence=evidence)
    assert graph[2, 0] and not graph[0, 2]  # constraint wins over evidence
    assert graph[0, 1] and not graph[1, 0]  # rank wins over evidence
    assert depth_order(graph).depth.tolist() == [1, 2, 0]  # 2 > 0 > 1


def test_a_three_way_cycle_is_found_and_named_in_order():
    graph = np.zeros((4, 4), dtype=bool)
    graph[0, 1] = graph[1, 2] = graph[2, 0] = True
    graph[3, 0] = True
    result = depth_order(graph)
    assert result.depth is None
    cycle = result.cycle
    assert sorted(cycle) == [0, 1, 2]
    assert all(graph[cycle[i], cycle[(i + 1) % 3]] for i in range(3))


def test_equal_evidence_both_ways_is_a_cycle_and_unrelated_overlaps_are_counted():
    evidence = np.array([[0, 4], [4, 0]])
    assert depth_order(front_of_graph(np.ones((2, 2), bool), evidence=evidence)).depth is None
    overlaps = np.ones((3, 3), dtype=bool)
    graph = np.zeros((3, 3), dtype=bool)
    graph[0, 1] = True
    assert unordered_overlaps(graph, overlaps) == 2  # (0, 2) and (1, 2)
    graph[1, 2] = True
    assert unordered_overlaps(graph, overlaps) == 0  # 0 > 2 through 1


# ---- parity with pycocotools (the decoder that defines COCO datasets' masks) ---------------------
def _coco_string(mask: np.ndarray) -> str:
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1), st.floats(0.0, 1.0))
def test_rle_decoding_matches_pycocotools_on_random_masks(height, width, seed, density):
    from pycocotools import mask as mask_utils

    from synth.importers.masks import _counts_from_string_loop, _counts_from_string_numpy

    rng = np.random.default_rng(seed)
    mask = rng.random((height, width)) < density
    if rng.random() < 0.5:  # object-like runs as well as noise
        mask = np.cumsum(mask, axis=int(rng.integers(0, 2))) % 3 == 0
    text = _coco_string(mask)
    reference = mask_utils.decode({"size": [height, width], "counts": text.encode()}).astype(bool)
    assert np.array_equal(reference, mask)
    assert np.array_equal(decode_rle({"size": [height, width], "counts": text}, height, width), mask)
    assert np.array_equal(decode_rle(encode_rle(mask), height, width), mask)  # the run-list form
    assert _counts_from_string_numpy(text).tolist() == _counts_from_string_loop(text).tolist()
    assert rle_counts_to_string(_counts_from_string_loop(text)) == text


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 48), st.integers(2, 48), st.integers(0, 2**32 - 1))
def test_polygons_are_rasterised_exactly_as_pycocotools(height, width, seed):
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    polygons = []
    for _ in range(int(rng.integers(1, 4))):
        n = int(rng.integers(3, 12))
        points = rng.random((n, 2)) * [width + 6, height + 6] - 3  # some reach outside the image
        polygons.append(np.round(points, int(rng.integers(0, 3))).reshape(-1).tolist())
    reference = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))
    assert np.array_equal(decode_segmentation(polygons, height, width), reference.astype(bool))
    flat = decode_segmentation(polygons[0], height, width)  # COCOA's flat single-polygon form
    assert np.array_equal(
        flat, mask_utils.decode(mask_utils.frPyObjects(polygons[:1], height, width))[..., 0]
    )


def test_long_compressed_strings_take_the_numpy_parser_and_keep_its_errors():
    mask = np.zeros((200, 300), dtype=bool)
    mask[::3, ::2] = True  # many runs: a long string
    text = _coco_string(mask)
    assert len(text) > 200
    assert np.array_equal(decode_rle({"size": [200, 300], "counts": text}, 200, 300), mask)
    with pytest.raises(AnnotationError, match="invalid character"):
        rle_counts_from_string(text + "\x7f" * 300)
    with pytest.raises(AnnotationError, match="middle of a count"):
        rle_counts_from_string(text + "o" * 300)  # 'o' = 63: "more groups follow", never ends
    short = {"size": [200, 300], "counts": rle_counts_to_string(np.array([5, 7]))}
    assert decode_rle(short, 200, 300).sum() == 7  # runs stopping short leave the rest empty
