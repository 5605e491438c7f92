"""Instance-level metrics (pure numpy + scipy): matching, AP, invisible-region IoU.

Predicted objects are amodal masks ``bool[P,H,W]`` with scores ``float[P]`` (the segmenter's ensemble
agreement) and layers ``int[P]``; ground truth is amodal and visible masks ``bool[N,H,W]`` and
occlusion edges ``int[E,2]`` ``(front, back)``.

- **Matching**: Hungarian (``scipy.optimize.linear_sum_assignment``) maximising total IoU; a pair
  counts as a match only when its IoU reaches the threshold.
- **AP** (COCO-style): for each IoU threshold ``t`` the image is matched with pairs below ``t``
  removed; matched predictions are true positives, the rest false positives. Over the dataset,
  predictions are ranked by score and precision is interpolated at 101 recall points (COCO's
  ``pycocotools`` rule). Unlike COCO, matching is by Hungarian on IoU, not greedy by score.
- **Invisible-region IoU** of a GT object with an occluded part (amodal minus visible): IoU of the
  matched prediction's mask outside the GT visible part against the GT occluded part; 0 for an
  unmatched object.

Occlusion order is not scored here but per true object and edge (``sas_model.metrics.edge_order_hits``):
matching would drop a pair merged into one layer instead of counting it wrong.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

AP_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50, 0.55, ..., 0.95
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def iou_matrix(pred_masks: np.ndarray, true_masks: np.ndarray) -> np.ndarray:
    """IoU of every pair: ``float64[P,N]`` for ``pred_masks bool[P,H,W]``, ``true_masks bool[N,H,W]``."""
    p, n = len(pred_masks), len(true_masks)
    if p == 0 or n == 0:
        return np.zeros((p, n))
    pred = np.asarray(pred_masks, dtype=bool).reshape(p, -1).astype(np.float64)
    true = np.asarray(true_masks, dtype=bool).reshape(n, -1).astype(np.float64)
    inter = pred @ true.T
    union = pred.sum(1)[:, None] + true.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def match(ious: np.ndarray, threshold: float = 0.5) -> dict[int, int]:
    """Hungarian matching on ``ious float[P,N]``: ``{pred_index: true_index}``, pairs with IoU >= threshold.

    Pairs below the threshold are removed before matching, so they never block a valid match.
    """
    if ious.size == 0:
        return {}
    weights = np.where(ious >= threshold, ious, 0.0)
    rows, cols = linear_sum_assignment(weights, maximize=True)
    return {
        int(r): int(c) for r, c in zip(rows, cols, strict=True) if ious[r, c] >= threshold and ious[r, c] > 0
    }


def true_positives(ious: np.ndarray, thresholds: tuple[float, ...] = AP_THRESHOLDS) -> np.ndarray:
    """``bool[T,P]``: whether each prediction is matched at each IoU threshold (one image)."""
    flags = np.zeros((len(thresholds), ious.shape[0]), dtype=bool)
    for i, threshold in enumerate(thresholds):
        for pred in match(ious, threshold):
            flags[i, pred] = True
    return flags


def average_precision(scores: np.ndarray, tp: np.ndarray, num_true: int) -> float:
    """COCO 101-point interpolated AP from all predictions' ``scores float[P]`` and ``tp bool[P]``.

    ``nan`` when there is no ground truth at all; 0 when there is ground truth but no true positive.
    """
    if num_true == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.asarray(tp, dtype=bool)[order]
    tp_cum, fp_cum = np.cumsum(hits), np.cumsum(~hits)
    recall = tp_cum / num_true
    precision = tp_cum / np.maximum(tp_cum + fp_cum, 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the precision envelope
    index = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(index < len(precision), precision[np.minimum(index, len(precision) - 1)], 0.0)
    return float(sampled.mean())


def invisible_ious(
    pred_masks: np.ndarray,
    true_amodal: np.ndarray,
    true_visible: np.ndarray,
    matches: dict[int, int],
) -> list[float]:
    """Invisible-region IoU for each GT object that has an occluded part (see module doc)."""
    true_to_pred = {t: p for p, t in matches.items()}
    out = []
    for j in range(len(true_amodal)):
        occluded = true_amodal[j] & ~true_visible[j]
        if not occluded.any():
            continue
        if j not in true_to_pred:
            out.append(0.0)
            continue
        predicted = pred_masks[true_to_pred[j]] & ~true_visible[j]
        union = np.logical_or(predicted, occluded).sum()
        out.append(float(np.logical_and(predicted, occluded).sum() / union))
    return out
