"""Scoring images and aggregating over a dataset: ``score_image`` → record → ``MetricsAccumulator``.

    acc = MetricsAccumulator()
    for scene, result in ...:
        acc.add(score_image(scene.layer_masks, result.layer_masks, result.uncertainty,
                            objects_truth=ObjectsTruth(scene.amodal_masks, scene.visible_masks,
                                                       scene.occlusion_edges),
                            pred_objects=result.objects, tf_layers=..., tf_terminal=...))
    acc.summary()    # flat dict of floats: miou_free, iou_free/layer0, ap50, order_acc, ...
    acc.markdown()   # the same as a table

A record (one image) is a small JSON-able dict, so Ray workers can score their images and the
driver only merges records. Metric definitions: ``sas_model.metrics`` (layers) and
``sas_model.instance_metrics`` (instances).

Summary keys (means over images unless said otherwise):

- ``miou_free``: image mIoU of the free-running segmentation (missed and extra layers count 0);
  ``iou_free/layer{k}``: per true layer index, over the images that have layer k;
- ``trivial/layer{k}``: the trivial answer "everything not yet in ``C_k``" given the true ``C_k``
  (layer 0: "every object is in front"); ``margin_tf/layer{k}``: the teacher-forced IoU minus it
  (both given the true ``C_k``); ``margin_free/layer0``: the free-running layer 0 minus it (``C_0`` is
  empty for both). No free-running margin for k >= 1: the model's ``C_k`` is its own, the trivial
  answer's the true one, so the two would not be comparable;
- order, per object and per edge, on the free-running layers (the *headline* order figures; no
  instance matching, so a pair merged into one layer counts as wrong instead of dropping out):
  ``pair_order`` over every true occlusion edge, the front object's predicted layer (the layer that
  covers most of its visible pixels) is smaller than the back one's (``pair_order_pairs``: edges);
  ``pair_order_decidable`` over the edges whose visible masks share at least
  ``metrics.DECIDABLE_BORDER`` px of border (``decidable_fraction``: their share of the edges);
  ``object_layer_acc``: objects whose predicted layer equals their true layer (``objects``: count;
  ``trivial/object_layer_acc``: the share of objects in layer 0, what "every object in front" scores);
- ``miou_tf``, ``iou_tf/layer{k}``: the same with each layer predicted teacher-forced (given the true
  ``C_k``), mean over true layers only; ``stop_acc``: given the true ``C_L`` the model predicts an
  empty layer; ``continue_acc``: given ``C_k``, k < L, it predicts a non-empty one;
- ``layer_count_acc``, ``extra_layer_rate``, ``missed_layer_rate`` (fraction of images with at least
  one extra / missed layer), ``layers_true_mean``, ``layers_pred_mean``, ``unet_passes_mean``;
- instance metrics over images with ``has_instances``: ``ap`` (0.5:0.95), ``ap50``, ``ap75``
  (ours: Hungarian matching, pooled over all predictions); ``coco_ap``, ``coco_ap50``,
  ``coco_ap75``: the same predictions scored by ``pycocotools`` ``COCOeval`` (greedy by score,
  maxDets 100; comparable with published amodal AP; differences in ``sas_model.coco_eval``);
  ``invisible_iou`` (mean over occluded GT objects), ``instances_true``, ``instances_pred``.
  (The former ``order_acc``, order over pairs whose both objects were matched at IoU >= 0.5, is gone:
  a pair merged into one layer left it instead of counting as wrong, so it hid the main failure.)
- calibration: ``unc/err_rate/bin{i}`` and ``unc/frac/bin{i}`` (pixels of predicted layers whose
  ensemble variance falls in bin i; bin 0 is "all members agree"), ``unc/err_rate_agree`` and
  ``unc/err_rate_disagree``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sas_model import coco_eval
from sas_model import instance_metrics as im
from sas_model import metrics as lm


@dataclass
class ObjectsTruth:
    """Ground-truth instances ``amodal``/``visible bool[N,H,W]``, ``edges int[E,2]`` (front, back)."""

    amodal: np.ndarray
    visible: np.ndarray
    edges: np.ndarray


def object_arrays(
    objects: Sequence[Any], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(masks bool[P,H,W], scores float[P], layers int[P])`` from ``amodal_mask``, ``score``, ``layer``."""
    if not objects:
        return np.zeros((0, *shape), bool), np.zeros(0), np.zeros(0, np.int64)
    return (
        np.stack([np.asarray(o.amodal_mask, dtype=bool) for o in objects]),
        np.array([float(o.score) for o in objects]),
        np.array([int(o.layer) for o in objects], dtype=np.int64),
    )


