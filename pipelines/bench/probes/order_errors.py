"""Why is hard pair order low? Each true occlusion edge (front, back), after free-running segmentation,
falls in one case (the objects' predicted layers as in ``sas_model.metrics.object_layers``):

- ``right``: the front object in an earlier predicted layer than the back one (``pair_order`` counts these);
- ``same``: both in one predicted layer (the layers do not separate them);
- ``back_lost``: the front object found, the back one in no predicted layer;
- ``front_lost`` / ``both_lost``: the front object (or both) in no predicted layer;
- ``reversed``: the back object in an earlier layer::

    python pipelines/bench/probes/order_errors.py --model runs/main-tiny-flat --data data/main-flat \\
        --scenes 64

With ``--sampler KEY=VALUE ...`` (``SamplerConfig`` fields, e.g. ``threshold=0.7``) the same scenes are
segmented with another sampler setting; the report also gives the free-running summary
(``pipelines.training.validate.free_running_summary``: free layer IoUs, pair order, layer count).
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from pipelines.bench.probes import scene_probe
from pipelines.cli.args import parse_override
from pipelines.training.validate import free_running_summary
from sas_model.metrics import object_layers

SUMMARY_KEYS = ("miou_free", "iou_free/layer0", "iou_free/layer1", "pair_order", "layer_count_acc")
CASES = ("right", "same", "back_lost", "front_lost", "both_lost", "reversed")


def edge_case(front: int, back: int) -> str:
    """The case of one edge from the two objects' predicted layers (-1: in no predicted layer)."""
    if front < 0 and back < 0:
        return "both_lost"
    if front < 0:
        return "front_lost"
    if back < 0:
        return "back_lost"
    return "right" if front < back else "same" if front == back else "reversed"


def main() -> None:
    ap = scene_probe.parser(__doc__, scenes=64)
    ap.add_argument("--sampler", nargs="*", type=parse_override, default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    segmenter, scenes = scene_probe.load(
        args.model, args.data, split=args.split, scenes=args.scenes, threads=args.threads
    )
    summary, results = free_running_summary(segmenter, scenes, seed=0, sampler_overrides=dict(args.sampler))
    cases: Counter[str] = Counter()
    by_true_layer: dict[str, Counter[str]] = {}
    for scene, result in zip(scenes, results, strict=True):
        layers = object_layers(result.layer_masks, scene.visible_masks)
        for front, back in np.asarray(scene.occlusion_edges).reshape(-1, 2):
            case = edge_case(int(layers[front]), int(layers[back]))
            cases[case] += 1
            key = f"front in true layer {int(scene.object_layer[front])}"
            by_true_layer.setdefault(key, Counter())[case] += 1
    total = sum(cases.values())
    report = {
        "sampler": dict(args.sampler),
        "summary": {k: round(float(v), 4) for k, v in summary.items() if k in SUMMARY_KEYS},
        "edges": total,
        "fractions": {c: round(cases[c] / total, 3) for c in CASES},
        "by_front_true_layer": {k: dict(v) for k, v in sorted(by_true_layer.items())},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
