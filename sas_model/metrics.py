"""Layer-level segmentation metrics (pure numpy): per-layer IoU, mIoU, layer counts, stop, calibration.

All masks are bool arrays ``[H,W]`` (one mask) or ``[L,H,W]`` (a stack of layer masks, front first).
Instance-level metrics (matching, AP, invisible IoU, occlusion order) live in
``sas_model.instance_metrics``; ``sas_model.metrics_report`` aggregates both over a dataset.

Conventions (one image, ``Lt`` true layers, ``Lp`` predicted):

- **per-layer IoU** is by layer index: predicted layer ``k`` against true layer ``k``. A true layer
  the prediction misses (``k >= Lp``) scores 0; two empty masks score 1.
- **image mIoU** averages over ``max(Lt, Lp)`` indices, so an extra predicted layer (``k >= Lt``,
  compared with an empty truth) counts as a 0 and lowers it, like a missed one.
"""

from __future__ import annotations

import numpy as np

# Uncertainty is a per-pixel ensemble variance of 0/1 votes, so it lies in [0, 0.25].
UNCERTAINTY_BIN_EDGES = (0.0, 1e-6, 0.05, 0.1, 0.15, 0.2, 0.25)


def mask_iou(pred: np.ndarray, target: np.ndarray) -> float:
    """IoU of two bool masks ``[H,W]``; 1.0 when both are empty."""
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    union = np.logical_or(pred, target).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, target).sum() / union)


def layer_ious(pred_layers: np.ndarray, true_layers: np.ndarray) -> dict[int, float]:
    """IoU per ground-truth layer index for one image, by index.

    ``pred_layers bool[Lp,H,W]``, ``true_layers bool[Lt,H,W]``. A true layer the prediction misses
    scores 0; predicted layers beyond ``Lt`` are extra layers, counted by :func:`extra_layers`
    and in :func:`image_miou` rather than here.
    """
    out = {}
    for k in range(len(true_layers)):
        out[k] = mask_iou(pred_layers[k], true_layers[k]) if k < len(pred_layers) else 0.0
    return out


def extra_layers(pred_layers: np.ndarray, true_layers: np.ndarray) -> int:
    """How many layers the prediction has beyond the ground truth (0 if none)."""
    return max(0, len(pred_layers) - len(true_layers))


def missed_layers(pred_layers: np.ndarray, true_layers: np.ndarray) -> int:
    """How many true layers the prediction does not reach (0 if none)."""
    return max(0, len(true_layers) - len(pred_layers))


def indexed_ious(pred_layers: np.ndarray, true_layers: np.ndarray) -> list[float]:
    """IoU at every index ``0..max(Lt, Lp)-1``; a side without layer ``k`` is an empty mask there."""
    depth = max(len(pred_layers), len(true_layers))
    if depth == 0:
        return []
    shape = (pred_layers if len(pred_layers) else true_layers).shape[1:]
    empty = np.zeros(shape, dtype=bool)
    return [
        mask_iou(
            pred_layers[k] if k < len(pred_layers) else empty,
            true_layers[k] if k < len(true_layers) else empty,
        )
        for k in range(depth)
    ]


def image_miou(pred_layers: np.ndarray, true_layers: np.ndarray) -> float:
    """Mean IoU over ``max(Lt, Lp)`` layer indices (missed and extra layers count 0); 1.0 if both empty."""
    ious = indexed_ious(pred_layers, true_layers)
    return float(np.mean(ious)) if ious else 1.0


def mean_by_layer(per_image: list[dict[int, float]]) -> dict[int, float]:
    """Average per-layer IoUs over images, each layer over the images that have it."""
    buckets: dict[int, list[float]] = {}
    for ious in per_image:
        for k, value in ious.items():
            buckets.setdefault(k, []).append(value)
    return {k: float(np.mean(v)) for k, v in sorted(buckets.items())}


