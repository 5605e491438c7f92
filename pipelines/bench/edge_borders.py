"""How visible is each occlusion edge? Border pixels per edge, layers and trivial answers, per family,
with the generator's edge-border check off (``min_edge_border=0``, the old scenes) and on (default).

    python pipelines/bench/edge_borders.py [--scenes 1000] [--families flat textured] [--out FILE.md]

An edge (front, back) is any shared amodal pixel; its border is the number of back-object visible
pixels 4-adjacent to the front object's visible part (``sas_model.metrics.shared_border``): where
the picture shows who is in front. Reports per family and setting: the border histogram, the share
of edges under 3 px, scenes/s of the renderer, the layer histogram and the trivial layer-0 answer
("every object in front", IoU against the true layer 0).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from sas_model.metrics import shared_border, trivial_layer_ious
from synth.families import FAMILIES, family_config
from synth.render import render_scenes

BINS = ((0, 0), (1, 2), (3, 5), (6, 10), (11, 10**9))


def measure(family: str, min_edge_border: int, scenes: int, seed: int = 0) -> dict:
    cfg = replace(family_config(family, 64), min_edge_border=min_edge_border)
    render_scenes(seed, 10**8, 8, cfg)  # warm caches
    start = time.perf_counter()
    rendered = render_scenes(seed, 0, scenes, cfg)
    seconds = time.perf_counter() - start
    borders, layers, trivial = [], [], []
    for scene in rendered:
        for front, back in np.asarray(scene.occlusion_edges).reshape(-1, 2):
            borders.append(shared_border(scene.visible_masks[front], scene.visible_masks[back]))
        layers.append(scene.num_layers)
        trivial.append(trivial_layer_ious(scene.layer_masks)[0])
    borders_a = np.asarray(borders)
    layers_a = np.asarray(layers)
    return {
        "family": family,
        "min_edge_border": min_edge_border,
        "scenes_per_s": scenes / seconds,
        "edges_per_scene": len(borders_a) / scenes,
        "border_hist": [float(np.mean((borders_a >= lo) & (borders_a <= hi))) for lo, hi in BINS],
        "under3": float(np.mean(borders_a < 3)),
        "median_border": float(np.median(borders_a)),
        "layers_hist": [float(np.mean(layers_a == k)) for k in (1, 2, 3)] + [float(np.mean(layers_a >= 4))],
        "trivial_l0": float(np.mean(trivial)),
    }


def table(rows: list[dict]) -> str:
    head = (
        "| family | min_edge_border | edges/scene | border 0 / 1-2 / 3-5 / 6-10 / 11+ px | < 3 px | median | "
        "layers 1 / 2 / 3 / 4+ | trivial L0 | scenes/s |\n|---|---:|---:|---|---:|---:|---|---:|---:|\n"
    )
    lines = [
        f"| `{r['family']}` | {r['min_edge_border']} | {r['edges_per_scene']:.2f} | "
        + " / ".join(f"{100 * v:.1f}" for v in r["border_hist"])
        + f" % | {100 * r['under3']:.1f} % | {r['median_border']:.0f} | "
        + " / ".join(f"{100 * v:.0f}" for v in r["layers_hist"])
        + f" % | {r['trivial_l0']:.3f} | {r['scenes_per_s']:.0f} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=1000)
    ap.add_argument("--families", nargs="*", default=list(FAMILIES))
    ap.add_argument("--out", default=None, help="write the markdown table here too")
    args = ap.parse_args(argv)
    rows = [measure(f, b, args.scenes) for f in args.families for b in (0, 3)]
    text = table(rows)
    print(text, end="")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
