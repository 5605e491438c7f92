"""Metrics on hand-made scenes with known answers (no model, no Ray)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from sas_model import instance_metrics as im
from sas_model import metrics as lm
from sas_model.metrics_report import MetricsAccumulator, ObjectsTruth, score_image, summary_markdown

H = W = 16


def box(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


@dataclass
class Obj:
    amodal_mask: np.ndarray
    score: float
    layer: int


# Two objects: FRONT occludes BACK (they overlap), LONE stands apart in layer 0 too.
FRONT, BACK, LONE = box(2, 2, 8, 8), box(5, 5, 12, 12), box(12, 0, 16, 3)
TRUE_LAYERS = np.stack([FRONT | LONE, BACK])
TRUTH = ObjectsTruth(
    amodal=np.stack([FRONT, BACK, LONE]),
    visible=np.stack([FRONT, BACK & ~FRONT, LONE]),
    edges=np.array([[0, 1]]),
)


def perfect_objects() -> list[Obj]:
    return [Obj(FRONT, 0.9, 0), Obj(LONE, 0.8, 0), Obj(BACK, 0.7, 1)]


def summarise(pred_layers, objects=None, truth=TRUTH, **kwargs) -> dict[str, float]:
    acc = MetricsAccumulator()
    acc.add(score_image(TRUE_LAYERS, pred_layers, objects_truth=truth, pred_objects=objects, **kwargs))
    return acc.summary()


def test_perfect_prediction_scores_one_everywhere() -> None:
    s = summarise(
        TRUE_LAYERS,
        perfect_objects(),
        uncertainty=np.zeros((2, H, W), np.float32),
        tf_layers=TRUE_LAYERS,
        tf_terminal=np.zeros((H, W), bool),
    )
    for key in ("miou_free", "iou_free/layer0", "iou_free/layer1", "miou_tf", "stop_acc", "continue_acc"):
        assert s[key] == 1.0, key
    assert s["layer_count_acc"] == 1.0 and s["extra_layer_rate"] == 0.0 and s["missed_layer_rate"] == 0.0
    assert s["ap"] == s["ap50"] == s["ap75"] == 1.0
    assert s["invisible_iou"] == 1.0  # only BACK has an occluded part
    assert s["pair_order"] == 1.0 and s["pair_order_pairs"] == 1 and s["object_layer_acc"] == 1.0
    assert s["unc/err_rate/bin0"] == 0.0 and s["unc/frac/bin0"] == 1.0


def test_empty_prediction_scores_zero_and_misses_every_layer() -> None:
    s = summarise(np.zeros((0, H, W), bool), [], tf_terminal=FRONT)
    assert s["miou_free"] == 0.0 and s["iou_free/layer1"] == 0.0
    assert s["missed_layer_rate"] == 1.0 and s["layer_count_acc"] == 0.0
    assert s["ap"] == 0.0 and s["invisible_iou"] == 0.0
    assert s["pair_order"] == 0.0 and s["object_layer_acc"] == 0.0
    assert s["stop_acc"] == 0.0  # it did not stop given the complete C_L


def test_empty_scene_predicted_empty_is_perfect() -> None:
    truth = ObjectsTruth(np.zeros((0, H, W), bool), np.zeros((0, H, W), bool), np.zeros((0, 2)))
    record = score_image(
        np.zeros((0, H, W), bool), np.zeros((0, H, W), bool), objects_truth=truth, pred_objects=[]
    )
    acc = MetricsAccumulator()
    acc.add(record)
    s = acc.summary()
    assert s["miou_free"] == 1.0 and s["layer_count_acc"] == 1.0
    assert "ap" not in s  # no ground truth: AP is undefined, not 0 or 1


def test_swapped_layers_score_by_index() -> None:
    s = summarise(TRUE_LAYERS[::-1].copy())
    cross = lm.mask_iou(FRONT | LONE, BACK)
    assert s["iou_free/layer0"] == pytest.approx(cross) and s["iou_free/layer1"] == pytest.approx(cross)
    assert s["miou_free"] == pytest.approx(cross) and s["layer_count_acc"] == 1.0


def test_missed_layer_counts_zero() -> None:
    s = summarise(TRUE_LAYERS[:1])
    assert s["iou_free/layer0"] == 1.0 and s["iou_free/layer1"] == 0.0
    assert s["miou_free"] == 0.5 and s["missed_layer_rate"] == 1.0


def test_extra_layer_is_counted_and_lowers_miou() -> None:
    pred = np.concatenate([TRUE_LAYERS, box(0, 12, 4, 16)[None]])
    s = summarise(pred)
    assert s["iou_free/layer0"] == 1.0 and s["iou_free/layer1"] == 1.0 and "iou_free/layer2" not in s
    assert s["miou_free"] == pytest.approx(2 / 3)
    assert s["extra_layer_rate"] == 1.0 and s["layer_count_acc"] == 0.0
    assert lm.extra_layers(pred, TRUE_LAYERS) == 1 and lm.missed_layers(pred, TRUE_LAYERS) == 0


def test_reversed_layers_keep_ap_but_fail_the_pair() -> None:
    pred = np.stack([BACK, FRONT | LONE])  # the occluded object predicted in front
    objects = [Obj(BACK, 0.9, 0), Obj(FRONT, 0.8, 1), Obj(LONE, 0.7, 1)]
    s = summarise(pred, objects)
    assert s["ap50"] == 1.0
    assert s["pair_order"] == 0.0 and s["pair_order_pairs"] == 1
    assert s["object_layer_acc"] == 0.0  # every object in the wrong layer


def test_a_pair_merged_into_one_layer_counts_as_wrong() -> None:
    # Both objects of the occluding pair in layer 0: one connected component, so an instance
    # matching would keep at most one of them and drop the pair; the edge metric scores it wrong.
    pred = (FRONT | BACK | LONE)[None]
    s = summarise(pred, [Obj(FRONT | BACK, 0.9, 0), Obj(LONE, 0.8, 0)])
    assert s["pair_order"] == 0.0 and s["pair_order_pairs"] == 1
    assert s["object_layer_acc"] == pytest.approx(2 / 3)  # FRONT and LONE right, BACK wrong
    assert s["margin_free/layer0"] == pytest.approx(
        lm.mask_iou(pred[0], TRUE_LAYERS[0]) - s["trivial/layer0"]
    )
    assert "margin_free/layer1" not in s  # k >= 1: the model's C_k and the truth's differ


def test_an_edge_without_visible_border_is_left_out_of_the_decidable_figure() -> None:
    # A and C overlap only where B (in front of both) hides their common border.
    a, b, c = box(0, 0, 8, 6), box(0, 5, 8, 9), box(0, 7, 8, 16)
    amodal_c = box(0, 5, 8, 16)  # C reaches under B up to A's right edge
    amodal_a = box(0, 0, 8, 7)
    visible = np.stack([a & ~b, b, c & ~b])
    edges = np.array([[1, 0], [1, 2], [0, 2]])  # B over A, B over C, A over C (only under B)
    assert (amodal_a & amodal_c).any()
    assert lm.decidable_edges(visible, edges).tolist() == [True, True, False]
    truth = ObjectsTruth(np.stack([amodal_a, b, amodal_c]), visible, edges)
    layers = np.stack([b, amodal_a & ~b, amodal_c & ~b & ~amodal_a])
    good = lm.layers_from_edges(3, edges)
    assert good.tolist() == [1, 0, 2]
    # A and C in one layer: the undecidable edge is wrong, the decidable ones right
    pred = np.stack([b, (amodal_a | amodal_c) & ~b])
    acc = MetricsAccumulator()
    acc.add(score_image(layers, pred, objects_truth=truth))
    s = acc.summary()
    assert s["pair_order"] == pytest.approx(2 / 3) and s["pair_order_pairs"] == 3
    assert s["pair_order_decidable"] == 1.0 and s["decidable_fraction"] == pytest.approx(2 / 3)


def test_shared_border_counts_the_back_side_pixels() -> None:
    front, back = box(0, 0, 4, 4), box(0, 4, 4, 8)
    assert lm.shared_border(front, back) == 4
    assert lm.shared_border(front, box(5, 5, 8, 8)) == 0  # diagonal contact is no border


def test_modal_prediction_of_an_occluded_object_has_zero_invisible_iou() -> None:
    objects = [Obj(FRONT, 0.9, 0), Obj(LONE, 0.8, 0), Obj(BACK & ~FRONT, 0.7, 1)]
    s = summarise(TRUE_LAYERS, objects)
    assert s["invisible_iou"] == 0.0
    assert s["ap50"] == 1.0  # IoU(visible part, amodal) = 40/49 >= 0.5


def test_instance_metrics_are_skipped_for_layer_only_rows() -> None:
    s = summarise(TRUE_LAYERS, None, truth=None)
    assert not any(k.startswith(("ap", "invisible", "order", "instances")) for k in s)


def test_average_precision_matches_the_coco_101_point_rule() -> None:
    # ranks: TP, FP, TP over 2 GT -> envelope 1 up to recall 0.5, then 2/3
    ap = im.average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2)
    assert ap == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)
    assert np.isnan(im.average_precision(np.zeros(0), np.zeros(0, bool), 0))
    assert im.average_precision(np.zeros(0), np.zeros(0, bool), 3) == 0.0


def test_hungarian_matching_beats_greedy_and_respects_the_threshold() -> None:
    ious = np.array([[0.6, 0.55], [0.7, 0.0]])
    assert im.match(ious, 0.5) == {0: 1, 1: 0}  # greedy by best pair would leave pred 0 unmatched
    assert im.match(ious, 0.65) == {1: 0}
    flags = im.true_positives(ious)
    assert flags[0].tolist() == [True, True] and flags[-1].tolist() == [False, False]


def test_iou_matrix_agrees_with_mask_iou() -> None:
    matrix = im.iou_matrix(np.stack([FRONT, BACK]), np.stack([BACK, LONE, FRONT]))
    expected = [[lm.mask_iou(p, t) for t in (BACK, LONE, FRONT)] for p in (FRONT, BACK)]
    assert np.allclose(matrix, expected)


def test_uncertainty_bins_count_errors_per_bin() -> None:
    unc = np.array([0.0, 0.0, 0.0, 0.22, 0.22, 0.07])
    err = np.array([False, False, True, True, False, True])
    count, errors = lm.uncertainty_bins(unc, err)
    assert count.tolist() == [3, 0, 1, 0, 0, 2] and errors.tolist() == [1, 0, 1, 0, 0, 1]


def test_accumulator_averages_images_and_renders_tables() -> None:
    acc = MetricsAccumulator()
    acc.add(score_image(TRUE_LAYERS, TRUE_LAYERS, scene_id=1, unet_passes=30))
    acc.add(score_image(TRUE_LAYERS, TRUE_LAYERS[:1], scene_id=2, unet_passes=10))
    s = acc.summary()
    assert s["images"] == 2 and s["miou_free"] == 0.75 and s["iou_free/layer1"] == 0.5
    assert s["unet_passes_mean"] == 20
    table = acc.markdown("test")
    assert "| miou_free | 0.7500 |" in table and "| images | 2 |" in table
    assert [row["scene_id"] for row in acc.image_rows()] == [1, 2]
    both = summary_markdown({"a": s, "b": {"miou_free": 0.5}})
    assert "| miou_free | 0.7500 | 0.5000 |" in both and "| images | 2 | – |" in both


def test_order_error_cases_split_the_wrong_pairs_by_cause():
    from pipelines.bench.probes.order_errors import edge_case

    assert [edge_case(f, b) for f, b in ((0, 1), (1, 1), (0, -1), (-1, 0), (-1, -1), (2, 0))] == [
        "right",
        "same",
        "back_lost",
        "front_lost",
        "both_lost",
        "reversed",
    ]


def test_layer0_decision_rules_absolute_relative_and_oracle_count():
    import numpy as np

    from pipelines.bench.probes.layer0_decisions import rules

    scores = np.array([0.95, 0.8, 0.6, 0.1])  # both of the first two clear 0.5; only one is in front
    decided = rules(scores, in_mask=np.array([True, True, True, False]), n_front=1)
    assert decided["absolute 0.5"].tolist() == [True, True, True, False]
    assert decided["relative 0.2"].tolist() == [True, True, False, False]
    assert decided["relative 0.1"].tolist() == [True, False, False, False]
    assert decided["top-n (oracle count)"].tolist() == [True, False, False, False]
    assert decided["mask"].tolist() == [True, True, True, False]


def test_an_objects_layer_is_the_layer_its_visible_pixels_show_not_a_back_layers_hidden_part() -> None:
    # BACK's amodal mask (layer 1) covers most of a small FRONT object: its hidden part lies under
    # FRONT. FRONT's visible pixels show layer 0, the first layer covering them.
    front, back = box(4, 4, 8, 8), box(2, 2, 12, 12)
    visible = np.stack([front, back & ~front])
    pred = np.stack([front & ~box(4, 4, 5, 8), back])  # layer 0 misses one row of FRONT
    # counted on the amodal masks, layer 1 would hold more of FRONT's visible pixels (16 vs 12)
    assert lm.object_layers(pred, visible).tolist() == [0, 1]
    assert lm.front_layer_map(pred)[5, 5] == 0 and lm.front_layer_map(pred)[3, 3] == 1
    assert lm.edge_order_hits(pred, visible, np.array([[0, 1]])).tolist() == [True]
