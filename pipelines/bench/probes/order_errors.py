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

import argparse
import json
from collections import Counter
from itertools import islice

import numpy as np
import torch

from pipelines.cli.args import parse_override
from pipelines.inference.models import resolve_model
from pipelines.training.validate import free_running_summary
from sas_model.checkpoint import load_model
from sas_model.metrics import object_layers
from sas_model.segmenter import SequentialSegmenter
from synth.reader import iter_scenes

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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a checkpoint or run folder, or models:/NAME@ALIAS")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--scenes", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sampler", nargs="*", type=parse_override, default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    segmenter = SequentialSegmenter(load_model(resolve_model(args.model).checkpoint_dir), device="cpu")
    scenes = [s for s in islice(iter_scenes(args.data, split=args.split), args.scenes) if s.has_instances]
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