def score_image(
    true_layers: np.ndarray,
    pred_layers: np.ndarray,
    uncertainty: np.ndarray | None = None,
    *,
    objects_truth: ObjectsTruth | None = None,
    pred_objects: Sequence[Any] | None = None,
    tf_layers: np.ndarray | None = None,
    tf_terminal: np.ndarray | None = None,
    scene_id: int = -1,
    unet_passes: int = 0,
    min_foreground: float = 0.0,
) -> dict[str, Any]:
    """One image's JSON-able record.

    ``true_layers bool[Lt,H,W]``, ``pred_layers bool[Lp,H,W]`` (free-running), ``uncertainty
    float32[Lp,H,W]``; ``tf_layers bool[Lt,H,W]`` (teacher-forced prediction of layer k given the
    true ``C_k``) and ``tf_terminal bool[H,W]`` (given ``C_L``); ``objects_truth`` and
    ``pred_objects`` (``SegmentedObject``-like) for instance metrics, skipped when either is None.
    A teacher-forced layer whose foreground fraction is at most ``min_foreground`` counts as empty.
    """
    true_layers = np.asarray(true_layers, dtype=bool)
    pred_layers = np.asarray(pred_layers, dtype=bool)
    record: dict[str, Any] = {
        "scene_id": int(scene_id),
        "num_true_layers": len(true_layers),
        "num_pred_layers": len(pred_layers),
        "unet_passes": int(unet_passes),
        "free_ious": lm.indexed_ious(pred_layers, true_layers),
        "miou_free": lm.image_miou(pred_layers, true_layers),
        "trivial_ious": lm.trivial_layer_ious(true_layers),
    }
    if uncertainty is not None and len(pred_layers):
        count, errors = lm.layer_uncertainty_bins(pred_layers, true_layers, np.asarray(uncertainty))
        record["unc_count"], record["unc_errors"] = count.tolist(), errors.tolist()
    if tf_layers is not None:
        tf_layers = np.asarray(tf_layers, dtype=bool)
        assert len(tf_layers) == len(true_layers), (len(tf_layers), len(true_layers))
        record["tf_ious"] = [lm.mask_iou(p, t) for p, t in zip(tf_layers, true_layers, strict=True)]
        record["miou_tf"] = float(np.mean(record["tf_ious"])) if len(true_layers) else 1.0
        record["tf_nonempty"] = [not lm.is_empty(p, min_foreground) for p in tf_layers]
    if tf_terminal is not None:
        record["tf_stop"] = lm.stop_correct(tf_terminal, min_foreground)
    if objects_truth is not None:
        visible, edges = objects_truth.visible, objects_truth.edges
        record["edge_hits"] = lm.edge_order_hits(pred_layers, visible, edges).tolist()
        record["edge_decidable"] = lm.decidable_edges(visible, edges).tolist()
        record["object_hits"] = lm.object_layer_hits(pred_layers, visible, edges).tolist()
        record["objects_in_front"] = int((lm.layers_from_edges(len(visible), edges) == 0).sum())
    if objects_truth is not None and pred_objects is not None:
        record["instances"] = _score_instances(objects_truth, pred_objects, true_layers.shape[1:], scene_id)
    return record


def _score_instances(
    truth: ObjectsTruth, pred_objects: Sequence[Any], shape: tuple[int, ...], scene_id: int = -1
) -> dict[str, Any]:
    masks, scores, _ = object_arrays(pred_objects, (int(shape[0]), int(shape[1])))
    true_amodal = np.asarray(truth.amodal, dtype=bool)
    ious = im.iou_matrix(masks, true_amodal)
    matches = im.match(ious, 0.5)
    return {
        "num_true": len(true_amodal),
        "scores": scores.tolist(),
        "tp": im.true_positives(ious).astype(int).tolist(),
        "invisible_ious": im.invisible_ious(masks, true_amodal, np.asarray(truth.visible, bool), matches),
        "coco": coco_eval.image_entry(scene_id, true_amodal, masks, scores),
    }


