"""How noisy is the champion metric? Spread of ``val/miou_free`` over reseeded validations.

For each subset size N (the ``--val-free-scenes`` a training run validates on), ``--draws`` times: N
val scenes drawn at random (seeded) from the first ``--pool`` and the sampler reseeded, then the
free-running segmenter scored exactly as validation does
(``pipelines.training.validate.free_running_summary``).
The standard deviation over draws is the noise a champion decision at that N has to beat, and
``seconds`` (the mean wall time of one validation) is what it costs::

    python pipelines/bench/probes/champion_noise.py --model runs/main-tiny-flat --data data/main-flat \\
        --sizes 4 16 64 --draws 5

The sampler is the one validation uses (``validation_sampler``: the preset's when it is cheap, else
DDIM-25); ``--sampler name=ddpm steps=1000`` scores with another (``SamplerConfig`` fields).
Draw ``d`` picks the same scenes with the same seed whatever the sampler, so two samplers' rows
compare scene for scene.
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from pipelines.cli.args import parse_override
from pipelines.inference.models import resolve_model
from pipelines.training.validate import free_running_summary, validation_sampler
from sas_model.checkpoint import load_model
from sas_model.segmenter import SequentialSegmenter
from synth.reader import iter_scenes

KEYS = ("miou_free", "iou_free/layer0", "pair_order", "layer_count_acc")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a checkpoint or run folder, or models:/NAME@ALIAS")
    ap.add_argument("--data", required=True)
    ap.add_argument("--sizes", nargs="+", type=int, default=[4, 16, 64])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--pool", type=int, default=256, help="val scenes the subsets are drawn from")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--sampler",
        nargs="*",
        type=parse_override,
        default=None,
        metavar="KEY=VALUE",
        help="sampler overrides (default: validation's sampler)",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = resolve_model(args.model).checkpoint_dir
    model = load_model(checkpoint, use_ema=True, device=args.device)
    segmenter = SequentialSegmenter(model, device=args.device)
    sampler = validation_sampler(model.cfg.sampler) if args.sampler is None else dict(args.sampler)
    pool = list(islice(iter_scenes(args.data, split="val"), args.pool))
    print(f"[noise] {checkpoint}, {len(pool)} val scenes in the pool, sampler {sampler}", flush=True)
    rows = []
    for size in args.sizes:
        values: dict[str, list[float]] = {k: [] for k in KEYS}
        seconds = []
        for draw in range(args.draws):
            pick = np.random.default_rng(draw).choice(len(pool), size=min(size, len(pool)), replace=False)
            start = time.perf_counter()
            summary, _ = free_running_summary(
                segmenter, [pool[i] for i in sorted(pick)], seed=draw, sampler_overrides=sampler
            )
            seconds.append(time.perf_counter() - start)
            for key in KEYS:
                if key in summary:
                    values[key].append(float(summary[key]))
        row = {
            "scenes": size,
            "draws": args.draws,
            "device": args.device,
            "sampler": sampler,
            "seconds": round(float(np.mean(seconds)), 3),
        }
        for key, vals in values.items():
            if vals:
                row[key] = {
                    "mean": round(float(np.mean(vals)), 4),
                    "std": round(float(np.std(vals, ddof=1)), 4) if len(vals) > 1 else None,
                    "values": [round(v, 4) for v in vals],
                }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