def is_empty(mask: np.ndarray, min_foreground: float = 0.0) -> bool:
    """True when the foreground fraction of ``mask bool[H,W]`` is at most ``min_foreground``."""
    mask = np.asarray(mask, dtype=bool)
    return bool(mask.mean() <= min_foreground) if mask.size else True


def stop_correct(terminal_prediction: np.ndarray, min_foreground: float = 0.0) -> bool:
    """Teacher-forced stop check: given the true ``C_L`` (all objects), the model predicts nothing."""
    return is_empty(terminal_prediction, min_foreground)


def uncertainty_bins(
    uncertainty: np.ndarray,
    error: np.ndarray,
    edges: tuple[float, ...] = UNCERTAINTY_BIN_EDGES,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts and error counts per uncertainty bin: ``(count int64[B], errors int64[B])``.

    ``uncertainty float[...]`` in [0, 0.25] and ``error bool[...]`` (prediction differs from the
    truth) of the same shape; ``B = len(edges) - 1``, bin ``i`` holds ``edges[i] <= u < edges[i+1]``
    (the last bin is closed). The first bin (``u == 0``) is "all members agree".
    """
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    e = np.asarray(error, dtype=bool).ravel()
    assert u.shape == e.shape, (u.shape, e.shape)
    index = np.clip(np.searchsorted(np.asarray(edges), u, side="right") - 1, 0, len(edges) - 2)
    count = np.bincount(index, minlength=len(edges) - 1).astype(np.int64)
    errors = np.bincount(index, weights=e, minlength=len(edges) - 1).astype(np.int64)
    return count, errors


def layer_uncertainty_bins(
    pred_layers: np.ndarray,
    true_layers: np.ndarray,
    uncertainty: np.ndarray,
    edges: tuple[float, ...] = UNCERTAINTY_BIN_EDGES,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`uncertainty_bins` over every predicted layer: error = ``pred_k XOR true_k`` (empty truth
    beyond ``Lt``), against that layer's ``uncertainty float32[Lp,H,W]``."""
    bins = len(edges) - 1
    count, errors = np.zeros(bins, np.int64), np.zeros(bins, np.int64)
    for k in range(len(pred_layers)):
        truth = true_layers[k] if k < len(true_layers) else np.zeros_like(pred_layers[k], dtype=bool)
        c, e = uncertainty_bins(uncertainty[k], np.logical_xor(pred_layers[k], truth), edges)
        count += c
        errors += e
    return count, errors


def trivial_layer_ious(true_layers: np.ndarray) -> list[float]:
    """IoU per true layer k of the trivial answer "everything not yet in ``C_k``" (``C_L \\ C_k``).

    For layer 0 it is "every object is in front". A model that has not learned occlusion order
    scores about this; the margin over it is what the model has learned about order.
    """
    layers = np.asarray(true_layers, dtype=bool)
    if not len(layers):
        return []
    everything = layers.any(axis=0)
    covered = np.zeros_like(everything)
    out = []
    for mask in layers:
        out.append(mask_iou(everything & ~covered, mask))
        covered |= mask
    return out


def front_layer_map(pred_layers: np.ndarray) -> np.ndarray:
    """int64[H,W]: the front-most predicted layer covering each pixel (-1 where none does): the layer
    *visible* there. Layer masks are amodal, so a back layer legitimately covers the pixels of the
    objects in front of its hidden parts; which layer a pixel shows is the first that covers it."""
    pred = np.asarray(pred_layers, dtype=bool)
    if not len(pred):
        return np.full(pred.shape[1:], -1, dtype=np.int64)
    return np.where(pred.any(axis=0), pred.argmax(axis=0), -1).astype(np.int64)


def object_layers(pred_layers: np.ndarray, visible_masks: np.ndarray) -> np.ndarray:
    """int64[N]: the predicted layer of each true object: the layer that most of its visible pixels
    show in the prediction (:func:`front_layer_map`), -1 when no predicted layer covers any of them
    (objects without visible pixels get -1)."""
    visible = np.asarray(visible_masks, dtype=bool)
    if not len(visible):
        return np.zeros(0, dtype=np.int64)
    shown = front_layer_map(pred_layers)
    out = np.full(len(visible), -1, dtype=np.int64)
    for j, mask in enumerate(visible):
        values = shown[mask]
        values = values[values >= 0]
        if len(values):
            out[j] = int(np.bincount(values).argmax())
    return out


DECIDABLE_BORDER = 3  # px of visible border an occlusion edge needs to count as decidable


def shared_border(front_visible: np.ndarray, back_visible: np.ndarray) -> int:
    """Pixels of ``back_visible bool[H,W]`` with a 4-neighbour in ``front_visible bool[H,W]``: the
    occluded-side border pixels of the pair, where the picture shows who is in front."""
    front = np.asarray(front_visible, dtype=bool)
    back = np.asarray(back_visible, dtype=bool)
    near = np.zeros_like(front)
    near[1:] |= front[:-1]
    near[:-1] |= front[1:]
    near[:, 1:] |= front[:, :-1]
    near[:, :-1] |= front[:, 1:]
    return int((near & back).sum())


def decidable_edges(
    visible_masks: np.ndarray, edges: np.ndarray, min_border: int = DECIDABLE_BORDER
) -> np.ndarray:
    """bool[E]: the occlusion edges ``int[E,2]`` (front, back) whose two visible masks share at least
    ``min_border`` px of 4-neighbour border (:func:`shared_border`). An edge below it (the objects
    overlap by a sliver, or a third object hides their common border) cannot be decided from the
    picture; ``pair_order_decidable`` leaves it out."""
    visible = np.asarray(visible_masks, dtype=bool)
    pairs = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    return np.array([shared_border(visible[f], visible[b]) >= min_border for f, b in pairs], dtype=bool)


def layers_from_edges(num_objects: int, edges: np.ndarray) -> np.ndarray:
    """int64[N]: each object's layer from the occlusion DAG ``int[E,2]`` (front, back): 0 when nothing
    occludes it, else 1 + the largest layer of its occluders (the rule of ``synth.layering``)."""
    pairs = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    layer = np.zeros(num_objects, dtype=np.int64)
    for _ in range(num_objects):  # relax until stable: at most N rounds on a DAG
        changed = False
        for front, back in pairs:
            if layer[back] < layer[front] + 1:
                layer[back], changed = layer[front] + 1, True
        if not changed:
            break
    return layer


def object_layer_hits(pred_layers: np.ndarray, visible_masks: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """bool[N]: each true object's predicted layer (:func:`object_layers`) equals its true layer
    (:func:`layers_from_edges`). The per-object decision behind ``object_layer_acc``."""
    visible = np.asarray(visible_masks, dtype=bool)
    return object_layers(pred_layers, visible) == layers_from_edges(len(visible), edges)


def edge_order_hits(pred_layers: np.ndarray, visible_masks: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """bool[E] over true occlusion edges ``int[E,2]`` (front, back): the front object's predicted layer
    (:func:`object_layers`) is smaller than the back one's. An object no predicted layer covers counts
    as "behind everything"; two such objects, or one layer for both (a merged pair), are wrong."""
    layers = object_layers(pred_layers, visible_masks)
    rank = np.where(layers < 0, np.iinfo(np.int64).max, layers)
    pairs = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    return rank[pairs[:, 0]] < rank[pairs[:, 1]]


def pair_order(pred_layers: np.ndarray, visible_masks: np.ndarray, edges: np.ndarray) -> tuple[int, int]:
    """``(correct, pairs)`` of :func:`edge_order_hits` over every true edge. Needs no instance
    matching, so it measures order even when masks are rough ("every object in layer 0" scores 0)."""
    hits = edge_order_hits(pred_layers, visible_masks, edges)
    return int(hits.sum()), len(hits)