class MetricsAccumulator:
    """Merges per-image records (from :func:`score_image`) into dataset metrics."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def extend(self, records: Sequence[dict[str, Any]]) -> None:
        self.records.extend(records)

    def __len__(self) -> int:
        return len(self.records)

    # ---- aggregation -----------------------------------------------------------------------
    def summary(self) -> dict[str, float]:
        """Flat ``{name: float}``; keys as in the module docstring, absent when nothing measured them."""
        recs = self.records
        out: dict[str, float] = {"images": float(len(recs))}
        if not recs:
            return out
        out["miou_free"] = _mean(r["miou_free"] for r in recs)
        for k, value in _by_index(r["free_ious"][: r["num_true_layers"]] for r in recs).items():
            out[f"iou_free/layer{k}"] = value
        trivial = [r["trivial_ious"] for r in recs if "trivial_ious" in r]
        for k, value in _by_index(trivial).items():
            out[f"trivial/layer{k}"] = value
        if "iou_free/layer0" in out and "trivial/layer0" in out:
            out["margin_free/layer0"] = out["iou_free/layer0"] - out["trivial/layer0"]
        out.update(_order_summary(recs))
        out["layer_count_acc"] = _mean(r["num_pred_layers"] == r["num_true_layers"] for r in recs)
        out["extra_layer_rate"] = _mean(r["num_pred_layers"] > r["num_true_layers"] for r in recs)
        out["missed_layer_rate"] = _mean(r["num_pred_layers"] < r["num_true_layers"] for r in recs)
        out["layers_true_mean"] = _mean(r["num_true_layers"] for r in recs)
        out["layers_pred_mean"] = _mean(r["num_pred_layers"] for r in recs)
        out["unet_passes_mean"] = _mean(r["unet_passes"] for r in recs)
        tf = [r for r in recs if "tf_ious" in r]
        if tf:
            out["miou_tf"] = _mean(r["miou_tf"] for r in tf)
            for k, value in _by_index(r["tf_ious"] for r in tf).items():
                out[f"iou_tf/layer{k}"] = value
                if f"trivial/layer{k}" in out:
                    out[f"margin_tf/layer{k}"] = value - out[f"trivial/layer{k}"]
            flags = [flag for r in tf for flag in r["tf_nonempty"]]
            if flags:
                out["continue_acc"] = _mean(flags)
        stops = [r["tf_stop"] for r in recs if "tf_stop" in r]
        if stops:
            out["stop_acc"] = _mean(stops)
        out.update(self._instance_summary())
        out.update(self._calibration_summary())
        return out

    def _instance_summary(self) -> dict[str, float]:
        inst = [r["instances"] for r in self.records if "instances" in r]
        if not inst:
            return {}
        num_true = sum(i["num_true"] for i in inst)
        scores = np.array([s for i in inst for s in i["scores"]], dtype=np.float64)
        aps = []
        for t in range(len(im.AP_THRESHOLDS)):
            tp = (
                np.array([flag for i in inst for flag in i["tp"][t]], dtype=bool)
                if len(scores)
                else np.zeros(0, bool)
            )
            aps.append(im.average_precision(scores, tp, num_true))
        out = {
            "images_with_instances": float(len(inst)),
            "instances_true": float(num_true),
            "instances_pred": float(len(scores)),
        }
        if num_true:
            out.update(ap=float(np.mean(aps)), ap50=aps[0], ap75=aps[im.AP_THRESHOLDS.index(0.75)])
            coco = self.coco_dicts()
            if coco is not None:
                out.update(coco_eval.coco_ap(*coco))
        invisible = [v for i in inst for v in i["invisible_ious"]]
        if invisible:
            out["invisible_iou"] = _mean(invisible)
        return out

    def coco_dicts(self) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """``(ground_truth, detections)`` in COCO format over the images with instances
        (``sas_model.coco_eval.coco_dicts``); None when no record carries COCO data (older records)."""
        inst = [r["instances"] for r in self.records if "instances" in r]
        if not inst or any("coco" not in i for i in inst):
            return None
        return coco_eval.coco_dicts(i["coco"] for i in inst)

    def _calibration_summary(self) -> dict[str, float]:
        recs = [r for r in self.records if "unc_count" in r]
        if not recs:
            return {}
        count = np.sum([r["unc_count"] for r in recs], axis=0).astype(np.float64)
        errors = np.sum([r["unc_errors"] for r in recs], axis=0).astype(np.float64)
        out: dict[str, float] = {}
        total = count.sum()
        for i, (c, e) in enumerate(zip(count, errors, strict=True)):
            out[f"unc/frac/bin{i}"] = float(c / total) if total else 0.0
            if c:
                out[f"unc/err_rate/bin{i}"] = float(e / c)
        if count[0]:
            out["unc/err_rate_agree"] = float(errors[0] / count[0])
        if count[1:].sum():
            out["unc/err_rate_disagree"] = float(errors[1:].sum() / count[1:].sum())
        return out

    # ---- reports ---------------------------------------------------------------------------
    def image_rows(self) -> list[dict[str, Any]]:
        """One flat row per image for a CSV: ids, layer counts, mIoUs, stop, instance counts."""
        rows = []
        for r in self.records:
            row = {
                "scene_id": r["scene_id"],
                "num_true_layers": r["num_true_layers"],
                "num_pred_layers": r["num_pred_layers"],
                "miou_free": round(r["miou_free"], 4),
                "miou_tf": round(r["miou_tf"], 4) if "miou_tf" in r else "",
                "stop_correct": r.get("tf_stop", ""),
                "unet_passes": r["unet_passes"],
            }
            inst = r.get("instances")
            row["instances_true"] = inst["num_true"] if inst else ""
            row["instances_pred"] = len(inst["scores"]) if inst else ""
            row["instances_matched50"] = int(sum(inst["tp"][0])) if inst else ""
            rows.append(row)
        return rows

    def markdown(self, title: str | None = None) -> str:
        """The summary as a two-column markdown table (``metric | value``)."""
        return summary_markdown({"value": self.summary()}, title)


def summary_markdown(summaries: dict[str, dict[str, float]], title: str | None = None) -> str:
    """Markdown table with one row per metric and one column per summary (e.g. per model)."""
    names: list[str] = []
    for summary in summaries.values():
        names.extend(k for k in summary if k not in names)
    lines = [f"### {title}", ""] if title else []
    lines.append("| metric | " + " | ".join(summaries) + " |")
    lines.append("|---|" + "---:|" * len(summaries))
    for name in names:
        cells = [_fmt(name, summary.get(name)) for summary in summaries.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


COUNT_KEYS = (
    "images",
    "images_with_instances",
    "instances_true",
    "instances_pred",
    "pair_order_pairs",
    "objects",
)


def _fmt(name: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if name in COUNT_KEYS:
        return str(int(value))
    return f"{value:.1f}" if name == "unet_passes_mean" else f"{value:.4f}"


def _order_summary(recs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """``pair_order`` (+ ``_pairs``), ``pair_order_decidable``, ``decidable_fraction``,
    ``object_layer_acc`` (+ its trivial answer) and ``objects``, pooled over the edges and objects."""
    hits = [h for r in recs for h in r.get("edge_hits", [])]
    decidable = [d for r in recs for d in r.get("edge_decidable", [])]
    objects = [h for r in recs for h in r.get("object_hits", [])]
    out: dict[str, float] = {}
    if hits:
        out["pair_order"] = _mean(hits)
        out["pair_order_pairs"] = float(len(hits))
        out["decidable_fraction"] = _mean(decidable)
        if any(decidable):
            out["pair_order_decidable"] = _mean(h for h, d in zip(hits, decidable, strict=True) if d)
    if objects:
        out["object_layer_acc"] = _mean(objects)
        out["trivial/object_layer_acc"] = sum(r.get("objects_in_front", 0) for r in recs) / len(objects)
        out["objects"] = float(len(objects))
    return out


def _mean(values: Any) -> float:
    items = [float(v) for v in values]
    return float(np.mean(items)) if items else float("nan")


def _by_index(lists: Any) -> dict[int, float]:
    buckets: dict[int, list[float]] = {}
    for values in lists:
        for k, value in enumerate(values):
            buckets.setdefault(k, []).append(float(value))
    return {k: float(np.mean(v)) for k, v in sorted(buckets.items())}
