"""Oracle probe: does the order head's border-ownership map decide occlusion order better *per pair* than
its visible-layer map decides it *per pixel*?

    python pipelines/bench/probes/pairwise_order.py --model runs/x/checkpoint --family flat --scenes 200

On fresh test scenes, with the **true visible instances** (the oracle part): for every two objects
whose visible masks touch, the order head's cue module (read with an empty ``C_0``) gives an
ownership probability at each border pixel ("this pixel is on the occluded side"); the side whose
border pixels score higher is behind. Those pairwise decisions make a DAG (a cycle loses its least
certain edge), and layers come from the longest path, as ``synth.layering`` does. Reported beside
the same model's own decision (the layer covering most of each object's visible pixels in the
decoded ``V`` map), both scored by ``sas_model.metrics``: pair order over every true edge, object
layer accuracy, and the direction accuracy of the pairwise votes on true edges.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from pipelines.inference.models import resolve_model
from pipelines.training.scenes import val_scenes
from sas_model import metrics as lm
from sas_model.checkpoint import load_model
from sas_model.model import normalise_image
from synth.families import family_config


def border_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """bool[H,W]: pixels of ``b`` 4-adjacent to ``a``."""
    near = np.zeros_like(a)
    near[1:] |= a[:-1]
    near[:-1] |= a[1:]
    near[:, 1:] |= a[:, :-1]
    near[:, :-1] |= a[:, 1:]
    return near & b


def pairwise_layers(visible: np.ndarray, ownership: np.ndarray) -> tuple[np.ndarray, dict]:
    """Layers of the N objects from pairwise ownership votes; also ``{(front, back): margin}``."""
    n = len(visible)
    votes: dict[tuple[int, int], float] = {}
    for i in range(n):
        for j in range(i + 1, n):
            on_j, on_i = border_pixels(visible[i], visible[j]), border_pixels(visible[j], visible[i])
            if not on_j.any() or not on_i.any():
                continue
            margin = float(ownership[on_j].mean() - ownership[on_i].mean())  # > 0: j is on the occluded side
            votes[(i, j) if margin > 0 else (j, i)] = abs(margin)
    edges = dict(votes)
    while True:  # drop the least certain edge of any cycle
        layer = np.zeros(n, dtype=np.int64)
        for _ in range(n + 1):
            changed = False
            for front, back in edges:
                if layer[back] < layer[front] + 1:
                    layer[back], changed = layer[front] + 1, True
            if not changed:
                break
        if not changed:
            return layer, votes
        cyclic = [e for e in edges if layer[e[1]] > n or layer[e[0]] > n] or list(edges)
        del edges[min(cyclic, key=lambda e: edges[e])]


def layer_masks_of(layer: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Predicted layer masks that put each object's visible pixels in its layer (enough for
    ``object_layers``/``pair_order``, which read visible pixels)."""
    out = np.zeros((int(layer.max()) + 1, *visible.shape[1:]), bool)
    for k, mask in zip(layer, visible, strict=True):
        out[k] |= mask
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a checkpoint folder with an order head")
    ap.add_argument("--family", default="flat")
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1000, help="scene seed (pretraining never renders 1000)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(resolve_model(args.model).checkpoint_dir)
    if model.order is None or model.order.cues is None:
        raise SystemExit("error: the model has no order head with a cue module")
    scenes = val_scenes(
        args.seed, family_config(args.family, model.cfg.image_size), args.scenes, split="test"
    )
    images = torch.from_numpy(np.stack([s.image for s in scenes]))
    with torch.no_grad():
        out = model.order(normalise_image(images))
        ownership = torch.sigmoid(out.cues.ownership.float())[:, 0].numpy()
    v_map, _ = model.visible_layers(images)
    rows = {"pairwise": [0, 0, 0, 0], "v_map": [0, 0, 0, 0]}  # pair hits, pairs, object hits, objects
    direction = [0, 0]
    for i, scene in enumerate(scenes):
        visible, edges = scene.visible_masks, scene.occlusion_edges
        layer, votes = pairwise_layers(visible, ownership[i])
        for front, back in np.asarray(edges).reshape(-1, 2):
            direction[0] += int((int(front), int(back)) in votes)
            direction[1] += 1
        v = v_map[i].numpy()
        v_layers = np.stack([v == k for k in range(max(1, int(v.max()) + 1))])
        for name, pred in (("pairwise", layer_masks_of(layer, visible)), ("v_map", v_layers)):
            hits = lm.edge_order_hits(pred, visible, edges)
            objects = lm.object_layer_hits(pred, visible, edges)
            rows[name] = [
                rows[name][0] + int(hits.sum()),
                rows[name][1] + len(hits),
                rows[name][2] + int(objects.sum()),
                rows[name][3] + len(objects),
            ]
    report = {
        name: {"pair_order": r[0] / max(1, r[1]), "object_layer_acc": r[2] / max(1, r[3]), "edges": r[1]}
        for name, r in rows.items()
    }
    report["pairwise"]["vote_direction_acc"] = direction[0] / max(1, direction[1])
    print(json.dumps({"model": args.model, "family": args.family, "scenes": len(scenes), **report}))


if __name__ == "__main__":
    main()
