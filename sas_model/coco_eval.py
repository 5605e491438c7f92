"""COCO-comparable amodal instance AP: our predictions and ground truth in COCO format, scored by
``pycocotools`` ``COCOeval`` (``iouType="segm"``).

    gt, dt = coco_dicts(images)          # images: [{"scene_id", "size", "true_rle", "pred_rle", "scores"}]
    coco_ap(gt, dt)                       # {"coco_ap": ..., "coco_ap50": ..., "coco_ap75": ...}

Ground truth: every object's **amodal** mask as compressed RLE, one category (``object``), no crowd
regions. Detections: every predicted object's amodal mask as compressed RLE with ``score`` = the
object's score from the segmenter (its ensemble agreement). Image ids are ``1..n`` in the order given
(``scene_id`` and ``file_name`` keep the dataset's id); annotation ids start at 1 (``COCOeval`` treats
id 0 as "unmatched").

How this AP differs from ours (``sas_model.instance_metrics``, keys ``ap`` / ``ap50`` / ``ap75``):

- **matching**: ``COCOeval`` is greedy by score: per image, detections in descending score order each
  take the still-unmatched ground truth of highest IoU at or above the threshold. Ours is Hungarian
  (maximum total IoU among pairs at or above the threshold), which never matches fewer pairs, so a
  high-scoring detection that straddles two objects can cost COCO a true positive that ours keeps;
- **detections per image**: ``COCOeval`` keeps the ``maxDets = 100`` highest-scoring detections per
  image (we report its ``maxDets = 100`` numbers); ours keeps all;
- **ties in score**: both sort stably, but ``COCOeval`` sorts within each image first and then over
  all images, ours over all predictions in image order, so equal scores across images may rank
  differently (this changes AP only through the precision envelope at those ranks);
- **interpolation**: the same 101 recall points (0, 0.01, ..., 1) and precision envelope in both;
- **IoU**: ``pycocotools`` computes IoU on RLE, ours on bool arrays; both give the same ratio of
  integer pixel counts (a tie exactly at a threshold can round differently in the last bit);
- **no ground truth**: ``COCOeval`` marks AP as -1, reported here as ``nan`` (as ours does).

Where matching is unambiguous (every detection overlaps at most one ground-truth object at IoU >= 0.5
and vice versa), scores are distinct and no image has more than 100 detections, both give the same
AP; ``tests/test_coco_eval.py`` checks that and shows a case where they differ.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}
KEYS = ("coco_ap", "coco_ap50", "coco_ap75")


def encode_masks(masks: np.ndarray) -> list[str]:
    """``bool[N,H,W]`` -> compressed COCO RLE counts strings (pycocotools' column-major encoding)."""
    from pycocotools import mask as mask_utils

    masks = np.asarray(masks, dtype=bool)
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [r["counts"].decode("ascii") for r in rles]


def image_entry(
    scene_id: int, true_masks: np.ndarray, pred_masks: np.ndarray, scores: Sequence[float]
) -> dict[str, Any]:
    """One image's JSON-able COCO input (kept in the per-image metric record)."""
    true_masks = np.asarray(true_masks, dtype=bool)
    shape = true_masks.shape[1:] if true_masks.ndim == 3 else np.asarray(pred_masks).shape[1:]
    return {
        "scene_id": int(scene_id),
        "size": [int(shape[0]), int(shape[1])],
        "true_rle": encode_masks(true_masks),
        "pred_rle": encode_masks(pred_masks),
        "scores": [float(s) for s in scores],
    }


def coco_dicts(images: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(ground_truth, detections)``: a COCO dataset dict and a COCO results list (see module doc)."""
    from pycocotools import mask as mask_utils

    gt: dict[str, Any] = {
        "info": {"description": "seq-amodal ground truth: amodal masks"},
        "images": [],
        "annotations": [],
        "categories": [dict(CATEGORY)],
    }
    dt: list[dict[str, Any]] = []
    ann_id = 0
    for image_id, image in enumerate(images, start=1):
        height, width = (int(v) for v in image["size"])
        gt["images"].append(
            {
                "id": image_id,
                "scene_id": int(image["scene_id"]),
                "file_name": f"scene_{int(image['scene_id'])}",
                "height": height,
                "width": width,
            }
        )
        for counts in image["true_rle"]:
            ann_id += 1
            rle = {"size": [height, width], "counts": counts}
            gt["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": CATEGORY["id"],
                    "segmentation": rle,
                    "area": float(mask_utils.area(_bytes_rle(rle))),
                    "bbox": [float(v) for v in mask_utils.toBbox(_bytes_rle(rle))],
                    "iscrowd": 0,
                }
            )
        for counts, score in zip(image["pred_rle"], image["scores"], strict=True):
            dt.append(
                {
                    "image_id": image_id,
                    "category_id": CATEGORY["id"],
                    "segmentation": {"size": [height, width], "counts": counts},
                    "score": float(score),
                }
            )
    return gt, dt


def _bytes_rle(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def coco_ap(gt: dict[str, Any], dt: list[dict[str, Any]]) -> dict[str, float]:
    """``COCOeval`` (segm, maxDets 100, all areas) AP@[.5:.95], AP50, AP75; ``nan`` without ground truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not gt["annotations"]:
        return dict.fromkeys(KEYS, float("nan"))
    if not dt:  # loadRes cannot take an empty list; no detection means AP 0
        return dict.fromkeys(KEYS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco_gt = COCO()
        coco_gt.dataset = _with_bytes(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([{**d, "segmentation": _bytes_rle(d["segmentation"])} for d in dt])
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {key: (float(v) if v >= 0 else float("nan")) for key, v in zip(KEYS, stats[:3], strict=True)}


def _with_bytes(gt: dict[str, Any]) -> dict[str, Any]:
    anns = [{**a, "segmentation": _bytes_rle(a["segmentation"])} for a in gt["annotations"]]
    return {**gt, "annotations": anns}
