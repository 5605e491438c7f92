"""Our AP (Hungarian matching) against pycocotools' COCOeval on the same predictions (no model, no Ray).

Where matching is unambiguous (each prediction overlaps at most one ground-truth object at IoU >= 0.5
and vice versa), scores are distinct and images hold at most 100 predictions, both must give the same
AP, AP50 and AP75. Where one high-scoring prediction straddles two overlapping objects, COCO's greedy
matching loses a true positive that Hungarian matching keeps (documented in ``sas_model.coco_eval``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from sas_model import coco_eval
from sas_model.metrics_report import MetricsAccumulator, ObjectsTruth, score_image

H = W = 32


@dataclass
class Obj:
    amodal_mask: np.ndarray
    score: float
    layer: int


def box(y0: int, x0: int, y1: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[max(y0, 0) : y1, max(x0, 0) : x1] = True
    return mask


def add_image(acc: MetricsAccumulator, scene_id: int, truth: list[np.ndarray], preds: list[Obj]) -> None:
    amodal = np.stack(truth) if truth else np.zeros((0, H, W), bool)
    layers = np.stack([amodal.any(0)]) if truth else np.zeros((0, H, W), bool)
    objects_truth = ObjectsTruth(amodal, amodal, np.zeros((0, 2), np.int64))
    acc.add(score_image(layers, layers, objects_truth=objects_truth, pred_objects=preds, scene_id=scene_id))


def unambiguous_dataset(seed: int) -> MetricsAccumulator:
    """Per image: ground-truth boxes on a 4 x 4 grid of 8 x 8 cells (at most one per cell); per box
    maybe a prediction jittered inside its cell (IoU anywhere in 0..1), plus false positives in empty
    cells. A prediction never leaves its cell, so it overlaps one object at most: matching is unique."""
    rng = np.random.default_rng(seed)
    acc = MetricsAccumulator()
    scores = iter(rng.permutation(1000) / 1000 + 0.0005)  # distinct over the dataset
    for scene_id in range(6):
        cells = rng.permutation(16)
        truth, preds = [], []
        for cell in cells[: rng.integers(0, 6)]:
            cy, cx = 8 * (cell // 4), 8 * (cell % 4)
            y0, x0 = cy + rng.integers(0, 3), cx + rng.integers(0, 3)
            y1, x1 = y0 + rng.integers(3, 6), x0 + rng.integers(3, 6)
            truth.append(box(y0, x0, y1, x1))
            if rng.random() < 0.8:
                dy0, dx0, dy1, dx1 = rng.integers(-2, 3, size=4)
                py0, px0 = np.clip([y0 + dy0, x0 + dx0], [cy, cx], [cy + 7, cx + 7])
                py1, px1 = np.clip([y1 + dy1, x1 + dx1], [py0 + 1, px0 + 1], [cy + 8, cx + 8])
                preds.append(Obj(box(py0, px0, py1, px1), float(next(scores)), 0))
        for cell in cells[10 : 10 + rng.integers(0, 3)]:  # cells without ground truth
            cy, cx = 8 * (cell // 4), 8 * (cell % 4)
            preds.append(Obj(box(cy + 1, cx + 1, cy + 6, cx + 6), float(next(scores)), 0))
        add_image(acc, scene_id, truth, preds)
    return acc


@pytest.mark.parametrize("seed", range(8))
def test_both_aps_agree_where_matching_is_unambiguous(seed):
    summary = unambiguous_dataset(seed).summary()
    assert summary["instances_true"] > 0
    for ours, coco in (("ap", "coco_ap"), ("ap50", "coco_ap50"), ("ap75", "coco_ap75")):
        assert summary[coco] == pytest.approx(summary[ours], abs=1e-12), (ours, summary)


def test_perfect_and_empty_predictions_agree():
    truth = [box(2, 2, 10, 10), box(6, 6, 20, 20), box(24, 0, 30, 5)]  # two objects overlap
    acc = MetricsAccumulator()
    add_image(acc, 0, truth, [Obj(m, 0.9 - 0.1 * i, 0) for i, m in enumerate(truth)])
    s = acc.summary()
    assert s["ap"] == s["coco_ap"] == 1.0 and s["ap50"] == s["coco_ap50"] == 1.0
    acc = MetricsAccumulator()
    add_image(acc, 0, truth, [])
    s = acc.summary()
    assert s["ap"] == s["coco_ap"] == 0.0


def test_greedy_by_score_loses_a_match_that_hungarian_keeps():
    # A and B overlap (amodal masks may). The top-scoring prediction P1 fits A best (IoU 7/8) and B
    # well enough (6/9); P2 fits only A (IoU 6/8; 4/10 with B). COCO gives A to P1, so P2 is a false
    # positive and B is missed; Hungarian pairs P1-B and P2-A: two true positives.
    a, b = box(0, 0, 8, 8), box(0, 2, 8, 10)
    p1, p2 = box(0, 1, 8, 8), box(0, 0, 8, 6)
    acc = MetricsAccumulator()
    add_image(acc, 0, [a, b], [Obj(p1, 0.9, 0), Obj(p2, 0.8, 0)])
    s = acc.summary()
    assert s["ap50"] == 1.0  # ours: recall 1 at precision 1
    assert s["coco_ap50"] == pytest.approx(51 / 101)  # COCO: recall 0.5 at precision 1, then nothing


def test_coco_dicts_are_valid_coco_and_round_trip_the_masks(tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    acc = unambiguous_dataset(0)
    gt, dt = acc.coco_dicts()
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    coco = COCO(str(path))  # the file form any COCO tool reads
    assert len(coco.getImgIds()) == 6 and min(coco.getAnnIds()) == 1
    assert {img["scene_id"] for img in gt["images"]} == set(range(6))
    results = coco.loadRes(json.loads(json.dumps(dt)))
    assert len(results.getAnnIds()) == len(dt)
    # masks survive: ground truth decoded from the JSON equals what was scored
    first = acc.records[0]["instances"]["coco"]
    if first["true_rle"]:
        ann = coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]
        decoded = coco.annToMask(ann).astype(bool)
        assert decoded.shape == (H, W)
        assert decoded.sum() == mask_utils.area(coco.annToRLE(ann)) == ann["area"]


def test_no_ground_truth_gives_nan_like_ours():
    gt, dt = coco_eval.coco_dicts(
        [{"scene_id": 0, "size": [4, 4], "true_rle": [], "pred_rle": [], "scores": []}]
    )
    assert all(np.isnan(v) for v in coco_eval.coco_ap(gt, dt).values())
