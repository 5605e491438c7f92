"""Is layer 0's order lost in the map or in the decision? Object-level decision rules on one soft map.

Layer 0 is predicted teacher-forced (``C_0`` empty, so it is also the free-running first layer). Each
true object gets a score: the mean of the soft layer-0 map (``LayerPrediction.soft``) over its visible
pixels, as ``probe_pair_order`` does. The objects are grouped by the truth (an oracle: the model
does not group), then put in layer 0 by one of these rules:

- ``absolute τ``: score > τ (what a per-pixel threshold amounts to for an object);
- ``relative δ``: score ≥ max score of the image − δ (a decision relative to the image);
- ``top-n``: the n best scores, n the true number of layer-0 objects (an oracle count).

Over the occlusion edges whose front object is in true layer 0: ``ranking``, the fraction whose
front object scores above the back one (the learning probe's ``probe_pair_order``); per rule,
``split``, the fraction the rule splits (front in, back out). ``object_acc``: the fraction of
objects whose in/out decision matches the truth. ``mask`` scores the model's own thresholded layer-0
mask (an object is in when the mask covers most of its visible pixels)::

    python pipelines/bench/probes/layer0_decisions.py --model runs/probe/det-flat/checkpoint \\
        --data data/main-flat --scenes 256
"""

from __future__ import annotations

import json

import numpy as np

from pipelines.bench.probes import scene_probe

ABSOLUTE = (0.3, 0.5, 0.7, 0.9)
RELATIVE = (0.05, 0.1, 0.2, 0.3)


def rules(scores: np.ndarray, in_mask: np.ndarray, n_front: int) -> dict[str, np.ndarray]:
    """Each rule's layer-0 decision (bool per object) from the objects' ``scores``."""
    out = {"mask": in_mask}
    for tau in ABSOLUTE:
        out[f"absolute {tau}"] = scores > tau
    for delta in RELATIVE:
        out[f"relative {delta}"] = scores >= scores.max() - delta
    top = np.zeros(len(scores), dtype=bool)
    top[np.argsort(-scores, kind="stable")[:n_front]] = True
    out["top-n (oracle count)"] = top
    return out


def _mean(values: list[int]) -> float:
    return round(float(np.mean(values)), 3)


def main() -> None:
    ap = scene_probe.parser(__doc__, scenes=256)
    args = ap.parse_args()
    segmenter, scenes = scene_probe.load(
        args.model, args.data, split=args.split, scenes=args.scenes, threads=args.threads
    )
    images = np.stack([s.image for s in scenes])
    pred = segmenter.predict_layer(images, np.zeros(images.shape[:3], dtype=bool), seed=0)
    split: dict[str, list[int]] = {}
    ranking: list[int] = []  # front object scored above the back one (probe_pair_order)
    objects: dict[str, list[int]] = {}
    for scene, soft, mask in zip(scenes, pred.soft, pred.layer_mask, strict=True):
        visible = list(scene.visible_masks)
        scores = np.array([float(soft[v].mean()) if v.any() else 0.0 for v in visible])
        in_mask = np.array([v.any() and mask[v].mean() > 0.5 for v in visible])
        truth = np.asarray(scene.object_layer) == 0
        edges = np.asarray(scene.occlusion_edges).reshape(-1, 2)
        ranking.extend(int(scores[front] > scores[back]) for front, back in edges if truth[front])
        for name, inside in rules(scores, in_mask, int(truth.sum())).items():
            objects.setdefault(name, []).extend((inside == truth).astype(int).tolist())
            for front, back in edges:
                if truth[front]:
                    split.setdefault(name, []).append(int(inside[front] and not inside[back]))
    report = {
        "model": args.model,
        "scenes": len(scenes),
        "edges_front_in_layer0": len(ranking),
        "ranking": _mean(ranking),
        "rules": {
            name: {
                "split": round(float(np.mean(split[name])), 3),
                "object_acc": round(float(np.mean(acc)), 3),
            }
            for name, acc in objects.items()
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
